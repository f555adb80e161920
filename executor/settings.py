"""The ``[edge_mailbox]`` section of airflow.cfg, read and checked once, at ``start()``.

The options, their defaults and their ranges are declared in mailbox/options.py
(ExecutorOptions), from which provider.py's config section is generated, so each has a
documented default and an AIRFLOW__EDGE_MAILBOX__* override. A missing or broken value raises
EdgeMailboxConfigError naming the option and the rule, so the scheduler refuses to start with
a readable message instead of failing later mid-loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.options import (
    SECTION,
    ExecutorOptions,
    OptionError,
    default,
    read_options,
)
from edge_mailbox.signer import KeyFileError, KeyRing, SigningKey


class EdgeMailboxConfigError(ValueError):
    """A setting in [edge_mailbox] is missing or invalid."""


@dataclass(frozen=True)
class ExecutorSettings:
    """What the executor and reconciler run with: ExecutorOptions, keys loaded, some renamed
    (poll_active is poll_interval, poll_idle is poll_interval_idle)."""

    store: StoreConfig
    signing_key: SigningKey
    worker_keys: KeyRing
    worker_keys_spec: str
    manifest_ttl: float
    poll_active: float
    poll_idle: float
    list_interval: float
    worker_timeout: float
    cleanup_success_after: float
    cleanup_failed_after: float
    worker_check_interval: float
    relay_threads: int
    execution_api_url: str
    execution_api_timeout: float
    inbox_item_timeout: float = default(ExecutorOptions, "inbox_item_timeout")
    relay_request_max_age: float = default(ExecutorOptions, "relay_request_max_age")
    queue_sweep_interval: float = default(ExecutorOptions, "queue_sweep_interval")
    fleet_snapshot_interval: float = default(ExecutorOptions, "fleet_snapshot_interval")


def load_worker_keys(raw: str) -> KeyRing:
    """The worker keys a comma-separated list of files and folders of .pub files names.

    Read again while the scheduler runs (the reconciler does so every worker check), so that
    enrolling a worker or revoking one is a matter of adding or removing its .pub file."""
    if not raw:
        raise EdgeMailboxConfigError(
            f"[{SECTION}] worker_public_keys is not set: list the .pub files of the workers you "
            "trust (edge-mailbox-worker keygen writes one), comma-separated"
        )
    try:
        ring = KeyRing.from_spec(raw)
    except KeyFileError as exc:
        raise EdgeMailboxConfigError(f"[{SECTION}] worker_public_keys: {exc}") from None
    if not len(ring):
        raise EdgeMailboxConfigError(f"[{SECTION}] worker_public_keys names no key files")
    return ring


def load_settings(conf: Any, execution_api_url: str) -> ExecutorSettings:
    """Read and validate [edge_mailbox] from an Airflow config parser."""
    try:
        options = read_options(ExecutorOptions, conf)
    except OptionError as exc:
        raise EdgeMailboxConfigError(str(exc)) from None
    try:
        signing_key = SigningKey.from_file(options.signing_key_path)
    except KeyFileError as exc:
        raise EdgeMailboxConfigError(f"[{SECTION}] signing_key_path: {exc}") from None
    return ExecutorSettings(
        store=options.store,
        signing_key=signing_key,
        worker_keys=load_worker_keys(options.worker_public_keys),
        worker_keys_spec=options.worker_public_keys,
        manifest_ttl=options.manifest_ttl,
        poll_active=options.poll_interval,
        poll_idle=options.poll_interval_idle,
        list_interval=options.list_interval,
        worker_timeout=options.worker_timeout,
        cleanup_success_after=options.cleanup_success_after,
        cleanup_failed_after=options.cleanup_failed_after,
        worker_check_interval=options.worker_check_interval,
        relay_threads=options.relay_threads,
        execution_api_url=execution_api_url.rstrip("/") + "/",
        execution_api_timeout=options.execution_api_timeout,
        inbox_item_timeout=options.inbox_item_timeout,
        relay_request_max_age=options.relay_request_max_age,
        queue_sweep_interval=options.queue_sweep_interval,
        fleet_snapshot_interval=options.fleet_snapshot_interval,
    )
