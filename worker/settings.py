"""The worker's settings: command-line flags over the [edge_mailbox] section of its airflow.cfg
(and so over AIRFLOW__EDGE_MAILBOX__* environment variables), with checks that name the
setting at fault.

The options, their defaults, ranges and flags are declared once, in mailbox/options.py
(WorkerOptions); ``add_flags`` makes the flags from there."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass
from typing import Any

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.options import (
    SECTION,
    OptionError,
    WorkerOptions,
    default,
    flag_of,
    read_options,
)
from edge_mailbox.signer import KeyFileError, KeyRing, SigningKey


class WorkerConfigError(ValueError):
    """A worker setting is missing or invalid."""


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker runs with: WorkerOptions, keys loaded, under shorter names."""

    store: StoreConfig
    name: str
    queues: tuple[str, ...]
    concurrency: int
    key: SigningKey
    scheduler_keys: KeyRing
    poll_min: float = default(WorkerOptions, "worker_poll_interval_min")
    poll_max: float = default(WorkerOptions, "worker_poll_interval_idle")
    # How long (s) a relayed call waits for its answer. Not an option: the scheduler side's
    # relay_request_max_age must stay above it.
    relay_deadline: float = 900.0
    heartbeat_interval: float = default(WorkerOptions, "worker_heartbeat_interval")
    drain_timeout: float = default(WorkerOptions, "worker_drain_timeout")
    log_retention_days: float = default(WorkerOptions, "worker_log_retention_days")
    log_max_bytes: int = default(WorkerOptions, "worker_log_max_bytes")
    fresh_interpreter: bool = default(WorkerOptions, "worker_fresh_interpreter")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for each worker option that has one, its help saying the option it overrides."""
    for name, field in WorkerOptions.model_fields.items():
        flag = flag_of(field)
        if not flag:
            continue
        value = None if field.is_required() else default(WorkerOptions, name)
        if field.is_required():
            fallback = "required unless set in airflow.cfg"
        elif field.default_factory is not None:
            fallback = "default: the host name"
        elif value == "":
            fallback = "empty by default"
        else:
            fallback = f"default {','.join(value) if isinstance(value, tuple) else value}"
        description = str(field.description).replace("%", "%%")
        literal = typing.get_origin(field.annotation) is typing.Literal
        choices = typing.get_args(field.annotation) if literal else None
        # A yes/no option's flag alone means yes (``--fresh-interpreter``); it also takes a value.
        switch = {"nargs": "?", "const": "true"} if field.annotation is bool else {}
        parser.add_argument(
            flag, choices=choices, help=f"{description} ([{SECTION}] {name}; {fallback})", **switch
        )


def resolve(args: argparse.Namespace, conf: Any = None) -> WorkerSettings:
    """Flags first, then [edge_mailbox] in the worker's Airflow config, then the defaults."""
    try:
        options = read_options(WorkerOptions, conf, args)
    except OptionError as exc:
        raise WorkerConfigError(str(exc)) from None
    try:
        key = SigningKey.from_file(options.worker_key_path)
    except KeyFileError as exc:
        raise WorkerConfigError(
            f"worker key: {exc} (create one with: edge-mailbox-worker keygen "
            f"{options.worker_key_path})"
        ) from None
    try:
        ring = KeyRing.from_spec(options.scheduler_public_keys)
    except KeyFileError as exc:
        raise WorkerConfigError(f"scheduler key: {exc}") from None
    return WorkerSettings(
        store=options.store,
        name=options.worker_name,
        queues=options.worker_queues,
        concurrency=options.worker_concurrency,
        key=key,
        scheduler_keys=ring,
        poll_min=options.worker_poll_interval_min,
        poll_max=options.worker_poll_interval_idle,
        heartbeat_interval=options.worker_heartbeat_interval,
        drain_timeout=options.worker_drain_timeout,
        log_retention_days=options.worker_log_retention_days,
        log_max_bytes=options.worker_log_max_bytes,
        fresh_interpreter=options.worker_fresh_interpreter,
    )
