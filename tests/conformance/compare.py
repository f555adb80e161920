"""Compares what one DAG's run gave under each executor, and renders the table (pure: no
stack, no I/O), so the comparison itself is checked by fast unit tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from conformance.examples import EXPECTED_DIFFERENCES, NONDETERMINISTIC_XCOM

ABSENT = "<no return_value>"


@dataclass
class TaskResult:
    state: str | None
    try_number: int
    xcom: Any = ABSENT


@dataclass
class RunResult:
    """One run of one DAG variant as the REST API reports it once the run ended (or its
    deadline passed: then ``timed_out`` and the states are those seen at that moment)."""

    dag_id: str  # without the variant suffix
    variant: str
    run_id: str
    state: str | None
    tasks: dict[str, TaskResult] = field(default_factory=dict)  # "task_id" or "task_id[3]"
    timed_out: bool = False


@dataclass
class Difference:
    dag_id: str
    task: str  # "" for the run itself
    what: str  # "run state", "state", "xcom", "missing task"
    local: Any
    mailbox: Any
    expected: str | None = None  # the reason, when listed in EXPECTED_DIFFERENCES
    logs: dict[str, list[str]] = field(default_factory=dict)  # variant -> error lines


def normalize(value: Any, replacements: dict[str, str]) -> Any:
    """``value`` with each key of ``replacements`` replaced in every string inside it: what
    the harness itself makes differ (the variant's dag_id, each host's AIRFLOW_HOME)."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [normalize(v, replacements) for v in value]
    if isinstance(value, dict):
        return {normalize(k, replacements): normalize(v, replacements) for k, v in value.items()}
    return value


def ti_key(task_id: str, map_index: int) -> str:
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"


def _base_task(key: str) -> str:
    return key.split("[", 1)[0]


def _same_xcom(dag_id: str, task: str, local: Any, mailbox: Any) -> bool:
    if (dag_id, _base_task(task)) in NONDETERMINISTIC_XCOM:
        return type(local) is type(mailbox) and (local == ABSENT) == (mailbox == ABSENT)
    return local == mailbox


def compare(local: RunResult, mailbox: RunResult) -> list[Difference]:
    dag_id = local.dag_id
    found: list[Difference] = []
    if local.state != mailbox.state or local.timed_out or mailbox.timed_out:
        found.append(
            Difference(
                dag_id,
                "",
                "run state",
                local.state + (" (deadline)" if local.timed_out else "") if local.state else None,
                mailbox.state + (" (deadline)" if mailbox.timed_out else "")
                if mailbox.state
                else None,
            )
        )
    for task in sorted(local.tasks.keys() | mailbox.tasks.keys()):
        mine, theirs = local.tasks.get(task), mailbox.tasks.get(task)
        if mine is None or theirs is None:
            found.append(
                Difference(
                    dag_id, task, "missing task", mine and mine.state, theirs and theirs.state
                )
            )
            continue
        if mine.state != theirs.state:
            found.append(Difference(dag_id, task, "state", mine.state, theirs.state))
        if not _same_xcom(dag_id, task, mine.xcom, theirs.xcom):
            found.append(Difference(dag_id, task, "xcom", mine.xcom, theirs.xcom))
    for difference in found:
        difference.expected = EXPECTED_DIFFERENCES.get((dag_id, _base_task(difference.task)))
    return found


def states_summary(run: RunResult) -> str:
    counts = Counter(t.state or "none" for t in run.tasks.values())
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))


@dataclass
class Row:
    example: str
    dag_id: str
    tasks: int
    local: str
    mailbox: str
    xcoms: str
    differences: list[Difference]
    note: str = ""  # why a task failed under both executors

    @property
    def verdict(self) -> str:
        if not self.differences:
            return "same"
        if all(d.expected for d in self.differences):
            return "expected difference"
        return "DIFFERENT"


def row(example: str, local: RunResult, mailbox: RunResult) -> Row:
    differences = compare(local, mailbox)
    with_value = [k for k, t in local.tasks.items() if t.xcom != ABSENT]
    xcom_bad = {d.task for d in differences if d.what == "xcom"}
    xcoms = f"{len(with_value) - len(xcom_bad & set(with_value))}/{len(with_value)} equal"
    if xcom_bad - set(with_value):
        xcoms += f", {len(xcom_bad - set(with_value))} only under MailboxExecutor"
    return Row(
        example=example,
        dag_id=local.dag_id,
        tasks=len(local.tasks.keys() | mailbox.tasks.keys()),
        local=f"{local.state}: {states_summary(local)}",
        mailbox=f"{mailbox.state}: {states_summary(mailbox)}",
        xcoms=xcoms,
        differences=differences,
    )


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def markdown(rows: list[Row], excluded: dict[str, str], seconds: float) -> str:
    lines = [
        "# Conformance: Airflow's example DAGs, LocalExecutor vs MailboxExecutor",
        "",
        f"{len(rows)} DAGs compared in {seconds:.0f} s; "
        f"{sum(r.verdict == 'same' for r in rows)} the same, "
        f"{sum(r.verdict == 'DIFFERENT' for r in rows)} different, "
        f"{sum(r.verdict == 'expected difference' for r in rows)} with expected differences.",
        "",
        "| example file | DAG | task instances | LocalExecutor | MailboxExecutor "
        "| XCom return values | verdict | failed under both because |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.example} | {r.dag_id} | {r.tasks} | {r.local} | {r.mailbox} | {r.xcoms} "
        f"| {r.verdict} | {_cell(r.note)} |"
        for r in rows
    ]
    differences = [d for r in rows for d in r.differences]
    if differences:
        lines += [
            "",
            "## Differences",
            "",
            "| DAG | task | what | LocalExecutor | MailboxExecutor | expected because |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {d.dag_id} | {d.task or '(run)'} | {d.what} | {_cell(d.local)} "
            f"| {_cell(d.mailbox)} | {d.expected or ''} |"
            for d in differences
        ]
        logged = [d for d in differences if d.logs]
        for d in logged:
            lines += ["", f"### {d.dag_id} {d.task}: task log errors", ""]
            for variant, log_lines in d.logs.items():
                lines += [f"{variant}:", "", "```", *log_lines, "```", ""]
    lines += [
        "",
        "## How XCom return values are compared",
        "",
        "Exactly, as JSON, after replacing in every string the variant's dag_id "
        "(`<dag>__local`, `<dag>__mailbox`) by the DAG's own and each host's AIRFLOW_HOME by "
        "`$AIRFLOW_HOME` (the edge worker has its own). These only by presence and type:",
        "",
        *[f"- {dag} {task}: {why}" for (dag, task), why in sorted(NONDETERMINISTIC_XCOM.items())],
    ]
    lines += ["", "## Example files not run", "", "| file | why |", "| --- | --- |"]
    lines += [f"| {name} | {why} |" for name, why in sorted(excluded.items())]
    return "\n".join(lines) + "\n"


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [{**asdict(r), "verdict": r.verdict} for r in rows]
