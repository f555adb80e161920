"""The scheduler side: MailboxExecutor, its reconciler and relay, its CLI.

``MailboxExecutor`` is imported lazily: Airflow loads this package's provider info while it
is itself being imported, before its executor base class can be.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MailboxExecutor"]


def __getattr__(name: str) -> Any:
    if name == "MailboxExecutor":
        from edge_mailbox.executor.mailbox_executor import MailboxExecutor

        return MailboxExecutor
    raise AttributeError(name)
