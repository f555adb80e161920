"""Shared fixtures: a real SeaweedFS per test session, a fresh prefix per test, and the
in-memory store (or moto) for units. Every test that uses SeaweedFS is marked ``seaweed``
here, in one place, so that ``make unit`` (``-m "not e2e and not seaweed"``) leaves it out."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for infra.devstore

from edge_mailbox.mailbox.config import RetryPolicy, StoreConfig  # noqa: E402
from edge_mailbox.mailbox.memstore import MemoryStore  # noqa: E402
from edge_mailbox.mailbox.store import ObjectStore  # noqa: E402
from infra.devstore import DevStore  # noqa: E402

BUCKET = "edge-mailbox-test"
FAST_RETRY = RetryPolicy(attempts=4, initial_backoff=0.05, max_backoff=0.2, deadline=10)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``seaweed`` every test that needs the SeaweedFS fixture, directly or through
    another fixture (``weed_store``, a test's own): its closure of fixtures names it."""
    for item in items:
        if "seaweed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.seaweed)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStore]:
    """One SeaweedFS ``weed mini`` on loopback for the whole session."""
    store = DevStore(bucket=BUCKET, data_dir=tmp_path_factory.mktemp("weed"))
    store.start()
    try:
        yield store
    finally:
        store.stop()


def store_config(seaweed: DevStore, prefix: str, **overrides: object) -> StoreConfig:
    values: dict[str, object] = {
        "bucket": seaweed.bucket,
        "prefix": prefix,
        "endpoint_url": seaweed.endpoint_url,
        "region": "us-east-1",
        "access_key_id": seaweed.access_key,
        "secret_access_key": seaweed.secret_key,
        "addressing_style": "path",
        "retry": FAST_RETRY,
    }
    values.update(overrides)
    return StoreConfig(**values)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def weed_store(seaweed: DevStore, prefix: str) -> ObjectStore:
    """An ObjectStore on the session's SeaweedFS, under a prefix of this test's own."""
    return ObjectStore(store_config(seaweed, prefix))


@pytest.fixture
def moto_store(prefix: str) -> Iterator[ObjectStore]:
    """An ObjectStore on moto's in-memory S3: fast, but never for races (not atomic)."""
    from moto import mock_aws

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        config = StoreConfig(bucket="moto-bucket", prefix=prefix, region="us-east-1")
        store = ObjectStore(config)
        store.client.create_bucket(Bucket="moto-bucket")
        yield store


@pytest.fixture
def mem_store(prefix: str) -> MemoryStore:
    """The in-memory store (atomic conditional writes, SeaweedFS's 412s): for unit tests of
    the logic above the store. Races and exactly-once stay on ``weed_store``."""
    return MemoryStore(StoreConfig(bucket="memory-bucket", prefix=prefix))
