"""Broken configuration is a clear error naming the setting, on both sides."""

from __future__ import annotations

import argparse
import socket

import pytest

from edge_mailbox.executor.provider import get_provider_info, render
from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_settings
from edge_mailbox.mailbox.options import ExecutorOptions, WorkerOptions, default, flag_of
from edge_mailbox.signer import SigningKey
from edge_mailbox.worker.cli import build_parser
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
        ({"manifest_ttl": "1"}, "manifest_ttl = 1 must be between 10 and 604800"),
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
        (
            {"bucket": None},
            r"bucket is not set \(nor --bucket, nor AIRFLOW__EDGE_MAILBOX__BUCKET\)",
        ),
        ({"concurrency": "many"}, "not a whole number"),
        ({"concurrency": "0"}, "between 1 and 1024"),
        ({"queues": " , "}, "names no queue"),
        ({"queues": "x" * 300}, "limit is 256"),
        ({"key": "/nonexistent.pem"}, "keygen"),
        ({"scheduler_key": None}, "scheduler_public_keys is not set"),
    ],
)
def test_broken_worker_settings_name_the_setting(keys, change, message) -> None:
    with pytest.raises(WorkerConfigError, match=message):
        resolve(worker_args(keys, **change), FakeConf())


def all_options() -> dict[str, type[ExecutorOptions | WorkerOptions]]:
    """Every option of both sides, with a model it is read through."""
    return {
        name: model for model in (ExecutorOptions, WorkerOptions) for name in model.model_fields
    }


def test_provider_config_lists_every_option_of_both_sides_with_its_default() -> None:
    listed = get_provider_info()["config"]["edge_mailbox"]["options"]
    assert set(listed) == set(all_options())
    for name, model in all_options().items():
        field = model.model_fields[name]
        if field.is_required() or field.default_factory is not None:
            expected = None
        else:
            expected = render(default(model, name))
        assert listed[name]["default"] == expected, name
        assert listed[name]["description"].endswith(
            field.description + (f" Flag: {flag_of(field)}." if flag_of(field) else "")
        )
    assert listed["worker_concurrency"]["default"] == "8"
    assert listed["poll_interval"]["default"] == "0.05"
    assert listed["worker_queues"]["default"] == "default"
    assert listed["aws_secret_access_key"]["sensitive"] is True


def test_scheduler_defaults_are_the_options_defaults(keys) -> None:
    settings = load_settings(scheduler_conf(keys), "http://x/execution/")
    assert settings.poll_active == 0.05 and settings.poll_idle == 5
    assert settings.relay_threads == 8 and settings.relay_request_max_age == 1200
    assert settings.store.endpoint_url is None and settings.store.addressing_style == "auto"


def test_every_worker_flag_comes_from_the_options_and_beats_the_config(keys) -> None:
    flags = {
        "--bucket": "from-flag",
        "--prefix": "p",
        "--endpoint-url": "http://127.0.0.1:9",
        "--region": "eu-central-1",
        "--proxy": "http://proxy:3128",
        "--addressing-style": "path",
        "--queues": "a,b",
        "--concurrency": "3",
        "--name": "w9",
        "--key": str(keys / "workers" / "w1.pem"),
        "--scheduler-key": str(keys / "scheduler.pem.pub"),
        "--poll-interval-min": "0.5",
        "--poll-interval-idle": "7",
        "--heartbeat-interval": "11",
        "--drain-timeout": "12",
        "--log-retention-days": "2",
        "--log-max-bytes": str(1024**3),
        "--fresh-interpreter": "true",
    }
    declared = {flag_of(f) for f in WorkerOptions.model_fields.values()} - {None}
    assert declared == set(flags)
    # airflow.cfg says otherwise for every one of them: the flags win
    conf = FakeConf(
        bucket="from-config",
        worker_concurrency="2",
        worker_heartbeat_interval="99",
        worker_drain_timeout="98",
        worker_poll_interval_min="0.2",
        worker_name="from-config",
    )
    argv = [part for pair in flags.items() for part in pair]
    settings = resolve(build_parser().parse_args(argv), conf)
    assert (settings.store.bucket, settings.store.prefix) == ("from-flag", "p")
    assert settings.store.endpoint_url == "http://127.0.0.1:9"
    assert settings.store.region == "eu-central-1" and settings.store.proxy == "http://proxy:3128"
    assert settings.store.addressing_style == "path"
    assert settings.queues == ("a", "b") and settings.concurrency == 3 and settings.name == "w9"
    assert (settings.poll_min, settings.poll_max) == (0.5, 7)
    assert (settings.heartbeat_interval, settings.drain_timeout) == (11, 12)
    assert (settings.log_retention_days, settings.log_max_bytes) == (2, 1024**3)
    assert settings.fresh_interpreter is True


def test_fresh_interpreter_from_the_flag_alone_the_config_or_the_default(keys) -> None:
    conf = FakeConf(
        bucket="airflow-edge",
        worker_key_path=str(keys / "workers" / "w1.pem"),
        scheduler_public_keys=str(keys / "scheduler.pem.pub"),
    )
    assert resolve(build_parser().parse_args([]), conf).fresh_interpreter is False
    assert resolve(build_parser().parse_args(["--fresh-interpreter"]), conf).fresh_interpreter
    on = FakeConf(**conf.options, worker_fresh_interpreter="True")
    assert resolve(build_parser().parse_args([]), on).fresh_interpreter is True
    off = build_parser().parse_args(["--fresh-interpreter", "false"])
    assert resolve(off, on).fresh_interpreter is False
    with pytest.raises(WorkerConfigError, match=r"--fresh-interpreter: .*valid boolean"):
        resolve(build_parser().parse_args(["--fresh-interpreter", "maybe"]), conf)


def test_worker_options_from_config_then_defaults(keys) -> None:
    conf = FakeConf(
        bucket="airflow-edge",
        worker_key_path=str(keys / "workers" / "w1.pem"),
        scheduler_public_keys=str(keys / "scheduler.pem.pub"),
        worker_drain_timeout="5",
        worker_log_max_bytes="",  # empty: the default
    )
    settings = resolve(build_parser().parse_args([]), conf)
    assert settings.drain_timeout == 5 and settings.log_max_bytes == 2 * 1024**3
    assert settings.queues == ("default",) and settings.concurrency == 8
    assert settings.name == socket.gethostname() and settings.heartbeat_interval == 30


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--drain-timeout", "soon"], "--drain-timeout = 'soon' is not a number"),
        (["--log-max-bytes", "10"], "--log-max-bytes = 10 must be between 1048576 and"),
        (["--name", "a\x01b"], "--name: worker name .* contains control characters"),
    ],
)
def test_a_bad_worker_flag_is_named(keys, argv, message) -> None:
    conf = FakeConf(bucket="airflow-edge", scheduler_public_keys=str(keys / "scheduler.pem.pub"))
    with pytest.raises(WorkerConfigError, match=message):
        resolve(build_parser().parse_args(argv), conf)
