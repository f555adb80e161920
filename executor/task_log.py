"""Task logs from the bucket, for the Airflow UI: scheduler side (api-server) only.

Workers upload each task's log as signed, sealed chunks, ``logs/{dag}/{run}/{task}/map={i}/
try={n}/{job}/{seq:08d}.chunk`` (worker/logship.py). Knowing only the task instance, as the
UI does, ``BucketLogReader`` finds them with one LIST of the try's folder (paged if needed),
fetches them concurrently with fsspec/s3fs (the ObjectStore when s3fs is not installed), and
joins them in (job, seq) order, at most ``max_chunks`` chunks or ``max_bytes`` bytes a read.

Any bucket writer can put an object in that folder, so a chunk is believed only when it is
signed by the worker that holds the job's claim (``jobs/{job}/claim.jws``, verified with the
manifest it embeds, which must be ours and for this very try) and bound to the place it was
found at (job, seq and try): its text is shown, opened with the job's key derived from the
scheduler's signing seed. Anything else shows as a line ``[edge-mailbox: chunk N of job J
refused: why]`` instead. A finished job's claim is deleted a while after it ended: its chunks
are then checked against the trusted worker keys (one signer per job), and the source line
names the signer.
Airflow reaches this reader through log_airflow.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge_mailbox.executor.log_transport import MAX_CHUNK_BYTES, Transport, default_transport
from edge_mailbox.mailbox.errors import NotFound, ProtocolError
from edge_mailbox.mailbox.layout import TaskCoordinates
from edge_mailbox.signer import KeyRing, SealError, SealKey, VerificationError, open_sealed

if TYPE_CHECKING:
    from edge_mailbox.mailbox.protocol import Mailbox
    from edge_mailbox.signer import SigningKey

log = logging.getLogger(__name__)

# What one read fetches at most: the UI reads a running task's whole log every few seconds.
MAX_READ_CHUNKS = 2000
MAX_READ_BYTES = 64 * 1024 * 1024
# Verified claim holders remembered (a claim is created once and never changes).
HOLDERS_KEPT = 4096
NO_LOG_YET = (
    "edge-mailbox: no log of this try is in the bucket yet (the worker uploads it every few "
    "seconds while the task runs, and the rest when it ends)"
)


@dataclass(frozen=True)
class TaskLog:
    """A try's log as read from the bucket: ``text`` is the file's bytes, decoded."""

    sources: list[str]
    text: str = ""
    chunks: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        """Lines split on newlines only, as Airflow splits a log file (not on U+2028 & co)."""
        if not self.text:
            return []
        lines = self.text.split("\n")
        return lines[:-1] if lines[-1] == "" else lines


@dataclass(frozen=True)
class _Chunk:
    job_id: str
    seq: int
    key: str
    size: int


class _Refused(Exception):
    """A chunk that verified but is not believed: the reason is its message."""


@dataclass(frozen=True)
class _Holder:
    """Whose chunks of a job are believed: the claim holder's key; None when the claim is gone
    (any trusted worker key, one per job); ``problem`` when no chunk of the job is."""

    kid: str | None
    problem: str | None = None


class BucketLogReader:
    """Reads a task-instance try's log from the bucket, verifies and opens it.

    ``worker_keys`` are the trusted worker keys; with ``worker_keys_spec`` (the setting they
    came from) they are read again every ``keys_check_interval`` seconds, as the reconciler
    does, so that the api-server sees a worker enrolled or revoked without a restart."""

    def __init__(
        self,
        mailbox: Mailbox,
        signing_key: SigningKey,
        worker_keys: KeyRing,
        transport: Transport | None = None,
        *,
        worker_keys_spec: str = "",
        keys_check_interval: float = 15.0,
        max_chunks: int = MAX_READ_CHUNKS,
        max_bytes: int = MAX_READ_BYTES,
    ) -> None:
        self.mailbox = mailbox
        self.seed = signing_key.seed()
        self.scheduler_keys = KeyRing([signing_key.public])
        self.worker_keys = worker_keys
        self.worker_keys_spec = worker_keys_spec
        self.keys_check_interval = keys_check_interval
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self.transport = transport or default_transport(mailbox)
        self._keys_loaded = time.monotonic()
        self._holders: OrderedDict[str, tuple[str, TaskCoordinates]] = OrderedDict()
        self._lock = threading.Lock()  # the api-server reads from several threads

    def url(self, key: str) -> str:
        return f"s3://{self.mailbox.bucket}/{key}"

    def read(self, coordinates: TaskCoordinates) -> TaskLog:
        """The try's log; StoreError when the bucket cannot be read."""
        root = self.mailbox.layout.log_root(coordinates)
        listed, problems = self._chunks(coordinates, self.transport.list(root))
        if not listed:
            return TaskLog(sources=[f"{self.url(root)}: {NO_LOG_YET}"], problems=problems)
        chunks, cut = self._cap(listed, root)
        bodies = self.transport.fetch([c.key for c in chunks])
        self._reload_keys()
        holders = {job: self._holder(job, coordinates) for job in {c.job_id for c in chunks}}
        texts: dict[str, bytearray] = {}  # job id -> its log, in job order
        expected: dict[str, int] = {}
        signers: dict[str, str] = {}  # job id -> the key its chunks are signed by (no claim)
        for chunk, body in zip(chunks, bodies, strict=True):
            data = texts.setdefault(chunk.job_id, bytearray())
            if chunk.seq != expected.get(chunk.job_id, 0):
                first, last = expected.get(chunk.job_id, 0), chunk.seq - 1
                gap = f"chunks {first}..{last} of job {chunk.job_id} are missing"
                problems.append(gap)
                _note(data, gap)
            expected[chunk.job_id] = chunk.seq + 1
            if isinstance(body, Exception):
                problems.append(f"{self.url(chunk.key)} could not be read: {body}")
                _note(data, f"chunk {chunk.seq} of job {chunk.job_id} could not be read")
                continue
            try:
                data += self._open(chunk, body, coordinates, holders[chunk.job_id], signers)
            except (VerificationError, ProtocolError, SealError, _Refused) as exc:
                problems.append(f"{self.url(chunk.key)} refused: {exc}")
                _note(data, f"chunk {chunk.seq} of job {chunk.job_id} refused: {exc}")
        sources = [
            f"{self.url(root)}: {len(chunks)} sealed chunk(s) of edge-mailbox job(s) "
            f"{', '.join(texts)}",
            *(
                f"edge-mailbox job {job}: its claim is gone (cleaned up after the job ended), so "
                f"its chunks were checked against the trusted worker keys only: signed by {kid}"
                for job, kid in signers.items()
            ),
        ]
        # A job's partial last line ends where the next job's log begins.
        parts = [_decode(data) for data in texts.values() if data]
        if cut:
            problems.append(cut)
            parts.append(f"[edge-mailbox: {cut}]\n")
        text = "".join(t if t.endswith("\n") else t + "\n" for t in parts[:-1]) + (
            parts[-1] if parts else ""
        )
        return TaskLog([*sources, *problems], text, len(chunks), problems)

    def _open(
        self,
        chunk: _Chunk,
        body: bytes,
        coordinates: TaskCoordinates,
        holder: _Holder,
        signers: dict[str, str],
    ) -> bytes:
        """A chunk's log bytes, if it is the claim holder's and was found where it belongs."""
        if holder.problem:
            raise _Refused(holder.problem)
        job_id = chunk.job_id
        signed = self.mailbox.verify_log_chunk(
            body, coordinates, job_id, chunk.seq, self.worker_keys
        )
        if holder.kid is not None and signed.kid != holder.kid:
            raise _Refused(
                f"signed by worker key {signed.kid}, not by the claim holder's {holder.kid}"
            )
        if holder.kid is None:
            first = signers.setdefault(job_id, signed.kid)
            if signed.kid != first:
                raise _Refused(f"signed by worker key {signed.kid}; the job's others by {first}")
        return open_sealed(
            signed.model.sealed,
            SealKey.derive(self.seed, job_id),
            context=self.mailbox.log_context(coordinates, job_id, chunk.seq),
        )

    def _holder(self, job_id: str, coordinates: TaskCoordinates) -> _Holder:
        """Who holds the job's claim, verified: its key, and that the manifest it embeds is
        ours and for this try. Remembered (a claim never changes), since the UI asks again
        every few seconds and the claim is deleted a while after the job ended."""
        with self._lock:
            known = self._holders.get(job_id)
            if known:
                self._holders.move_to_end(job_id)
        if known is None:
            try:
                claim, manifest = self.mailbox.read_claim_holder(
                    job_id, self.worker_keys, self.scheduler_keys
                )
            except NotFound:
                return _Holder(None)
            except (VerificationError, ProtocolError) as exc:
                return _Holder(None, f"the job's claim is refused ({exc})")
            try:
                claimed = TaskCoordinates.of_ti(manifest.ti)
            except (KeyError, TypeError, ValueError):
                return _Holder(None, "the job's manifest names no task-instance try")
            known = (claim.kid, claimed)
            with self._lock:
                self._holders[job_id] = known
                while len(self._holders) > HOLDERS_KEPT:
                    self._holders.popitem(last=False)
        kid, claimed = known
        if claimed != coordinates:
            return _Holder(None, f"the job runs another task-instance try ({_describe(claimed)})")
        return _Holder(kid)

    def _cap(self, chunks: list[_Chunk], root: str) -> tuple[list[_Chunk], str | None]:
        """The chunks one read shows: at most ``max_chunks`` and ``max_bytes``, from the
        start (Airflow's UI asks for the lines after those it has: the start must not move)."""
        total = 0
        for index, chunk in enumerate(chunks):
            if index >= self.max_chunks or total + chunk.size > self.max_bytes:
                return chunks[:index], (
                    f"the log is cut here: a read shows at most {self.max_chunks} chunks or "
                    f"{self.max_bytes} bytes; {len(chunks) - index} more chunk(s) of this try "
                    f"are in {self.url(root)}"
                )
            total += chunk.size
        return chunks, None

    def _reload_keys(self) -> None:
        if not self.worker_keys_spec:
            return
        if time.monotonic() - self._keys_loaded < self.keys_check_interval:
            return
        self._keys_loaded = time.monotonic()
        from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_worker_keys

        try:
            self.worker_keys.replace_with(load_worker_keys(self.worker_keys_spec))
        except EdgeMailboxConfigError as exc:
            log.warning("edge-mailbox: keeping the trusted worker keys as they were: %s", exc)

    def _chunks(
        self, coordinates: TaskCoordinates, listing: Iterable[tuple[str, int]]
    ) -> tuple[list[_Chunk], list[str]]:
        chunks, problems = [], []
        for key, size in listing:
            try:
                job_id, seq = self.mailbox.layout.parse_log_chunk(key, coordinates)
            except ValueError:
                continue  # not a chunk (a stray object); never ours to interpret
            if size > MAX_CHUNK_BYTES:
                problems.append(f"{self.url(key)} skipped: {size} bytes is over the limit")
                continue
            chunks.append(_Chunk(job_id, seq, key, size))
        chunks.sort(key=lambda c: (c.job_id, c.seq))
        return chunks, problems


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _note(data: bytearray, what: str) -> None:
    """A line of the reader's own in the log, where the chunk it is about would have been."""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    data += f"[edge-mailbox: {what}]\n".encode()


def _describe(ti: TaskCoordinates) -> str:
    return f"{ti.dag_id}.{ti.task_id} run {ti.run_id} map {ti.map_index} try {ti.try_number}"
