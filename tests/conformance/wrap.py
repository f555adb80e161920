"""Loads one of Airflow's example DAG files as a variant bound to one executor.

The generated DAG files (dagfolder.py) call ``load_variant``; it runs in the dag-processor, in
LocalExecutor's task processes and on the edge worker alike, so it must give the same DAGs
everywhere. While the example module runs, ``DAG.__init__`` is wrapped so that each DAG:

- gets ``__<variant>`` appended to its dag_id, so both variants live on one stack;
- gets ``executor`` in its default_args, so every task (mapped ones too) picks its executor
  when it is created, as a user's own default_args would;
- gets ``schedule=None``: the harness triggers every run itself, at a logical date it picks;
  cron schedules would add runs nobody compares, and asset schedules would let one variant's
  producer start the other variant's consumer;
- searches the example's own folder for template files (``.sql``), since its fileloc is
  now the generated file.

References to other DAGs by id (TriggerDagRunOperator, ExternalTaskSensor/Marker) get the
same suffix, so a variant only ever talks to its own variant.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow.sdk.definitions.dag import DAG

from conformance.examples import EXECUTORS

DAG_REFERENCES = ("trigger_dag_id", "external_dag_id")


def variant_dag_id(dag_id: str, variant: str) -> str:
    return f"{dag_id}__{variant}"


@contextmanager
def _bound(variant: str, folder: str, created: list[DAG]) -> Iterator[None]:
    original = DAG.__init__
    executor = EXECUTORS[variant]

    def init(self: DAG, *args: Any, **kwargs: Any) -> None:
        if args:
            args = (variant_dag_id(args[0], variant), *args[1:])
        else:
            kwargs["dag_id"] = variant_dag_id(kwargs["dag_id"], variant)
        kwargs["default_args"] = {**(kwargs.get("default_args") or {}), "executor": executor}
        kwargs["schedule"] = None
        searchpath = kwargs.get("template_searchpath") or []
        if isinstance(searchpath, str):
            searchpath = [searchpath]
        kwargs["template_searchpath"] = [*searchpath, folder]
        original(self, *args, **kwargs)
        created.append(self)

    DAG.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        DAG.__init__ = original  # type: ignore[method-assign]


def load_variant(module_name: str, example: str, variant: str) -> dict[str, DAG]:
    """Run the example file ``example`` with its DAGs bound to ``variant``'s executor; returns
    them for the caller's globals (DAGs built without ``with`` are not auto-registered)."""
    path = Path(example)
    name = f"{module_name}__example"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, example
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    created: list[DAG] = []
    with _bound(variant, str(path.parent), created):
        spec.loader.exec_module(module)
    suffix = variant_dag_id("", variant)
    for dag in created:
        for task in dag.tasks:
            for attribute in DAG_REFERENCES:
                value = getattr(task, attribute, None)
                if isinstance(value, str) and not value.endswith(suffix):
                    setattr(task, attribute, value + suffix)
    return {f"conformance_dag_{i}": dag for i, dag in enumerate(created)}
