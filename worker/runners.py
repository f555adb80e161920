"""Long-lived processes that run jobs, one at a time each, forked from the worker.

A job needs a process of its own (the Task SDK's supervisor owns its process's signals and
forks the task from it). Forking one per job from the ~150 MiB worker costs CPU in page
copies, a fresh S3 connection and per-process set-up on every task; LocalExecutor avoids
this with long-lived worker processes, and so do we: a runner is forked once (after the
worker's preload, so it starts in milliseconds), runs jobs one after another as the worker
hands them over a pipe, and is retired after a minute without work, so an idle worker holds
no runners. A runner that dies with its job is simply replaced.

A job that cannot be forked safely (threads started at import, CUDA, native libraries) gets
a runner of its own started as a new Python process (fresh_runner.py) and retired after that
job: the same pipe, the same session and death-with-the-worker, only without the preload.

A job is more than one process group: the Task SDK puts the task in a group of its own, and
a task may start more. What they share is the runner's session (a runner calls setsid), so
"the job's processes" are the runner's descendants and whatever else is left in its session.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

import psutil

log = logging.getLogger(__name__)
IDLE_SECONDS = 60.0  # a runner without a job for this long is retired
JOBS_PER_RUNNER = 100  # and one that ran this many: whatever a job left behind goes with it
GRACE_SECONDS = 5.0  # a job whose worker died gets this long after SIGTERM, then SIGKILL
# The runner's parent-death signal: one the Task SDK leaves alone (its supervisor, which is the
# runner, forwards SIGTERM and SIGINT to the task, and the task's SIGTERM only runs on_kill).
WORKER_GONE = signal.SIGHUP


def job_processes(leader: int) -> list[psutil.Process]:
    """Every process of the job that runner ``leader`` runs, the runner itself left out: what
    is in its session (a session id is never reused while in use), even re-parented after
    its parent died, and the descendants of all of these (a child that started a session of
    its own included)."""
    roots = [leader]
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if pid != leader and os.getsid(pid) == leader:
                roots.append(pid)
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            found.update((p.pid, p) for p in [root, *root.children(recursive=True)])
    found.pop(leader, None)
    return list(found.values())


def _send(processes: list[psutil.Process], sig: int) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def kill_job(leader: int) -> None:
    """SIGKILL runner ``leader`` and every process of its job at once."""
    _send(job_processes(leader), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGKILL)


def end_job(leader: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every process of the job (the task runs ``on_kill()``), and SIGKILL those left
    after ``grace``: in Airflow 3.3 a Python task does not end on SIGTERM."""
    processes = job_processes(leader)
    _send(processes, signal.SIGTERM)
    psutil.wait_procs(processes, timeout=grace)
    _send(job_processes(leader), signal.SIGKILL)


def _on_worker_gone(runner: int, signum: int, frame: object) -> None:
    """The worker died without a word (SIGKILL, the OOM killer, a crash): nobody ships this
    job's log or reports its end any more, and a task left running would relay on as an
    orphan, finish its try behind the scheduler's back, or run beside its retry. So the whole
    job ends now; the worker is then seen lost and the try failed and retried elsewhere. The
    runner's main thread stays in here until then: its supervisor relays nothing more."""
    if os.getpid() != runner:  # inherited by a process the runner forked: behave as default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    with contextlib.suppress(OSError):
        os.write(2, f"edge-mailbox runner {runner}: its worker died, ending its job\n".encode())
    end_job(runner)
    os._exit(1)


def _die_with_worker(worker: int) -> None:
    """Linux: get ``WORKER_GONE`` when the worker dies, and end the job then (above). A
    worker that died before the request took effect is seen in our parent's pid."""
    runner = os.getpid()
    signal.signal(WORKER_GONE, functools.partial(_on_worker_gone, runner))
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, WORKER_GONE)
    if os.getppid() != worker:
        _on_worker_gone(runner, WORKER_GONE, None)


def serve_runner(conn: Connection, run: Callable[[dict[str, Any]], int], worker: int) -> int:
    """A runner's life once it is in its own session: die with ``worker``, run the jobs it
    hands over. Its exit code."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the worker's handlers
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_worker(worker)
        _serve(conn, run)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _serve(conn: Connection, run: Callable[[dict[str, Any]], int]) -> None:
    """The runner's loop: a job spec in, its exit code out, until the worker hangs up."""
    while True:
        try:
            spec = json.loads(conn.recv_bytes())
        except (EOFError, ConnectionResetError):  # hung up (with our last answer unread)
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
    """One runner process, seen from the worker: forked, or ``fresh`` (a new interpreter)."""

    def __init__(
        self, run: Callable[[dict[str, Any]], int], others: list[Runner], fresh: bool = False
    ) -> None:
        ours, theirs = Pipe()
        self.fresh = fresh
        self.process: subprocess.Popen[bytes] | None = None  # a fresh runner's
        if fresh:
            self.process = _start_fresh(run, theirs)
            pid = self.process.pid
        else:
            pid = _fork(run, ours, theirs, others)
        theirs.close()
        self.pid = pid
        self.conn = ours
        self.exit_code: int | None = None  # of the process, once it ended
        self.idle_since = time.monotonic()
        self.jobs = 0

    def alive(self) -> bool:
        if self.exit_code is None and os.waitid(
            os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT
        ):
            self._reap()
        return self.exit_code is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        """Reap the ended runner, after killing what its job left (a runner killed alone
        leaves its task orphaned): until reaped, its pid cannot name another process. A
        fresh runner is reaped through its Popen, which would otherwise reap a later process
        of the same pid when collected."""
        kill_job(self.pid)
        if self.process is not None:
            self.exit_code = self.process.wait()
            return
        _, status = os.waitpid(self.pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)


def _fork(
    run: Callable[[dict[str, Any]], int], ours: Connection, theirs: Connection, others: list[Runner]
) -> int:
    """Fork a runner (the caller is single-threaded: a fork copies only this thread)."""
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        for other in others:  # or the other runners would never see their worker hang up
            other.conn.close()
        code = 1
        try:
            os.setsid()  # a session of its own: the worker can find a whole job tree
            code = serve_runner(theirs, run, worker)
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _start_fresh(
    run: Callable[[dict[str, Any]], int], theirs: Connection
) -> subprocess.Popen[bytes]:
    """Start a runner as a new Python process, in a session of its own, given only its end
    of the pipe (every other descriptor is closed), this worker's pid and where ``run`` is
    (module:name): the job's spec follows over the pipe, never on its command line."""
    fd = theirs.fileno()
    target = f"{run.__module__}:{run.__qualname__}"
    command = [
        sys.executable,
        "-P",
        "-m",
        "edge_mailbox.worker.fresh_runner",
        str(fd),
        str(os.getpid()),
    ]
    return subprocess.Popen(
        [*command, target], pass_fds=(fd,), start_new_session=True, stdin=subprocess.DEVNULL
    )


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
        """SIGKILL: the runner and every process of its job. Another signal goes to the
        runner's process group: its supervisor forwards SIGTERM to the task."""
        if self.returncode is not None:
            return
        if sig == signal.SIGKILL:
            kill_job(self.runner.pid)
            return
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
        """Hand ``spec`` to an idle runner, or to a new one; one whose spec says
        ``fresh_interpreter`` to a new fresh runner, its own."""
        body = json.dumps(spec).encode()
        fresh = bool(spec.get("fresh_interpreter"))
        while self.idle and not fresh:
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
        runner = Runner(self.run, self.all, fresh=fresh)
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
        if runner.fresh or runner.jobs >= self.jobs_per_runner:
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
