"""The fleet dashboard's API, in Airflow's own api-server app (``create_app``, the plugin found
through its entry point, SimpleAuthManager with an admin and a viewer) over SeaweedFS, with
signed heartbeats and snapshots as workers and reconcilers write them: every route refuses an
anonymous request, a viewer reads but cannot act, an admin's action is a signed command
naming them, and bad input gets a 4xx that says what is wrong."""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import store_config
from fastapi.testclient import TestClient
from fleetkit import beat, job, snapshot

from edge_mailbox.mailbox.errors import NotFound
from edge_mailbox.mailbox.models import FleetQueue, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SigningKey

pytestmark = pytest.mark.e2e

PREFIX = "/edge-mailbox"
SIMPLE_AUTH = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass
class Api:
    client: TestClient
    mailbox: Mailbox
    scheduler: SigningKey
    worker_key: SigningKey
    tokens: dict[str, str]

    def get(self, path: str, user: str | None = "admin", **kw):
        return self.client.get(f"{PREFIX}{path}", headers=self._auth(user), **kw)

    def post(self, path: str, body: object = None, user: str | None = "admin"):
        return self.client.post(f"{PREFIX}{path}", json=body, headers=self._auth(user))

    def _auth(self, user: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}

    def worker(self, **fields) -> str:
        """A live worker of this test's own: its signed heartbeat, and a snapshot with it."""
        name = f"w-{uuid.uuid4().hex[:8]}"
        hb = beat(self.mailbox, self.worker_key, name, **fields)
        snapshot(self.mailbox, self.scheduler, f"sched-{name}", workers=[(hb, self.worker_key)])
        return name

    def command(self, worker: str):
        return self.mailbox.read_command(worker, KeyRing([self.scheduler.public])).model


@pytest.fixture(scope="module")
def api(seaweed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("fleet-api")
    scheduler, worker_key = SigningKey.generate(), SigningKey.generate()
    scheduler.write(home / "scheduler.pem")
    worker_key.write(home / "workers" / "w.pem")
    (home / "workers" / "w.pem").unlink()  # the scheduler side holds the .pub only
    passwords = {"admin": secrets.token_urlsafe(8), "viewer": secrets.token_urlsafe(8)}
    (home / "passwords.json").write_text(json.dumps(passwords))
    config = store_config(seaweed, f"t-{uuid.uuid4().hex[:12]}")
    env = {
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__EDGE_MAILBOX__BUCKET": config.bucket,
        "AIRFLOW__EDGE_MAILBOX__PREFIX": config.prefix,
        "AIRFLOW__EDGE_MAILBOX__ENDPOINT_URL": config.endpoint_url or "",
        "AIRFLOW__EDGE_MAILBOX__REGION": "us-east-1",
        "AIRFLOW__EDGE_MAILBOX__ADDRESSING_STYLE": "path",
        "AIRFLOW__EDGE_MAILBOX__AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AIRFLOW__EDGE_MAILBOX__AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
        "AIRFLOW__EDGE_MAILBOX__SIGNING_KEY_PATH": str(home / "scheduler.pem"),
        "AIRFLOW__EDGE_MAILBOX__WORKER_PUBLIC_KEYS": str(home / "workers"),
    }
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    from airflow import settings
    from airflow.api_fastapi.app import create_app, purge_cached_app

    from edge_mailbox.executor.plugins.api import HOLDER

    with own_database(settings), pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        settings.configure_vars()
        settings.reconfigure_orm()
        from airflow.models import import_all_models
        from airflow.models.base import Base

        import_all_models()
        Base.metadata.create_all(settings.engine)  # the tables a token check reads
        purge_cached_app()
        HOLDER.reset()
        with TestClient(create_app()) as client:
            tokens = {}
            for user, password in passwords.items():
                answer = client.post("/auth/token", json={"username": user, "password": password})
                assert answer.status_code == 201, answer.text
                tokens[user] = answer.json()["access_token"]
            yield Api(client, Mailbox(ObjectStore(config)), scheduler, worker_key, tokens)
        HOLDER.reset()
        purge_cached_app()


@contextlib.contextmanager
def own_database(settings) -> Iterator[None]:
    """Airflow's ORM on this module's SQLite while it runs, on the configured one after."""
    try:
        yield
    finally:
        settings.configure_vars()
        settings.reconfigure_orm()


def plugin_routes(api: Api) -> list[tuple[str, str]]:
    """(method, path) of every route of the plugin's app, with a worker name filled in."""
    from starlette.routing import Mount

    (mount,) = [r for r in api.client.app.routes if isinstance(r, Mount) and r.path == PREFIX]
    return [
        (method, route.path.replace("{worker}", "nobody").replace("{name}", "fleet.js"))
        for route in mount.app.routes
        for method in getattr(route, "methods", ()) or ()
        if method != "HEAD"
    ]


# -- authentication and rights --------------------------------------------------------------


def test_every_route_refuses_an_anonymous_request(api: Api) -> None:
    routes = plugin_routes(api)
    assert len(routes) >= 20
    for method, path in routes:
        answer = api.client.request(method, f"{PREFIX}{path}", json={}, follow_redirects=False)
        if method == "GET" and path in ("/", "/ui/", "/docs"):
            # a browser is sent to Airflow's login, and back after it
            assert answer.status_code == 307, (path, answer.status_code)
            assert "/auth/login?next=" in answer.headers["location"]
        else:
            assert answer.status_code == 401, (method, path, answer.status_code, answer.text)
    bad_token = {"Authorization": "Bearer not-a-token"}
    assert api.client.get(f"{PREFIX}/api/workers", headers=bad_token).status_code in (401, 403)


def test_a_viewer_reads_but_cannot_act(api: Api) -> None:
    name = api.worker()
    assert api.get("/api/me", user="viewer").json() == {"user": "viewer", "can_act": False}
    assert api.get("/api/me").json() == {"user": "admin", "can_act": True}
    assert api.get(f"/api/workers?search={name}", user="viewer").json()["total_entries"] == 1
    for path, body in [
        (f"/api/workers/{name}/maintenance", {"on": True}),
        (f"/api/workers/{name}/shutdown", None),
        (f"/api/workers/{name}/queues", {"mode": "add", "queues": ["x"]}),
        (f"/api/workers/{name}/concurrency", {"concurrency": 2}),
        (f"/api/workers/{name}/forget", None),
        ("/api/bulk/maintenance", {"workers": [name], "on": True}),
        ("/api/bulk/shutdown", {"workers": [name]}),
        ("/api/bulk/queues", {"workers": [name], "mode": "set", "queues": ["x"]}),
        ("/api/bulk/concurrency", {"workers": [name], "concurrency": 2}),
        ("/api/bulk/forget", {"workers": [name]}),
    ]:
        answer = api.post(path, body, user="viewer")
        assert answer.status_code == 403, (path, answer.text)
        assert "right to edit pools" in answer.json()["detail"]
    with pytest.raises(NotFound):
        api.command(name)  # nothing was written


def test_the_page_and_the_docs_are_served(api: Api) -> None:
    page = api.get("/ui/", user="viewer")
    assert page.status_code == 200 and "Edge Mailbox fleet" in page.text
    for name in ("fleet.js", "fleet.css", "icon.svg", "icon-dark.svg"):
        assert api.get(f"/ui/{name}", user="viewer").status_code == 200
    assert api.get("/ui/..%2Fapi.py", user="viewer").status_code == 404
    docs = api.get("/docs", user="viewer")
    assert docs.status_code == 200 and f"{PREFIX}/openapi.json" in docs.text
    schema = api.get("/openapi.json", user="viewer").json()
    assert {"/api/workers", "/api/bulk/maintenance", "/api/workers/{worker}/forget"} <= set(
        schema["paths"]
    )


def test_the_plugin_is_in_airflows_menus(api: Api) -> None:
    answer = api.client.get("/api/v2/plugins", headers=api._auth("admin"))
    assert answer.status_code == 200, answer.text
    (ours,) = [p for p in answer.json()["plugins"] if p["name"] == "edge_mailbox"]
    views = {v["url_route"]: v for v in ours["external_views"]}
    assert views["edge-mailbox"]["href"] == f"{PREFIX}/ui/"
    assert (views["edge-mailbox"]["destination"], views["edge-mailbox"]["category"]) == (
        "nav",
        "admin",
    )
    assert views["edge-mailbox-api"]["href"] == f"{PREFIX}/docs"


# -- reading --------------------------------------------------------------------------------


def test_workers_queues_jobs_and_cost(api: Api) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    queue = f"q-{uuid.uuid4().hex[:6]}"
    running = job(queue, name, ti={"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": 2})
    waiting = job(queue)
    hb = beat(
        api.mailbox,
        api.worker_key,
        name,
        state=WorkerState.RUNNING,
        queues=[queue],
        free_slots=3,
        running_jobs=[running.job_id],
        command_seq=4,
    )
    owner = f"sched-{name}"
    snapshot(
        api.mailbox,
        api.scheduler,
        owner,
        workers=[(hb, api.worker_key)],
        jobs=[running, waiting],
        queues=[FleetQueue(queue=queue, pending=1, oldest_enqueued_at=waiting.enqueued_at)],
    )
    body = api.get(f"/api/workers?search={name.upper()}&state=running", user="viewer").json()
    (worker,) = body["workers"]
    assert (worker["state"], worker["queues"], worker["slots_used"], worker["concurrency"]) == (
        "running",
        [queue],
        1,
        4,
    )
    assert worker["command_seq"] == 4 and worker["metrics"]["cpu_percent"] == 12.5
    assert worker["running"][0]["task"]["path"] == "dags/d/runs/r/tasks/t/mapped/2"
    assert api.get(f"/api/workers?search={name}&state=idle").json()["workers"] == []
    assert api.get(f"/api/workers?queue={queue}").json()["total_entries"] == 1

    (q,) = [q for q in api.get("/api/queues").json()["queues"] if q["queue"] == queue]
    assert (q["pending"], q["workers"]) == (1, [name])
    assert q["oldest_age"] >= 29

    jobs = api.get(f"/api/jobs?queue={queue}").json()["jobs"]
    assert {j["job_id"] for j in jobs} == {running.job_id, waiting.job_id}
    (claimed,) = [j for j in jobs if j["worker"] == name]
    assert claimed["claim_latency"] == pytest.approx(2.0, abs=0.01)
    assert api.get(f"/api/jobs?queue={queue}&state=queued").json()["total_entries"] == 1

    cost = api.get("/api/cost").json()
    rows = {(r["side"], r["name"]): r for r in cost["rows"]}
    mine = rows[("worker", name)]
    assert mine["requests_per_hour"]["GET"] == pytest.approx(700, rel=0.01)
    assert rows[("scheduler", owner)]["requests_per_hour"]["PUT"] == pytest.approx(360)
    assert cost["usd_per_1000"]["PUT"] == 0.005 and cost["usd_per_1000"]["GET"] == 0.0004
    assert cost["total"]["usd_per_hour"] >= mine["usd_per_hour"] > 0

    everything = api.get(f"/api/fleet?search={name}").json()
    assert [w["name"] for w in everything["workers"]] == [name]
    assert everything["requests"]["LIST"] >= 2  # heartbeats and snapshots, nothing per worker


def test_an_unknown_state_filter_is_a_clear_422(api: Api) -> None:
    answer = api.get("/api/workers?state=sleeping")
    assert answer.status_code == 422
    assert "unknown state 'sleeping'" in answer.json()["detail"]


# -- acting ---------------------------------------------------------------------------------


def test_maintenance_is_a_signed_command_with_the_users_name(api: Api) -> None:
    name = api.worker(queues=["a"], concurrency=3)
    answer = api.post(f"/api/workers/{name}/maintenance", {"on": True, "comment": "disk swap"})
    assert answer.status_code == 200, answer.text
    command = api.command(name)  # verified with the scheduler's key, bound to the worker
    assert (command.seq, command.maintenance, command.issued_by) == (1, True, "admin")
    assert command.comment.endswith("admin: disk swap")
    assert (command.queues, command.concurrency, command.shutdown) == (["a"], 3, False)
    assert answer.json()["command"]["seq"] == 1

    off = api.post(f"/api/workers/{name}/maintenance", {"on": False}).json()["command"]
    assert (off["seq"], off["maintenance"], off["comment"]) == (2, False, "")
    assert api.command(name).seq == 2


def test_shutdown_queues_concurrency_one_by_one(api: Api) -> None:
    name = api.worker(queues=["a"], concurrency=3)
    assert (
        api.post(f"/api/workers/{name}/queues", {"mode": "add", "queues": ["b"]}).status_code == 200
    )
    assert api.command(name).queues == ["a", "b"]
    assert (
        api.post(f"/api/workers/{name}/queues", {"mode": "remove", "queues": ["a"]}).status_code
        == 200
    )
    assert api.command(name).queues == ["b"]
    assert (
        api.post(f"/api/workers/{name}/queues", {"mode": "set", "queues": ["x", "y"]}).status_code
        == 200
    )
    assert api.command(name).queues == ["x", "y"]
    assert api.post(f"/api/workers/{name}/concurrency", {"concurrency": 8}).status_code == 200
    assert api.command(name).concurrency == 8
    answer = api.post(f"/api/workers/{name}/shutdown")
    assert answer.status_code == 200, answer.text
    command = api.command(name)
    assert (command.shutdown, command.seq, command.queues, command.issued_by) == (
        True,
        5,
        ["x", "y"],
        "admin",
    )


def test_bulk_actions_report_each_worker(api: Api) -> None:
    one, two = api.worker(), api.worker()
    answer = api.post(
        "/api/bulk/maintenance", {"workers": [one, two, "ghost"], "on": True, "comment": "patch"}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["succeeded"], body["failed"]) == (2, 1)
    (ghost,) = [r for r in body["results"] if not r["ok"]]
    assert (ghost["worker"], ghost["status"]) == ("ghost", 404)
    assert "not known" in ghost["error"]
    for name in (one, two):
        command = api.command(name)
        assert command.maintenance and command.comment.endswith("admin: patch")
    for path, body, check in [
        ("/api/bulk/queues", {"mode": "set", "queues": ["z"]}, lambda c: c.queues == ["z"]),
        ("/api/bulk/concurrency", {"concurrency": 2}, lambda c: c.concurrency == 2),
        ("/api/bulk/shutdown", {}, lambda c: c.shutdown),
    ]:
        answer = api.post(path, {"workers": [one, two], **body})
        assert answer.json()["succeeded"] == 2, answer.text
        assert all(check(api.command(name)) for name in (one, two)), path


def test_forget_a_live_worker_is_refused_with_the_reason(api: Api) -> None:
    name = api.worker()
    answer = api.post(f"/api/workers/{name}/forget")
    assert answer.status_code == 409
    assert "is alive" in answer.json()["detail"] and "shut it down first" in answer.json()["detail"]
    assert api.get(f"/api/workers?search={name}").json()["total_entries"] == 1


def test_forget_a_stopped_worker(api: Api) -> None:
    gone, also = api.worker(state=WorkerState.OFFLINE), api.worker(state=WorkerState.OFFLINE)
    api.post(f"/api/workers/{gone}/maintenance", {"on": True})  # a command to remove too
    answer = api.post(f"/api/workers/{gone}/forget")
    assert answer.status_code == 200 and answer.json() == {
        "worker": gone,
        "ok": True,
        "command": None,
        "error": None,
        "status": 200,
    }
    assert api.get(f"/api/workers?search={gone}").json()["total_entries"] == 0
    with pytest.raises(NotFound):
        api.command(gone)
    assert api.post("/api/bulk/forget", {"workers": [also]}).json()["succeeded"] == 1
    assert api.post(f"/api/workers/{gone}/forget").status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/api/workers/ghost/maintenance", {"on": True}, 404, "worker 'ghost' is not known"),
        ("/api/workers/ghost/shutdown", None, 404, "not known"),
        ("/api/workers/{w}/queues", {"mode": "set", "queues": []}, 422, "at least 1 item"),
        ("/api/workers/{w}/queues", {"mode": "swap", "queues": ["a"]}, 422, "'set', 'add'"),
        ("/api/workers/{w}/queues", {"mode": "set", "queues": [" "]}, 422, "pattern"),
        ("/api/workers/{w}/queues", {"mode": "remove", "queues": ["default"]}, 409, "at least one"),
        ("/api/workers/{w}/concurrency", {"concurrency": 0}, 422, "greater than or equal to 1"),
        ("/api/workers/{w}/concurrency", {"concurrency": 5000}, 422, "less than or equal"),
        ("/api/workers/{w}/maintenance", {"on": True, "by": "me"}, 422, "Extra inputs"),
        ("/api/bulk/shutdown", {"workers": []}, 422, "at least 1 item"),
    ],
)
def test_bad_input_gets_a_clear_4xx(api: Api, path: str, body, status: int, says: str) -> None:
    name = api.worker(queues=["default"])
    answer = api.post(path.replace("{w}", name), body)
    assert answer.status_code == status, answer.text
    assert says in json.dumps(answer.json()), answer.text
    with pytest.raises(NotFound):
        api.command(name)  # nothing written


def test_a_broken_configuration_is_a_clear_503(api: Api, monkeypatch, tmp_path: Path) -> None:
    from edge_mailbox.executor.plugins.api import HOLDER

    monkeypatch.setenv("AIRFLOW__EDGE_MAILBOX__SIGNING_KEY_PATH", str(tmp_path / "missing.pem"))
    HOLDER.reset()
    try:
        answer = api.get("/api/workers")
        assert answer.status_code == 503
        assert "signing_key_path" in answer.json()["detail"]
        assert api.post("/api/bulk/shutdown", {"workers": ["x"]}).status_code == 503
    finally:
        monkeypatch.undo()
        HOLDER.reset()
    assert api.get("/api/workers").status_code == 200
