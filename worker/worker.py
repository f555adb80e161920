"""The worker process: find jobs in its queues, run them, report them. Read it top to bottom.

Single-threaded by design: it imports Airflow's Task SDK once and runs jobs in runner
processes forked from it (runners.py: one per running job, reused for the next ones). Each
turn of its loop:

- reap the jobs that ended (the loop sleeps on their runners' pipes and wakes at once) and
  deliver their logs and results (outbox.py);
- ship each running job's new log lines (logship.py);
- when due, poll the queues and claim what fits (finder.py): fast for ``poll_grace`` after
  activity, backing off to ``poll_max`` without it;
- heartbeat every ``heartbeat_interval`` and when its state changes in a way that matters
  centrally;
- obey its orders (orders.py): SIGTERM/SIGINT and its run folder's control file
  (maintenance) from the host, its command object from the scheduler side (read when the
  all-queues marker it polls anyway rang); drain running jobs, and kill them after
  ``drain_timeout``.

A storage error never crashes it: what could not be written waits and is retried.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_mailbox import __version__
from edge_mailbox.mailbox.config import RetryPolicy
from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.models import JobManifest, MaintenanceSource, WorkerCommand, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.storage import Store
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import SealKey
from edge_mailbox.worker.control import RunDir
from edge_mailbox.worker.finder import Finder
from edge_mailbox.worker.heartbeat import build_heartbeat
from edge_mailbox.worker.job_process import make_spec, preload, run
from edge_mailbox.worker.jobstats import JobStats
from edge_mailbox.worker.logship import LogShipper, cleanup_local_logs
from edge_mailbox.worker.orders import CommandWatch, Orders, Phase
from edge_mailbox.worker.outbox import Outbox, RunningJob
from edge_mailbox.worker.runners import RunnerPool
from edge_mailbox.worker.settings import WorkerSettings

log = logging.getLogger("edge_mailbox.worker")
KILL_GRACE_SECONDS = 10.0
SEEN_JOBS = 10_000


@dataclass
class Worker:
    settings: WorkerSettings
    base_log_folder: Path
    bundles: set[str] | None = None  # DAG bundles configured here; None: do not check
    run_dir: RunDir | None = None
    store: Store | None = None  # the bucket; by default the S3 client of settings.store
    mailbox: Mailbox = field(init=False)
    running: dict[str, RunningJob] = field(default_factory=dict)
    orders: Orders = field(init=False)
    refusal: str = ""  # why this worker takes no new jobs (version mismatch)
    interval: float = 0.1  # between queue polls: poll_min after activity, up to poll_max
    next_poll: float = 0.0
    last_activity: float = 0.0
    poll_grace: float = 2.0  # queue polls stay at poll_min this long after a claim or job end
    last_heartbeat: float = 0.0
    last_state: WorkerState | None = None  # in the last heartbeat
    status_state: WorkerState | None = None  # in the local status file

    def __post_init__(self) -> None:
        if self.store is None:
            store = ObjectStore(self.settings.store)
            # Log chunks go through a store that gives up quickly: a tick during an outage
            # must not hold the loop; the shipper keeps the bytes and backs off by itself.
            # (Same boto client: retries are the store's, and each client costs memory and
            # connections.)
            quick = RetryPolicy(attempts=2, initial_backoff=0.1, max_backoff=0.5, deadline=5)
            logs: Store = ObjectStore(
                self.settings.store.model_copy(update={"retry": quick}), client=store.client
            )
        else:  # a store given (the in-memory one, in unit tests): it does not retry anyway
            store = logs = self.store
        self.mailbox = Mailbox(store)
        self.log_mailbox = Mailbox(logs)
        self.orders = Orders(self.settings.queues, self.settings.concurrency)
        applied = self.run_dir.command_seq() if self.run_dir else 0
        self.commands = CommandWatch(
            self.mailbox, self.settings.name, self.settings.scheduler_keys, applied
        )
        self.last_cleanup = 0.0
        self.finder = Finder(self.mailbox, self.settings, self.bundles, self)
        self.stats = JobStats()
        self.outbox = Outbox(self.mailbox, self.settings.name, self.settings.key)
        self.started = time.monotonic()
        self.runners = RunnerPool(run)

    @property
    def queues(self) -> tuple[str, ...]:
        return self.orders.queues

    @property
    def concurrency(self) -> int:
        return self.orders.concurrency

    @property
    def free_slots(self) -> int:
        used = sum(job.manifest.pool_slots for job in self.running.values())
        return self.orders.concurrency - used

    @property
    def stopping(self) -> bool:
        return self.orders.phase is Phase.STOPPING

    @property
    def accepting(self) -> bool:
        return not (self.stopping or self.orders.in_maintenance or self.refusal)

    @property
    def state(self) -> WorkerState:
        if self.stopping:
            return WorkerState.STOPPING
        if self.orders.in_maintenance or self.refusal:
            return WorkerState.MAINTENANCE_PENDING if self.running else WorkerState.MAINTENANCE
        return WorkerState.RUNNING if self.running else WorkerState.IDLE

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        preload(self.settings.store)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.run_dir:
            self.run_dir.claim_pid()
        log.info(
            "worker %s: queues %s, concurrency %d, bucket %s/%s",
            self.settings.name,
            ",".join(self.settings.queues),
            self.settings.concurrency,
            self.settings.store.bucket,
            self.settings.store.prefix,
        )
        self._heartbeat(WorkerState.STARTING)
        try:
            while not (self.stopping and not self.running and not self.outbox):
                self._loop_once()
        finally:
            self._heartbeat(WorkerState.OFFLINE)
            self.runners.close()
            totals = {
                "requests": self.mailbox.store.counter.snapshot(),
                "seconds": time.monotonic() - self.started,
            }
            self.stats.close(self.settings.name, totals)
            if self.run_dir:
                self.run_dir.release()
        log.info("worker %s stopped", self.settings.name)
        return 0

    def _loop_once(self) -> None:
        """One turn: reap and report jobs (the loop wakes as soon as one ends), and poll the
        queues when due. Polling is fast for ``poll_grace`` seconds after activity (a claim,
        a finished job: in a chain of tasks the next one comes a second later) and backs off
        to ``poll_max`` without it, also while long tasks run: a busy worker with free slots
        costs as little as an idle one once nothing new comes."""
        self._read_control()
        activity = self._reap()
        now = time.monotonic()
        for job in self.running.values():
            if job.shipper:
                job.shipper.tick(now)  # never raises: an outage only delays the chunks
        self._cleanup_logs_if_due()
        self._enforce_drain_timeout()
        if activity or now >= self.next_poll:
            try:
                activity |= self._poll()
                if activity:
                    self.last_activity = now
                fresh = now - self.last_activity < self.poll_grace
                self.interval = (
                    self.settings.poll_min
                    if fresh
                    else min(self.interval * 1.25, self.settings.poll_max)
                )
            except StoreError as exc:
                log.warning("bucket unavailable (%s); backing off", exc)
                self.interval = min(max(self.interval, 1.0) * 2, 30.0)
            taking = self.accepting and self.free_slots > 0
            # Taking no jobs, it polls only for its command: at the idle pace.
            pace = self.interval if taking else max(self.interval, self.settings.poll_max)
            self.next_poll = time.monotonic() + pace
        self.outbox.deliver()
        self.runners.retire_idle()
        self._heartbeat_if_due()
        pause = max(0.0, self.next_poll - time.monotonic())
        if not (self.accepting and self.free_slots > 0):  # still a turn a second: drain, logs
            pause = min(pause, 1.0)
        if self.running:  # log chunks and the drain timeout want a turn each second
            self.runners.wait([job.process for job in self.running.values()], min(pause, 1.0))
        else:
            time.sleep(pause)

    def _poll(self) -> bool:
        """The all-queues marker (one conditional GET, whatever the worker is doing); when it
        rang, the worker's command, and the queues if it takes jobs. True if it claimed one."""
        rang = self.finder.doorbell()
        if rang or not self.commands.started:
            news = self.commands.check()
            if news is not None:
                self._obey(*news)
        if self.accepting and self.free_slots > 0:
            return self.finder.poll()
        return False

    def _obey(self, command: WorkerCommand, again: bool) -> None:
        before = (self.orders.queues, self.orders.concurrency)
        self.orders.apply(command, again=again)
        if (self.orders.queues, self.orders.concurrency) != before:
            self.finder.follow()
        if self.run_dir:
            self.run_dir.save_command_seq(command.seq)
        self.last_heartbeat = 0.0  # report it at once: ``--wait`` and the dashboard wait

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping:  # a second signal: do not wait for the drain timeout
            log.warning("signal %d again: killing %d running jobs", signum, len(self.running))
            self.orders.stop_requested_at = time.monotonic() - self.settings.drain_timeout
            return
        self.orders.stop(f"signal {signum}, {len(self.running)} jobs running")

    def _read_control(self) -> None:
        if not self.run_dir:
            return
        control = self.run_dir.control_changed()
        if control is not None:
            on, comment = bool(control.get("maintenance")), str(control.get("comment", ""))
            self.orders.set_maintenance(MaintenanceSource.LOCAL, on, comment)

    def _enforce_drain_timeout(self) -> None:
        if self.orders.stop_requested_at is None:
            return
        overdue = time.monotonic() - self.orders.stop_requested_at >= self.settings.drain_timeout
        for job in self.running.values():
            if overdue and job.term_sent_at is None:
                log.warning("drain timeout: stopping job %s", job.manifest.job_id)
                job.killed = "killed: the worker was stopped and its drain timeout passed"
                job.term_sent_at = time.monotonic()
                job.process.kill(signal.SIGTERM)
            elif job.term_sent_at and time.monotonic() - job.term_sent_at > KILL_GRACE_SECONDS:
                job.process.kill(signal.SIGKILL)

    # -- status and heartbeats ---------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return {
            "worker": self.settings.name,
            "pid": os.getpid(),
            "state": self.state.value,
            "queues": list(self.orders.queues),
            "concurrency": self.orders.concurrency,
            "free_slots": self.free_slots,
            "running_jobs": [
                {
                    "job_id": job_id,
                    "task": job.manifest.describe(),
                    "pool_slots": job.manifest.pool_slots,
                    "started_at": job.started_at,
                }
                for job_id, job in self.running.items()
            ],
            "maintenance_comment": self.orders.comment or self.refusal,
            "maintenance_by": [source.value for source in self.orders.maintenance_by],
            "command_seq": self.orders.seq,
            "version": __version__,
            "last_heartbeat": self.last_heartbeat,
            "requests": self.mailbox.store.counter.snapshot(),
            "bucket": f"{self.settings.store.bucket}/{self.settings.store.prefix}",
        }

    def _heartbeat_if_due(self) -> None:
        """A heartbeat every ``heartbeat_interval``, and at once when the state changes in a
        way that matters centrally (maintenance, stopping, offline). Between idle and running
        it waits for the next regular one, or a chain of tasks would cost two PUTs per task;
        the local status file shows every change at once."""
        state = self.state
        due = time.time() - self.last_heartbeat >= self.settings.heartbeat_interval
        busy_or_not = {state, self.last_state} <= {WorkerState.IDLE, WorkerState.RUNNING}
        if due or (state != self.last_state and not busy_or_not):
            self._heartbeat(state)
        elif self.run_dir and state != self.status_state:
            self.status_state = state
            self.run_dir.write_status(self.status())

    def _heartbeat(self, state: WorkerState) -> None:
        self.last_state = state
        heartbeat = build_heartbeat(
            self.settings.name,
            state,
            self.orders,
            self.free_slots,
            list(self.running),
            self.refusal,
            self.base_log_folder,
            self.mailbox.store.counter.snapshot(),
        )
        try:
            ttl = max(self.settings.heartbeat_interval * 10, 300.0)
            self.mailbox.put_heartbeat(heartbeat, self.settings.key, ttl)
            self.last_heartbeat = heartbeat.sent_at
        except StoreError as exc:
            log.warning("heartbeat waits: bucket unavailable (%s)", exc)
        self.status_state = state
        if self.run_dir:
            self.run_dir.write_status(self.status())

    # -- starting and finishing --------------------------------------------------------------

    def refuse(self, reason: str) -> None:
        """Take no new jobs (the scheduler side runs another major version); finish the rest."""
        self.refusal = reason

    def start(self, queue: str, raw: bytes, manifest: JobManifest, seal_key: SealKey) -> None:
        """Run a claimed job in a runner, its log shipped as it grows."""
        stats_path = self.stats.path_for(manifest.job_id)
        spec = make_spec(
            self.settings.store,
            raw.decode("ascii"),
            queue,
            manifest.job_id,
            self.settings.key,
            seal_key,
            self.settings.scheduler_keys,
            self.settings.relay_deadline,
            stats_path,
            relay_wait=self.stats.typical_relay_wait(),
            fresh_interpreter=self.settings.fresh_interpreter,
        )
        shipper = None
        if manifest.log_path and manifest.ti:  # before the fork: skips what the file held
            log_file = self.base_log_folder / manifest.log_path
            shipper = LogShipper(
                self.log_mailbox, manifest, log_file, self.settings.key, skip_existing=True
            )
        process = self.runners.start(spec)
        self.running[manifest.job_id] = RunningJob(
            manifest, process, time.time(), stats_path, shipper=shipper
        )

    # -- reaping and reporting -------------------------------------------------------------

    def _reap(self) -> bool:
        finished = False
        for job_id, job in list(self.running.items()):
            code = job.process.poll()
            if code is None:
                continue
            del self.running[job_id]
            log.info("job %s exited with %d", job_id, code)
            self.stats.absorb(job.stats_path)
            self.outbox.add(job, code, time.time())
            finished = True
        return finished

    def _cleanup_logs_if_due(self) -> None:
        """Rotate the local copies of task logs, once an hour, sparing unreported jobs."""
        if time.monotonic() - self.last_cleanup < 3600:
            return
        self.last_cleanup = time.monotonic()
        keep = {
            self.base_log_folder / job.manifest.log_path
            for job in [*self.running.values(), *self.outbox.jobs()]
            if job.manifest.log_path
        }
        done = cleanup_local_logs(
            self.base_log_folder,
            self.settings.log_retention_days,
            self.settings.log_max_bytes,
            keep=keep,
        )
        if done.files:
            log.info("removed %d old local task logs (%d bytes)", done.files, done.bytes)
