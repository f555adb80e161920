"""The ``[edge_mailbox]`` section of airflow.cfg: every option of both sides, declared once.

Each option is a field of a pydantic model below: its type, default, range, description and,
for a worker option, the ``edge-mailbox-worker`` flag that overrides it. From these fields come
the provider's config section (so ``airflow config list --section edge_mailbox`` shows every
option with its default, and Airflow serves those defaults), the reading and checking of
airflow.cfg on both sides (``read_options``), and the worker's command-line flags. A default
therefore lives in one place: here.

The models live in mailbox/ because both sides need them: the provider metadata (executor
side) documents the worker's options as well, and executor and worker never import each other.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.layout import encode_name

SECTION = "edge_mailbox"
DAY = 86400


class OptionError(ValueError):
    """An [edge_mailbox] option (or the worker flag that overrides it) is missing or invalid."""


def option(
    default: Any = PydanticUndefined,
    *,
    description: str,
    example: str | None = None,
    flag: str | None = None,
    sensitive: bool = False,
    **constraints: Any,
) -> Any:
    """A field that is an option: what the provider metadata and the worker's flags need."""
    return Field(
        default,
        description=description,
        json_schema_extra={"example": example, "flag": flag, "sensitive": sensitive},
        **constraints,
    )


def _comma_list(value: Any) -> Any:
    """``"a, b,"`` -> ``("a", "b")``: airflow.cfg and the flags give lists as one string."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _queue_names(names: tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("names no queue")
    for name in names:
        encode_name(name)
    return names


def _worker_name(name: str) -> str:
    encode_name(name, kind="worker")
    return name


QueueNames = Annotated[tuple[str, ...], BeforeValidator(_comma_list), AfterValidator(_queue_names)]
WorkerName = Annotated[str, AfterValidator(_worker_name)]


class StoreOptions(BaseModel):
    """The bucket, read by both sides. Credentials have no flag: a command line is public."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    bucket: str = option(
        description="The bucket shared by the scheduler side and the workers.",
        example="airflow-edge",
        flag="--bucket",
    )
    prefix: str = option(
        "edge-mailbox",
        description="Key prefix inside the bucket; all objects live under PREFIX/v1/.",
        flag="--prefix",
    )
    endpoint_url: str = option(
        "",
        description="S3 endpoint for MinIO, SeaweedFS, ...; empty for AWS S3.",
        example="http://minio:9000",
        flag="--endpoint-url",
    )
    region: str = option(
        "",
        description="Region of the bucket; empty uses the AWS default chain.",
        example="eu-central-1",
        flag="--region",
    )
    aws_access_key_id: str = option(
        "",
        description="Access key; empty uses the standard AWS credential chain.",
        sensitive=True,
    )
    aws_secret_access_key: str = option(
        "",
        description="Secret key; empty uses the standard AWS credential chain.",
        sensitive=True,
        repr=False,
    )
    proxy: str = option(
        "",
        description="HTTP(S) proxy URL for bucket requests; empty uses HTTPS_PROXY.",
        example="http://proxy:3128",
        flag="--proxy",
    )
    addressing_style: Literal["auto", "path", "virtual"] = option(
        "auto",
        description="S3 addressing style: auto, path or virtual.",
        example="path",
        flag="--addressing-style",
    )

    @model_validator(mode="after")
    def _key_pair(self) -> StoreOptions:
        if bool(self.aws_access_key_id) != bool(self.aws_secret_access_key):
            raise ValueError("aws_access_key_id and aws_secret_access_key must be given together")
        return self

    @cached_property
    def store(self) -> StoreConfig:
        """The store settings, checked there (bucket name, URLs) once: read_options asks."""
        return StoreConfig(
            bucket=self.bucket,
            prefix=self.prefix,
            endpoint_url=self.endpoint_url or None,
            region=self.region or None,
            access_key_id=self.aws_access_key_id or None,
            secret_access_key=self.aws_secret_access_key or None,
            proxy=self.proxy or None,
            addressing_style=self.addressing_style,
        )


class ExecutorOptions(StoreOptions):
    """What the scheduler side reads (ExecutorSettings)."""

    signing_key_path: str = option(
        description="The scheduler's Ed25519 private key (PEM) that signs manifests; "
        "`edge-mailbox keys generate PATH` writes one (and PATH.pub for the workers).",
        example="/etc/airflow/edge-mailbox.pem",
    )
    worker_public_keys: str = option(
        description="Comma-separated worker public key files (or folders of .pub files) to "
        "trust; `edge-mailbox-worker keygen` writes a worker's key and its .pub.",
        example="/etc/airflow/workers/",
    )
    manifest_ttl: float = option(
        3600,
        description="Seconds a job manifest stays valid for a worker to claim.",
        ge=10,
        le=7 * DAY,
    )
    poll_interval: float = option(
        0.05,
        description="How often (s) the inbox's change marker is polled with a conditional GET "
        "while jobs are queued or running (after 40 polls without a change, backing off to "
        "five times this); a LIST follows only when it changed.",
        ge=0.01,
        le=60,
    )
    poll_interval_idle: float = option(
        5,
        description="How often (s) the inbox's change marker is polled when no job is outstanding.",
        ge=0.1,
        le=3600,
    )
    list_interval: float = option(
        10,
        description="A LIST of the inbox at least this often (s) while jobs are outstanding, "
        "whatever the change marker says.",
        ge=0.5,
        le=3600,
    )
    worker_timeout: float = option(
        120,
        description="Seconds without a heartbeat after which a worker counts as lost and its "
        "tasks are failed (and retried per their retries).",
        ge=5,
        le=DAY,
    )
    cleanup_success_after: float = option(
        300,
        description="Seconds after which the bucket objects of a successful job (manifest, "
        "claim, relay answers, result) are deleted. Logs are kept: give logs/ a lifecycle rule.",
        ge=0,
        le=365 * DAY,
    )
    cleanup_failed_after: float = option(
        3600,
        description="The same for failed, lost and revoked jobs: kept longer, for troubleshooting.",
        ge=0,
        le=365 * DAY,
    )
    inbox_item_timeout: float = option(
        3600,
        description="How long (s) an inbox item this scheduler cannot act on is kept before it "
        "is deleted: a claim or result notice of a job another scheduler queued (left for that "
        "scheduler, or for the one that adopts its tasks). An item signed by a worker key not "
        "trusted yet (a worker enrolled a moment ago) waits 300 s at most.",
        ge=60,
        le=30 * DAY,
    )
    queue_sweep_interval: float = option(
        300,
        description="How often (s) the front of each queue is checked for objects no worker "
        "may run (unsigned, tampered, foreign or expired manifests, stray keys), which are "
        "deleted: one LIST per queue.",
        ge=1,
        le=DAY,
    )
    relay_request_max_age: float = option(
        1200,
        description="A relay request sent longer ago than this (s) is refused unread: no call "
        "is replayed late (a worker stops waiting for an answer after 900 s).",
        ge=60,
        le=DAY,
    )
    worker_check_interval: float = option(
        15,
        description="How often (s) worker heartbeats are checked (one LIST).",
        ge=1,
        le=3600,
    )
    fleet_snapshot_interval: float = option(
        30,
        description="How often (s) each scheduler writes what it knows of the fleet "
        "(verified heartbeats, its jobs and queues, its bucket requests) to one signed object "
        "for the dashboard: one PUT at the first worker check after this has passed (at most "
        "120 an hour at 30), and one LIST an hour to remove dead schedulers' objects. 0 turns "
        "it off.",
        ge=0,
        le=DAY,
    )
    relay_threads: int = option(
        8,
        description="Threads replaying relayed Execution API calls in parallel.",
        ge=1,
        le=256,
    )
    execution_api_timeout: float = option(
        30,
        description="Timeout (s) of one replayed Execution API call.",
        ge=1,
        le=600,
    )


class WorkerOptions(StoreOptions):
    """What an edge worker reads (WorkerSettings); each has a flag of edge-mailbox-worker."""

    worker_queues: QueueNames = option(
        ("default",),
        description="Comma-separated queues this worker takes jobs from.",
        example="default,gpu",
        flag="--queues",
    )
    worker_concurrency: int = option(
        8,
        description="This worker's slots: a task takes its pool_slots of them.",
        flag="--concurrency",
        ge=1,
        le=1024,
    )
    worker_name: WorkerName = option(
        default_factory=socket.gethostname,
        description="This worker's name, unique among the workers; empty: the host name.",
        example="plant-7",
        flag="--name",
    )
    worker_key_path: str = option(
        "worker.pem",
        description="This worker's Ed25519 private key (PEM) that signs its claims, results "
        "and relay requests; `edge-mailbox-worker keygen PATH` writes one, and PATH.pub goes "
        "into the scheduler side's worker_public_keys.",
        example="/etc/edge-worker/worker.pem",
        flag="--key",
    )
    scheduler_public_keys: str = option(
        description="The scheduler's public key file(s) this worker trusts (the .pub beside "
        "its signing_key_path), comma-separated.",
        example="/etc/edge-worker/edge-mailbox.pem.pub",
        flag="--scheduler-key",
    )
    worker_poll_interval_min: float = option(
        0.1,
        description="Seconds between the worker's polls of its queues while work comes in; "
        "when none does, the pause grows by a quarter a poll up to worker_poll_interval_idle.",
        flag="--poll-interval-min",
        ge=0.01,
        le=60,
    )
    worker_poll_interval_idle: float = option(
        6,
        description="The longest pause (s) between the worker's polls of its queues.",
        flag="--poll-interval-idle",
        ge=0.1,
        le=600,
    )
    worker_heartbeat_interval: float = option(
        30,
        description="Seconds between the worker's heartbeats (a change of its state, such as "
        "maintenance, is sent at once).",
        flag="--heartbeat-interval",
        ge=1,
        le=3600,
    )
    worker_drain_timeout: float = option(
        600,
        description="Seconds running tasks may finish after the worker is told to stop; then "
        "they are killed.",
        flag="--drain-timeout",
        ge=0,
        le=7 * DAY,
    )
    worker_log_retention_days: float = option(
        14,
        description="Days the worker keeps local task log files (they are shipped to the "
        "bucket as they are written).",
        flag="--log-retention-days",
        ge=0.01,
        le=3650,
    )
    worker_log_max_bytes: int = option(
        2 * 1024**3,
        description="Bytes of local task log files the worker keeps at most; the oldest go first.",
        flag="--log-max-bytes",
        ge=1024**2,
        le=1024**5,
    )
    worker_fresh_interpreter: bool = option(
        False,
        description="Start every task in a new Python process instead of a runner forked from "
        "the worker (slower: it imports Airflow for each task); for tasks that cannot be forked "
        "safely. A task asks for it alone with "
        'executor_config={"edge_mailbox": {"fresh_interpreter": True}}.',
        flag="--fresh-interpreter",
    )


Options = TypeVar("Options", bound=StoreOptions)


def default(model: type[BaseModel], name: str) -> Any:
    """The default of option ``name`` as its type has it (3600 -> 3600.0 for a float), for
    code that holds settings without reading them."""
    field = model.model_fields[name]
    return TypeAdapter(field.annotation).validate_python(
        field.get_default(call_default_factory=True)
    )


def flag_of(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra
    return extra.get("flag") if isinstance(extra, dict) else None  # type: ignore[return-value]


def flag_dest(flag: str) -> str:
    """The attribute argparse stores ``flag`` under (``--scheduler-key`` -> scheduler_key)."""
    return flag.lstrip("-").replace("-", "_")


def env_var(name: str) -> str:
    return f"AIRFLOW__{SECTION.upper()}__{name.upper()}"


def _given(value: Any) -> str | None:
    """A value as given, stripped; an empty one counts as not given (the default applies)."""
    text = "" if value is None else str(value).strip()
    return text or None


def read_options(
    model: type[Options], conf: Any, flags: argparse.Namespace | None = None
) -> Options:
    """The options of ``model``: a flag (the worker's) first, then [edge_mailbox] of
    airflow.cfg (with its AIRFLOW__EDGE_MAILBOX__* variables), then the default.

    ``conf`` is Airflow's config parser (or anything with its ``get(section, key,
    fallback=)``), None for none. A bad value raises OptionError naming where it came from."""
    values: dict[str, str] = {}
    from_flag: set[str] = set()
    for name, field in model.model_fields.items():
        flag = flag_of(field) if flags is not None else None
        value = _given(getattr(flags, flag_dest(flag), None)) if flag else None
        if value is not None:
            from_flag.add(name)
        elif conf is not None:
            value = _given(conf.get(SECTION, name, fallback=None))
        if value is not None:
            values[name] = value

    def where(name: str) -> str:
        flag = flag_of(model.model_fields[name]) if name in model.model_fields else None
        return flag if name in from_flag and flag else f"[{SECTION}] {name}"

    def how(name: str) -> str:
        flag = flag_of(model.model_fields[name]) if flags is not None else None
        return f"nor {flag}, nor {env_var(name)}" if flag else f"nor {env_var(name)}"

    try:
        options = model.model_validate(values)
        options.store  # noqa: B018 (built here, where a bad bucket name can be explained)
    except ValidationError as exc:
        raise OptionError(explain(exc, model, where, how)) from None
    return options


def _bounds(field: FieldInfo) -> tuple[Any, Any]:
    low = high = None
    for rule in field.metadata:
        if isinstance(rule, Ge | Gt):
            low = rule.ge if isinstance(rule, Ge) else rule.gt
        elif isinstance(rule, Le | Lt):
            high = rule.le if isinstance(rule, Le) else rule.lt
    return low, high


def explain(
    exc: ValidationError,
    model: type[BaseModel],
    where: Callable[[str], str],
    how: Callable[[str], str],
) -> str:
    """One line per broken option, naming it (or its flag) and the rule it breaks."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        field = model.model_fields.get(name)
        given = error.get("input")
        kind = error["type"]
        if field is None:  # a rule about several options
            problems.append(f"[{SECTION}] {error['msg'].removeprefix('Value error, ')}")
        elif kind == "missing":
            problems.append(f"{where(name)} is not set ({how(name)}). {field.description}")
        elif kind in ("float_parsing", "float_type"):
            problems.append(f"{where(name)} = {given!r} is not a number")
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            problems.append(f"{where(name)} = {given!r} is not a whole number")
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            low, high = _bounds(field)
            problems.append(f"{where(name)} = {given} must be between {low} and {high}")
        elif kind == "literal_error":
            problems.append(f"{where(name)} = {given!r}: {error['msg']}")
        else:
            problems.append(f"{where(name)}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
