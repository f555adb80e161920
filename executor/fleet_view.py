"""The fleet as the dashboard and its JSON API show it: workers, queues, jobs and what the
bucket requests cost.

Drawn from one LIST of the heartbeat folder (a page per 1,000 workers: its LastModified is
each worker's liveness clock) and the reconcilers' signed fleet snapshots (one LIST of
``fleet/`` and one GET per scheduler), never a GET per worker: a page that an operator leaves
open must not cost what the fleet costs. A worker's details (state, queues, slots, metrics)
are those of the newest heartbeat a reconciler verified, so they lag by up to one
``fleet_snapshot_interval``; a worker listed but in no snapshot shows as ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from edge_mailbox.mailbox.accounting import PRICE_PER_1000
from edge_mailbox.mailbox.errors import NotFound, ProtocolError
from edge_mailbox.mailbox.models import FleetJob, FleetSnapshot, FleetWorker, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.storage import Entry
from edge_mailbox.signer import KeyRing, VerificationError

# A request kind that the price list does not name is priced as a GET (S3's "other").
OTHER_PRICE_PER_1000 = PRICE_PER_1000["GET"]
HOURS_PER_MONTH = 730.0
MIN_UPTIME = 60.0  # a rate over less than a minute says nothing
JOB_LIMIT = 2000

# The states the page shows: what the worker reports, read with its liveness clock.
RUNNING, IDLE, STARTING = "running", "idle", "starting"
MAINTENANCE_REQUESTED, MAINTENANCE = "maintenance requested", "maintenance"
DRAINING, SHUTTING_DOWN, OFFLINE, UNKNOWN = "draining", "shutting down", "offline", "unknown"
DISPLAY_STATES = (
    RUNNING,
    IDLE,
    STARTING,
    MAINTENANCE_REQUESTED,
    MAINTENANCE,
    DRAINING,
    SHUTTING_DOWN,
    OFFLINE,
    UNKNOWN,
)


@dataclass(frozen=True)
class TaskRef:
    """A task instance try, and its page in Airflow's UI (relative to the UI's base URL)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int | None
    path: str


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    task: TaskRef | None  # None while no snapshot names the job


@dataclass(frozen=True)
class WorkerView:
    name: str
    state: str  # one of DISPLAY_STATES
    reported_state: str | None  # the heartbeat's own, None if no snapshot has it
    queues: list[str]
    concurrency: int | None
    slots_used: int | None
    running: list[RunningJob]
    version: str
    last_heartbeat: float  # LastModified of its heartbeat object (the LIST's)
    heartbeat_age: float
    started_at: float | None
    metrics: dict[str, float]
    maintenance_comment: str
    maintenance_by: list[str]
    command_seq: int | None
    kid: str | None
    reported_by: str | None  # the scheduler whose snapshot the details come from


@dataclass(frozen=True)
class QueueView:
    queue: str
    pending: int
    oldest_age: float | None
    workers: list[str]  # not offline and serving it


@dataclass(frozen=True)
class JobView:
    job_id: str
    queue: str
    state: str
    task: TaskRef | None
    worker: str | None
    enqueued_at: float
    claimed_at: float | None
    finished_at: float | None
    claim_latency: float | None
    scheduler: str


@dataclass(frozen=True)
class CostRow:
    """Bucket requests per hour by kind, and their price at S3 Standard list prices."""

    side: str  # "worker", "scheduler" or "dashboard"
    name: str
    uptime: float | None
    requests_per_hour: dict[str, float]
    usd_per_hour: float
    usd_per_month: float


@dataclass(frozen=True)
class SnapshotView:
    scheduler: str
    written_at: float
    age: float
    fresh: bool


@dataclass
class Fleet:
    """Everything the page shows, read at ``generated_at``; filters apply to it afterwards."""

    generated_at: float
    workers: list[WorkerView]
    queues: list[QueueView]
    jobs: list[JobView]
    cost: list[CostRow]
    snapshots: list[SnapshotView]
    problems: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)  # what reading it cost


def usd(counts: dict[str, float]) -> float:
    """What ``counts`` requests (of any kind) cost at S3 Standard list prices."""
    return sum(PRICE_PER_1000.get(k, OTHER_PRICE_PER_1000) * n / 1000 for k, n in counts.items())


def cost_row(side: str, name: str, counts: dict[str, int], uptime: float | None) -> CostRow:
    if uptime is None or uptime < MIN_UPTIME:
        return CostRow(side, name, uptime, {}, 0.0, 0.0)
    rates = {kind: n * 3600.0 / uptime for kind, n in sorted(counts.items())}
    per_hour = usd(rates)
    return CostRow(side, name, uptime, rates, per_hour, per_hour * HOURS_PER_MONTH)


def task_ref(ti: dict[str, str | int]) -> TaskRef | None:
    """The task instance a FleetJob names, with its Airflow 3 UI path
    (``dags/{dag}/runs/{run}/tasks/{task}``, ``/mapped/{i}`` when mapped); None for a
    callback's job, which names none."""
    dag, run, task = ti.get("dag_id"), ti.get("run_id"), ti.get("task_id")
    if not (isinstance(dag, str) and isinstance(run, str) and isinstance(task, str)):
        return None
    raw_map, raw_try = ti.get("map_index", -1), ti.get("try_number")
    map_index = raw_map if isinstance(raw_map, int) else -1
    try_number = raw_try if isinstance(raw_try, int) else None
    path = f"dags/{quote(dag, safe='')}/runs/{quote(run, safe='')}/tasks/{quote(task, safe='')}"
    if map_index >= 0:
        path += f"/mapped/{map_index}"
    return TaskRef(dag, run, task, map_index, try_number, path)


def display_state(worker: FleetWorker | None, age: float, timeout: float) -> str:
    if age > timeout:
        return OFFLINE
    if worker is None:
        return UNKNOWN
    hb = worker.heartbeat
    if hb.state is WorkerState.STOPPING:
        return DRAINING if hb.running_jobs else SHUTTING_DOWN
    return {
        WorkerState.STARTING: STARTING,
        WorkerState.IDLE: IDLE,
        WorkerState.RUNNING: RUNNING,
        WorkerState.MAINTENANCE_PENDING: MAINTENANCE_REQUESTED,
        WorkerState.MAINTENANCE: MAINTENANCE,
        WorkerState.OFFLINE: OFFLINE,
    }[hb.state]


@dataclass(frozen=True)
class _Snap:
    snapshot: FleetSnapshot
    fresh: bool


@dataclass
class SnapshotCache:
    """Verified snapshots by key and ETag: a snapshot the LIST shows unchanged is not read
    (nor verified) again. Holds only the keys of the last LIST."""

    by_key: dict[str, tuple[str, FleetSnapshot]] = field(default_factory=dict)

    def read(self, mailbox: Mailbox, entry: Entry, keys: KeyRing) -> FleetSnapshot:
        known = self.by_key.get(entry.key)
        if known and entry.etag and known[0] == entry.etag:
            return known[1]
        snapshot = mailbox.read_fleet_snapshot(entry.key, keys)
        self.by_key[entry.key] = (entry.etag, snapshot)
        return snapshot

    def keep(self, listed: Iterable[str]) -> None:
        wanted = set(listed)
        self.by_key = {k: v for k, v in self.by_key.items() if k in wanted}


def read_fleet(
    mailbox: Mailbox,
    scheduler_keys: KeyRing,
    worker_timeout: float,
    stale_after: float,
    own_since: float | None = None,
    cache: SnapshotCache | None = None,
    now: float | None = None,
) -> Fleet:
    """The fleet from one LIST of heartbeats and the snapshots. A snapshot written more
    than ``stale_after`` seconds ago still gives workers' details (the LIST says whether
    they live) but not its jobs or queues: its scheduler may be gone. ``own_since``: when
    this process's store began counting, for its own row in the cost table."""
    now = time.time() if now is None else now
    before = mailbox.store.counter.snapshot()
    problems: list[str] = []
    entries = mailbox.list_heartbeats()
    snaps = _read_snapshots(
        mailbox, scheduler_keys, stale_after, problems, now, cache or SnapshotCache()
    )
    fresh = [s.snapshot for s in snaps if s.fresh]
    jobs = _jobs(fresh)
    by_id = {j.job_id: j for j in jobs}
    workers = _workers(mailbox, entries, [s.snapshot for s in snaps], by_id, worker_timeout, now)
    after = mailbox.store.counter.snapshot()
    cost = _cost(workers, snaps)
    if own_since is not None:
        cost.append(cost_row("dashboard", "this api-server", after, now - own_since))
    return Fleet(
        generated_at=now,
        workers=workers,
        queues=_queues(fresh, workers, now),
        jobs=jobs,
        cost=cost,
        snapshots=[
            SnapshotView(
                s.snapshot.owner, s.snapshot.written_at, now - s.snapshot.written_at, s.fresh
            )
            for s in snaps
        ],
        problems=problems,
        requests={k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)},
    )


def _read_snapshots(
    mailbox: Mailbox,
    keys: KeyRing,
    stale_after: float,
    problems: list[str],
    now: float,
    cache: SnapshotCache,
) -> list[_Snap]:
    snaps = []
    listed = mailbox.list_fleet_snapshots()
    cache.keep(e.key for e in listed)
    for entry in listed:
        try:
            snapshot = cache.read(mailbox, entry, keys)
        except NotFound:
            continue  # removed between the LIST and the GET
        except (VerificationError, ProtocolError, ValueError) as exc:
            problems.append(f"fleet snapshot {entry.key} not believed: {exc}")
            continue
        snaps.append(_Snap(snapshot, now - snapshot.written_at <= stale_after))
    snaps.sort(key=lambda s: s.snapshot.owner)
    return snaps


def _workers(
    mailbox: Mailbox,
    entries: Iterable[Entry],
    snapshots: list[FleetSnapshot],
    jobs: dict[str, JobView],
    timeout: float,
    now: float,
) -> list[WorkerView]:
    layout = mailbox.layout
    newest: dict[str, tuple[FleetWorker, str]] = {}  # heartbeat key -> newest verified beat
    for snapshot in snapshots:
        for fw in snapshot.workers:
            key = layout.heartbeat(fw.heartbeat.worker)
            known = newest.get(key)
            if known is None or fw.heartbeat.sent_at > known[0].heartbeat.sent_at:
                newest[key] = (fw, snapshot.owner)
    rows = []
    for entry in entries:
        try:
            name = layout.parse_heartbeat(entry.key) or layout.heartbeat_segment(entry.key)
        except ValueError:
            continue  # not a heartbeat key: nothing of a worker's
        listed = entry.last_modified.timestamp()
        age = max(0.0, now - listed)
        fw, owner = newest.get(entry.key, (None, None))
        rows.append(_worker_row(name, fw, owner, listed, age, timeout, jobs))
    rows.sort(key=lambda w: w.name)
    return rows


def _worker_row(
    name: str,
    fw: FleetWorker | None,
    owner: str | None,
    listed: float,
    age: float,
    timeout: float,
    jobs: dict[str, JobView],
) -> WorkerView:
    state = display_state(fw, age, timeout)
    if fw is None:
        return WorkerView(
            name,
            state,
            None,
            [],
            None,
            None,
            [],
            "",
            listed,
            age,
            None,
            {},
            "",
            [],
            None,
            None,
            None,
        )
    hb = fw.heartbeat
    running = [RunningJob(j, jobs[j].task if j in jobs else None) for j in hb.running_jobs]
    return WorkerView(
        name=hb.worker,
        state=state,
        reported_state=hb.state.value,
        queues=list(hb.queues),
        concurrency=hb.concurrency,
        slots_used=max(0, hb.concurrency - hb.free_slots),
        running=running,
        version=hb.version,
        last_heartbeat=listed,
        heartbeat_age=age,
        started_at=hb.started_at,
        metrics=dict(hb.metrics),
        maintenance_comment=hb.maintenance_comment,
        maintenance_by=[m.value for m in hb.maintenance_by],
        command_seq=hb.command_seq,
        kid=fw.kid,
        reported_by=owner,
    )


def _jobs(snapshots: list[FleetSnapshot]) -> list[JobView]:
    """Every fresh snapshot's jobs, the newest snapshot's row where two name a job."""
    chosen: dict[str, tuple[FleetJob, str, float]] = {}
    for snapshot in snapshots:
        for job in snapshot.jobs:
            known = chosen.get(job.job_id)
            if known is None or snapshot.written_at > known[2]:
                chosen[job.job_id] = (job, snapshot.owner, snapshot.written_at)
    rows = [
        JobView(
            job_id=job.job_id,
            queue=job.queue,
            state=job.phase,
            task=task_ref(job.ti),
            worker=job.worker,
            enqueued_at=job.enqueued_at,
            claimed_at=job.claimed_at,
            finished_at=job.finished_at,
            claim_latency=(
                max(0.0, job.claimed_at - job.enqueued_at) if job.claimed_at is not None else None
            ),
            scheduler=owner,
        )
        for job, owner, _ in chosen.values()
    ]
    rows.sort(key=lambda j: (j.enqueued_at, j.job_id), reverse=True)
    return rows[:JOB_LIMIT]


def _queues(
    snapshots: list[FleetSnapshot], workers: list[WorkerView], now: float
) -> list[QueueView]:
    pending: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for snapshot in snapshots:
        for q in snapshot.queues:
            pending[q.queue] = pending.get(q.queue, 0) + q.pending
            if q.oldest_enqueued_at is not None:
                oldest[q.queue] = min(
                    oldest.get(q.queue, q.oldest_enqueued_at), q.oldest_enqueued_at
                )
    serving: dict[str, list[str]] = {}
    for w in workers:
        if w.state not in (OFFLINE, UNKNOWN):
            for q in w.queues:
                serving.setdefault(q, []).append(w.name)
    names = sorted(set(pending) | set(serving))
    return [
        QueueView(
            queue=name,
            pending=pending.get(name, 0),
            oldest_age=max(0.0, now - oldest[name]) if name in oldest else None,
            workers=serving.get(name, []),
        )
        for name in names
    ]


def _cost(workers: list[WorkerView], snaps: list[_Snap]) -> list[CostRow]:
    """Each worker's requests since it started (its heartbeat counts them) and each
    scheduler's (its snapshot does); none for an offline worker or a stale snapshot."""
    beats = {}
    for snap in snaps:
        for fw in snap.snapshot.workers:
            hb = fw.heartbeat
            if hb.worker not in beats or hb.sent_at > beats[hb.worker].sent_at:
                beats[hb.worker] = hb
    rows = []
    for w in workers:
        hb = beats.get(w.name)
        if hb is None or w.state == OFFLINE:
            continue
        uptime = hb.sent_at - hb.started_at if hb.started_at else None
        rows.append(cost_row("worker", w.name, hb.requests, uptime))
    for snap in snaps:
        if snap.fresh:
            s = snap.snapshot
            rows.append(cost_row("scheduler", s.owner, s.requests, s.written_at - s.started_at))
    return rows


def filter_workers(
    workers: list[WorkerView],
    search: str | None = None,
    queue: str | None = None,
    states: Iterable[str] = (),
) -> list[WorkerView]:
    """Name search (case-insensitive substring), a queue served, any of ``states``."""
    wanted = set(states)
    needle = (search or "").casefold()
    return [
        w
        for w in workers
        if needle in w.name.casefold()
        and (not queue or queue in w.queues)
        and (not wanted or w.state in wanted)
    ]


def filter_jobs(
    jobs: list[JobView],
    search: str | None = None,
    queue: str | None = None,
    worker: str | None = None,
    states: Iterable[str] = (),
    limit: int = JOB_LIMIT,
) -> list[JobView]:
    """A search over the dag, run and task ids and the job id; a queue, a worker, states."""
    wanted = set(states)
    needle = (search or "").casefold()

    def matches(j: JobView) -> bool:
        text = j.job_id if j.task is None else f"{j.task.dag_id} {j.task.run_id} {j.task.task_id}"
        return (
            (not needle or needle in f"{text} {j.job_id}".casefold())
            and (not queue or j.queue == queue)
            and (not worker or j.worker == worker)
            and (not wanted or j.state in wanted)
        )

    return [j for j in jobs if matches(j)][:limit]
