"""CPU per bucket request, side by side: a plain boto3 call against the store's own path
(single-object requests signed by botocore and sent without boto3's per-call machinery,
``mailbox/s3direct.py``), on a SeaweedFS on loopback.

    .venv/bin/python bench/store_requests.py [--requests 300]

The client's CPU only (user + system of this process); the store's is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from botocore.exceptions import ClientError

from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.errors import NotFound
from edge_mailbox.mailbox.store import ObjectStore
from infra.devstore import DevStore

BODY = b"x" * 2000  # about a relay request or a claim


def cpu_ms_per_call(n: int, call: Callable[[int], object]) -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = usage.ru_utime + usage.ru_stime
    for i in range(n):
        call(i)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return 1000 * (usage.ru_utime + usage.ru_stime - before) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="of each kind")
    args = parser.parse_args()
    n = args.requests
    with (
        tempfile.TemporaryDirectory(prefix="edge-mailbox-store-bench-") as tmp,
        DevStore(bucket="bench", data_dir=Path(tmp)) as dev,
    ):
        config = StoreConfig(
            bucket="bench",
            endpoint_url=dev.endpoint_url,
            region="us-east-1",
            access_key_id=dev.access_key,
            secret_access_key=dev.secret_key,
            addressing_style="path",
        )
        store = ObjectStore(config)
        boto = store.client
        marker = store.put("marker", b"{}")

        def boto_missing(i: int) -> None:
            with contextlib.suppress(ClientError):
                boto.get_object(Bucket="bench", Key=f"missing/{i}")

        def store_missing(i: int) -> None:
            with contextlib.suppress(NotFound):
                store.get(f"missing/{i}")

        def boto_unchanged(i: int) -> None:
            with contextlib.suppress(ClientError):
                boto.get_object(Bucket="bench", Key="marker", IfNoneMatch=marker)

        def boto_get(i: int) -> None:
            boto.get_object(Bucket="bench", Key=f"a/{i}")["Body"].read()

        rows = [
            (
                "PUT 2 KB",
                lambda i: boto.put_object(Bucket="bench", Key=f"a/{i}", Body=BODY),
                lambda i: store.put(f"b/{i}", BODY),
            ),
            (
                "create (If-None-Match)",
                lambda i: boto.put_object(Bucket="bench", Key=f"c/{i}", Body=BODY, IfNoneMatch="*"),
                lambda i: store.create(f"d/{i}", BODY),
            ),
            ("GET 2 KB", boto_get, lambda i: store.get(f"b/{i}")),
            ("GET missing (404)", boto_missing, store_missing),
            (
                "GET unchanged (304)",
                boto_unchanged,
                lambda i: store.get_if_changed("marker", marker),
            ),
            (
                "HEAD",
                lambda i: boto.head_object(Bucket="bench", Key=f"a/{i}"),
                lambda i: store.head(f"b/{i}"),
            ),
            (
                "DELETE",
                lambda i: boto.delete_object(Bucket="bench", Key=f"c/{i}"),
                lambda i: store.delete(f"d/{i}"),
            ),
        ]
        print(f"client CPU per request, ms (mean of {n}; SeaweedFS on loopback):")
        print(f"  {'request':<24}{'boto3':>8}{'store':>8}")
        for name, plain, ours in rows:
            time.sleep(0.2)  # let the store settle between kinds
            print(f"  {name:<24}{cpu_ms_per_call(n, plain):>8.2f}{cpu_ms_per_call(n, ours):>8.2f}")
        list_ms = cpu_ms_per_call(n // 3, lambda i: store.list_page("a/", max_keys=10))
        print(f"  {'LIST (boto3 in both)':<24}{list_ms:>8.2f}{list_ms:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
