"""A job in a fresh interpreter (a runner started as a new Python process, not forked from the
worker) keeps every guarantee of a forked one: its exit code comes back over the pipe, it
dies with the worker, the worker kills its whole tree, and its spec (keys included) is on no
command line and in no environment. And it really is fresh: nothing the worker set up is in
it. Real processes and signals; the jobs are small functions (the end-to-end test runs the
Task SDK in both). Run as a script, this file is a stand-in worker that hands a job to a
fresh runner and waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_runner_job_tree import job_pids, living, task_like_job, wait_until

from edge_mailbox.executor.mailbox_executor import _fresh_interpreter
from edge_mailbox.mailbox.codec import binding, encode_signed
from edge_mailbox.mailbox.config import StoreConfig
from edge_mailbox.mailbox.models import JobManifest
from edge_mailbox.signer import KeyRing, SealKey, SigningKey
from edge_mailbox.worker.job_process import make_spec
from edge_mailbox.worker.runners import GRACE_SECONDS, JobHandle, RunnerPool

TESTS = Path(__file__).parent
SET_BY_WORKER = False  # the worker's preload stand-in sets it: a forked runner inherits it
SECRET = "a-secret-of-the-spec"


def report(spec: dict[str, Any]) -> int:
    """Say where the job ran: its process, its parent, what it inherited."""
    Path(spec["out"]).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "sid": os.getsid(0),
                "set_by_worker": SET_BY_WORKER,
                "secret": spec.get("secret"),
            }
        )
    )
    return int(spec.get("code", 0))


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh runner imports its job function by name: this folder's modules must be found
    (the worker's is edge_mailbox.worker.job_process, installed)."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setattr(sys.modules[__name__], "SET_BY_WORKER", True)


@pytest.fixture
def pool() -> Any:
    runners = RunnerPool(report, idle_seconds=0.5)
    yield runners
    runners.close()


def wait_for(handle: JobHandle, timeout: float = 30) -> int | None:
    wait_until(lambda: handle.poll() is not None, timeout, "the job to end")
    return handle.returncode


def test_a_fresh_job_runs_in_a_new_interpreter_a_forked_one_in_the_worker_s(
    pool: RunnerPool, tmp_path: Path
) -> None:
    forked = pool.start({"out": str(tmp_path / "forked"), "code": 3})
    fresh = pool.start({"out": str(tmp_path / "fresh"), "code": 4, "fresh_interpreter": True})
    assert (wait_for(forked), wait_for(fresh)) == (3, 4)  # exit codes over the pipe, both
    seen = {name: json.loads((tmp_path / name).read_text()) for name in ("forked", "fresh")}
    assert seen["forked"]["set_by_worker"] is True
    assert seen["fresh"]["set_by_worker"] is False  # nothing of the worker's in it
    for name, handle in (("forked", forked), ("fresh", fresh)):
        assert seen[name]["ppid"] == os.getpid()  # the worker's child, either way
        assert seen[name]["sid"] == seen[name]["pid"] == handle.pid  # a session of its own


def test_a_fresh_runner_serves_one_job_and_is_reaped(pool: RunnerPool, tmp_path: Path) -> None:
    first = pool.start({"out": str(tmp_path / "1"), "fresh_interpreter": True})
    assert wait_for(first) == 0
    second = pool.start({"out": str(tmp_path / "2"), "fresh_interpreter": True})
    assert wait_for(second) == 0
    assert first.pid != second.pid and not pool.idle  # never reused, never idle
    wait_until(lambda: (pool.retire_idle(), not pool.retiring)[1], 20, "the runners to exit")
    assert (first.runner.exit_code, second.runner.exit_code) == (0, 0)  # exited, reaped


def test_the_spec_is_on_no_command_line_and_in_no_environment(
    pool: RunnerPool, tmp_path: Path
) -> None:
    held = tmp_path / "held"
    handle = pool.start({"out": str(held), "fresh_interpreter": True, "secret": SECRET, "code": 0})
    assert wait_for(handle) == 0
    assert json.loads(held.read_text())["secret"] == SECRET  # it got the spec, over the pipe
    # ... and a running one shows it nowhere else
    sleeper = RunnerPool(task_like_job)
    try:
        running = sleeper.start({"out": str(tmp_path), "fresh_interpreter": True, "x": SECRET})
        job_pids(tmp_path)
        proc = psutil.Process(running.pid)
        assert "edge_mailbox.worker.fresh_runner" in proc.cmdline()
        assert SECRET not in " ".join(proc.cmdline())
        assert SECRET not in json.dumps(proc.environ())
        running.kill(signal.SIGKILL)
    finally:
        sleeper.close()


def test_a_killed_fresh_job_leaves_no_process(tmp_path: Path) -> None:
    pool = RunnerPool(task_like_job)
    try:
        handle = pool.start({"out": str(tmp_path), "fresh_interpreter": True})
        pids = job_pids(tmp_path)
        assert pids["runner"] == handle.pid
        handle.kill(signal.SIGTERM)  # the drain timeout's first step: on_kill() runs
        wait_until(lambda: (tmp_path / "on_kill").exists(), 20, "the task's on_kill")
        handle.kill(signal.SIGKILL)
        assert wait_for(handle) == -signal.SIGKILL
        wait_until(lambda: not living(pids), 10, "the job's processes to end")
    finally:
        pool.close()


def test_a_worker_killed_alone_leaves_no_process_of_its_fresh_job(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, __file__, str(tmp_path)], start_new_session=True)
    try:
        pids = job_pids(tmp_path)
        assert psutil.Process(pids["runner"]).ppid() == worker.pid
        assert "edge_mailbox.worker.fresh_runner" in psutil.Process(pids["runner"]).cmdline()
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.wait(10)
        wait_until(lambda: not living(pids), GRACE_SECONDS + 10, "the job's processes to end")
        assert time.monotonic() - killed < GRACE_SECONDS + 10
        assert (tmp_path / "on_kill").read_text() == "ran"  # SIGTERM first: on_kill() ran
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        for pid in json.loads((tmp_path / "pids.json").read_text()).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- who asks for it: the task's executor_config, through its signed manifest --------------


def signed_manifest(key: SigningKey, store: StoreConfig, **fields: Any) -> str:
    manifest = JobManifest(
        job_id="0" * 28,
        queue="default",
        enqueued_at=time.time(),
        dag_rel_path="d.py",
        bundle_info={"name": "dags-folder"},
        seal_key=SealKey.generate().public,
        scheduler_version="1",
        **fields,
    )
    bind = binding(store.bucket, store.prefix, queue="default", job_id=manifest.job_id)
    return encode_signed(manifest, key, bind=bind, ttl=60).decode()


@pytest.mark.parametrize(
    ("asked", "worker_setting", "signer_trusted", "fresh"),
    [
        (False, False, True, False),
        (True, False, True, True),  # the task asked
        (False, True, True, True),  # the worker is set so
        (True, False, False, False),  # asked by a manifest not signed by a trusted key
    ],
)
def test_the_spec_says_fresh_when_the_task_or_the_worker_asks(
    asked: bool, worker_setting: bool, signer_trusted: bool, fresh: bool
) -> None:
    store = StoreConfig(bucket="edge-bucket", prefix="p")
    scheduler, stranger = SigningKey.generate(), SigningKey.generate()
    raw = signed_manifest(scheduler if signer_trusted else stranger, store, fresh_interpreter=asked)
    spec = make_spec(
        store,
        raw,
        "default",
        "0" * 28,
        SigningKey.generate(),
        SealKey.generate(),
        KeyRing([scheduler.public]),
        900,
        None,
        fresh_interpreter=worker_setting,
    )
    assert spec["fresh_interpreter"] is fresh


def test_a_manifest_of_an_older_scheduler_is_forked() -> None:
    raw = json.loads(signed_manifest_body())
    raw["schema_version"] = "1.0"
    del raw["fresh_interpreter"]
    assert JobManifest.from_dict(raw).fresh_interpreter is False


def signed_manifest_body() -> str:
    return JobManifest(
        job_id="0" * 28,
        queue="q",
        enqueued_at=1.0,
        dag_rel_path="d.py",
        bundle_info={},
        seal_key=SealKey.generate().public,
        scheduler_version="1",
    ).model_dump_json()


@pytest.mark.parametrize(
    ("config", "fresh"),
    [
        (None, False),
        ({}, False),
        ({"KubernetesExecutor": {"x": 1}}, False),  # another executor's: not ours to judge
        ({"edge_mailbox": {}}, False),
        ({"edge_mailbox": {"fresh_interpreter": True}}, True),
        ({"edge_mailbox": {"fresh_interpreter": False}}, False),
    ],
)
def test_executor_config_asks_for_a_fresh_interpreter(config: Any, fresh: bool) -> None:
    assert _fresh_interpreter(config) is fresh


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"edge_mailbox": {"fresh_interpeter": True}}, r"unknown keys \['fresh_interpeter'\]"),
        ({"edge_mailbox": {"fresh_interpreter": "yes"}}, "must be True or False, not 'yes'"),
        ({"edge_mailbox": True}, "must be a dict"),
    ],
)
def test_a_bad_executor_config_is_refused_with_the_reason(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _fresh_interpreter(config)


if __name__ == "__main__":  # the stand-in worker: a fresh runner, then wait to be killed
    RunnerPool(task_like_job).start({"out": sys.argv[1], "fresh_interpreter": True})
    time.sleep(600)
