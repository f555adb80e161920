"""Airflow's logging config plus a RemoteLogIO that reads finished tasks' logs from the bucket.

Scheduler side only (api-server, scheduler, dag-processor, triggerer), in their airflow.cfg:

    [logging]
    logging_config_class = edge_mailbox.executor.log_config.LOGGING_CONFIG

Airflow then finds ``REMOTE_TASK_LOG`` in this module (tier 1 of
``airflow._shared.logging.factory.resolve_remote_task_log``): it works with ``[logging]
remote_logging = False``, which is what it should stay. A ``remote_base_log_folder`` with a
scheme of our own would need ``remote_logging = True``, and then the stock
``airflow_local_settings`` refuses to import ("Incorrect remote log configuration"), so that
route is closed.

Edge workers must not set this class: they upload their logs themselves (worker/logship.py),
and they hold no signing key to read anything with.

This module is imported at every Airflow start, so it does no I/O: the bucket and the key
are read on the first log read. Without ``[edge_mailbox] bucket`` it warns and leaves
``REMOTE_TASK_LOG`` unset, and Airflow reads logs as it would without this class.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from typing import Any

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

log = logging.getLogger(__name__)

LOGGING_CONFIG: dict[str, Any] = deepcopy(DEFAULT_LOGGING_CONFIG)


def _remote_task_log() -> Any:
    try:
        from airflow.configuration import conf

        bucket = conf.get("edge_mailbox", "bucket", fallback="") or ""
    except Exception as exc:  # never let logging set-up stop Airflow from starting
        log.warning("edge-mailbox: cannot read [edge_mailbox] (%s); task logs read locally", exc)
        return None
    if not bucket.strip():
        log.warning(
            "edge-mailbox: [logging] logging_config_class is %s.LOGGING_CONFIG but "
            "[edge_mailbox] bucket is not set; task logs are not read from the bucket",
            __name__,
        )
        return None
    from edge_mailbox.executor.log_airflow import MailboxRemoteLogIO

    return MailboxRemoteLogIO()


REMOTE_TASK_LOG = _remote_task_log()
