"""One job, in a process of its own.

The Task SDK's ``supervise_task`` installs signal handlers and forks, so it must own the
main thread of its process. The worker is single-threaded and has the Task SDK imported
(``preload``), so it forks one child per job (``fork_job``): the child starts in
milliseconds instead of re-importing Airflow, which is what makes a fan-out CPU-bound on a
small machine. The job's spec (manifest, keys) is handed over in memory: nothing secret goes
on a command line or to disk. ``python -m edge_mailbox.worker.job_process`` (spec on stdin)
does the same in a fresh interpreter, where fork is not wanted.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, PublicKey, SealKey, SigningKey
from edge_mailbox.signer.keys import b64url, b64url_decode
from edge_mailbox.worker.transport import BASE_URL, RelayTransport

RELAY_TOKEN = "edge-mailbox-relayed"  # a placeholder: the real token never leaves the scheduler


def make_spec(
    store: StoreConfig,
    manifest: str,
    queue: str,
    job_id: str,
    worker_key: SigningKey,
    seal_key: SealKey,
    scheduler_keys: KeyRing,
    relay_deadline: float,
    stats_path: Path | None,
) -> dict[str, Any]:
    return {
        "store": store.model_dump(mode="json"),
        "manifest": manifest,
        "queue": queue,
        "job_id": job_id,
        "worker_key": worker_key.to_pem(),
        "seal_key": b64url(seal_key.private_bytes()),
        "scheduler_keys": [k.to_pem() for k in scheduler_keys.kids().values()],
        "relay_deadline": relay_deadline,
        "stats_path": str(stats_path) if stats_path else None,
    }


def run(spec: dict) -> int:
    from airflow.executors.workloads import BundleInfo
    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.sdk.api.client import Client
    from airflow.sdk.execution_time.supervisor import supervise_task

    mailbox = Mailbox(ObjectStore(StoreConfig.model_validate(spec["store"])))
    scheduler_keys = KeyRing(PublicKey.from_pem(pem) for pem in spec["scheduler_keys"])
    manifest = mailbox.verify_manifest(
        spec["manifest"].encode(), spec["queue"], spec["job_id"], scheduler_keys
    ).model
    transport = RelayTransport(
        mailbox,
        manifest.job_id,
        worker_key=SigningKey.from_pem(spec["worker_key"]),
        seal_key=SealKey.from_private_bytes(b64url_decode(spec["seal_key"])),
        scheduler_seal_key=manifest.seal_key,
        scheduler_keys=scheduler_keys,
        deadline=float(spec["relay_deadline"]),
    )
    client = Client(base_url=BASE_URL, token=RELAY_TOKEN, transport=transport)
    try:
        if manifest.callback:
            from airflow.sdk.execution_time.callback_supervisor import supervise_callback

            data = manifest.callback.get("data") or {}
            return supervise_callback(
                id=manifest.subject_id,
                callback_path=data.get("path", ""),
                callback_kwargs=data.get("kwargs", {}),
                dag_rel_path=manifest.dag_rel_path,
                log_path=manifest.log_path,
                bundle_info=BundleInfo.model_validate(manifest.bundle_info),
                token=RELAY_TOKEN,
                client=client,
            )
        return supervise_task(
            ti=TaskInstanceDTO.model_validate(manifest.ti),
            bundle_info=BundleInfo.model_validate(manifest.bundle_info),
            dag_rel_path=manifest.dag_rel_path,
            token=RELAY_TOKEN,
            client=client,
            log_path=manifest.log_path,
        )
    finally:
        if spec.get("stats_path"):
            Path(spec["stats_path"]).write_text(
                json.dumps(
                    {
                        "round_trips": transport.round_trips,
                        "requests": mailbox.store.counter.snapshot(),
                    }
                )
            )


def preload() -> None:
    """Import what every job needs, once, in the worker, then freeze the heap so that forked
    children share those pages instead of copying them as the collector touches them."""
    import airflow.executors.workloads
    import airflow.sdk
    import airflow.sdk.api.client
    import airflow.sdk.execution_time.supervisor
    import airflow.sdk.execution_time.task_runner

    with contextlib.suppress(ImportError):  # the operators most DAGs use, where installed
        import airflow.providers.standard.operators.bash
        import airflow.providers.standard.operators.python  # noqa: F401
    gc.collect()
    gc.freeze()


class ForkedJob:
    """A job's process, forked from the worker; poll() returns its exit code once ended."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the job's whole process group (supervisor and task)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the worker dies, so a killed worker leaves no orphan jobs
    relaying on (the supervisor then stops its task as on any SIGTERM)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def fork_job(spec: dict[str, Any]) -> ForkedJob:
    """Fork a child that runs ``spec`` and exits with the supervisor's exit code.

    The caller must be single-threaded: a fork copies only the calling thread."""
    pid = os.fork()
    if pid:
        return ForkedJob(pid)
    code = 1
    try:
        os.setsid()  # its own process group: the worker can stop the whole job tree
        _die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = run(spec)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        os._exit(code if isinstance(code, int) else 1)


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    sys.exit(run(spec))


if __name__ == "__main__":
    main()
