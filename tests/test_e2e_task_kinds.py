"""Every ordinary kind of Airflow task on edge workers, with the result a local worker gives:
operators and decorators, a branch, a virtualenv, ten mapped instances, XComs across workers,
Variables and Connections, a deferrable sensor resumed on an edge worker, setup/teardown,
retries, an execution timeout, templates and params, pool_slots. Real SeaweedFS, Airflow 3.3
(api-server, scheduler, dag-processor, triggerer) and two workers on two queues.

Both DAGs (tests/dags_kinds/) run once, side by side, for the whole module: the tests below
read what those runs left in Airflow and in the bucket.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from leakscan import LeakScanner

from demo.stack import ROOT, Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_kinds"
WORKERS = {"edge-a": "default", "edge-b": "far"}  # worker name -> its queue
PASSWORD = f"kinds-pw-{secrets.token_hex(8)}"
VARIABLE = f"kinds-variable-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ClaimRecord:
    """One claim in the bucket: who took which try of which task instance, and when."""

    task_id: str
    map_index: int
    try_number: int
    worker: str
    claimed_at: float
    pool_slots: int


@dataclass
class Runs:
    """The two runs the tests look at, and what the bucket says about them."""

    stack: Stack
    kinds: str
    kinds_state: str
    failures: str
    failures_state: str
    logical_date: str

    def tis(self, dag_id: str) -> dict[tuple[str, int], dict[str, Any]]:
        run_id = self.kinds if dag_id == "kinds" else self.failures
        return {
            (ti["task_id"], ti["map_index"]): ti for ti in self.stack.task_instances(dag_id, run_id)
        }

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        return self.stack.xcom("kinds", self.kinds, task_id, key)

    def claims(self, dag_id: str) -> list[ClaimRecord]:
        return [c for d, c in read_claims(self.stack) if d == dag_id]


def read_claims(stack: Stack) -> list[tuple[str, ClaimRecord]]:
    """(dag_id, claim) for every claim in the bucket, with the manifest it embeds."""
    out = []
    for claim in stack.claims():
        manifest = claim["manifest"]
        ti = manifest["ti"]
        record = ClaimRecord(
            ti["task_id"],
            ti["map_index"],
            ti["try_number"],
            claim["worker"],
            claim["claimed_at"],
            manifest["pool_slots"],
        )
        out.append((ti["dag_id"], record))
    return out


def log_text(stack: Stack, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
    """A try's log as the UI shows it, one string (events and any exception's text)."""
    return "\n".join(
        json.dumps(line) if not isinstance(line, str) else line
        for line in stack.task_log(dag_id, run_id, task_id, try_number)
    )


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("kinds") / "stack",
        dags_folder=DAGS,
        prefix=f"kinds-{secrets.token_hex(4)}",
        # The tests read claims and results after runs that may take minutes: nothing is
        # cleaned up meanwhile (the default is 300 s after a success).
        scheduler_options={"cleanup_success_after": 86400},
    )
    stack.prepare(store=seaweed)
    stack.add_worker("edge-a", queues=WORKERS["edge-a"], concurrency=6)
    stack.add_worker("edge-b", queues=WORKERS["edge-b"], concurrency=2)
    stack.start_airflow()
    stack.start_triggerer()
    yield stack
    stack.stop(keep_store=True)


@pytest.fixture(scope="module")
def runs(stack: Stack) -> Runs:
    stack.add_variable("kinds_var", VARIABLE)
    stack.add_variable("kinds_json", json.dumps({"plants": [7, 9]}))
    stack.add_connection(
        "kinds_conn",
        conn_type="postgres",
        host="db.plant.example",
        port=5432,
        login="plant",
        password=PASSWORD,
    )
    stack.wait_for_dag("kinds")
    stack.wait_for_dag("kinds_failures")
    logical_date = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    kinds = stack.trigger("kinds", conf={"x": "from-conf"}, logical_date=logical_date)
    failures = stack.trigger("kinds_failures")
    kinds_state = stack.wait_for_run("kinds", kinds, timeout=420)
    failures_state = stack.wait_for_run("kinds_failures", failures, timeout=120)
    client = stack.bucket_client()
    stack.wait_for(lambda: stack.all_results_in(client), 60, "every result in the bucket")
    return Runs(stack, kinds, kinds_state, failures, failures_state, logical_date)


def test_every_task_ran_once_on_an_edge_worker(runs: Runs) -> None:
    stack = runs.stack
    tis = runs.tis("kinds")
    states = {key: ti["state"] for key, ti in tis.items()}
    assert runs.kinds_state == "success", (states, stack.log_tail("scheduler"))
    assert states.pop(("right", -1)) == "skipped"
    assert set(states.values()) == {"success"}, states
    assert {key: ti["try_number"] for key, ti in tis.items() if ti["try_number"] != 1} == {
        ("right", -1): 0  # skipped before it was ever tried
    }
    # Each task instance that ran was claimed once by a worker of its queue (the deferred
    # sensor twice: see test_deferrable_task_resumes_on_an_edge_worker).
    claimed: dict[tuple[str, int], list[str]] = {}
    for claim in runs.claims("kinds"):
        claimed.setdefault((claim.task_id, claim.map_index), []).append(claim.worker)
    assert claimed.pop(("wait_deferred", -1)) == ["edge-a", "edge-a"]
    assert set(claimed) == set(states) - {("wait_deferred", -1)}
    for key, workers in claimed.items():
        assert workers == [_worker_of(tis[key]["queue"])], (key, workers)


def _worker_of(queue: str) -> str:
    return next(name for name, q in WORKERS.items() if q == queue)


def _when(ti: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(ti[field])


def test_operators_and_decorators(runs: Runs) -> None:
    assert runs.xcom("bash") == "bash ran with 42"
    assert runs.xcom("python_op") == 42
    assert runs.xcom("decorated") == {"kind": "task", "answer": 42}
    assert runs.xcom("bash_decorated") == "decorated bash 42"


def test_virtualenv_task_runs_in_its_own_environment(runs: Runs) -> None:
    result = runs.xcom("in_venv")
    assert result["in_venv"] is True
    # A fresh environment, not the worker's own (which has Airflow).
    assert not result["prefix"].startswith(str(ROOT / ".venv")), result
    log = log_text(runs.stack, "kinds", runs.kinds, "in_venv")
    assert "-m venv" in log, log[-2000:]


def test_branch_skips_the_branch_not_taken(runs: Runs) -> None:
    tis = runs.tis("kinds")
    assert runs.xcom("choose", key="skipmixin_key") == {"followed": ["left"]}
    assert tis[("left", -1)]["state"] == "success"
    assert runs.xcom("left") == "left ran"
    assert tis[("right", -1)]["state"] == "skipped"
    assert "right" not in {c.task_id for c in runs.claims("kinds")}


def test_ten_mapped_instances_each_run_once(runs: Runs) -> None:
    tis = runs.tis("kinds")
    mapped = {index: ti for (task_id, index), ti in tis.items() if task_id == "square"}
    assert sorted(mapped) == list(range(10))
    assert {ti["state"] for ti in mapped.values()} == {"success"}
    assert {ti["try_number"] for ti in mapped.values()} == {1}
    indexes = sorted(c.map_index for c in runs.claims("kinds") if c.task_id == "square")
    assert indexes == list(range(10))  # one claim per instance: none ran twice
    path = f"/api/v2/dags/kinds/dagRuns/{runs.kinds}/taskInstances/square/xcomEntries/return_value"
    for index in range(10):
        entry = runs.stack._request("GET", f"{path}?map_index={index}")
        assert entry["value"] == index * index
    assert runs.xcom("total") == sum(i * i for i in range(10))


def test_xcom_push_and_pull_across_workers(runs: Runs) -> None:
    workers = {c.task_id: c.worker for c in runs.claims("kinds")}
    assert workers["push"] == "edge-a" and workers["pull"] == "edge-b"
    assert runs.xcom("push") == {"from": "push", "numbers": [1, 2, 3]}
    assert runs.xcom("push", key="extra") == "pushed explicitly"
    assert runs.xcom("pull") == "pulled [1, 2, 3] from push, and 'pushed explicitly'"


def test_variables_and_connections(runs: Runs) -> None:
    assert runs.xcom("read_config") == {
        "variable": VARIABLE,
        "json_variable": {"plants": [7, 9]},
        "conn": "postgres://plant@db.plant.example:5432",
        "password_length": len(PASSWORD),
    }


def test_what_travels_is_sealed(runs: Runs) -> None:
    """Password, Variable and XCom values crossed the bucket, but never readable."""
    stack = runs.stack
    scanner = LeakScanner(
        stack.bucket_client(),
        f"{stack.prefix}/",
        [PASSWORD.encode(), VARIABLE.encode(), b"pushed explicitly", b"scratch-1"],
    )
    scanner.scan_once()
    assert len(scanner.scanned) > 50
    assert scanner.leaks == []


def test_deferrable_task_resumes_on_an_edge_worker(runs: Runs) -> None:
    ti = runs.tis("kinds")[("wait_deferred", -1)]
    assert ti["state"] == "success" and ti["try_number"] == 1
    claims = sorted(
        (c for c in runs.claims("kinds") if c.task_id == "wait_deferred"),
        key=lambda c: c.claimed_at,
    )
    # Claimed twice, for the same try: once to start (it deferred, freeing the slot), once to
    # resume after the triggerer's 6 s wait, both by edge workers.
    assert [(c.try_number, c.worker in WORKERS) for c in claims] == [(1, True), (1, True)]
    assert claims[1].claimed_at - claims[0].claimed_at > 4
    # The log of the try holds both halves: up to the deferral, and the resumed run.
    log = log_text(runs.stack, "kinds", runs.kinds, "wait_deferred")
    assert "Pausing task as DEFERRED" in log, log[-3000:]
    assert log.count("Pre Execute") == 2, log[-3000:]
    # The trigger ran in the triggerer, on the scheduler side.
    trigger_logs = list(
        (runs.stack.home / "logs" / "dag_id=kinds").glob("*/task_id=wait_deferred/*.trigger.*")
    )
    assert any("Trigger fired event" in path.read_text() for path in trigger_logs), trigger_logs


def test_setup_and_teardown(runs: Runs) -> None:
    tis = runs.tis("kinds")
    assert runs.xcom("use") == "used scratch-1"
    assert runs.xcom("release") == "released scratch-1"
    used, released = tis[("use", -1)], tis[("release", -1)]
    assert _when(released, "start_date") >= _when(used, "end_date")
    # The teardown runs even though the work between it and its setup failed.
    failed = runs.tis("kinds_failures")
    assert failed[("work_that_fails", -1)]["state"] == "failed"
    assert failed[("release", -1)]["state"] == "success"
    assert runs.stack.xcom("kinds_failures", runs.failures, "release") == "released scratch-2"


def test_failing_task_is_retried_then_failed(runs: Runs) -> None:
    assert runs.failures_state == "failed"
    ti = runs.tis("kinds_failures")[("doomed", -1)]
    assert ti["state"] == "failed" and ti["try_number"] == 2
    tries = sorted(
        (c.try_number, c.worker) for c in runs.claims("kinds_failures") if c.task_id == "doomed"
    )
    assert tries == [(1, "edge-a"), (2, "edge-a")]
    for try_number in (1, 2):
        log = log_text(runs.stack, "kinds_failures", runs.failures, "doomed", try_number)
        assert f"doomed on purpose, try {try_number}" in log, log[-3000:]


def test_execution_timeout_kills_the_task_on_the_worker(runs: Runs) -> None:
    ti = runs.tis("kinds_failures")[("too_slow", -1)]
    assert ti["state"] == "failed" and ti["try_number"] == 1
    # Killed on the worker when its 5 s expired, far from the end of its 60 s sleep.
    assert (_when(ti, "end_date") - _when(ti, "start_date")).total_seconds() < 25
    log = log_text(runs.stack, "kinds_failures", runs.failures, "too_slow")
    assert "still sleeping 2" in log and "still sleeping 20" not in log
    assert "Process timed out" in log, log[-3000:]


def test_templates_and_params(runs: Runs) -> None:
    ds = runs.logical_date[:10]
    assert runs.xcom("templated") == f"x=from-conf y=default-y ds={ds} run={runs.kinds}"


def test_pool_slots(runs: Runs) -> None:
    ti = runs.tis("kinds")[("wide", -1)]
    assert ti["state"] == "success" and ti["pool_slots"] == 2
    (claim,) = [c for c in runs.claims("kinds") if c.task_id == "wide"]
    assert claim.pool_slots == 2
    assert runs.xcom("wide") == "wide ran"
