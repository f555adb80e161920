"""Conformance: Airflow's own example DAGs give the same task states and XCom return values
under MailboxExecutor as under LocalExecutor, on one stack (tests/conformance)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance.examples import examples
from conformance.harness import run_suite

from infra.devpostgres import DevPostgres, PostgresMissing

pytestmark = pytest.mark.e2e

# Comma-separated example file names, to run a few while developing (make conformance ONLY=...).
ONLY = [n for n in os.environ.get("CONFORMANCE_ONLY", "").split(",") if n]
REPORT = os.environ.get("CONFORMANCE_REPORT")


@pytest.fixture
def postgres() -> Iterator[DevPostgres]:
    try:
        server = DevPostgres().start()
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            raise  # .ci/run installs it: missing there is a failure, not a skip
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.mark.timeout(3600)
def test_example_dags_conform(seaweed, postgres, tmp_path) -> None:
    report = run_suite(
        tmp_path,
        seaweed,
        examples(ONLY or None),
        database_url=postgres.url,
        report_dir=Path(REPORT) if REPORT else None,
    )
    print(report.markdown)
    print(f"setup {report.setup_seconds:.0f} s, whole run {report.seconds:.0f} s")
    assert report.rows, "no DAG was compared"
    assert not report.unexpected(), "\n".join(report.unexpected())
