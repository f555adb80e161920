"""One job, in a process of its own: ``python -m edge_mailbox.worker.job_process``.

The Task SDK's ``supervise_task`` installs signal handlers and forks, so it must own the
main thread of its process. The worker starts this module per job and writes the job's spec
(manifest, keys) to its standard input: nothing secret goes on a command line or to disk.
The exit code is the supervisor's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
) -> bytes:
    return json.dumps(
        {
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
    ).encode()


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


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    sys.exit(run(spec))


if __name__ == "__main__":
    main()
