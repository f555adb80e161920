"""A first run without storage credentials: one clear message and a non-zero exit, no traceback.

Each command runs as a real process in an environment with no credentials anywhere: no AWS_*
variables, HOME an empty folder (no ~/.aws), and the instance-metadata lookup disabled (so
that it does not wait for an instance role). The bucket's endpoint is a loopback port nobody
listens on: the failure must come before any request."""

from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest

from demo.stack import BIN, MAILBOX_EXECUTOR
from edge_mailbox.signer import SigningKey
from infra.devstore import free_ports

pytestmark = pytest.mark.e2e  # each case starts a process that loads Airflow's config
BUCKET = "edge-mailbox-creds"
SOURCES = (
    "[edge_mailbox] aws_access_key_id",
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE",
    "an instance role",
)


def write_config(home: Path, sections: dict[str, dict[str, object]]) -> None:
    """``home``/airflow.cfg; every [edge_mailbox] names a bucket on a port nobody serves."""
    sections["edge_mailbox"].update(
        bucket=BUCKET,
        endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}",
        region="us-east-1",
        addressing_style="path",
    )
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({s: {k: str(v) for k, v in o.items()} for s, o in sections.items()})
    with open(home / "airflow.cfg", "w") as out:
        parser.write(out)


@pytest.fixture
def worker_home(tmp_path: Path) -> Path:
    home = tmp_path / "worker"
    home.mkdir()
    SigningKey.generate().write(home / "worker.pem")
    SigningKey.generate().write(tmp_path / "scheduler.pem")
    write_config(
        home,
        {
            "core": {"executor": MAILBOX_EXECUTOR, "dags_folder": home / "dags"},
            "database": {"sql_alchemy_conn": f"sqlite:///{home / 'unused.db'}"},
            "logging": {"base_log_folder": home / "logs"},
            "edge_mailbox": {
                "worker_key_path": home / "worker.pem",
                "scheduler_public_keys": tmp_path / "scheduler.pem.pub",
                "worker_name": "w1",
            },
        },
    )
    return home


@pytest.fixture
def scheduler_home(tmp_path: Path) -> Path:
    home = tmp_path / "scheduler"
    (home / "workers").mkdir(parents=True)
    SigningKey.generate().write(home / "scheduler.pem")
    SigningKey.generate().write(home / "workers" / "w1.pem")
    write_config(
        home,
        {
            "core": {"executor": MAILBOX_EXECUTOR, "dags_folder": home / "dags"},
            "database": {"sql_alchemy_conn": f"sqlite:///{home / 'airflow.db'}"},
            "edge_mailbox": {
                "signing_key_path": home / "scheduler.pem",
                "worker_public_keys": home / "workers",
            },
        },
    )
    return home


def bare_env(tmp_path: Path, airflow_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without a single source of AWS credentials."""
    empty = tmp_path / "empty-home"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW__"))}
    env.update(
        HOME=str(empty),
        AIRFLOW_HOME=str(airflow_home),
        AWS_EC2_METADATA_DISABLED="true",
        PATH=f"{BIN}:{env.get('PATH', '')}",
        **extra,
    )
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def assert_explained(done: subprocess.CompletedProcess[str], what: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "botocore.exceptions" not in output, output
    assert f"no credentials for bucket '{BUCKET}': {what}" in done.stderr, output
    for source in SOURCES:
        assert source in done.stderr, (source, output)


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        ({}, "none found"),
        (
            {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"},
            "only part of a key pair (Partial credentials found in env, missing: "
            "AWS_SECRET_ACCESS_KEY)",
        ),
        ({"AWS_PROFILE": "absent"}, "the AWS profile 'absent' is in neither"),
    ],
    ids=["nothing", "half-a-key-pair", "missing-profile"],
)
def test_worker_without_credentials_says_what_is_missing(
    tmp_path: Path, worker_home: Path, extra: dict[str, str], what: str
) -> None:
    done = run([str(BIN / "edge-mailbox-worker")], bare_env(tmp_path, worker_home, **extra))
    assert done.returncode == 2, done.stderr
    assert_explained(done, what)
    assert done.stderr.count("edge-mailbox-worker: no credentials") == 1


def test_airflow_check_without_credentials_says_what_is_missing(
    tmp_path: Path, scheduler_home: Path
) -> None:
    done = run([str(BIN / "airflow"), "edge-mailbox", "check"], bare_env(tmp_path, scheduler_home))
    assert_explained(done, "none found")
    assert done.stderr.startswith("credentials: no credentials"), done.stderr
