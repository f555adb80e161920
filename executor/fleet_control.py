"""Steering workers from the scheduler side: the one writer of command objects.

A command is a worker's whole desired state (maintenance and its comment, shutdown, queues,
concurrency), so each change starts from the state last commanded (or, before the first
command, from what the worker's heartbeat says it runs with) and writes the next ``seq``.
The CLI (``airflow edge-mailbox maintenance|shutdown|queues|concurrency|forget``) and the
dashboard's actions both come through here, so both write the same commands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

from edge_mailbox.mailbox.errors import NotFound, ProtocolError
from edge_mailbox.mailbox.models import Heartbeat, MaintenanceSource, WorkerCommand, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, SigningKey, VerificationError

log = logging.getLogger(__name__)


class FleetError(ValueError):
    """An action that cannot be done as asked: the message says why."""


@dataclass(frozen=True)
class Change:
    """What one action changes; ``None`` leaves a part of the state as it is."""

    maintenance: bool | None = None
    comment: str | None = None
    shutdown: bool | None = None
    queues: tuple[str, ...] | None = None
    add_queues: tuple[str, ...] = ()
    remove_queues: tuple[str, ...] = ()
    concurrency: int | None = None


@dataclass(frozen=True)
class WorkerNow:
    """A worker as its newest verified heartbeat and its command say."""

    heartbeat: Heartbeat | None
    command: WorkerCommand | None
    heartbeat_age: float | None


class FleetControl:
    def __init__(
        self,
        mailbox: Mailbox,
        signing_key: SigningKey,
        worker_keys: KeyRing,
        worker_timeout: float,
    ) -> None:
        self.mailbox = mailbox
        self.signing_key = signing_key
        self.scheduler_keys = KeyRing([signing_key.public])
        self.worker_keys = worker_keys
        self.worker_timeout = worker_timeout

    def now(self, worker: str) -> WorkerNow:
        """The worker's heartbeat and command (two GETs); an unverifiable one counts as none."""
        heartbeat = age = command = None
        try:
            signed = self.mailbox.read_heartbeat(worker, self.worker_keys)
            heartbeat = signed.model
            age = max(0.0, time.time() - heartbeat.sent_at)
        except NotFound:
            pass
        except (VerificationError, ProtocolError) as exc:
            log.warning("heartbeat of %s not believed: %s", worker, exc)
        try:
            command = self.mailbox.read_command(worker, self.scheduler_keys).model
        except NotFound:
            pass
        except (VerificationError, ProtocolError) as exc:
            log.warning("command of %s not believed (it will be replaced): %s", worker, exc)
        return WorkerNow(heartbeat, command, age)

    def send(self, worker: str, user: str, change: Change) -> WorkerCommand:
        """Write the worker's next command: the last state with ``change`` applied."""
        now = self.now(worker)
        base = now.command
        if base is None and now.heartbeat is None:
            raise FleetError(f"worker {worker!r} has no verified heartbeat and no command")
        queues = list(base.queues if base else now.heartbeat.queues)  # type: ignore[union-attr]
        if change.queues is not None:
            queues = list(dict.fromkeys(change.queues))
        queues += [q for q in change.add_queues if q not in queues]
        queues = [q for q in queues if q not in change.remove_queues]
        if not queues:
            raise FleetError(f"worker {worker!r} must serve at least one queue")
        concurrency = change.concurrency or (
            base.concurrency if base else now.heartbeat.concurrency  # type: ignore[union-attr]
        )
        if not 1 <= concurrency <= 1024:
            raise FleetError(f"concurrency must be between 1 and 1024, not {concurrency}")
        maintenance = bool(base and base.maintenance)
        if change.maintenance is not None:
            maintenance = change.maintenance
        comment = base.comment if base and maintenance else ""
        if maintenance and (change.maintenance or change.comment is not None):
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            comment = f"[{stamp}] {user}: {change.comment or ''}".strip()[:1024]
        shutdown = change.shutdown if change.shutdown is not None else False
        seen_seq = now.heartbeat.command_seq if now.heartbeat else 0
        command = WorkerCommand(
            worker=worker,
            seq=max(base.seq if base else 0, seen_seq) + 1,
            maintenance=maintenance,
            comment=comment,
            shutdown=shutdown,
            queues=queues,
            concurrency=concurrency,
            issued_by=user[:256] or "unknown",
            issued_at=time.time(),
        )
        self.mailbox.put_command(command, self.signing_key)
        log.info(
            "command %d to %s by %s: maintenance=%s shutdown=%s queues=%s concurrency=%d",
            command.seq,
            worker,
            command.issued_by,
            command.maintenance,
            command.shutdown,
            ",".join(command.queues),
            command.concurrency,
        )
        return command

    def forget(self, worker: str) -> None:
        """Remove a gone worker's heartbeat and command. A live one is refused: it would
        write its heartbeat again at once."""
        now = self.now(worker)
        if now.heartbeat is None and now.command is None:
            raise FleetError(f"worker {worker!r} is not known")
        alive = now.heartbeat is not None and now.heartbeat.state != WorkerState.OFFLINE
        if alive and now.heartbeat_age is not None and now.heartbeat_age < self.worker_timeout:
            raise FleetError(
                f"worker {worker!r} is alive (heartbeat {now.heartbeat_age:.0f}s ago, "
                f"state {now.heartbeat.state.value}): shut it down first"  # type: ignore[union-attr]
            )
        self.mailbox.delete_heartbeat(worker)
        self.mailbox.delete_command(worker)

    def wait_applied(
        self,
        worker: str,
        seq: int,
        timeout: float,
        until: Callable[[Heartbeat], bool] = lambda heartbeat: True,
    ) -> Heartbeat:
        """Poll the worker's heartbeat until it reports command ``seq`` applied (it sends one
        at once when it applies one or its state changes) and ``until`` holds of it;
        FleetError after ``timeout`` seconds."""

        def pending(heartbeat: Heartbeat | None) -> bool:
            return heartbeat is None or heartbeat.command_seq < seq or not until(heartbeat)

        @retry(retry=retry_if_result(pending), wait=wait_fixed(1.0), stop=stop_after_delay(timeout))
        def poll() -> Heartbeat | None:
            return self.now(worker).heartbeat

        try:
            heartbeat = poll()
        except RetryError as exc:
            last = exc.last_attempt.result()
            where = f"{last.state.value}, at command {last.command_seq}" if last else "no heartbeat"
            raise FleetError(
                f"worker {worker!r} not there after {timeout:.0f}s ({where})"
            ) from None
        assert heartbeat is not None
        return heartbeat


def reached(change: Change) -> Callable[[Heartbeat], bool]:
    """What ``--wait`` waits for after ``change``: a stopped worker, a drained one in
    maintenance, one back in service (unless its host holds it in maintenance), or the
    command applied."""
    if change.shutdown:
        return lambda hb: hb.state == WorkerState.OFFLINE
    if change.maintenance:
        return lambda hb: hb.state == WorkerState.MAINTENANCE
    if change.maintenance is False:
        return lambda hb: MaintenanceSource.REMOTE not in hb.maintenance_by
    return lambda hb: True
