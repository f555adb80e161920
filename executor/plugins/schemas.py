"""The bodies and answers of the dashboard's JSON API (its OpenAPI is at /edge-mailbox/docs)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_mailbox.executor.fleet_view import (
    CostRow,
    JobView,
    QueueView,
    SnapshotView,
    WorkerView,
)
from edge_mailbox.mailbox.layout import MAX_QUEUE_NAME, MAX_WORKER_NAME

WorkerName = Annotated[str, Field(min_length=1, max_length=MAX_WORKER_NAME)]
QueueName = Annotated[str, Field(min_length=1, max_length=MAX_QUEUE_NAME, pattern=r"\S")]
MAX_BULK = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaintenanceBody(_Body):
    on: bool = Field(description="enter (true) or leave (false) maintenance")
    comment: str = Field(
        default="", max_length=900, description="why; stored with who and when (UTC)"
    )


class QueuesBody(_Body):
    mode: Literal["set", "add", "remove"] = Field(
        description="set: serve exactly these; add: also these; remove: no longer these"
    )
    queues: list[QueueName] = Field(min_length=1, max_length=256)


class ConcurrencyBody(_Body):
    concurrency: int = Field(ge=1, le=1024, description="how many slots the worker runs")


class _Bulk(_Body):
    workers: list[WorkerName] = Field(min_length=1, max_length=MAX_BULK)


class BulkMaintenance(_Bulk, MaintenanceBody):
    pass


class BulkQueues(_Bulk, QueuesBody):
    pass


class BulkConcurrency(_Bulk, ConcurrencyBody):
    pass


class BulkWorkers(_Bulk):
    pass


class CommandOut(BaseModel):
    """The command written: the worker's whole desired state, signed by the scheduler key."""

    worker: str
    seq: int
    maintenance: bool
    comment: str
    shutdown: bool
    queues: list[str]
    concurrency: int
    issued_by: str
    issued_at: float


class ActionResult(BaseModel):
    worker: str
    ok: bool
    command: CommandOut | None = None  # None for forget, and when refused
    error: str | None = None
    status: int = 200  # the HTTP status the single-worker route would have answered


class BulkResult(BaseModel):
    results: list[ActionResult]
    succeeded: int
    failed: int


class Me(BaseModel):
    user: str
    can_act: bool


class _Listing(BaseModel):
    generated_at: float
    problems: list[str]
    snapshots: list[SnapshotView]


class WorkersOut(_Listing):
    workers: list[WorkerView]
    total_entries: int


class QueuesOut(_Listing):
    queues: list[QueueView]


class JobsOut(_Listing):
    jobs: list[JobView]
    total_entries: int


class CostTotal(BaseModel):
    requests_per_hour: dict[str, float]
    usd_per_hour: float
    usd_per_month: float


class CostOut(_Listing):
    rows: list[CostRow]
    total: CostTotal
    usd_per_1000: dict[str, float] = Field(description="S3 Standard list prices used")
    other_usd_per_1000: float


class FleetOut(_Listing):
    """All the page shows, in one answer (one LIST of heartbeats for all four tables)."""

    workers: list[WorkerView]
    queues: list[QueueView]
    jobs: list[JobView]
    cost: CostOut
    requests: dict[str, int] = Field(description="bucket requests this answer cost")
