"""Airflow provider metadata, found through the ``apache_airflow_provider`` entry point.

The ``config`` key documents every [edge_mailbox] option of both sides with its default; it
is generated from the option models in mailbox/options.py, where each default is declared.
Airflow serves these defaults to ``conf.get`` and honours AIRFLOW__EDGE_MAILBOX__* overrides.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edge_mailbox import __version__
from edge_mailbox.mailbox.options import (
    SECTION,
    ExecutorOptions,
    StoreOptions,
    WorkerOptions,
    default,
    flag_of,
)

# Who reads an option, told at the start of its description.
SIDES: tuple[tuple[type[BaseModel], str], ...] = (
    (StoreOptions, "Both sides"),
    (ExecutorOptions, "Scheduler side"),
    (WorkerOptions, "Worker"),
)
TYPES = {float: "float", int: "integer", bool: "boolean"}


def render(value: Any) -> str | None:
    """A default as airflow.cfg would hold it (None: no default, the option must be set)."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type(field: FieldInfo) -> str:
    kind = typing.get_origin(field.annotation) or field.annotation
    return TYPES.get(kind, "string")  # type: ignore[arg-type]


def _option(model: type[BaseModel], name: str, side: str) -> dict[str, Any]:
    field = model.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    flag = flag_of(field)
    description = f"{side}: {field.description}" + (f" Flag: {flag}." if flag else "")
    # None for one that must be set, and for one computed where it runs (the host name)
    computed = field.is_required() or field.default_factory is not None
    value = None if computed else render(default(model, name))
    option = {
        "description": description,
        "version_added": None,
        "type": _type(field),
        "example": extra.get("example"),
        "default": value,
    }
    if extra.get("sensitive"):
        option["sensitive"] = True
    return option


def config_options() -> dict[str, dict[str, Any]]:
    """Every option of both sides, each once: the shared ones first, then each side's."""
    options: dict[str, dict[str, Any]] = {}
    for model, side in SIDES:
        for name in model.model_fields:
            if name not in options:
                options[name] = _option(model, name, side)
    return options


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "edge-mailbox",
        "name": "Edge Mailbox",
        "description": "Run Airflow tasks on edge workers that reach only an S3-compatible bucket.",
        "versions": [__version__],
        "executors": ["edge_mailbox.executor.MailboxExecutor"],
        "config": {
            SECTION: {
                "description": "MailboxExecutor: edge workers reach only an S3-compatible "
                "bucket. Each option says which side reads it; a worker's flags override its "
                "options.",
                "options": config_options(),
            }
        },
        "cli": ["edge_mailbox.executor.airflow_cli.get_cli_commands"],
    }
