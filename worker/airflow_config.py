"""What the worker needs of its own Airflow config, checked before it starts."""

from __future__ import annotations

import os
from pathlib import Path


def check_airflow_config() -> tuple[Path, set[str]]:
    """The worker's Airflow config must name MailboxExecutor: the task runner checks a task's
    ``executor=`` against it when it parses the DAG. Returns the base log folder and the
    names of the DAG bundles configured here."""
    from airflow.configuration import conf

    executors = conf.get("core", "executor", fallback="") or ""
    if "MailboxExecutor" not in executors:
        raise SystemExit(
            "edge-mailbox-worker: [core] executor in this worker's airflow.cfg "
            f"({os.environ.get('AIRFLOW_HOME', '~/airflow')}) is {executors!r}; it must list "
            "edge_mailbox.executor.MailboxExecutor, as the scheduler's does "
            "(AIRFLOW__CORE__EXECUTOR=edge_mailbox.executor.MailboxExecutor)"
        )
    bundles = conf.getjson("dag_processor", "dag_bundle_config_list", fallback=None) or []
    names = {b.get("name") for b in bundles if isinstance(b, dict) and b.get("name")}
    return Path(conf.get("logging", "base_log_folder")).expanduser(), names
