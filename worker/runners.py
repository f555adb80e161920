"""Long-lived processes that run jobs, one at a time each, forked from the worker.

A job needs a process of its own (the Task SDK's supervisor owns its process's signals and
forks the task from it). Forking one per job from the ~150 MiB worker costs CPU in page
copies, a fresh S3 connection and per-process set-up on every task; LocalExecutor avoids
this with long-lived worker processes, and so do we: a runner is forked once (after the
worker's preload, so it starts in milliseconds), runs jobs one after another as the worker
hands them over a pipe, and is retired after a minute without work, so an idle worker holds
no runners. A job is stopped by signalling its runner's process group; a runner that dies
with its job is simply replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import struct
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

log = logging.getLogger(__name__)
IDLE_SECONDS = 60.0  # a runner without a job for this long is retired
JOBS_PER_RUNNER = 100  # and one that ran this many: whatever a job left behind goes with it


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the worker dies, so a killed worker leaves no orphan jobs
    relaying on (the supervisor then stops its task as on any SIGTERM)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _serve(conn: Connection, run: Callable[[dict[str, Any]], int]) -> None:
    """The runner's loop: a job spec in, its exit code out, until the worker hangs up."""
    while True:
        try:
            spec = json.loads(conn.recv_bytes())
        except EOFError:
            return
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = run(spec)
        except BaseException:
            traceback.print_exc()
        conn.send_bytes(struct.pack("!i", code if isinstance(code, int) else 1))


class Runner:
    """One runner process, seen from the worker."""

    def __init__(self, run: Callable[[dict[str, Any]], int], others: list[Runner]) -> None:
        ours, theirs = Pipe()
        pid = os.fork()  # the caller is single-threaded: a fork copies only this thread
        if pid == 0:
            ours.close()
            for other in others:  # or the other runners would never see their worker hang up
                other.conn.close()
            code = 0
            try:
                os.setsid()  # its own process group: the worker can stop a whole job tree
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the worker's handlers
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with_parent()
                _serve(theirs, run)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.conn = ours
        self.exit_code: int | None = None  # of the process, once it ended
        self.idle_since = time.monotonic()
        self.jobs = 0

    def alive(self) -> bool:
        if self.exit_code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)


class JobHandle:
    """A job handed to a runner; ``poll()`` returns its exit code once it ended."""

    def __init__(self, runner: Runner, pool: RunnerPool) -> None:
        self.runner = runner
        self.pool = pool
        self.pid = runner.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        runner = self.runner
        try:
            if runner.conn.poll(0):
                (self.returncode,) = struct.unpack("!i", runner.conn.recv_bytes())
                self.pool.give_back(runner)
                return self.returncode
        except (EOFError, OSError):
            pass  # the runner died: its exit status says how
        if not runner.alive():
            assert runner.exit_code is not None
            self.returncode = runner.exit_code or 1  # it died with the job: never a success
            runner.conn.close()
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the runner's whole process group (supervisor and task)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.runner.pid, sig)


class RunnerPool:
    def __init__(
        self,
        run: Callable[[dict[str, Any]], int],
        idle_seconds: float = IDLE_SECONDS,
        jobs_per_runner: int = JOBS_PER_RUNNER,
    ) -> None:
        self.run = run
        self.idle_seconds = idle_seconds
        self.jobs_per_runner = jobs_per_runner
        self.idle: list[Runner] = []
        self.all: list[Runner] = []  # idle and busy, until they end
        self.retiring: list[Runner] = []  # hung up on, not reaped yet

    def start(self, spec: dict[str, Any]) -> JobHandle:
        """Hand ``spec`` to an idle runner, or to a new one."""
        body = json.dumps(spec).encode()
        while self.idle:
            runner = self.idle.pop()
            if not runner.alive():
                runner.conn.close()
                continue
            try:
                runner.conn.send_bytes(body)
            except OSError:
                self._hang_up(runner)
                continue
            return JobHandle(runner, self)
        self.all = [r for r in self.all if not r.conn.closed]
        runner = Runner(self.run, self.all)
        self.all.append(runner)
        runner.conn.send_bytes(body)
        return JobHandle(runner, self)

    @staticmethod
    def wait(handles: list[JobHandle], timeout: float) -> None:
        """Sleep until one of these jobs ends (its runner answers or dies) or ``timeout``."""
        conns = [
            h.runner.conn for h in handles if h.returncode is None and not h.runner.conn.closed
        ]
        if conns:
            wait(conns, timeout)
        else:
            time.sleep(timeout)

    def give_back(self, runner: Runner) -> None:
        runner.jobs += 1
        if runner.jobs >= self.jobs_per_runner:
            self._hang_up(runner)
            return
        runner.idle_since = time.monotonic()
        self.idle.append(runner)

    def _hang_up(self, runner: Runner) -> None:
        """The runner's loop sees the pipe close and its process exits; reaped later."""
        runner.conn.close()
        self.retiring.append(runner)

    def retire_idle(self) -> None:
        """Retire runners that had no job for ``idle_seconds``; reap those that ended. Never
        waits: the worker's loop calls it every turn."""
        now = time.monotonic()
        for runner in [r for r in self.idle if now - r.idle_since > self.idle_seconds]:
            self.idle.remove(runner)
            self._hang_up(runner)
        self.retiring = [r for r in self.retiring if r.alive()]

    def close(self, timeout: float = 5.0) -> None:
        """Retire every idle runner and wait for them (the worker's jobs have ended)."""
        while self.idle:
            self._hang_up(self.idle.pop())
        deadline = time.monotonic() + timeout
        while any(r.alive() for r in self.retiring) and time.monotonic() < deadline:
            time.sleep(0.01)
        for runner in self.retiring:
            if runner.alive():
                runner.kill()
        self.retiring.clear()
