"""Task logs from the bucket, for the Airflow UI: scheduler side (api-server) only.

Workers upload each task's log as sealed chunks, ``logs/{dag}/{run}/{task}/map={i}/try={n}/
{job}/{seq:08d}.chunk`` (worker/logship.py). Knowing only the task instance, as the UI does,
``BucketLogReader`` finds them with one LIST of the try's folder (paged if needed), fetches
them concurrently with fsspec/s3fs (the ObjectStore when s3fs is not installed), opens each
with the job's key derived from the scheduler's signing seed, and joins them in (job, seq)
order. Two doors lead here from Airflow's ``FileTaskHandler._read``:

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_mailbox.mailbox.errors import StoreError
from edge_mailbox.mailbox.layout import TaskCoordinates

if TYPE_CHECKING:
    from edge_mailbox.mailbox.config import StoreConfig
    from edge_mailbox.mailbox.protocol import Mailbox
    from edge_mailbox.signer import SigningKey

log = logging.getLogger(__name__)

# LogShipper seals at most 256 KiB of log per chunk; anything far bigger is not one of its.
MAX_CHUNK_BYTES = 16 * 1024 * 1024
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


class BucketLogReader:
    """Reads a task-instance try's log from the bucket and opens it."""

    def __init__(
        self, mailbox: Mailbox, signing_key: SigningKey, transport: Transport | None = None
    ) -> None:
        self.mailbox = mailbox
        self.seed = signing_key.seed()
        self.transport = transport or default_transport(mailbox)

    def url(self, key: str) -> str:
        return f"s3://{self.mailbox.bucket}/{key}"

    def read(self, coordinates: TaskCoordinates) -> TaskLog:
        """The try's log; StoreError when the bucket cannot be read."""
        from edge_mailbox.signer import SealError, SealKey, open_bytes

        root = self.mailbox.layout.log_root(coordinates)
        chunks, problems = self._chunks(root, self.transport.list(root))
        if not chunks:
            return TaskLog(sources=[f"{self.url(root)}: {NO_LOG_YET}"], problems=problems)
        bodies = self.transport.fetch([c.key for c in chunks])
        texts: dict[str, bytearray] = {}  # job id -> its log, in job order
        expected: dict[str, int] = {}
        for chunk, body in zip(chunks, bodies, strict=True):
            data = texts.setdefault(chunk.job_id, bytearray())
            if chunk.seq != expected.get(chunk.job_id, 0):
                first, last = expected.get(chunk.job_id, 0), chunk.seq - 1
                problems.append(f"chunks {first}..{last} of job {chunk.job_id} are missing")
            expected[chunk.job_id] = chunk.seq + 1
            if isinstance(body, Exception):
                problems.append(f"{self.url(chunk.key)} could not be read: {body}")
                continue
            try:
                data += open_bytes(
                    body,
                    SealKey.derive(self.seed, chunk.job_id),
                    context=self.mailbox.log_context(chunk.job_id, chunk.seq),
                )
            except SealError as exc:
                problems.append(f"{self.url(chunk.key)} refused: {exc}")
        source = (
            f"{self.url(root)}: {len(chunks)} sealed chunk(s) of edge-mailbox job(s) "
            f"{', '.join(texts)}"
        )
        # A job's partial last line ends where the next job's log begins.
        parts = [_decode(data) for data in texts.values() if data]
        text = "".join(t if t.endswith("\n") else t + "\n" for t in parts[:-1]) + (
            parts[-1] if parts else ""
        )
        return TaskLog([source, *problems], text, len(chunks), problems)

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
    """A reader built from ``[edge_mailbox]``: the bucket and the scheduler's signing key.

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
            _shared = BucketLogReader(Mailbox(ObjectStore(settings.store)), settings.signing_key)
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
