"""Which of Airflow's example DAG files the suite runs, which it leaves out and why, and what
the comparison allows for. Every entry carries its reason; an entry without one is a bug."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

# Found without importing airflow: this module is imported by the test process too.
_AIRFLOW = Path(importlib.util.find_spec("airflow").origin).parent  # type: ignore[union-attr, arg-type]
CORE = _AIRFLOW / "example_dags"
STANDARD = _AIRFLOW / "providers" / "standard" / "example_dags"

# Variant -> the executor every task of that variant's DAGs runs on.
EXECUTORS = {"local": "LocalExecutor", "mailbox": "MailboxExecutor"}

# File name -> why it is not run. Everything else in CORE and STANDARD is run.
EXCLUDED: dict[str, str] = {
    "example_kubernetes_executor.py": "needs the kubernetes package and a cluster "
    "(KubernetesExecutor pod_override); fails to import here",
    "example_local_kubernetes_executor.py": "needs the kubernetes package and a cluster "
    "(queue 'kubernetes' of LocalKubernetesExecutor); fails to import here",
    "example_dag_decorator.py": "GetRequestOperator fetches https://httpbingo.org/get "
    "(outside service)",
    "example_retry_policy.py": "calls https://api.example.com (outside service); its policy "
    "then retries a ConnectionError 5 times, 30 s apart",
    "tutorial_objectstorage.py": "reads the open-meteo HTTP API and writes "
    "s3://aws_default@airflow-tutorial-data (outside services)",
    "example_hitl_operator.py": "human in the loop: tasks wait up to 5 min for a person's "
    "answer and notify http://localhost:28080",
    "tutorial_taskflow_api_virtualenv.py": "builds a virtualenv and pip-installs funcsigs "
    "from PyPI at run time (outside service)",
    "example_python_operator.py": "a task builds a virtualenv and pip-installs "
    "colorama==0.4.0 from PyPI at run time (outside service)",
    "example_python_decorator.py": "a task builds a virtualenv and pip-installs "
    "colorama==0.4.0 from PyPI at run time (outside service)",
    "example_branch_operator.py": "tasks build virtualenvs and pip-install numpy~=1.26.0 "
    "from PyPI at run time (outside service)",
    "example_branch_operator_decorator.py": "tasks build virtualenvs and pip-install "
    "numpy~=1.26.0 from PyPI at run time (outside service)",
    "example_sensors.py": "timeout_after_second_date_in_the_future_async defers on a "
    "DateTimeTrigger an hour ahead (TimeSensor.execute passes no timeout to defer, so "
    "timeout=1 does not apply): a run takes an hour under any executor; its FileSensors also "
    "need an fs_default connection, and both variants would share /tmp/temporary_file_for_testing",
    "example_custom_weight.py": "its priority weight strategy (DecreasingPriorityStrategy) "
    "comes from Airflow's example plugins, which a stack loads only with [core] plugins_folder "
    "pointing at them: without, the DAG does not serialize under either executor (the "
    "strategy orders tasks in the scheduler, before any executor sees them)",
}

# dag_id (without variant) -> the conf its run is triggered with: a param without a default.
CONF: dict[str, dict[str, object]] = {
    "example_params_ui_tutorial": {"required_field": "conformance"},
}


# File -> (file it must run after, why).
AFTER: dict[str, tuple[str, str]] = {
    "example_inlet_event_extra.py": (
        "example_outlet_event_extra.py",
        "reads the last event of the asset s3://output/1.txt, which that file's DAGs write",
    ),
}

# (dag_id without variant, task_id) -> why its return value differs from run to run: only
# its presence and type are compared.
NONDETERMINISTIC_XCOM: dict[tuple[str, str], str] = {
    ("example_asset_state_store_producer", "load"): "a row count from random.randint",
    ("example_task_state_store", "run_job"): "rows_written from random.randint",
    ("example_task_state_store_mapped", "process_table"): "a dict with a random.randint "
    "row_count and the wall clock's processed_at",
    ("tutorial", "print_date"): "the output of `date`: the wall clock, to the second",
}

# (dag_id without variant, task_id) -> why the two executors are allowed to differ there.
EXPECTED_DIFFERENCES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Example:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def origin(self) -> str:
        return "core" if self.path.parent == CORE else "standard"


def examples(only: list[str] | None = None) -> list[Example]:
    """Every example file that is run, in a stable order; ``only`` narrows it to those names."""
    files = sorted(
        (p for folder in (CORE, STANDARD) for p in folder.glob("*.py")),
        key=lambda p: p.name,
    )
    chosen = [Example(p) for p in files if p.name != "__init__.py" and p.name not in EXCLUDED]
    if only:
        unknown = set(only) - {e.name for e in chosen}
        if unknown:
            raise ValueError(f"not a runnable example file: {sorted(unknown)}")
        chosen = [e for e in chosen if e.name in only]
    return chosen
