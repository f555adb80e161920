"""One job: its Task SDK supervisor, with an API client that relays through the bucket.

The Task SDK's ``supervise_task`` installs signal handlers and forks, so it must own the
main thread of its process: ``run`` runs in one of the worker's runners (runners.py),
forked after ``preload`` imported the Task SDK and the task runner's DAG parser once, so
that a job starts in milliseconds instead of re-importing Airflow (which is what makes a
fan-out CPU-bound on a small machine). A job whose manifest asks for it, or every job of a
worker set so (``worker_fresh_interpreter``), runs in a runner started as a new Python
process instead (fresh_runner.py). The job's spec (manifest, keys) goes over a pipe either
way: nothing secret goes on a command line, into the environment or to disk.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import linecache
import resource
import ssl
from pathlib import Path
from typing import Any

from edge_mailbox.mailbox.codec import binding, decode_signed
from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import ProtocolError
from edge_mailbox.mailbox.models import JobManifest
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.routes import CALLBACK_DATA_PATH
from edge_mailbox.mailbox.store import ObjectStore, make_boto_client
from edge_mailbox.signer import KeyRing, PublicKey, SealKey, SigningKey, VerificationError
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
    relay_wait: float = 0.1,
    fresh_interpreter: bool = False,
) -> dict[str, Any]:
    """What a runner needs to run one job. ``fresh_interpreter`` (the worker's setting), or
    the manifest's own, starts its runner as a new Python process (runners.py)."""
    fresh = fresh_interpreter or _asks_fresh(store, manifest, queue, job_id, scheduler_keys)
    return {
        "store": store.model_dump(mode="json"),
        "manifest": manifest,
        "queue": queue,
        "job_id": job_id,
        "worker_key": worker_key.to_pem(),
        "seal_key": b64url(seal_key.private_bytes()),
        "scheduler_keys": [k.to_pem() for k in scheduler_keys.kids().values()],
        "relay_deadline": relay_deadline,
        "relay_wait": relay_wait,
        "stats_path": str(stats_path) if stats_path else None,
        "fresh_interpreter": fresh,
    }


def _asks_fresh(
    store: StoreConfig, manifest: str, queue: str, job_id: str, scheduler_keys: KeyRing
) -> bool:
    """Whether the manifest asks for a fresh interpreter: believed only once verified, as
    everything read from the bucket. One it fails (it cannot, the worker has just verified
    it) is forked as usual, and its runner refuses it with the reason."""
    bind = binding(store.bucket, store.prefix, queue=queue, job_id=job_id)
    try:
        signed = decode_signed(manifest.encode(), JobManifest, scheduler_keys, bind=bind)
    except (ProtocolError, VerificationError):
        return False
    return signed.model.fresh_interpreter


def run(spec: dict) -> int:
    """Run one job in this process (a runner, or a fresh interpreter) to its exit code."""
    cpu_before = _cpu_seconds()
    from airflow.executors.workloads import BundleInfo
    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.sdk.execution_time.supervisor import MIN_HEARTBEAT_INTERVAL, supervise_task

    config = StoreConfig.model_validate(spec["store"])
    mailbox = Mailbox(ObjectStore(config, client=_unused_clients.get(config.model_dump_json())))
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
        expected_wait=float(spec.get("relay_wait", 0.1)),
        heartbeat_interval=MIN_HEARTBEAT_INTERVAL,
    )
    client = relay_client(transport)
    try:
        if manifest.connection_test:
            from edge_mailbox.worker.connection_test import run_connection_test

            return run_connection_test(manifest.connection_test, client, RELAY_TOKEN)
        if manifest.callback:
            from airflow.sdk.execution_time.callback_supervisor import supervise_callback

            data = _callback_data(client, manifest.callback.get("data") or {})
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
                        "answer_waits": transport.answer_waits,
                        "polls": transport.polls,
                        "heartbeats_skipped": transport.heartbeats_skipped,
                        "written_behind": transport.written_behind,
                        "requests": mailbox.store.counter.snapshot(),
                        "cpu": _cpu_seconds(since=cpu_before),
                    }
                )
            )


def _callback_data(client: Any, data: dict) -> dict:
    """A callback's data (import path and kwargs): the manifest holds it sealed to the
    scheduler side, which hands it to the worker that claimed the job, through the relay."""
    if "sealed" not in data:
        return data
    answer = client.get(CALLBACK_DATA_PATH)
    answer.raise_for_status()
    return answer.json()


def _cpu_seconds(since: dict | None = None) -> dict[str, dict[str, float]]:
    """User and system CPU of this process (supervisor and relay) and of its reaped task
    processes, less what ``since`` counted (a runner runs many jobs): the bench's split."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    task = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = {
        "supervisor": {"user": own.ru_utime, "system": own.ru_stime},
        "task": {"user": task.ru_utime, "system": task.ru_stime},
    }
    for part, times in (since or {}).items():
        for kind, value in times.items():
            now[part][kind] -= value
    return now


# What a task process would otherwise import for itself, at ~0.3 s of CPU per task: the Task
# SDK, the task runner's DAG parser (``airflow.dag_processing.dagbag``, which pulls in the
# serialization layer and the ORM models), and the operators most DAGs use.
PRELOAD = (
    "airflow.executors.workloads",
    "airflow.sdk",
    "airflow.sdk.api.client",
    "airflow.sdk.definitions.decorators",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "airflow.dag_processing.bundles.local",
    "jinja2.ext",
)
PRELOAD_IF_INSTALLED = (
    "airflow.providers.standard.decorators.python",
    "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.operators.python",
    "setproctitle",
)


# Boto clients built in the worker for its runners, by store config: building one costs
# ~10 ms of CPU, and a client that has never sent a request holds no connection, so each
# runner's copy opens connections of its own (and keeps them for its next jobs). The
# worker itself never uses them.
_unused_clients: dict[str, Any] = {}


def preload(store: StoreConfig | None = None) -> None:
    """Import what every job needs, once, in the worker, then freeze the heap so that forked
    children share those pages instead of copying them as the collector touches them."""
    if store is not None:
        _unused_clients[store.model_dump_json()] = make_boto_client(store)
    for name in PRELOAD:
        importlib.import_module(name)
    for name in PRELOAD_IF_INSTALLED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    linecache.clearcache()  # source lines read by warnings at import time
    gc.collect()
    gc.freeze()


def relay_client(transport: RelayTransport) -> Any:
    """The Task SDK's API client, over the relay. Its constructor would load the system's CA
    bundle into an SSL context (~30 ms of CPU and ~2 MiB per process), which a client whose
    every call goes through the bucket never uses: this one gets a bare context instead."""
    from airflow.sdk.api.client import Client

    class RelayClient(Client):
        @staticmethod
        def _get_ssl_context_cached(ca_file: str | None = None, ca_path: str | None = None):
            return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    return RelayClient(base_url=BASE_URL, token=RELAY_TOKEN, transport=transport)
