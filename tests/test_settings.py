"""Broken configuration is a clear error naming the setting, on both sides."""

from __future__ import annotations

import argparse

import pytest

from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_settings
from edge_mailbox.signer import SigningKey
from edge_mailbox.worker.settings import WorkerConfigError, resolve


class FakeConf:
    """The part of Airflow's config parser that settings use."""

    def __init__(self, **options: str) -> None:
        self.options = options

    def get(self, section: str, key: str, fallback: str = "") -> str:
        assert section == "edge_mailbox"
        return self.options.get(key, fallback)


@pytest.fixture
def keys(tmp_path):
    SigningKey.generate().write(tmp_path / "scheduler.pem")
    (tmp_path / "workers").mkdir()
    SigningKey.generate().write(tmp_path / "workers" / "w1.pem")
    return tmp_path


def scheduler_conf(keys, **changes: str) -> FakeConf:
    options = {
        "bucket": "airflow-edge",
        "signing_key_path": str(keys / "scheduler.pem"),
        "worker_public_keys": str(keys / "workers"),
    }
    options.update(changes)
    return FakeConf(**{k: v for k, v in options.items() if v is not None})


def test_valid_scheduler_settings(keys) -> None:
    settings = load_settings(scheduler_conf(keys), "http://localhost:8080/execution")
    assert settings.store.bucket == "airflow-edge" and settings.store.prefix == "edge-mailbox"
    assert len(settings.worker_keys) == 1
    assert settings.execution_api_url == "http://localhost:8080/execution/"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bucket": None}, "bucket is not set"),
        ({"bucket": "Bad_Bucket!"}, "not a valid S3 bucket name"),
        ({"signing_key_path": None}, "signing_key_path is not set"),
        ({"signing_key_path": "/nonexistent.pem"}, "cannot read key file"),
        ({"worker_public_keys": None}, "worker_public_keys is not set"),
        ({"worker_public_keys": "/nonexistent.pub"}, "cannot read key file"),
        ({"endpoint_url": "minio:9000"}, "http:// or https://"),
        ({"poll_interval": "fast"}, "poll_interval = 'fast' is not a number"),
        ({"manifest_ttl": "1"}, "manifest_ttl = 1.0 must be in"),
        ({"aws_access_key_id": "AKIA"}, "must be given together"),
    ],
)
def test_broken_scheduler_settings_name_the_option(keys, change, message) -> None:
    with pytest.raises(EdgeMailboxConfigError, match=message):
        load_settings(scheduler_conf(keys, **change), "http://localhost:8080/execution/")


def test_a_public_key_file_that_is_not_a_key(keys) -> None:
    (keys / "workers" / "junk.pub").write_text("not a key")
    with pytest.raises(EdgeMailboxConfigError, match=r"junk\.pub"):
        load_settings(scheduler_conf(keys), "http://x/execution/")


def worker_args(keys, **changes) -> argparse.Namespace:
    values = {
        "bucket": "airflow-edge",
        "key": str(keys / "workers" / "w1.pem"),
        "scheduler_key": str(keys / "scheduler.pem.pub"),
        "queues": "default,gpu",
        "concurrency": "4",
        "name": "plant-7",
        "prefix": None,
        "endpoint_url": None,
        "region": None,
        "proxy": None,
        "addressing_style": None,
    }
    values.update(changes)
    return argparse.Namespace(**values)


def test_worker_flags_override_config(keys) -> None:
    conf = FakeConf(bucket="from-config", worker_concurrency="2", prefix="plant")
    settings = resolve(worker_args(keys, bucket=None), conf)
    assert settings.store.bucket == "from-config" and settings.store.prefix == "plant"
    assert settings.concurrency == 4 and settings.queues == ("default", "gpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bucket": None}, "no bucket"),
        ({"concurrency": "many"}, "not a whole number"),
        ({"concurrency": "0"}, "between 1 and 1024"),
        ({"queues": " , "}, "names no queue"),
        ({"queues": "x" * 300}, "limit is 256"),
        ({"key": "/nonexistent.pem"}, "keygen"),
        ({"scheduler_key": None}, "no scheduler key to trust"),
    ],
)
def test_broken_worker_settings_name_the_setting(keys, change, message) -> None:
    with pytest.raises(WorkerConfigError, match=message):
        resolve(worker_args(keys, **change), FakeConf())
