"""The worker's runners: long-lived forked processes that run jobs one at a time.

Real processes and signals; the job here is a small function instead of a Task SDK
supervisor (the end-to-end tests run those)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_mailbox.worker.runners import JobHandle, RunnerPool


def job(spec: dict[str, Any]) -> int:
    """Record which process ran the job, then behave as the spec says."""
    Path(spec["out"]).write_text(str(os.getpid()))
    if spec.get("sleep"):
        time.sleep(spec["sleep"])
    if spec.get("raise"):
        raise RuntimeError("the job broke")
    return int(spec.get("code", 0))


def wait_for(handle: JobHandle, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while (code := handle.poll()) is None:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.01)
    return code


def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def pool():
    runners = RunnerPool(job, idle_seconds=0.5)
    yield runners
    runners.close()


def test_jobs_run_in_another_process_and_reuse_it(pool: RunnerPool, tmp_path: Path) -> None:
    first = pool.start({"out": str(tmp_path / "1"), "code": 3})
    assert wait_for(first) == 3
    second = pool.start({"out": str(tmp_path / "2")})
    assert wait_for(second) == 0
    pids = {(tmp_path / n).read_text() for n in ("1", "2")}
    assert pids == {str(first.pid)} and first.pid != os.getpid()  # one runner, reused


def test_concurrent_jobs_get_runners_of_their_own(pool: RunnerPool, tmp_path: Path) -> None:
    handles = [pool.start({"out": str(tmp_path / str(i)), "sleep": 0.3}) for i in range(3)]
    assert [wait_for(h) for h in handles] == [0, 0, 0]
    assert len({h.pid for h in handles}) == 3


def test_a_failing_job_is_an_exit_code_and_the_runner_lives_on(
    pool: RunnerPool, tmp_path: Path
) -> None:
    broken = pool.start({"out": str(tmp_path / "1"), "raise": True})
    assert wait_for(broken) == 1
    after = pool.start({"out": str(tmp_path / "2")})
    assert wait_for(after) == 0 and after.pid == broken.pid


def test_a_killed_job_ends_and_its_runner_is_replaced(pool: RunnerPool, tmp_path: Path) -> None:
    long = pool.start({"out": str(tmp_path / "1"), "sleep": 60})
    until((tmp_path / "1").exists)
    long.kill(signal.SIGKILL)
    assert wait_for(long, timeout=10) == -signal.SIGKILL
    assert not pool.idle  # a dead runner is not handed another job
    fresh = pool.start({"out": str(tmp_path / "2")})
    assert wait_for(fresh) == 0 and fresh.pid != long.pid


def test_idle_runners_are_retired(pool: RunnerPool, tmp_path: Path) -> None:
    handles = [pool.start({"out": str(tmp_path / str(i)), "sleep": 0.2}) for i in range(3)]
    assert [wait_for(h) for h in handles] == [0, 0, 0]
    runners = list(pool.idle)
    assert len(runners) == 3
    until(lambda: (pool.retire_idle(), not pool.idle and not pool.retiring)[1])
    # each saw its worker hang up and exited by itself (no runner kept another's pipe open)
    assert [r.exit_code for r in runners] == [0, 0, 0]
    for handle in handles:
        with pytest.raises(ChildProcessError):  # exited and reaped
            os.waitpid(handle.pid, os.WNOHANG)


def test_a_runner_retires_while_a_younger_one_is_busy(pool: RunnerPool, tmp_path: Path) -> None:
    """A younger runner must not hold the older one's pipe open (forked from the worker, it
    inherits every pipe the worker has): the older one would never see the hang-up."""
    older = pool.start({"out": str(tmp_path / "1"), "sleep": 0.3})
    younger = pool.start({"out": str(tmp_path / "2"), "sleep": 30})
    assert wait_for(older) == 0
    until(lambda: (pool.retire_idle(), not pool.idle and not pool.retiring)[1], timeout=10)
    assert younger.poll() is None  # still busy, and the older one is gone
    younger.kill(signal.SIGKILL)
    assert wait_for(younger) == -signal.SIGKILL


def test_a_runner_is_replaced_after_its_share_of_jobs(tmp_path: Path) -> None:
    pool = RunnerPool(job, jobs_per_runner=2)
    try:
        pids = []
        for i in range(3):
            handle = pool.start({"out": str(tmp_path / str(i))})
            assert wait_for(handle) == 0
            pids.append(handle.pid)
        assert pids[0] == pids[1] != pids[2]
    finally:
        pool.close()
