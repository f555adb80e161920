"""The XCom patterns users write, run on an edge worker and checked by the values the tasks
return: fan-in over a mapped task, len() and indexing of a mapped task's output, a mapped
task over a mapped task's output, a branch after a fan-in, a 1 MiB XCom. Each of these makes
the Task SDK read a different part of the relayed answers (``len()`` reads the count from
the ``Content-Range`` header of a HEAD), so a relay that drops what the SDK reads fails here
with the value missing, not just a state. Real SeaweedFS, Airflow 3.3 and one worker; the
DAG (tests/dags_patterns/) runs once for the module.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dags_patterns.patterns import BIG_BYTES, big_text

from demo.stack import Stack

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_patterns"
NUMBERS = [1, 2, 3, 4, 5]
SQUARES = [n * n for n in NUMBERS]


@dataclass
class Run:
    """The one run of the patterns DAG, and what Airflow says about it."""

    stack: Stack
    run_id: str
    state: str

    def states(self) -> dict[tuple[str, int], str]:
        return {
            (ti["task_id"], ti["map_index"]): ti["state"]
            for ti in self.stack.task_instances("patterns", self.run_id)
        }

    def value(self, task_id: str, map_index: int = -1) -> Any:
        """The task's return value; on a miss, the task's log says why."""
        path = (
            f"/api/v2/dags/patterns/dagRuns/{self.run_id}/taskInstances/{task_id}"
            f"/xcomEntries/return_value?map_index={map_index}"
        )
        try:
            return self.stack._request("GET", path)["value"]
        except OSError as exc:
            lines = self.stack.task_log("patterns", self.run_id, task_id, map_index=map_index)
            log = "\n".join(json.dumps(line) for line in lines)
            raise AssertionError(f"{task_id} returned nothing ({exc}):\n{log[-8000:]}") from exc


@pytest.fixture(scope="module")
def run(seaweed, tmp_path_factory) -> Iterator[Run]:
    stack = Stack(
        root=tmp_path_factory.mktemp("patterns") / "stack",
        dags_folder=DAGS,
        prefix=f"patterns-{secrets.token_hex(4)}",
    )
    stack.prepare(store=seaweed)
    stack.add_worker("edge-p", concurrency=4)
    try:
        stack.start_airflow()
        stack.wait_for_dag("patterns")
        run_id = stack.trigger("patterns")
        state = stack.wait_for_run("patterns", run_id, timeout=300)
        yield Run(stack, run_id, state)
    finally:
        stack.stop(keep_store=True)


def test_every_task_ran_on_the_edge_worker(run: Run) -> None:
    states = run.states()
    assert run.state == "success", states
    assert states.pop(("small", -1)) == "skipped"
    assert set(states.values()) == {"success"}, states
    claimed = {
        (c["manifest"]["ti"]["task_id"], c["manifest"]["ti"]["map_index"])
        for c in run.stack.claims()
    }
    assert claimed == set(states)


def test_fan_in_sums_the_squares(run: Run) -> None:
    assert [run.value("square", i) for i in range(len(NUMBERS))] == SQUARES
    assert run.value("total") == sum(SQUARES)


def test_len_and_indexing_of_a_mapped_output(run: Run) -> None:
    assert run.value("measure") == {
        "len": len(SQUARES),
        "first": SQUARES[0],
        "last": SQUARES[-1],
        "third": SQUARES[2],
    }


def test_mapped_task_over_a_mapped_output(run: Run) -> None:
    assert [run.value("plus_one", i) for i in range(len(NUMBERS))] == [s + 1 for s in SQUARES]
    assert run.value("collect") == [s + 1 for s in SQUARES]


def test_branch_after_a_fan_in_skips_the_other_branch(run: Run) -> None:
    assert run.value("big") == f"big: {sum(SQUARES)}"
    assert run.states()[("small", -1)] == "skipped"
    assert "small" not in {c["manifest"]["ti"]["task_id"] for c in run.stack.claims()}


def test_one_mib_xcom_crosses_intact(run: Run) -> None:
    expected = big_text()
    assert len(expected) == BIG_BYTES
    assert run.value("consume_big") == {
        "len": BIG_BYTES,
        "sha256": hashlib.sha256(expected.encode()).hexdigest(),
    }
    assert run.value("produce_big") == expected
