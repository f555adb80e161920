"""Airflow HA: two schedulers on one PostgreSQL database, one bucket, one edge worker.

Each task instance is queued once and runs once; each relayed call is replayed by one
scheduler only; each job's end is reported by the scheduler that queued it, so neither
scheduler is left holding a finished task as running (which would eat its parallelism).
SQLite ignores the row locks HA relies on, hence the PostgreSQL started here on loopback."""

from __future__ import annotations

import json
import os
import secrets
from collections import Counter
from pathlib import Path

import pytest

from demo.stack import Stack
from infra.devpostgres import DevPostgres, PostgresMissing

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_ha"


@pytest.fixture
def postgres():
    try:
        server = DevPostgres().start()
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            raise  # .ci/run installs it: missing there is a failure, not a skip
        pytest.skip(str(exc))
    yield server
    server.stop()


def test_two_schedulers_share_the_work_and_report_each_job_once(
    seaweed, postgres, tmp_path, monkeypatch
) -> None:
    stats = tmp_path / "stats"
    stats.mkdir()
    monkeypatch.setenv("EDGE_MAILBOX_STATS_DIR", str(stats))  # each executor's record at exit
    stack = Stack(
        root=tmp_path / "stack",
        dags_folder=DAGS,
        prefix=f"ha-{secrets.token_hex(4)}",
        parallelism=8,  # per scheduler: 24 tasks cannot all be queued by one of them
        airflow_options={"database": {"sql_alchemy_conn": postgres.url}},
        # The results are read after a run that may take minutes: nothing is cleaned up
        # meanwhile (the default is 300 s after a success).
        scheduler_options={"cleanup_success_after": 86400},
    )
    stack.prepare(store=seaweed)
    try:
        stack.add_worker("edge-1", concurrency=16)
        stack.start_airflow()
        stack.add_scheduler("scheduler-2")
        stack.wait_for_dag("ha_fanout")
        run_id = stack.trigger("ha_fanout")
        assert stack.wait_for_run("ha_fanout", run_id, timeout=600) == "success"
        tis = stack.task_instances("ha_fanout", run_id)
        assert len(tis) == 24
        assert {ti["state"] for ti in tis} == {"success"}
        assert {ti["try_number"] for ti in tis} == {1}  # none failed over or ran again

        claims = stack.claims()
        per_ti = Counter(c["manifest"]["ti"]["task_id"] for c in claims)
        assert len(per_ti) == 24 and set(per_ti.values()) == {1}, per_ti  # queued once each
        jobs = {c["job_id"] for c in claims}
        client = stack.bucket_client()
        stack.wait_for(lambda: stack.all_results_in(client), 120, "every notice read")
    finally:
        stack.stop(keep_store=True)  # the executors write their records as they end

    records = [json.loads(p.read_text()) for p in stats.glob("executor-*.json")]
    assert len(records) == 2, "each scheduler's executor ends and writes its record"
    relayed = [set(r["relayed"]) for r in records]
    reported = [[job for job, _ in r["reported"]] for r in records]
    assert relayed[0] and relayed[1], "both schedulers replayed calls"
    assert not relayed[0] & relayed[1], "a relayed call was replayed by both schedulers"
    assert all(reported), "both schedulers queued (and reported) jobs"
    for one in reported:
        assert len(one) == len(set(one)), "a job's end was reported twice"
    assert not set(reported[0]) & set(reported[1]), "both schedulers reported one job's end"
    assert set(reported[0]) | set(reported[1]) == jobs  # every job's end, by its owner
    assert [r["running_at_end"] for r in records] == [0, 0], "a finished task left running"
