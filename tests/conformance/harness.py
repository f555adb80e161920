"""Runs the chosen example files under both executors on one stack and compares the runs.

One stack (demo/stack.py) with ``executor = LocalExecutor,MailboxExecutor``, a triggerer and
one edge worker; its DAG folder holds two generated files per example (dagfolder.py). Runs are
triggered through the REST API in batches, one batch per example file with both variants at
once, at most ``window`` batches in flight so that a DAG's own timeouts are not eaten by a
queue of everybody else's tasks. A file's DAGs share one logical date (ExternalTaskSensor
looks for its sibling's run at that date), and each file has its own (a
TriggerDagRunOperator's run of another file's DAG must not collide with the one triggered
here). Everything read back (states, XCom return values, task logs) comes from the REST API.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from conformance.compare import (
    Row,
    RunResult,
    TaskResult,
    as_json,
    markdown,
    normalize,
    row,
    ti_key,
)
from conformance.dagfolder import IMPORT_ROOT, write_dag_folder
from conformance.examples import AFTER, CONF, EXCLUDED, EXECUTORS, Example, examples
from demo.stack import MAILBOX_EXECUTOR, Stack
from infra.devstore import DevStore

# A Wednesday: example_bash_decorator sleeps an hour on a weekend's logical date.
BASE_LOGICAL_DATE = datetime(2026, 11, 4, tzinfo=timezone.utc)
FINISHED = ("success", "failed")
LOG_LINES = 15
WORKER = "edge-1"


@dataclass
class Batch:
    key: str
    example: Example
    after: tuple[str, ...]
    logical_date: str
    runs: list[tuple[str, str, str]] = field(default_factory=list)  # dag_id, variant, run_id
    started: float | None = None
    done: bool = False


@dataclass
class Report:
    rows: list[Row]
    import_errors: dict[str, str]
    unmatched: list[str]  # DAGs that exist under one variant only
    seconds: float
    setup_seconds: float
    markdown: str

    def unexpected(self) -> list[str]:
        """Everything that fails the suite, one line each."""
        lines = [f"{file}: import error: {error}" for file, error in self.import_errors.items()]
        lines += [f"{dag}: under one executor only" for dag in self.unmatched]
        lines += [
            f"{d.dag_id} {d.task or '(run)'} {d.what}: local={d.local!r} mailbox={d.mailbox!r}"
            for r in self.rows
            for d in r.differences
            if not d.expected
        ]
        return lines


@contextmanager
def _on_pythonpath(path: Path) -> Iterator[None]:
    """Every process the stack starts inherits this process's environment (Stack.env)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before


def _exception_line(detail: dict[str, Any]) -> str:
    """One line for one exception of a structured log record's ``error_detail``."""
    frames = detail.get("frames") or [{}]
    where = f"{frames[-1].get('filename', '?')}:{frames[-1].get('lineno', '?')}"
    return f"  {detail.get('exc_type')}: {detail.get('exc_value')} (at {where})"


def _batches(chosen: list[Example]) -> list[Batch]:
    everything = [e.name for e in examples()]
    batches: list[Batch] = []
    for example in chosen:
        minute = everything.index(example.name)
        date = (BASE_LOGICAL_DATE + timedelta(minutes=minute)).isoformat()
        after = tuple(AFTER[example.name][:1]) if example.name in AFTER else ()
        after = tuple(a for a in after if a in {e.name for e in chosen})
        batches.append(Batch(example.name, example, after, date))
    return batches


class Suite:
    def __init__(
        self,
        stack: Stack,
        chosen: list[Example],
        window: int,
        batch_timeout: float,
    ) -> None:
        self.stack = stack
        self.chosen = chosen
        self.window = window
        self.batch_timeout = batch_timeout
        self.batches = _batches(chosen)
        self.dags: dict[tuple[str, str], list[str]] = {}  # (file, variant) -> base dag ids
        self.import_errors: dict[str, str] = {}
        self.results: dict[tuple[str, str], RunResult] = {}  # (base dag id, variant)

    # -- parsing -----------------------------------------------------------------------------

    def wait_for_parsing(self, timeout: float) -> None:
        files = {f"{e.path.stem}__{v}.py": (e.name, v) for e in self.chosen for v in EXECUTORS}

        def parsed() -> bool:
            dags = self.stack._request("GET", "/api/v2/dags?limit=1000")["dags"]
            errors = self.stack._request("GET", "/api/v2/importErrors?limit=1000")
            self.dags.clear()
            for dag in dags:
                name = Path(dag["fileloc"]).name
                if name in files:
                    base = dag["dag_id"].rsplit("__", 1)[0]
                    self.dags.setdefault(files[name], []).append(base)
            self.import_errors = {
                Path(e["filename"]).name: e["stack_trace"].strip().splitlines()[-1]
                for e in errors["import_errors"]
            }
            return all(f in self.import_errors or files[f] in self.dags for f in files)

        self.stack.wait_for(parsed, timeout, "every generated DAG file to be parsed", every=2)

    def unmatched(self) -> list[str]:
        out = []
        for example in self.chosen:
            sets = [set(self.dags.get((example.name, v), [])) for v in EXECUTORS]
            out += sorted(set.union(*sets) - set.intersection(*sets))
        return out

    # -- running -----------------------------------------------------------------------------

    def _start(self, batch: Batch) -> None:
        for variant in EXECUTORS:
            for base in sorted(self.dags.get((batch.example.name, variant), [])):
                dag_id = f"{base}__{variant}"
                run_id = self.stack.trigger(dag_id, CONF.get(base), logical_date=batch.logical_date)
                batch.runs.append((dag_id, variant, run_id))
        batch.started = time.monotonic()

    def _run_states(self) -> dict[tuple[str, str], str]:
        runs = self.stack._request("GET", "/api/v2/dags/~/dagRuns?limit=1000&order_by=-id")
        return {(r["dag_id"], r["dag_run_id"]): r["state"] for r in runs["dag_runs"]}

    def _step(self) -> bool:
        """Advance every batch one poll; True once all are done."""
        states = self._run_states()
        for batch in self.batches:
            if batch.started is None or batch.done:
                continue
            ended = all(states.get((d, r)) in FINISHED for d, _, r in batch.runs)
            late = time.monotonic() - batch.started > self.batch_timeout
            if ended or late:
                for dag_id, variant, run_id in batch.runs:
                    result = self._collect(dag_id, variant, run_id, states.get((dag_id, run_id)))
                    result.timed_out = not ended and result.state not in FINISHED
                    self.results[(result.dag_id, variant)] = result
                    if result.timed_out:  # free its slots for the batches still to come
                        self.stack._request(
                            "PATCH",
                            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}",
                            {"state": "failed"},
                        )
                batch.done = True
        done = {b.key for b in self.batches if b.done}
        in_flight = sum(1 for b in self.batches if b.started is not None and not b.done)
        for batch in self.batches:
            if in_flight >= self.window:
                break
            if batch.started is None and all(a in done for a in batch.after):
                self._start(batch)
                in_flight += 1
        return len(done) == len(self.batches)

    def run(self, timeout: float) -> None:
        self.stack.wait_for(self._step, timeout, "every conformance run to end", every=2)

    # -- reading back ------------------------------------------------------------------------

    def _replacements(self, base: str, variant: str) -> dict[str, str]:
        """A task sees its variant's dag_id (``ti_key`` strings) and its host's AIRFLOW_HOME
        (the edge worker has one of its own): both are written back as the other's."""
        home = self.stack.home if variant == "local" else self.stack.worker_home(WORKER)
        return {f"{base}__{variant}": base, str(home): "$AIRFLOW_HOME"}

    def _collect(self, dag_id: str, variant: str, run_id: str, state: str | None) -> RunResult:
        base = dag_id.rsplit("__", 1)[0]
        result = RunResult(dag_id=base, variant=variant, run_id=run_id, state=state)
        for ti in self.stack.task_instances(dag_id, run_id):
            key = ti_key(ti["task_id"], ti["map_index"])
            result.tasks[key] = TaskResult(state=ti["state"], try_number=ti["try_number"])
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        entries = self.stack._request(
            "GET", f"{path}/~/xcomEntries?xcom_key=return_value&limit=1000"
        )["xcom_entries"]
        for entry in entries:
            value = self.stack._request(
                "GET",
                f"{path}/{entry['task_id']}/xcomEntries/return_value?map_index={entry['map_index']}",
            )["value"]
            key = ti_key(entry["task_id"], entry["map_index"])
            task = result.tasks.setdefault(key, TaskResult(state=None, try_number=0))
            task.xcom = normalize(value, self._replacements(base, variant))
        return result

    def _log_errors(self, result: RunResult, task: str) -> list[str]:
        """The task log's error lines (and the last lines, if none), as the UI shows them."""
        ti = result.tasks.get(task)
        if ti is None or ti.try_number < 1:
            return []
        task_id, _, index = task.partition("[")
        map_index = int(index.rstrip("]")) if index else -1
        dag_id = f"{result.dag_id}__{result.variant}"
        try:
            content = self.stack.task_log(dag_id, result.run_id, task_id, ti.try_number, map_index)
        except OSError as error:
            return [f"(log not readable: {error})"]
        lines: list[str] = []
        errors: list[str] = []
        for entry in content:
            if not isinstance(entry, dict):
                continue
            line = f"{entry.get('level', '')} {entry.get('event', '')}".strip()
            lines.append(line)
            if entry.get("level") in ("error", "critical") or "Error" in line:
                errors.append(line)
                errors += [_exception_line(e) for e in entry.get("error_detail") or []]
        return (errors or lines)[-LOG_LINES:]

    def _failure_note(self, local: RunResult, mailbox: RunResult) -> str:
        """Why a task failed under both executors (the example's own doing, most often)."""
        for key, task in sorted(local.tasks.items()):
            other = mailbox.tasks.get(key)
            if task.state == "failed" and other is not None and other.state == "failed":
                errors = [e.strip() for e in self._log_errors(local, key) if e.startswith("  ")]
                return f"{key}: {errors[0] if errors else 'failed'}"
        return ""

    def rows(self) -> list[Row]:
        out = []
        for example in self.chosen:
            for base in sorted(set(self.dags.get((example.name, "local"), []))):
                local = self.results.get((base, "local"))
                mailbox = self.results.get((base, "mailbox"))
                if local is None or mailbox is None:
                    continue
                made = row(example.name, local, mailbox)
                logged: set[str] = set()
                for difference in made.differences:
                    if difference.what in ("state", "xcom") and difference.task not in logged:
                        logged.add(difference.task)
                        difference.logs = {
                            "LocalExecutor": self._log_errors(local, difference.task),
                            "MailboxExecutor": self._log_errors(mailbox, difference.task),
                        }
                made.note = self._failure_note(local, mailbox)
                out.append(made)
        return out


def run_suite(
    root: Path,
    store: DevStore,
    chosen: list[Example],
    *,
    database_url: str,
    parallelism: int = 6,
    concurrency: int = 6,
    window: int = 6,
    batch_timeout: float = 600,
    timeout: float = 3600,
    report_dir: Path | None = None,
) -> Report:
    """Start the stack, run every batch, compare, write conformance.{md,json}; stop the stack."""
    began = time.monotonic()
    dag_folder = root / "dags"
    write_dag_folder(dag_folder, chosen)
    stack = Stack(
        root=root / "stack",
        executor=f"LocalExecutor,{MAILBOX_EXECUTOR}",
        dags_folder=dag_folder,
        prefix=f"conformance-{secrets.token_hex(4)}",
        parallelism=parallelism,
        airflow_options={
            # Parsed once: nothing changes, and re-parsing 100+ files takes a core.
            "dag_processor": {"min_file_process_interval": 3600, "refresh_interval": 5},
            "scheduler": {"min_file_process_interval": 3600},
            "api": {"maximum_page_limit": 1000},
            # LocalExecutor's tasks, the worker's relayed calls, the triggerer and the API
            # all write at once: on SQLite they hit "database is locked" (a 500 here).
            "database": {"sql_alchemy_conn": database_url},
        },
    )
    with _on_pythonpath(IMPORT_ROOT):
        try:
            stack.prepare(store=store)
            stack.add_worker(WORKER, concurrency=concurrency)
            stack.start_airflow()
            stack.start_triggerer()
            suite = Suite(stack, chosen, window, batch_timeout)
            suite.wait_for_parsing(timeout=300)
            setup = time.monotonic() - began
            suite.run(timeout)
            rows = suite.rows()
            unmatched = suite.unmatched()
            import_errors = suite.import_errors
        finally:
            stack.stop(keep_store=True)
            if report_dir is not None:  # the components' logs, for whoever reads the table
                shutil.copytree(stack.root / "logs", report_dir / "logs", dirs_exist_ok=True)
    seconds = time.monotonic() - began
    text = markdown(rows, EXCLUDED, seconds)
    if import_errors:
        text += "\n## Import errors\n\n" + "\n".join(
            f"- {f}: {e}" for f, e in sorted(import_errors.items())
        )
    report = Report(rows, import_errors, unmatched, seconds, setup, text)
    for folder in (root, report_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "conformance.md").write_text(text)
            (folder / "conformance.json").write_text(
                json.dumps(
                    {
                        "seconds": seconds,
                        "setup_seconds": setup,
                        "rows": as_json(rows),
                        "import_errors": import_errors,
                        "unmatched": unmatched,
                        "excluded": EXCLUDED,
                    },
                    indent=2,
                    default=str,
                )
            )
    return report
