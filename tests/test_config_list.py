"""``airflow config list --section edge_mailbox`` shows every option of both sides, with its
default, as Airflow itself reads the provider's config section (a real ``airflow`` process),
and an AIRFLOW__EDGE_MAILBOX__* variable of a worker option overrides it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_mailbox.executor.provider import render
from edge_mailbox.mailbox.options import ExecutorOptions, WorkerOptions, default

pytestmark = pytest.mark.e2e  # starts the airflow command line
AIRFLOW = Path(sys.executable).parent / "airflow"
LINE = re.compile(r"^(#\s*)?(\w+) = (.*)$")


def listed(tmp_path: Path, **env: str) -> dict[str, tuple[bool, str]]:
    """``name -> (commented out, value)`` for each line of the section as printed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    done = subprocess.run(
        [AIRFLOW, "config", "list", "--section", "edge_mailbox", "--show-values"],
        env={**clean, "AIRFLOW_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (LINE.match(line.rstrip("\n")) for line in done.stdout.splitlines())
    return {m[2]: (bool(m[1]), m[3].strip()) for m in lines if m}


def test_config_list_shows_every_option_of_both_sides_with_its_default(tmp_path) -> None:
    shown = listed(tmp_path, AIRFLOW__EDGE_MAILBOX__WORKER_CONCURRENCY="3")
    for model in (ExecutorOptions, WorkerOptions):
        for name, field in model.model_fields.items():
            assert name in shown, f"{name} missing from airflow config list"
            if field.is_required() or field.default_factory is not None:
                assert shown[name] == (True, ""), name  # no default: commented out
            elif name != "worker_concurrency":
                assert shown[name] == (False, render(default(model, name))), name
    assert shown["worker_concurrency"] == (False, "3")
    assert shown["worker_log_max_bytes"] == (False, str(2 * 1024**3))
    assert shown["worker_queues"] == (False, "default")
