"""Ship a running task's log to the bucket in signed, sealed chunks, so the UI shows it while
it runs.

Airflow's task process appends JSON lines to ``base_log_folder/log_path``; this file stays the
local copy. ``LogShipper`` uploads what was appended since the last upload as chunk ``seq``
(``logs/.../try={n}/{job}/{seq:08d}.chunk``): sealed like relayed data to the scheduler
side's key for the job, and signed with this worker's key, the one that holds the job's claim
(the reader believes no other). It is driven by the worker's single-threaded loop (``tick``),
never by a thread of its own, and makes these guarantees to the reader (executor/task_log.py):

- order and completeness: chunk ``seq`` holds the bytes that follow chunk ``seq - 1``; the
  offset and ``seq`` advance only after the chunk was created, and a failed create is tried
  again later with the very same bytes, so a chunk whose answer was lost is found there as
  written (success): no line is lost, none appears twice;
- a chunk is created once (If-None-Match): nobody overwrites one, not even a replay of the
  job. A ``seq`` someone else took first is skipped (the reader shows it refused), and its
  lines go into the next one;
- while the task runs only complete lines are shipped (a reader never sees half a line that
  the next chunk completes); ``finish`` ships the rest, a partial last line included;
- a chunk holds at most ``chunk_size`` bytes of log: a big backlog becomes several chunks.

``cleanup_local_logs`` rotates the local copies: Airflow never deletes them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from edge_mailbox.mailbox.errors import AlreadyExists, StoreError
from edge_mailbox.mailbox.layout import TaskCoordinates
from edge_mailbox.mailbox.models import JobManifest
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import SigningKey

log = logging.getLogger("edge_mailbox.worker.logship")

# How many chunks one tick may upload: a backlog keeps the next ticks busy (``tick`` ships
# again as soon as ``chunk_size`` bytes wait), but one tick never holds the loop for long.
MAX_CHUNKS_PER_TICK = 4
MAX_BACKOFF = 60.0
# Sealed, base64url'd and signed, a chunk grows to about 1.8 times its log bytes: this keeps
# it well inside a LogChunk's size limit (and a signed object's, 4 MiB).
MAX_CHUNK_SIZE = 1024 * 1024
# Sequence numbers taken by someone else in a row after which the rest of a job's log stays
# local: a bucket writer who created every next key must not hold the worker up for ever.
MAX_TAKEN_IN_A_ROW = 64


class LogShipper:
    """Uploads one job's log file as ordered, sealed chunks while the job runs, then the rest.

    ``skip_existing`` starts after what the file already holds: the worker sets it when it
    creates the shipper before it starts the job, so that the lines of an earlier job of the
    same try on this machine (a deferred task resumed here appends to the same file) are not
    shipped a second time under the new job.
    """

    def __init__(
        self,
        mailbox: Mailbox,
        manifest: JobManifest,
        log_file: Path,
        key: SigningKey,
        *,
        interval: float = 5.0,
        chunk_size: int = 256 * 1024,
        skip_existing: bool = False,
    ) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in [1, {MAX_CHUNK_SIZE}]")
        self.mailbox = mailbox
        self.manifest = manifest
        self.log_file = Path(log_file)
        self.key = key
        self.interval = interval
        self.chunk_size = chunk_size
        self.coordinates = TaskCoordinates.of_ti(manifest.ti)
        self.offset = self._size() if skip_existing else 0  # bytes of the file in the bucket
        self.seq = 0  # the next chunk's sequence number
        self.finished = False
        # A chunk whose create failed: the end of its byte range, and the very bytes to create
        # again (sealing and signing anew would make other bytes, which the bucket, finding the
        # first attempt there, could not tell from someone else's).
        self._retry_end: int | None = None
        self._retry_body: bytes | None = None
        self._taken = 0  # sequence numbers taken by someone else, in a row
        self._last_upload: float | None = None
        self._not_before = 0.0  # after a failure, the next try waits (exponential backoff)
        self._backoff = 0.0

    # -- the worker loop's calls ---------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Ship complete new lines when ``interval`` passed or ``chunk_size`` bytes wait.

        ``now`` is any steadily increasing clock (``time.monotonic()``). Never raises a
        StoreError: the bucket being away is logged, and the lines wait for the next try."""
        if self.finished:
            return
        if self._last_upload is None:
            self._last_upload = now  # the interval counts from the first tick (job start)
        if now < self._not_before:
            return
        waiting = self._size() - self.offset
        if waiting <= 0:
            return
        if now - self._last_upload < self.interval and waiting < self.chunk_size:
            return
        try:
            self._ship(complete_lines_only=True, max_chunks=MAX_CHUNKS_PER_TICK)
        except StoreError as exc:
            self._backoff = min(max(self._backoff * 2, 1.0), MAX_BACKOFF)
            self._not_before = now + self._backoff
            log.warning(
                "log of job %s: chunk %d waits, bucket unavailable (%s); next try in %.0f s",
                self.manifest.job_id,
                self.seq,
                exc,
                self._backoff,
            )
            return
        self._backoff = 0.0
        self._last_upload = now

    def finish(self) -> int:
        """Ship everything left, a partial last line included; return the number of chunks.

        Call it after the job's process exited. May raise StoreError: nothing is lost, and a
        later call continues where this one stopped."""
        if not self.finished:
            self._ship(complete_lines_only=False, max_chunks=None)
            self.finished = True
        return self.seq

    # -- internals -----------------------------------------------------------------------------

    def _size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:  # not created yet by the task process, or gone
            return 0

    def _ship(self, *, complete_lines_only: bool, max_chunks: int | None) -> None:
        shipped = 0
        while max_chunks is None or shipped < max_chunks:
            data = b"" if self.finished else self._next_chunk(complete_lines_only)
            if not data:
                return
            shipped += 1
            try:
                self._upload(self.seq, data)  # raises StoreError: offset and seq stay
            except AlreadyExists:
                self._skip_taken()
                continue
            self.offset += len(data)
            self.seq += 1
            self._retry_end = self._retry_body = None
            self._taken = 0

    def _skip_taken(self) -> None:
        """Chunk ``seq`` holds an object this worker did not write: leave it (the reader
        shows it refused), and put the same lines into the next one."""
        self._taken += 1
        log.warning(
            "log of job %s: chunk %d was created by someone else; its lines go into chunk %d",
            self.manifest.job_id,
            self.seq,
            self.seq + 1,
        )
        self.seq += 1
        self._retry_end = self._retry_body = None
        if self._taken >= MAX_TAKEN_IN_A_ROW:
            log.error(
                "log of job %s: %d chunks in a row were taken by someone else; the rest of the "
                "log stays in %s",
                self.manifest.job_id,
                self._taken,
                self.log_file,
            )
            self.finished = True

    def _next_chunk(self, complete_lines_only: bool) -> bytes:
        """The bytes of the next chunk, from ``offset``: the same range as a failed attempt,
        else up to ``chunk_size`` bytes cut after their last newline, so that a reader never
        shows half a line that the next chunk completes. Only ``finish`` ships a partial last
        line, and a line longer than a chunk goes in pieces: it cannot wait for ever."""
        end = self._retry_end
        try:
            with open(self.log_file, "rb") as handle:
                handle.seek(self.offset)
                if end is not None:
                    return handle.read(end - self.offset)
                data = handle.read(self.chunk_size)
        except FileNotFoundError:
            return b""
        if not data or data.endswith(b"\n"):
            return data
        full = len(data) == self.chunk_size
        if not full and not complete_lines_only:
            return data  # the end of the file, a partial last line included
        cut = data.rfind(b"\n")
        if cut >= 0:
            return data[: cut + 1]
        return data if full else b""  # a line still being written: wait for its end

    def _upload(self, seq: int, data: bytes) -> None:
        if self._retry_body is None:
            self._retry_end = self.offset + len(data)
            self._retry_body = self.mailbox.encode_log_chunk(
                self.coordinates, self.manifest.job_id, seq, data, self.manifest.seal_key, self.key
            )
        self.mailbox.put_log_chunk(self.coordinates, self.manifest.job_id, seq, self._retry_body)


@dataclass(frozen=True)
class Cleanup:
    """What ``cleanup_local_logs`` removed, for the worker's log line."""

    files: int
    bytes: int


def cleanup_local_logs(
    base: Path,
    max_age_days: float,
    max_total_bytes: int,
    *,
    keep: frozenset[Path] | set[Path] = frozenset(),
    now: float | None = None,
) -> Cleanup:
    """Delete task log files (``*.log``) under ``base`` older than ``max_age_days``, then the
    oldest ones until the rest weigh at most ``max_total_bytes``, and the folders they leave
    empty. Airflow never deletes a task's local log; a worker that runs for months would
    fill its disk.

    ``keep`` names files never to delete: the logs of jobs still running or whose log is not
    in the bucket yet (the worker passes them); they count towards the total all the same.
    """
    now = time.time() if now is None else now
    kept = {Path(p).resolve() for p in keep}
    files: list[tuple[float, int, Path]] = []
    for path in Path(base).rglob("*.log"):
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file() and path.resolve() not in kept:
            files.append((info.st_mtime, info.st_size, path))
    files.sort()  # oldest first
    total = sum(size for _, size, _ in files) + sum(_size_of(p) for p in kept)
    cutoff = now - max_age_days * 86400
    removed = removed_bytes = 0
    base = Path(base)
    for mtime, size, path in files:
        if mtime >= cutoff and total <= max_total_bytes:
            break  # sorted oldest first: everything after is younger and fits
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not delete old log %s: %s", path, exc)
            continue
        total -= size
        removed += 1
        removed_bytes += size
        _remove_empty_parents(path.parent, base)
    return Cleanup(removed, removed_bytes)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove_empty_parents(folder: Path, base: Path) -> None:
    """Remove the folders a deleted file leaves empty, up to (not including) ``base``; only
    those: a folder a starting task has just made for its log is not ours to remove."""
    while folder != base and base in folder.parents:
        try:
            folder.rmdir()  # fails unless empty
        except OSError:
            return
        folder = folder.parent
