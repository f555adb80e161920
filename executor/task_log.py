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

Two doors lead here from Airflow's ``FileTaskHandler._read``:

- ``MailboxExecutor.get_task_log`` while the task is RUNNING (``read_running_log``);
- ``MailboxRemoteLogIO.read`` (``[logging] logging_config_class``, see log_config.py) once it
  is not. It answers nothing for a RUNNING task, so that no line is shown twice.

Both always name a source: an answer without one sends Airflow to the worker's log server
(port 8793), which an edge worker does not have and could not be reached on anyway.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import TaskCoordinates
from edge_mailbox.mailbox.models import LogChunk
from edge_mailbox.signer import KeyRing, SealError, SealKey, VerificationError, open_sealed

if TYPE_CHECKING:
    from edge_mailbox.mailbox.config import StoreConfig
    from edge_mailbox.mailbox.protocol import Mailbox
    from edge_mailbox.signer import SigningKey

log = logging.getLogger(__name__)

# A signed chunk's size limit; LogShipper's are far smaller (256 KiB of log by default).
MAX_CHUNK_BYTES = LogChunk.MAX_BYTES * 2
# What one read fetches at most: the UI reads a running task's whole log every few seconds.
MAX_READ_CHUNKS = 2000
MAX_READ_BYTES = 64 * 1024 * 1024
# Verified claim holders remembered (a claim is created once and never changes).
HOLDERS_KEPT = 4096
_CHUNK = re.compile(r"([0-9a-f]{28})/(\d{8,})\.chunk")
_RUNNING = "running"
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


class Transport(Protocol):
    """LIST and GET, the two reads the log reader needs."""

    def list(self, prefix: str) -> list[tuple[str, int]]: ...

    def fetch(self, keys: list[str]) -> list[bytes | Exception]: ...


class S3fsTransport:
    """fsspec/s3fs: one recursive LIST (paged), then the chunks fetched concurrently.

    Built on first use, not at import nor in a parent process: s3fs runs an event loop in a
    thread of its own, which a fork (uvicorn workers) would not carry over."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._fs: Any = None
        self._lock = threading.Lock()

    @property
    def fs(self) -> Any:
        with self._lock:
            if self._fs is None:
                import s3fs

                c = self.config
                config_kwargs: dict[str, Any] = {
                    "s3": {"addressing_style": c.addressing_style},
                    "connect_timeout": c.connect_timeout,
                    "read_timeout": c.read_timeout,
                    "max_pool_connections": c.max_pool_connections,
                }
                if c.proxy:
                    config_kwargs["proxies"] = {"http": c.proxy, "https": c.proxy}
                self._fs = s3fs.S3FileSystem(
                    key=c.access_key_id,
                    secret=c.secret_access_key,
                    token=c.session_token,
                    profile=c.profile,
                    endpoint_url=c.endpoint_url,
                    client_kwargs={"region_name": c.region or "us-east-1", "verify": c.verify_tls},
                    config_kwargs=config_kwargs,
                    use_listings_cache=False,  # a running task's folder grows between reads
                    skip_instance_cache=True,
                    max_concurrency=1,  # no HEAD before each GET: chunks are small
                )
            return self._fs

    def _path(self, key: str) -> str:
        return f"{self.config.bucket}/{key}"

    def list(self, prefix: str) -> list[tuple[str, int]]:
        try:
            found = self.fs.find(self._path(prefix), detail=True)
        except Exception as exc:  # botocore, aiohttp and OSError subclasses alike
            raise StoreError(f"LIST failed: {exc}", key=prefix) from exc
        skip = len(self.config.bucket) + 1
        return [(name[skip:], int(info.get("size") or 0)) for name, info in found.items()]

    def fetch(self, keys: list[str]) -> list[bytes | Exception]:
        if not keys:
            return []
        try:
            return list(self.fs.cat_ranges([self._path(k) for k in keys], None, None))
        except Exception as exc:
            raise StoreError(f"GET failed: {exc}") from exc


class StoreTransport:
    """The protocol's own ObjectStore (boto3): for hosts without s3fs. GETs one by one."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.store = mailbox.store

    def list(self, prefix: str) -> list[tuple[str, int]]:
        return [(e.key, e.size) for e in self.store.list_all(prefix)]

    def fetch(self, keys: list[str]) -> list[bytes | Exception]:
        out: list[bytes | Exception] = []
        for key in keys:
            try:
                out.append(self.store.get(key, max_bytes=MAX_CHUNK_BYTES).body)
            except StoreError as exc:
                out.append(exc)
        return out


def default_transport(mailbox: Mailbox) -> Transport:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return StoreTransport(mailbox)
    return S3fsTransport(mailbox.store.config)


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
        listed, problems = self._chunks(root, self.transport.list(root))
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
        self, root: str, listing: Iterable[tuple[str, int]]
    ) -> tuple[list[_Chunk], list[str]]:
        chunks, problems = [], []
        for key, size in listing:
            match = _CHUNK.fullmatch(key[len(root) :]) if key.startswith(root) else None
            if not match:
                continue  # not a chunk (a stray object); never ours to interpret
            if size > MAX_CHUNK_BYTES:
                problems.append(f"{self.url(key)} skipped: {size} bytes is over the limit")
                continue
            chunks.append(_Chunk(match.group(1), int(match.group(2)), key, size))
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


def coordinates_of(ti: Any, try_number: int | None = None) -> TaskCoordinates:
    """The bucket's coordinates of an Airflow TaskInstance (or TaskInstanceHistory) try."""
    map_index = getattr(ti, "map_index", -1)
    return TaskCoordinates(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=-1 if map_index is None else int(map_index),
        try_number=int(try_number if try_number is not None else ti.try_number),
    )


# -- one reader per process, built from airflow.cfg on first use -------------------------------

_shared: BucketLogReader | None = None
_shared_lock = threading.Lock()
_warned: set[str] = set()


def reader_from_conf() -> BucketLogReader:
    """A reader built from ``[edge_mailbox]``: the bucket, the scheduler's signing key and the
    trusted worker keys.

    Cached for the process: the api-server asks for logs every few seconds per open page."""
    global _shared
    with _shared_lock:
        if _shared is None:
            from airflow.configuration import conf

            from edge_mailbox.executor.settings import load_settings
            from edge_mailbox.mailbox.protocol import Mailbox
            from edge_mailbox.mailbox.store import ObjectStore

            execution_api_url = conf.get("core", "execution_api_server_url", fallback="") or "-"
            settings = load_settings(conf, execution_api_url)  # unused here: logs need no API
            _shared = BucketLogReader(
                Mailbox(ObjectStore(settings.store)),
                settings.signing_key,
                settings.worker_keys,
                worker_keys_spec=settings.worker_keys_spec,
                keys_check_interval=settings.worker_check_interval,
            )
        return _shared


def _failure(what: str, exc: Exception) -> str:
    message = f"edge-mailbox: could not read the task's log from the bucket: {exc}"
    key = f"{what}:{type(exc).__name__}"
    if key not in _warned:  # once per kind of failure, not once per UI poll
        _warned.add(key)
        log.warning("%s (%s)", message, what)
    return message


def read_running_log(
    ti: Any, try_number: int, reader: Callable[[], BucketLogReader] = reader_from_conf
) -> tuple[list[str], list[str]]:
    """``(sources, lines)`` of a RUNNING task for ``BaseExecutor.get_task_log``.

    The sources list is never empty, whatever happens: that is what keeps Airflow from asking
    the worker's log server."""
    try:
        task_log = reader().read(coordinates_of(ti, try_number))
    except Exception as exc:  # config, bucket, names: the UI shows why, the api-server lives on
        return [_failure("get_task_log", exc)], []
    return task_log.sources, task_log.lines


class MailboxRemoteLogIO:
    """Airflow's RemoteLogIO for the UI's reads of finished tasks' logs.

    Workers upload; ``upload`` is a no-op here. ``read`` answers only for tasks that ran on
    MailboxExecutor (a LocalExecutor task beside it keeps its local log) and only when they
    are not RUNNING (``MailboxExecutor.get_task_log`` serves those: both are consulted)."""

    def __init__(
        self,
        reader: Callable[[], BucketLogReader] = reader_from_conf,
        is_mailbox_task: Callable[[Any], bool] | None = None,
    ) -> None:
        self._reader = reader
        self._is_mailbox_task = is_mailbox_task or runs_on_mailbox_executor

    @property
    def processors(self) -> tuple[Any, ...]:
        return ()

    def upload(self, path: Any, ti: Any = None) -> None:
        """Workers upload their own logs to the bucket; nothing to do on this side."""

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        if not self._is_mailbox_task(ti) or _state(ti) == _RUNNING:
            return [], []
        try:
            task_log = self._reader().read(coordinates_of(ti))
        except Exception as exc:
            message = _failure("remote log read", exc)
            return [message], [message]  # a line: an empty answer sends Airflow to port 8793
        if not task_log.chunks:
            return task_log.sources, [NO_LOG_YET]
        return task_log.sources, task_log.lines


def _state(ti: Any) -> str | None:
    state = getattr(ti, "state", None)
    return getattr(state, "value", state)


_executor_kind: dict[str | None, bool] = {}


def runs_on_mailbox_executor(ti: Any) -> bool:
    """Whether ``ti`` ran (or runs) on MailboxExecutor: its ``executor``, else the default."""
    name = getattr(ti, "executor", None) or None
    if name not in _executor_kind:
        try:
            from airflow.executors.executor_loader import ExecutorLoader

            from edge_mailbox.executor.mailbox_executor import MailboxExecutor

            found = (
                ExecutorLoader.lookup_executor_name_by_str(name)
                if name
                else ExecutorLoader.get_default_executor_name()
            )
            cls, _ = ExecutorLoader.import_executor_cls(found)
            _executor_kind[name] = isinstance(cls, type) and issubclass(cls, MailboxExecutor)
        except Exception as exc:
            log.warning("edge-mailbox: cannot tell which executor runs %r: %s", name, exc)
            return False
    return _executor_kind[name]
