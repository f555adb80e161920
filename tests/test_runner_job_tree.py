"""A job's whole process tree ends with it: when the worker's main process dies alone
(SIGKILL, the OOM killer), when the worker kills the job, and when its runner dies alone.

Real processes and signals. The job mimics what the Task SDK does in a runner: the
supervisor (the runner itself) forwards SIGTERM to the task, the task has a process group of
its own and only runs ``on_kill()`` on SIGTERM (Airflow 3.3), and the task starts a child in
a session of its own and leaves a grandchild re-parented away from it. Run as a script, this
file is a stand-in worker that hands such a job to a runner and waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from edge_mailbox.worker.runners import GRACE_SECONDS, JobHandle, RunnerPool


def _sleep_forever() -> None:
    while True:
        time.sleep(60)


def task_like_job(spec: dict[str, Any]) -> int:
    """Fork a task as the Task SDK's supervisor does, and wait for it."""
    out = Path(spec["out"])
    task = os.fork()
    if task == 0:
        os.setpgid(0, 0)  # the Task SDK's new_process_group
        signal.signal(signal.SIGTERM, lambda *_: (out / "on_kill").write_text("ran"))
        pids = {"runner": os.getppid(), "task": os.getpid()}
        if (own_session := os.fork()) == 0:
            os.setsid()
            _sleep_forever()
        pids["own_session"] = own_session
        read, write = os.pipe()
        if os.fork() == 0:  # leaves a grandchild behind and exits: it is re-parented
            if (orphan := os.fork()) == 0:
                _sleep_forever()
            os.write(write, str(orphan).encode())
            os._exit(0)
        pids["orphan"] = int(os.read(read, 32))
        (out / "pids.json").write_text(json.dumps(pids))
        _sleep_forever()
    signal.signal(signal.SIGTERM, lambda signum, _: os.kill(task, signum))  # as the supervisor
    os.waitpid(task, 0)
    return 0


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def job_pids(out: Path) -> dict[str, int]:
    path = out / "pids.json"
    return wait_until(lambda: path.exists() and json.loads(path.read_text()), 20, "the job")


def living(pids: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out[name] = pid
    return out


def test_a_worker_killed_alone_leaves_no_process_of_its_job(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, __file__, str(tmp_path)], start_new_session=True)
    try:
        pids = job_pids(tmp_path)
        assert len(set(pids.values())) == 4 and living(pids) == pids
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


@pytest.fixture
def pool() -> Any:
    runners = RunnerPool(task_like_job)
    yield runners
    runners.close()


def test_a_killed_job_leaves_no_process(pool: RunnerPool, tmp_path: Path) -> None:
    handle = pool.start({"out": str(tmp_path)})
    pids = job_pids(tmp_path)
    handle.kill(signal.SIGKILL)
    assert wait_for_end(handle) == -signal.SIGKILL
    wait_until(lambda: not living(pids), 10, "the job's processes to end")


def test_a_runner_killed_alone_leaves_no_process(pool: RunnerPool, tmp_path: Path) -> None:
    handle = pool.start({"out": str(tmp_path)})
    pids = job_pids(tmp_path)
    os.kill(handle.pid, signal.SIGKILL)  # the OOM killer picked the supervisor
    assert wait_for_end(handle) == -signal.SIGKILL
    wait_until(lambda: not living(pids), 10, "the job's processes to end")


def wait_for_end(handle: JobHandle) -> int | None:
    wait_until(lambda: handle.poll() is not None, 20, "the job to end")
    return handle.returncode


if __name__ == "__main__":  # the stand-in worker
    RunnerPool(task_like_job).start({"out": sys.argv[1]})
    _sleep_forever()
