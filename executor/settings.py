"""The ``[edge_mailbox]`` section of airflow.cfg, read and checked once, at ``start()``.

Every option has a documented default in provider.py (and so an AIRFLOW__EDGE_MAILBOX__*
override). A missing or broken value raises EdgeMailboxConfigError naming the option, so the
scheduler refuses to start with a readable message instead of failing later mid-loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.signer import KeyFileError, KeyRing, SigningKey

SECTION = "edge_mailbox"


class EdgeMailboxConfigError(ValueError):
    """A setting in [edge_mailbox] is missing or invalid."""


@dataclass(frozen=True)
class ExecutorSettings:
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
    inbox_item_timeout: float = 3600.0
    relay_request_max_age: float = 1200.0
    queue_sweep_interval: float = 300.0


def _get(conf: Any, key: str, fallback: str = "") -> str:
    value = conf.get(SECTION, key, fallback=fallback)
    return "" if value is None else str(value).strip()


def _float(conf: Any, key: str, default: str, low: float, high: float) -> float:
    raw = _get(conf, key, default)
    try:
        value = float(raw)
    except ValueError:
        raise EdgeMailboxConfigError(f"[{SECTION}] {key} = {raw!r} is not a number") from None
    if not low <= value <= high:
        raise EdgeMailboxConfigError(f"[{SECTION}] {key} = {value} must be in [{low}, {high}]")
    return value


def _public_keys(conf: Any) -> KeyRing:
    return load_worker_keys(_get(conf, "worker_public_keys"))


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
    bucket = _get(conf, "bucket")
    if not bucket:
        raise EdgeMailboxConfigError(
            f"[{SECTION}] bucket is not set (AIRFLOW__EDGE_MAILBOX__BUCKET): the S3 bucket "
            "that the scheduler and the edge workers share"
        )
    try:
        store = StoreConfig(
            bucket=bucket,
            prefix=_get(conf, "prefix", "edge-mailbox"),
            endpoint_url=_get(conf, "endpoint_url") or None,
            region=_get(conf, "region") or None,
            access_key_id=_get(conf, "aws_access_key_id") or None,
            secret_access_key=_get(conf, "aws_secret_access_key") or None,
            proxy=_get(conf, "proxy") or None,
            addressing_style=_get(conf, "addressing_style", "auto"),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0] if e['loc'] else ''}: {e['msg']}" for e in exc.errors())
        raise EdgeMailboxConfigError(f"[{SECTION}] {problems}") from None
    key_path = _get(conf, "signing_key_path")
    if not key_path:
        raise EdgeMailboxConfigError(
            f"[{SECTION}] signing_key_path is not set: the scheduler's Ed25519 private key "
            "(edge-mailbox keys generate PATH writes one)"
        )
    try:
        signing_key = SigningKey.from_file(key_path)
    except KeyFileError as exc:
        raise EdgeMailboxConfigError(f"[{SECTION}] signing_key_path: {exc}") from None
    return ExecutorSettings(
        store=store,
        signing_key=signing_key,
        worker_keys=_public_keys(conf),
        worker_keys_spec=_get(conf, "worker_public_keys"),
        manifest_ttl=_float(conf, "manifest_ttl", "3600", 10, 7 * 86400),
        poll_active=_float(conf, "poll_interval", "0.05", 0.01, 60),
        poll_idle=_float(conf, "poll_interval_idle", "5", 0.1, 3600),
        list_interval=_float(conf, "list_interval", "10", 0.5, 3600),
        worker_timeout=_float(conf, "worker_timeout", "120", 5, 86400),
        cleanup_success_after=_float(conf, "cleanup_success_after", "300", 0, 365 * 86400),
        cleanup_failed_after=_float(conf, "cleanup_failed_after", "3600", 0, 365 * 86400),
        worker_check_interval=_float(conf, "worker_check_interval", "15", 1, 3600),
        relay_threads=int(_float(conf, "relay_threads", "8", 1, 256)),
        execution_api_url=execution_api_url.rstrip("/") + "/",
        execution_api_timeout=_float(conf, "execution_api_timeout", "30", 1, 600),
        inbox_item_timeout=_float(conf, "inbox_item_timeout", "3600", 60, 30 * 86400),
        relay_request_max_age=_float(conf, "relay_request_max_age", "1200", 60, 86400),
        queue_sweep_interval=_float(conf, "queue_sweep_interval", "300", 1, 86400),
    )
