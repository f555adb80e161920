""" "Test connection" on the edge, with real Airflow and SeaweedFS: the user asks Airflow's
REST API to test a connection; it runs on an edge worker of the connection's queue, and the
user reads its state and the hook's message from the API.

The connection is an SMTP server (Airflow's SMTP provider has a ``test_connection``) that the
edge site knows by a name of its own: ``plant-db.edge-site`` resolves only in the worker's
``/etc/hosts``, a private copy bind-mounted in the worker's own mount namespace (``unshare
--mount``), as an edge site's DNS names its machines. The scheduler and api-server resolve
nothing of the kind, so Airflow's own synchronous test (run in the api-server) fails, while
the test queued for the edge worker succeeds; with a bad password, it fails with the hook's
message.
"""

from __future__ import annotations

import base64
import json
import secrets
import socketserver
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.stack import Stack

pytestmark = pytest.mark.e2e
HOST = "plant-db.edge-site"
WORKER = "plant-1"
LOGIN, PASSWORD = "plant", "s3cret-on-site"
EXTRA = json.dumps({"disable_ssl": True, "disable_tls": True, "timeout": 5})


class SmtpServer(socketserver.ThreadingTCPServer):
    """An SMTP server that knows one login (AUTH PLAIN) and answers NOOP: what the SMTP
    hook's ``test_connection`` needs. It records each login attempt's user name."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.logins: list[tuple[str, bool]] = []
        super().__init__(("127.0.0.1", 0), _SmtpHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: SmtpServer

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 plant-db ESMTP")
        for raw in self.rfile:
            verb, _, argument = raw.decode().strip().partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self.reply("250-plant-db")
                self.reply("250 AUTH PLAIN")
            elif verb == "AUTH" and argument.upper().startswith("PLAIN "):
                _, user, password = base64.b64decode(argument[6:]).decode().split("\0")
                ok = (user, password) == (LOGIN, PASSWORD)
                self.server.logins.append((user, ok))
                self.reply("235 2.7.0 Authentication successful" if ok else BAD_LOGIN)
            elif verb in ("NOOP", "RSET"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 Command not implemented")


BAD_LOGIN = "535 5.7.8 Authentication credentials invalid"


@dataclass
class EdgeSiteStack(Stack):
    """The stack, with the edge worker started in a mount namespace of its own whose
    /etc/hosts knows the edge site's names."""

    hosts_file: Path | None = None

    def spawn(self, name: str, args: list[Any], env: dict[str, str]) -> subprocess.Popen[bytes]:
        if name == f"worker-{WORKER}" and self.hosts_file:
            mount = 'mount --bind "$0" /etc/hosts && exec "$@"'
            args = ["unshare", "--mount", "sh", "-c", mount, self.hosts_file, *args]
        return super().spawn(name, args, env)


def _mount_namespaces_work() -> bool:
    try:
        probe = ["unshare", "--mount", "sh", "-c", "mount --bind /etc/hosts /etc/hosts"]
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(seaweed, smtp, tmp_path_factory) -> Iterator[EdgeSiteStack]:
    if not _mount_namespaces_work():
        pytest.skip("needs unshare --mount (root or user namespaces) for the worker's /etc/hosts")
    root = tmp_path_factory.mktemp("conntest")
    hosts = root / "edge-site-hosts"
    hosts.write_text(f"{Path('/etc/hosts').read_text()}\n127.0.0.1 {HOST}\n")
    (root / "dags").mkdir()
    stack = EdgeSiteStack(
        root=root / "stack",
        dags_folder=root / "dags",
        prefix=f"conntest-{secrets.token_hex(4)}",
        airflow_options={"core": {"test_connection": "Enabled"}},
        hosts_file=hosts,
    )
    stack.prepare(store=seaweed)
    stack.add_worker(WORKER, queues="plant", concurrency=2)
    stack.start_airflow()
    yield stack
    stack.stop(keep_store=True)


def api(stack: Stack, method: str, path: str, body: Any = None, **headers: str) -> Any:
    request = urllib.request.Request(
        f"{stack.api}/api/v2/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def connection(smtp: SmtpServer, password: str) -> dict[str, Any]:
    return {
        "connection_id": "plant_mail",
        "conn_type": "smtp",
        "host": HOST,
        "port": smtp.port,
        "login": LOGIN,
        "password": password,
        "extra": EXTRA,
    }


def enqueue_and_wait(stack: Stack, body: dict[str, Any], timeout: float = 120) -> dict:
    """Queue a connection test as the UI does, then poll it by its token until it ends."""
    token = api(stack, "POST", "connections/enqueue-test", body)["token"]

    def ended() -> dict | None:
        test = api(
            stack, "GET", "connections/enqueue-test", **{"Airflow-Connection-Test-Token": token}
        )
        return test if test["state"] in ("success", "failed") else None

    return stack.wait_for(ended, timeout, "the connection test to end")


def test_the_scheduler_host_cannot_reach_the_connection(stack: Stack, smtp: SmtpServer) -> None:
    """Airflow's synchronous test runs in the api-server, off the edge site: no such host."""
    answer = api(stack, "POST", "connections/test", connection(smtp, PASSWORD))
    assert answer["status"] is False
    assert "Name or service not known" in answer["message"], answer
    assert smtp.logins == []


def test_a_connection_test_runs_on_an_edge_worker_of_its_queue(
    stack: Stack, smtp: SmtpServer
) -> None:
    test = enqueue_and_wait(stack, {**connection(smtp, PASSWORD), "queue": "plant"})
    assert (test["state"], test["result_message"]) == ("success", "Connection successfully tested")
    assert (LOGIN, True) in smtp.logins  # the password reached the worker, sealed, and worked
    claims = [c for c in stack.claims() if c["manifest"].get("connection_test")]
    assert [(c["worker"], c["manifest"]["queue"]) for c in claims] == [(WORKER, "plant")]
    assert claims[0]["manifest"]["connection_test"]["connection_id"] == "plant_mail"
    assert PASSWORD not in json.dumps(claims)  # the manifest names the test, not its secrets


def test_a_bad_password_fails_with_the_hooks_message(stack: Stack, smtp: SmtpServer) -> None:
    test = enqueue_and_wait(stack, {**connection(smtp, "wrong"), "queue": "plant"})
    assert test["state"] == "failed"
    assert test["result_message"] == f"({BAD_LOGIN[:3]}, b'{BAD_LOGIN[4:]}')"
    assert (LOGIN, False) in smtp.logins
