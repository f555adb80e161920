"""The worker process: find jobs in its queues, verify, claim, run, report.

Single-threaded by design: it polls the queues' change markers with conditional GETs (a LIST
only when a marker changed or slots freed up while jobs waited), verifies a manifest's
signature and binding before anything else, claims it with a conditional create, and starts
one process per job. When a job's process exits it uploads the task's log and writes the
signed result. A storage error never crashes it: it backs off and tries again.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_mailbox import __version__
from edge_mailbox.mailbox.errors import AlreadyExists, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import TaskCoordinates
from edge_mailbox.mailbox.models import Claim, JobManifest, JobResult, JobState
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import SealKey, VerificationError, seal_bytes
from edge_mailbox.worker.job_process import ForkedJob, fork_job, make_spec, preload
from edge_mailbox.worker.settings import WorkerSettings

log = logging.getLogger("edge_mailbox.worker")


@dataclass
class RunningJob:
    manifest: JobManifest
    process: ForkedJob
    started_at: float
    stats_path: Path


@dataclass
class PendingReport:
    """A finished job whose log and result are not in the bucket yet (it was unreachable)."""

    job: RunningJob
    exit_code: int
    finished_at: float


@dataclass
class Worker:
    settings: WorkerSettings
    base_log_folder: Path
    bundles: set[str] | None = None  # DAG bundles configured here; None: do not check
    mailbox: Mailbox = field(init=False)
    running: dict[str, RunningJob] = field(default_factory=dict)
    pending: list[PendingReport] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    marker_etags: dict[str, str | None] = field(default_factory=dict)
    rescan: set[str] = field(default_factory=set)
    stopping: bool = False
    interval: float = 0.1

    def __post_init__(self) -> None:
        self.mailbox = Mailbox(ObjectStore(self.settings.store))
        self.rescan = set(self.settings.queues)  # list every queue once at start
        # Per-job relay statistics (round trips, requests), kept for benchmarks.
        stats = os.environ.get("EDGE_MAILBOX_WORKER_STATS_DIR")
        self.stats_dir = (
            Path(stats) if stats else Path(tempfile.mkdtemp(prefix="edge-mailbox-worker-"))
        )

    @property
    def free_slots(self) -> int:
        used = sum(job.manifest.pool_slots for job in self.running.values())
        return self.settings.concurrency - used

    # -- main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        preload()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "worker %s: queues %s, concurrency %d, bucket %s/%s",
            self.settings.name,
            ",".join(self.settings.queues),
            self.settings.concurrency,
            self.settings.store.bucket,
            self.settings.store.prefix,
        )
        while not (self.stopping and not self.running and not self.pending):
            activity = self._reap()
            if not self.stopping and self.free_slots > 0:
                try:
                    activity |= self._poll_queues()
                except StoreError as exc:
                    log.warning("bucket unavailable (%s); backing off", exc)
                    self.interval = min(max(self.interval, 1.0) * 2, 30.0)
            self._report_pending()
            if activity:
                self.interval = self.settings.poll_min
            else:
                self.interval = min(self.interval * 1.25, self.settings.poll_max)
            time.sleep(min(self.interval, 0.2) if self.running else self.interval)
        log.info("worker %s stopped", self.settings.name)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info(
            "signal %d: finishing %d running jobs, taking no new ones", signum, len(self.running)
        )
        self.stopping = True

    # -- finding and claiming ----------------------------------------------------------------

    def _poll_queues(self) -> bool:
        claimed = False
        for queue in self.settings.queues:
            changed, etag = self.mailbox.marker_changed(queue, self.marker_etags.get(queue))
            self.marker_etags[queue] = etag
            if changed or queue in self.rescan:
                self.rescan.discard(queue)
                claimed |= self._scan(queue)
            if self.free_slots <= 0:
                break
        return claimed

    def _scan(self, queue: str) -> bool:
        """One LIST page of the queue, highest priority then oldest first; claim what fits."""
        page = self.mailbox.list_queue(queue)
        claimed = False
        for entry in page.entries:
            try:
                job_id = self.mailbox.layout.parse_manifest(entry.key).job_id
            except ValueError:
                continue
            if job_id in self.seen:
                continue
            try:
                raw, signed = self.mailbox.read_manifest(
                    entry.key, queue, self.settings.scheduler_keys
                )
            except (VerificationError, ProtocolError) as exc:
                log.warning("refusing manifest %s: %s", entry.key, exc)
                self.seen.add(job_id)
                continue
            manifest = signed.model
            bundle = str(manifest.bundle_info.get("name"))
            if self.bundles is not None and bundle not in self.bundles:
                log.warning(
                    "not claiming job %s: it needs DAG bundle %r, and this worker has only %s "
                    "([dag_processor] dag_bundle_config_list must match the scheduler's)",
                    job_id,
                    bundle,
                    ", ".join(sorted(self.bundles)) or "none",
                )
                self.seen.add(job_id)
                continue
            if manifest.pool_slots > self.settings.concurrency:
                log.warning(
                    "job %s needs %d slots; this worker has %d",
                    job_id,
                    manifest.pool_slots,
                    self.settings.concurrency,
                )
                self.seen.add(job_id)
                continue
            if manifest.pool_slots > self.free_slots:
                self.rescan.add(queue)  # look again when slots free up
                break
            if self._claim(queue, raw, manifest):
                claimed = True
            self.seen.add(job_id)
            if self.free_slots <= 0:
                if page.entries[-1].key != entry.key:
                    self.rescan.add(queue)
                break
        else:
            if page.truncated:
                self.rescan.add(queue)
        return claimed

    def _claim(self, queue: str, raw: bytes, manifest: JobManifest) -> bool:
        seal_key = SealKey.generate()
        claim = Claim(
            job_id=manifest.job_id,
            queue=queue,
            worker=self.settings.name,
            seal_key=seal_key.public,
            claimed_at=time.time(),
            nonce=nonce(),
            worker_version=__version__,
            manifest=raw.decode("ascii"),
        )
        try:
            self.mailbox.create_claim(claim, self.settings.key)
        except AlreadyExists:
            return False
        log.info("claimed job %s (%s)", manifest.job_id, _describe(manifest))
        self.mailbox.notify(self.mailbox.layout.inbox_claim(manifest.job_id))
        self._start(queue, raw, manifest, seal_key)
        return True

    def _start(self, queue: str, raw: bytes, manifest: JobManifest, seal_key: SealKey) -> None:
        stats_path = self.stats_dir / f"{manifest.job_id}.json"
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
        )
        process = fork_job(spec)
        self.running[manifest.job_id] = RunningJob(manifest, process, time.time(), stats_path)

    # -- finishing ---------------------------------------------------------------------------

    def _reap(self) -> bool:
        finished = False
        for job_id, job in list(self.running.items()):
            code = job.process.poll()
            if code is None:
                continue
            del self.running[job_id]
            log.info("job %s exited with %d", job_id, code)
            self.pending.append(PendingReport(job, code, time.time()))
            finished = True
        return finished

    def _report_pending(self) -> None:
        for report in list(self.pending):
            try:
                self._report(report)
            except StoreError as exc:
                log.warning(
                    "result of %s waits: bucket unavailable (%s)", report.job.manifest.job_id, exc
                )
                return
            self.pending.remove(report)

    def _report(self, report: PendingReport) -> None:
        manifest = report.job.manifest
        chunks = self._upload_log(manifest)
        result = JobResult(
            job_id=manifest.job_id,
            worker=self.settings.name,
            state=JobState.SUCCESS if report.exit_code == 0 else JobState.FAILED,
            exit_code=report.exit_code,
            started_at=report.job.started_at,
            finished_at=report.finished_at,
            message="" if report.exit_code == 0 else f"task process exited with {report.exit_code}",
            log_chunks=chunks,
        )
        self.mailbox.put_result(result, self.settings.key)
        self.mailbox.notify(self.mailbox.layout.inbox_result(manifest.job_id))

    def _upload_log(self, manifest: JobManifest) -> int:
        if not manifest.log_path:
            return 0
        path = self.base_log_folder / manifest.log_path
        try:
            data = path.read_bytes()
        except OSError:
            return 0
        ti = manifest.ti
        coordinates = TaskCoordinates(
            dag_id=ti["dag_id"],
            run_id=ti["run_id"],
            task_id=ti["task_id"],
            map_index=int(ti.get("map_index", -1)),
            try_number=int(ti["try_number"]),
        )
        # Logs can hold anything a task prints (Airflow logs return values, for one): they
        # are sealed like relayed data, to the scheduler side's key for this job.
        key = self.mailbox.layout.log_chunk(coordinates, manifest.job_id, 0)
        sealed = seal_bytes(
            data, manifest.seal_key, context=self.mailbox.log_context(manifest.job_id, 0)
        )
        self.mailbox.store.put(key, sealed, content_type="application/octet-stream")
        return 1


def _describe(manifest: JobManifest) -> str:
    ti = manifest.ti
    return (
        f"{ti.get('dag_id')}.{ti.get('task_id')} run {ti.get('run_id')} try {ti.get('try_number')}"
    )


def check_airflow_config() -> tuple[Path, set[str]]:
    """The worker's Airflow config must name MailboxExecutor: the task runner checks a task's
    ``executor=`` against it when it parses the DAG. Returns the base log folder and the
    names of the DAG bundles configured here."""
    from airflow.configuration import conf

    executors = conf.get("core", "executor", fallback="") or ""
    if "MailboxExecutor" not in executors:
        raise SystemExit(
            "edge-mailbox-worker: [core] executor in this worker's airflow.cfg "
            f"({os.environ.get('AIRFLOW_HOME', '~/airflow')}) is {executors!r}; it must list "
            "edge_mailbox.executor.MailboxExecutor, as the scheduler's does "
            "(AIRFLOW__CORE__EXECUTOR=edge_mailbox.executor.MailboxExecutor)"
        )
    bundles = conf.getjson("dag_processor", "dag_bundle_config_list", fallback=None) or []
    names = {b.get("name") for b in bundles if isinstance(b, dict) and b.get("name")}
    return Path(conf.get("logging", "base_log_folder")).expanduser(), names
