"""The worker's settings: command-line flags over the [edge_mailbox] section of its airflow.cfg
(and so over AIRFLOW__EDGE_MAILBOX__* environment variables), with checks that name the
setting at fault."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.layout import encode_name
from edge_mailbox.signer import KeyFileError, KeyRing, SigningKey

SECTION = "edge_mailbox"


class WorkerConfigError(ValueError):
    """A worker setting is missing or invalid."""


@dataclass(frozen=True)
class WorkerSettings:
    store: StoreConfig
    name: str
    queues: tuple[str, ...]
    concurrency: int
    key: SigningKey
    scheduler_keys: KeyRing
    poll_min: float = 0.1
    poll_max: float = 6.0
    relay_deadline: float = 900.0
    heartbeat_interval: float = 30.0
    drain_timeout: float = 600.0
    log_retention_days: float = 14.0
    log_max_bytes: int = 2 * 1024**3


def _conf_get(conf: Any, key: str) -> str:
    if conf is None:
        return ""
    value = conf.get(SECTION, key, fallback="")
    return "" if value is None else str(value).strip()


def resolve(args: argparse.Namespace, conf: Any = None) -> WorkerSettings:
    """Flags first, then [edge_mailbox] in the worker's Airflow config."""

    def pick(flag: str, option: str, default: str = "") -> str:
        value = getattr(args, flag, None)
        return (
            str(value).strip() if value not in (None, "") else (_conf_get(conf, option) or default)
        )

    bucket = pick("bucket", "bucket")
    if not bucket:
        raise WorkerConfigError("no bucket: pass --bucket or set [edge_mailbox] bucket")
    try:
        store = StoreConfig(
            bucket=bucket,
            prefix=pick("prefix", "prefix", "edge-mailbox"),
            endpoint_url=pick("endpoint_url", "endpoint_url") or None,
            region=pick("region", "region") or None,
            proxy=pick("proxy", "proxy") or None,
            addressing_style=pick("addressing_style", "addressing_style", "auto"),
            access_key_id=_conf_get(conf, "aws_access_key_id") or None,
            secret_access_key=_conf_get(conf, "aws_secret_access_key") or None,
        )
    except ValidationError as exc:
        raise WorkerConfigError("; ".join(str(e["msg"]) for e in exc.errors())) from None
    queues = tuple(
        q.strip() for q in pick("queues", "worker_queues", "default").split(",") if q.strip()
    )
    if not queues:
        raise WorkerConfigError("--queues names no queue")
    for name in queues:
        try:
            encode_name(name)
        except ValueError as exc:
            raise WorkerConfigError(f"--queues: {exc}") from None
    raw_concurrency = pick("concurrency", "worker_concurrency", "8")
    try:
        concurrency = int(raw_concurrency)
    except ValueError:
        raise WorkerConfigError(
            f"--concurrency {raw_concurrency!r} is not a whole number"
        ) from None
    if not 1 <= concurrency <= 1024:
        raise WorkerConfigError(f"--concurrency {concurrency} must be between 1 and 1024")
    name = pick("name", "worker_name", socket.gethostname())
    try:
        encode_name(name, kind="worker")
    except ValueError as exc:
        raise WorkerConfigError(f"--name: {exc}") from None
    key_path = pick("key", "worker_key_path", "worker.pem")
    try:
        key = SigningKey.from_file(key_path)
    except KeyFileError as exc:
        raise WorkerConfigError(
            f"worker key: {exc} (create one with: edge-mailbox-worker keygen {key_path})"
        ) from None
    scheduler_paths = pick("scheduler_key", "scheduler_public_keys")
    if not scheduler_paths:
        raise WorkerConfigError(
            "no scheduler key to trust: pass --scheduler-key FILE.pub or set "
            "[edge_mailbox] scheduler_public_keys (the .pub of the scheduler's signing key)"
        )
    try:
        ring = KeyRing.from_spec(scheduler_paths)
    except KeyFileError as exc:
        raise WorkerConfigError(f"scheduler key: {exc}") from None

    def seconds(flag: str, option: str, default: str, low: float, high: float) -> float:
        raw = pick(flag, option, default)
        try:
            value = float(raw)
        except ValueError:
            raise WorkerConfigError(f"{option} = {raw!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise WorkerConfigError(f"{option} = {value} must be between {low} and {high}")
        return value

    return WorkerSettings(
        store=store,
        name=name,
        queues=queues,
        concurrency=concurrency,
        key=key,
        scheduler_keys=ring,
        poll_min=seconds("poll_min", "worker_poll_interval_min", "0.1", 0.01, 60),
        poll_max=seconds("poll_max", "worker_poll_interval_idle", "6", 0.1, 600),
        heartbeat_interval=seconds(
            "heartbeat_interval", "worker_heartbeat_interval", "30", 1, 3600
        ),
        drain_timeout=seconds("drain_timeout", "worker_drain_timeout", "600", 0, 7 * 86400),
        log_retention_days=seconds("log_days", "worker_log_retention_days", "14", 0.01, 3650),
        log_max_bytes=int(
            seconds("log_bytes", "worker_log_max_bytes", str(2 * 1024**3), 1024**2, 1024**5)
        ),
    )
