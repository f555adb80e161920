"""MailboxExecutor: Airflow's side of edge-mailbox.

``[core] executor = edge_mailbox.executor.MailboxExecutor`` (alone or beside others; tasks
then choose it with ``executor="MailboxExecutor"``). Each ExecuteTask workload becomes a
signed manifest in its queue's folder of the bucket; the token stays here. The reconciler
thread turns claims and results into task states and serves the relay.

The api-server also instantiates executors (to read logs), so nothing but attribute set-up
happens in ``__init__``: configuration checks, threads and connections belong to ``start()``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.executors.base_executor import BaseExecutor, get_execution_api_server_url
from airflow.utils.state import TaskInstanceState

from edge_mailbox import __version__
from edge_mailbox.executor import metrics
from edge_mailbox.executor.log_airflow import read_running_log
from edge_mailbox.executor.reconciler import Event, Job, Reconciler
from edge_mailbox.executor.settings import ExecutorSettings, load_settings
from edge_mailbox.mailbox.credentials import credentials_required
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import ConnectionTest, JobManifest
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.relaycodec import seal_callback_data
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import SealKey

if TYPE_CHECKING:
    from airflow.executors.workloads import ExecuteCallback, ExecuteTask, TestConnection
    from airflow.models.connection_test import ConnectionTestKey
    from airflow.models.taskinstance import TaskInstance

log = logging.getLogger(__name__)


class MailboxExecutor(BaseExecutor):
    """Runs tasks on edge workers that reach only an S3-compatible bucket."""

    supports_ad_hoc_ti_run = True
    supports_callbacks = True  # deadline and other executor callbacks run on edge workers
    supports_connection_test = True  # "Test connection" runs on an edge worker of its queue
    is_local = False
    is_production = True
    serve_logs = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: ExecutorSettings | None = None
        self.mailbox: Mailbox | None = None
        self.reconciler: Reconciler | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        # Final states reported to Airflow, (job id, state), recent ones: with several
        # schedulers, each job's appears in one scheduler's list only.
        self.reported: deque[tuple[str, str]] = deque(maxlen=100_000)
        self._writer: ThreadPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        from airflow.configuration import conf

        self.settings = load_settings(conf, get_execution_api_server_url(self.conf))
        with credentials_required(self.settings.store.bucket):  # what is missing, not botocore's
            store = ObjectStore(self.settings.store)
        self.mailbox = Mailbox(store)
        self._writer = ThreadPoolExecutor(8, thread_name_prefix="mailbox-enqueue")
        self.reconciler = Reconciler(
            self.mailbox, self.settings, self._mint_token, self._events, _try_is_current
        )
        self.reconciler.start()
        log.info(
            "MailboxExecutor started: bucket %s, prefix %s, %d trusted worker keys",
            self.settings.store.bucket,
            self.settings.store.prefix,
            len(self.settings.worker_keys),
        )

    def end(self) -> None:
        if self.reconciler:
            self.sync()
            self.reconciler.stop()
        if self._writer:
            self._writer.shutdown(wait=True)
        if self.mailbox:
            counts = self.mailbox.store.counter.snapshot()
            log.info("MailboxExecutor: bucket requests made: %s", counts)
            stats_dir = os.environ.get("EDGE_MAILBOX_STATS_DIR")
            if stats_dir:  # for benchmarks: what the scheduler side cost in requests
                Path(stats_dir, f"executor-{os.getpid()}.json").write_text(
                    json.dumps(
                        {
                            "requests": counts,
                            "relayed": sorted(self.reconciler.relayed) if self.reconciler else [],
                            "reported": list(self.reported),
                            "running_at_end": len(self.running),
                        }
                    )
                )

    def terminate(self) -> None:
        self.end()

    def _mint_token(self, ti_id: str, scope: str) -> str:
        if scope == "workload":
            from airflow.configuration import conf

            valid_for = conf.getfloat("scheduler", "task_queued_timeout")
            return self.jwt_generator.generate(
                extras={"sub": ti_id, "scope": "workload"}, valid_for=valid_for
            )
        return self.jwt_generator.generate(extras={"sub": ti_id, "scope": "execution"})

    # -- enqueue -----------------------------------------------------------------------------

    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        from airflow.executors.workloads import ExecuteCallback, ExecuteTask, TestConnection

        assert self.mailbox and self.settings and self.reconciler and self._writer
        kinds = (ExecuteTask, ExecuteCallback, TestConnection)
        runnable = [w for w in workloads if isinstance(w, kinds)]
        for other in workloads:
            if not isinstance(other, kinds):
                raise NotImplementedError(f"MailboxExecutor cannot run {type(other).__name__}")
        futures = [(w, self._writer.submit(self._enqueue, w)) for w in runnable]
        queues: set[str] = set()
        for workload, future in futures:
            key = workload.key
            self.queued_tasks.pop(key, None)
            self.queued_callbacks.pop(key, None)
            self.queued_connection_tests.pop(key, None)
            try:
                job = future.result()
            except Exception as exc:
                log.error("MailboxExecutor: could not enqueue %s: %s", key, exc)
                self.fail(key, f"edge-mailbox: could not write the job to the bucket: {exc}")
                continue
            # A task instance queued again with the same key (a deferred task resuming, a
            # revoked one requeued): what its earlier job reports from now on is stale, and
            # would make Airflow fail the new one as "finished while queued".
            for earlier in self.reconciler.jobs.live_jobs_of(key):
                self.reconciler.supersede(earlier.job_id)
            self.running.add(key)
            if isinstance(workload, ExecuteTask):
                # The job id becomes the task instance's external_executor_id in the database:
                # that is how a restarted scheduler adopts it (try_adopt_task_instances).
                self.event_buffer[key] = (TaskInstanceState.QUEUED, job.job_id)
            self.reconciler.track(job)
            queues.add(job.queue)
        for name in queues:
            try:
                self.mailbox.bump_marker(name)
            except Exception as exc:  # workers still find the job on their next full LIST
                log.warning("MailboxExecutor: could not bump the marker of queue %s: %s", name, exc)

    def _enqueue(self, workload: ExecuteTask | ExecuteCallback | TestConnection) -> Job:
        """Write one workload's manifest. A callback (deadline and other executor callbacks)
        travels like a task, on the default queue: ``[operators] default_queue``; a connection
        test on the queue its request names, or that default. A connection test's manifest
        names the test only: its worker fetches the connection through the relay."""
        from airflow.configuration import conf
        from airflow.executors.workloads import ExecuteTask, TestConnection

        assert self.mailbox and self.settings
        job_id = new_id()
        default_queue = conf.get("operators", "default_queue", fallback="default") or "default"
        if isinstance(workload, TestConnection):
            return self._write(
                job_id,
                workload.queue or default_queue,
                workload.key,
                connection_test=ConnectionTest(
                    id=str(workload.connection_test_id),
                    connection_id=workload.connection_id,
                    timeout=workload.timeout,
                ),
            )
        ti = workload.ti if isinstance(workload, ExecuteTask) else None
        if ti is not None:
            queue_name = ti.queue or "default"
            fields: dict[str, Any] = {
                "ti": ti.model_dump(mode="json"),
                "pool_slots": int(getattr(ti, "pool_slots", 1) or 1),
                "priority": int(getattr(ti, "priority_weight", 1) or 1),
                "fresh_interpreter": _fresh_interpreter(ti.executor_config),
            }
        seal_key = SealKey.derive(self.settings.signing_key.seed(), job_id).public
        if ti is None:
            queue_name = default_queue
            callback = workload.callback.model_dump(mode="json")
            callback["data"] = seal_callback_data(
                callback.get("data") or {}, seal_key, self.mailbox.callback_context(job_id)
            )
            fields = {"callback": callback}
        return self._write(
            job_id,
            queue_name,
            workload.key,
            dag_rel_path=str(workload.dag_rel_path),
            bundle_info=workload.bundle_info.model_dump(mode="json"),
            log_path=workload.log_path,
            **fields,
        )

    def _write(self, job_id: str, queue_name: str, key: Any, **fields: Any) -> Job:
        """Sign and write a manifest with the workload's ``fields``; the job that tracks it."""
        assert self.mailbox and self.settings
        manifest = JobManifest(
            job_id=job_id,
            queue=queue_name,
            enqueued_at=time.time(),
            seal_key=SealKey.derive(self.settings.signing_key.seed(), job_id).public,
            scheduler_version=__version__,
            **fields,
        )
        manifest_key = self.mailbox.put_manifest(
            manifest, self.settings.signing_key, self.settings.manifest_ttl
        )
        return Job(
            job_id=job_id,
            ti_id=manifest.subject_id,
            queue=queue_name,
            manifest_key=manifest_key,
            ti_key=key,
            pool_slots=manifest.pool_slots,
            enqueued_at=manifest.enqueued_at,
            connection_test=manifest.connection_test is not None,
        )

    # -- state -------------------------------------------------------------------------------

    def sync(self) -> None:
        if self.reconciler:
            for queue_name, count in self.reconciler.queued_per_queue().items():
                metrics.gauge("queued_jobs", count, queue=queue_name)
        while True:
            try:
                kind, job_id, info = self._events.get_nowait()
            except queue.Empty:
                return
            key = self.reconciler.jobs.report_key(job_id) if self.reconciler else None
            if key is None:
                continue
            if kind == "running":
                log.info("MailboxExecutor: %s runs on edge worker %s", key, info)
                self.running_state(key, job_id)
            elif kind == "success":
                self.success(key, info)
                self.reported.append((job_id, kind))
            else:
                self.fail(key, info)
                self.reported.append((job_id, kind))

    # -- revoke and adopt -------------------------------------------------------------------

    def revoke_task(self, *, ti: TaskInstance) -> None:
        """Withdraw a task instance's job: Airflow does so for tasks queued too long and then
        queues them again. The manifest leaves the queue, a signed revocation tells workers
        not to start it, and the relay refuses its calls, so it cannot also run late. As
        Airflow asks, no state is reported for it."""
        key = ti.key
        self.queued_tasks.pop(key, None)
        self.running.discard(key)
        if self.reconciler:
            for job in self.reconciler.jobs.live_jobs_of(key):
                self.reconciler.revoke(job.job_id, "revoked by the scheduler (queued too long)")

    def fail_connection_test(self, key: ConnectionTestKey) -> None:
        """The scheduler's reaper failed a connection test that outlived its timeout: as for
        a revoked task, its job leaves the queue, workers are told not to start it, and the
        relay refuses its calls, so it cannot report a late result over the reaper's."""
        super().fail_connection_test(key)
        if self.reconciler:
            for job in self.reconciler.jobs.live_jobs_of(key):
                self.reconciler.revoke(job.job_id, "connection test timed out (reaped by Airflow)")

    def try_adopt_task_instances(self, tis: Sequence[TaskInstance]) -> Sequence[TaskInstance]:
        """Adopt the tasks a dead scheduler had sent through the bucket: the job id is their
        external_executor_id. Claims, relay calls and results of adopted jobs are then served
        as if this scheduler had queued them; the others are handed back for Airflow to reset."""
        assert self.reconciler
        not_adopted = []
        for ti in tis:
            job_id = ti.external_executor_id or ""
            if not self.reconciler.adopt(job_id, str(ti.id), ti.queue or "default", ti.key):
                not_adopted.append(ti)
                continue
            self.running.add(ti.key)
            log.info("MailboxExecutor: adopted %s (job %s)", ti.key, job_id)
        return not_adopted

    # -- logs --------------------------------------------------------------------------------

    def get_task_log(self, ti: TaskInstance, try_number: int) -> tuple[list[str], list[str]]:
        """``(sources, lines)`` of a RUNNING task's log, from the chunks its worker uploads.

        Airflow calls this in the api-server, on an instance whose ``start()`` never ran, so
        the bucket and key come from airflow.cfg on first use (log_airflow.reader_from_conf).
        The sources are never empty: otherwise Airflow would ask the worker's log server on
        port 8793, which edge workers do not run and cannot be reached on."""
        return read_running_log(ti, try_number)


EXECUTOR_CONFIG_KEYS = ("fresh_interpreter",)  # of a task's executor_config["edge_mailbox"]


def _fresh_interpreter(executor_config: dict | None) -> bool:
    """Whether a task asks to start in a new Python process on its worker, with
    ``executor_config={"edge_mailbox": {"fresh_interpreter": True}}``. Anything else under
    "edge_mailbox" is refused with its reason (the task is failed, not run otherwise than
    asked): a misspelt key would silently fork a task that cannot be forked."""
    ours = (executor_config or {}).get("edge_mailbox", {})
    if not isinstance(ours, dict):
        raise ValueError(f'executor_config["edge_mailbox"] must be a dict, not {ours!r}')
    unknown = sorted(set(ours) - set(EXECUTOR_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f'executor_config["edge_mailbox"] has unknown keys {unknown}; '
            f"known: {list(EXECUTOR_CONFIG_KEYS)}"
        )
    fresh = ours.get("fresh_interpreter", False)
    if not isinstance(fresh, bool):
        raise ValueError(
            f'executor_config["edge_mailbox"]["fresh_interpreter"] must be True or False, '
            f"not {fresh!r}"
        )
    return fresh


def _try_is_current(ti_id: str, job_id: str) -> bool:
    """Whether the task instance ``ti_id`` may still be running as job ``job_id``.

    No: the id is not in the database (a task instance gets a new id for each try, so this
    was an earlier try), or its state is final or waits for a retry. A job that fails this
    is a replay, and the relay refuses it. (Its external_executor_id is no evidence: the
    scheduler that queued the job records it a moment later, and until then it still names
    the previous try's job.)"""
    from uuid import UUID

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import State
    from sqlalchemy import select

    try:
        ti_uuid = UUID(ti_id)
    except ValueError:
        return False
    with create_session() as session:
        found = session.execute(
            select(TaskInstance.state).where(TaskInstance.id == ti_uuid)
        ).one_or_none()
    if found is None:
        return False
    over = State.finished | {TaskInstanceState.UP_FOR_RETRY, TaskInstanceState.UP_FOR_RESCHEDULE}
    return found[0] not in over
