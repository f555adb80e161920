"""Where Airflow's log reading meets the bucket's: the two doors from ``FileTaskHandler._read``.

- ``MailboxExecutor.get_task_log`` while the task is RUNNING (``read_running_log``);
- ``MailboxRemoteLogIO.read`` (``[logging] logging_config_class``, see log_config.py) once it
  is not. It answers nothing for a RUNNING task, so that no line is shown twice.

Both always name a source: an answer without one sends Airflow to the worker's log server
(port 8793), which an edge worker does not have and could not be reached on anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edge_mailbox.executor.task_log import NO_LOG_YET, BucketLogReader
from edge_mailbox.mailbox.layout import TaskCoordinates

log = logging.getLogger(__name__)
_RUNNING = "running"


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
