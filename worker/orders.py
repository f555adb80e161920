"""What the worker is told to be: one state machine for its host's orders and the scheduler
side's commands.

Two sources give orders:

- the host (``edge-mailbox-worker maintenance on|off``, SIGTERM/``stop``), through the run
  folder (control.py) and signals;
- the scheduler side, through the worker's command object (``commands/{W}.jws``, a signed
  WorkerCommand holding the whole desired state: maintenance and comment, shutdown, queues,
  concurrency).

How they combine, so that neither can surprise the other:

- maintenance holds while either side asks for it. The host's ``maintenance off`` ends only
  the host's; the dashboard's ends only the scheduler side's. The heartbeat says which holds
  it (``maintenance_by``), so the dashboard shows why a worker stays in maintenance;
- a stop from either side is final for this process: it drains and exits;
- queues and concurrency are the scheduler side's once it commanded them; before that, the
  worker's flags and airflow.cfg.

A command is applied only if it is newer (``seq``) than the last one applied. That number is
kept in the run folder, so an old command written back into the bucket is refused after a
restart too; at start the current command (same ``seq``) is applied again, so a worker put in
maintenance or given queues remotely keeps them when it restarts. A shutdown command stops
the process that applies it first, not the next one started from the same run folder, nor
one started well after it was issued (the worker was down: it was started again on
purpose).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from edge_mailbox.mailbox.errors import ProtocolError
from edge_mailbox.mailbox.models import MaintenanceSource, WorkerCommand
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, VerificationError

log = logging.getLogger("edge_mailbox.worker")
# How far behind this host's clock the scheduler's may be for a shutdown issued just after
# this process started to still count as issued after it.
CLOCK_SKEW = 30.0


class Phase(enum.Enum):
    SERVING = "serving"  # takes jobs unless in maintenance
    STOPPING = "stopping"  # drains its running jobs, takes none, then exits


@dataclass
class Orders:
    queues: tuple[str, ...]
    concurrency: int
    started_at: float = field(default_factory=time.time)
    phase: Phase = Phase.SERVING
    stop_requested_at: float | None = None  # monotonic
    seq: int = 0  # the newest command applied
    # The maintenance comment of each side that holds the worker in maintenance.
    maintenance: dict[MaintenanceSource, str] = field(default_factory=dict)

    @property
    def in_maintenance(self) -> bool:
        return bool(self.maintenance)

    @property
    def maintenance_by(self) -> list[MaintenanceSource]:
        return sorted(self.maintenance, key=lambda source: source.value)

    @property
    def comment(self) -> str:
        return " | ".join(self.maintenance[source] for source in self.maintenance_by)[:1024]

    def set_maintenance(self, source: MaintenanceSource, on: bool, comment: str = "") -> bool:
        """True when it changed anything."""
        before = dict(self.maintenance)
        if on:
            self.maintenance[source] = comment[:1024]
        else:
            self.maintenance.pop(source, None)
        if self.maintenance != before:
            log.info(
                "maintenance %s by %s%s",
                "on" if on else "off",
                source.value,
                f": {comment}" if on and comment else "",
            )
        return self.maintenance != before

    def stop(self, why: str) -> None:
        if self.phase is Phase.STOPPING:
            return
        log.info("stopping (%s): finishing running jobs, taking no new ones", why)
        self.phase = Phase.STOPPING
        self.stop_requested_at = time.monotonic()

    def apply(self, command: WorkerCommand, *, again: bool = False) -> None:
        """Make the worker what ``command`` says (its seq was checked by the caller);
        ``again``: an earlier process of this run folder applied it already."""
        self.seq = command.seq
        self.set_maintenance(MaintenanceSource.REMOTE, command.maintenance, command.comment)
        queues = tuple(command.queues)
        if queues != self.queues or command.concurrency != self.concurrency:
            log.info(
                "command %d by %s: queues %s, concurrency %d",
                command.seq,
                command.issued_by,
                ",".join(queues),
                command.concurrency,
            )
        self.queues, self.concurrency = queues, command.concurrency
        if command.shutdown and not again and command.issued_at + CLOCK_SKEW >= self.started_at:
            self.stop(f"shutdown by {command.issued_by}, command {command.seq}")


class CommandWatch:
    """Reads the worker's command object when the all-queues marker rang (a conditional GET:
    a 304 costs little), verifies it and hands a newer one over."""

    def __init__(self, mailbox: Mailbox, name: str, scheduler_keys: KeyRing, seq: int) -> None:
        self.mailbox = mailbox
        self.name = name
        self.scheduler_keys = scheduler_keys
        self.etag: str | None = None
        self.applied = seq  # the newest seq applied by this worker, in any process
        self.started = False  # the first read may re-apply the current command

    def check(self) -> tuple[WorkerCommand, bool] | None:
        """The command to apply now, if there is a new one, and whether it was applied
        before (by an earlier process). Store errors propagate (the caller backs off); an
        unsigned, foreign or stale command is logged and ignored."""
        raw, etag = self.mailbox.command_if_changed(self.name, self.etag)
        first, self.started = not self.started, True
        if raw is None:
            self.etag = etag
            return None
        self.etag = etag  # a refused object is not read again until it changes
        try:
            command = self.mailbox.verify_command(raw, self.name, self.scheduler_keys).model
        except (VerificationError, ProtocolError) as exc:
            key = self.mailbox.layout.command(self.name)
            log.warning("ignoring command object %s: %s", key, exc)
            return None
        if command.seq < self.applied or (command.seq == self.applied and not first):
            log.warning(
                "ignoring command %d by %s: command %d was applied already (an old one put back?)",
                command.seq,
                command.issued_by,
                self.applied,
            )
            return None
        again = command.seq == self.applied
        self.applied = command.seq
        return command, again
