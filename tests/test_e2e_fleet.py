"""Steering workers through the bucket, for real: Airflow (with real logins), SeaweedFS and two
workers, the dashboard in Chromium and the scheduler side's ``airflow edge-mailbox`` commands.
Maintenance makes a worker take no new task while the other still does; queues and slots
change at runtime and the next jobs follow; a shutdown drains a running task first; a forged
command object is ignored. Screenshots of the dashboard go to the test's output folder."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from demo.stack import BIN, Stack
from edge_mailbox.mailbox.models import Heartbeat, WorkerCommand, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, PublicKey, SigningKey

pytestmark = pytest.mark.e2e
DAGS = Path(__file__).parent / "dags_fleet"
FAST = {"worker_heartbeat_interval": 2, "worker_poll_interval_idle": 1}
USERS = {"admin": ("admin", secrets.token_urlsafe(12)), "viewer": ("viewer", "viewer-pw")}


@pytest.fixture(scope="module")
def stack(seaweed, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(
        root=tmp_path_factory.mktemp("fleet") / "stack",
        dags_folder=DAGS,
        prefix=f"fleet-{secrets.token_hex(4)}",
        scheduler_options={"worker_check_interval": 2, "fleet_snapshot_interval": 2},
        users=USERS,
    )
    stack.prepare(store=seaweed)
    for name in ("a", "b"):
        stack.add_worker(name, concurrency=2, options=FAST, EDGE_TEST_WORKER=name)
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def mailbox(stack: Stack) -> Mailbox:
    return Mailbox(stack.bucket_client())


def heartbeat(stack: Stack, name: str) -> Heartbeat:
    keys = KeyRing([PublicKey.from_file(stack.keys / "workers" / f"{name}.pub")])
    return mailbox(stack).read_heartbeat(name, keys).model


def cli(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "airflow"), "edge-mailbox", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run(stack: Stack, dag_id: str, conf: dict | None = None) -> str:
    stack.wait_for_dag(dag_id)
    run_id = stack.trigger(dag_id, conf)
    assert stack.wait_for_run(dag_id, run_id, timeout=240) == "success"
    return run_id


def badge(page: Page, worker: str):
    return page.frame_locator("iframe").locator(f"tr[data-worker='{worker}'] .badge").first


def maintenance_in_the_browser(page: Page, worker: str, on: bool, comment: str = "") -> None:
    frame = page.frame_locator("iframe")
    frame.locator(f"tr[data-worker='{worker}'] input[type=checkbox]").check()
    frame.locator(f"button[data-action='maintenance-{'on' if on else 'off'}']").click()
    if on:
        frame.locator("#f-comment").fill(comment)
    frame.locator("#dialog-ok").click()
    expect(frame.locator("#toast")).to_contain_text("1 done", timeout=30_000)


def test_the_dashboard_steers_a_worker_from_the_browser(stack: Stack, tmp_path: Path) -> None:
    """Log in to Airflow, open the fleet page from the Admin menu's plugin route, see both
    workers, put one in maintenance: it takes no new task while the other does; take it out."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": 1500, "height": 800})
        try:
            page.goto(f"{stack.api}/plugin/edge-mailbox")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(USERS["admin"][1])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/" not in url, timeout=60_000)
            page.goto(f"{stack.api}/plugin/edge-mailbox")
            for worker in ("a", "b"):
                expect(badge(page, worker)).to_have_text("idle", timeout=60_000)
            page.screenshot(path=tmp_path / "fleet.png")

            maintenance_in_the_browser(page, "a", True, "swap a disk")
            expect(badge(page, "a")).to_have_text("maintenance", timeout=60_000)
            page.screenshot(path=tmp_path / "maintenance.png")
            hb = heartbeat(stack, "a")
            assert "admin: swap a disk" in hb.maintenance_comment  # the Airflow user's name

            run_id = run(stack, "fleet_fanout")
            ran_on = {stack.xcom("fleet_fanout", run_id, f"where_{i}") for i in range(4)}
            assert ran_on == {"b"}

            maintenance_in_the_browser(page, "a", False)
            expect(badge(page, "a")).not_to_have_text("maintenance", timeout=60_000)
            page.screenshot(path=tmp_path / "back.png")
        finally:
            browser.close()


def test_maintenance_keeps_new_tasks_off_one_worker_only(stack: Stack) -> None:
    out = cli(stack, "maintenance", "a", "on", "--comment", "swap a disk", "--wait")
    assert "a: maintenance" in out
    hb = heartbeat(stack, "a")
    assert hb.state is WorkerState.MAINTENANCE and "swap a disk" in hb.maintenance_comment
    run_id = run(stack, "fleet_fanout")
    ran_on = {stack.xcom("fleet_fanout", run_id, f"where_{i}") for i in range(4)}
    assert ran_on == {"b"}

    cli(stack, "maintenance", "a", "off", "--wait")
    assert heartbeat(stack, "a").state in (WorkerState.IDLE, WorkerState.RUNNING)


def test_queues_and_slots_change_at_runtime(stack: Stack, tmp_path: Path) -> None:
    cli(stack, "maintenance", "b", "on", "--wait")  # only a may take the next jobs
    try:
        out = cli(stack, "queues", "a", "--add", "special", "--wait")
        assert "queues default,special" in out
        cli(stack, "concurrency", "a", "3", "--wait")
        hb = heartbeat(stack, "a")
        assert hb.queues == ["default", "special"] and hb.concurrency == 3
        folder = tmp_path / "barrier"  # three tasks that meet: only with three slots
        folder.mkdir()
        run_id = run(stack, "fleet_barrier", {"folder": str(folder)})
        assert {stack.xcom("fleet_barrier", run_id, f"meet_{i}") for i in range(3)} == {"a"}
        run_id = run(stack, "fleet_special")  # no worker served "special" before
        assert stack.xcom("fleet_special", run_id, "where") == "a"

        cli(stack, "queues", "a", "--set", "default", "--wait")
        assert heartbeat(stack, "a").queues == ["default"]
    finally:
        cli(stack, "maintenance", "b", "off", "--wait")


def test_a_forged_command_is_ignored(stack: Stack) -> None:
    box = mailbox(stack)
    before = heartbeat(stack, "b")
    forged = WorkerCommand(
        worker="b",
        seq=before.command_seq + 100,
        maintenance=True,
        queues=["stolen"],
        concurrency=1,
        issued_by="mallory",
        issued_at=time.time(),
    )
    box.put_command(forged, SigningKey.generate())  # rings the marker, as the real one does
    stack.wait_for(
        lambda: "ignoring command object" in stack.log_files["worker-b"].read_text(),
        60,
        "worker b to refuse the forged command",
    )
    after = heartbeat(stack, "b")
    assert after.queues == before.queues and after.command_seq == before.command_seq
    assert after.state is not WorkerState.MAINTENANCE
    box.delete_command("b")


def test_shutdown_drains_a_running_task_first(stack: Stack) -> None:
    cli(stack, "maintenance", "b", "on", "--wait")  # the long task goes to a
    stack.wait_for_dag("fleet_long")
    run_id = stack.trigger("fleet_long", {"seconds": 8})
    stack.wait_for(
        lambda: stack.task_instances("fleet_long", run_id)[0]["state"] == "running",
        120,
        "the long task to run",
    )
    out = cli(stack, "shutdown", "a", "--wait")
    assert "a: offline" in out
    assert stack.wait_for_run("fleet_long", run_id, timeout=120) == "success"
    assert stack.xcom("fleet_long", run_id, "where") == "a"
    worker = stack.processes["worker-a"]
    assert worker.wait(30) == 0
    messages = [line.get("event", "") for line in stack.task_log("fleet_long", run_id, "where")]
    assert "long task finished on a" in messages
