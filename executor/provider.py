"""Airflow provider metadata: found through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from edge_mailbox import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "edge-mailbox",
        "name": "Edge Mailbox",
        "description": "Run Airflow tasks on edge workers that reach only an S3-compatible bucket.",
        "versions": [__version__],
        "executors": ["edge_mailbox.executor.MailboxExecutor"],
    }
