"""A whole edge-mailbox installation on one machine, on loopback: the demo, the end-to-end
tests and the benchmarks all run this.

- SeaweedFS (infra/devstore.py) as the bucket;
- a scheduler-side AIRFLOW_HOME (SQLite) running api-server, scheduler and dag-processor
  with MailboxExecutor (or LocalExecutor, for comparisons);
- edge workers with an AIRFLOW_HOME of their own: no database, no route to Airflow, only
  the bucket's endpoint and credentials.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.devstore import DevStore, free_ports  # noqa: E402

BIN = Path(sys.executable).parent
DAGS = ROOT / "demo" / "dags"
MAILBOX_EXECUTOR = "edge_mailbox.executor.MailboxExecutor"
# Scheduler side only: reads finished tasks' logs from the bucket (executor/log_config.py).
LOG_CONFIG_CLASS = "edge_mailbox.executor.log_config.LOGGING_CONFIG"


def _ini(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in options.items())
        lines.append("")
    return "\n".join(lines)


@dataclass
class Stack:
    root: Path
    executor: str = MAILBOX_EXECUTOR
    dags_folder: Path = DAGS
    prefix: str = "edge-mailbox"
    parallelism: int = 32
    scheduler_options: dict[str, Any] = field(default_factory=dict)  # extra [edge_mailbox]
    airflow_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # other sections
    logging_config_class: str | None = LOG_CONFIG_CLASS
    store: DevStore | None = None
    port: int = 0
    # name -> (role, password): Airflow's SimpleAuthManager with these users, and the REST
    # calls below as the first of them. None: every request is an admin's, no login.
    users: dict[str, tuple[str, str]] | None = None
    token: str | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_files: dict[str, Path] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "airflow"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- set-up ------------------------------------------------------------------------------

    def prepare(self, store: DevStore | None = None) -> Stack:
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "logs").mkdir(parents=True)
        self.store = store or DevStore(bucket="edge-mailbox", data_dir=self.root / "weed").start()
        self.keys.mkdir()
        self._run([BIN / "edge-mailbox", "keys", "generate", str(self.keys / "scheduler.pem")])
        (self.keys / "workers").mkdir()
        self.port = free_ports(1)[0]
        self.home.mkdir()
        config = self._scheduler_config()
        if self.users:
            passwords = self.home / "passwords.json"
            passwords.write_text(json.dumps({n: pw for n, (_, pw) in self.users.items()}))
            config["core"].update(
                simple_auth_manager_all_admins="False",
                simple_auth_manager_users=",".join(f"{n}:{r}" for n, (r, _) in self.users.items()),
                simple_auth_manager_passwords_file=passwords,
            )
        for section, options in self.airflow_options.items():
            config.setdefault(section, {}).update(options)
        (self.home / "airflow.cfg").write_text(_ini(config))
        self._run([BIN / "airflow", "db", "migrate"], env=self.env(), log="db-migrate")
        return self

    def _store_options(self) -> dict[str, Any]:
        assert self.store
        return {
            "bucket": self.store.bucket,
            "prefix": self.prefix,
            "endpoint_url": self.store.endpoint_url,
            "region": "us-east-1",
            "addressing_style": "path",
            "aws_access_key_id": self.store.access_key,
            "aws_secret_access_key": self.store.secret_key,
        }

    def _scheduler_config(self) -> dict[str, dict[str, Any]]:
        return {
            "core": {
                "executor": self.executor,
                "dags_folder": self.dags_folder,
                "load_examples": "False",
                "dags_are_paused_at_creation": "False",
                "simple_auth_manager_all_admins": "True",
                "parallelism": self.parallelism,
                "execution_api_server_url": f"{self.api}/execution/",
            },
            "database": {"sql_alchemy_conn": f"sqlite:///{self.home / 'airflow.db'}"},
            "api": {"base_url": self.api, "port": self.port, "host": "127.0.0.1", "workers": 1},
            "api_auth": {"jwt_secret": secrets.token_urlsafe(32)},
            "logging": {
                "base_log_folder": self.home / "logs",
                "colored_console_log": "False",
                **(
                    {"logging_config_class": self.logging_config_class}
                    if self.logging_config_class
                    else {}
                ),
            },
            "scheduler": {"scheduler_heartbeat_sec": 1, "min_file_process_interval": 30},
            "dag_processor": {"refresh_interval": 5},
            "edge_mailbox": {
                **self._store_options(),
                "signing_key_path": self.keys / "scheduler.pem",
                "worker_public_keys": self.keys / "workers",
                **self.scheduler_options,
            },
        }

    def env(self, home: Path | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AWS_"))}
        env.update(AIRFLOW_HOME=str(home or self.home), PYTHONUNBUFFERED="1", **extra)
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        return env

    def _run(
        self, args: list[Any], env: dict[str, str] | None = None, log: str | None = None
    ) -> None:
        out = open(self.root / "logs" / f"{log}.log", "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            subprocess.run(
                [str(a) for a in args], env=env, check=True, stdout=out, stderr=subprocess.STDOUT
            )
        finally:
            if log:
                out.close()

    # -- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, args: list[Any], env: dict[str, str]) -> subprocess.Popen[bytes]:
        path = self.root / "logs" / f"{name}.log"
        with open(path, "ab") as out:
            process = subprocess.Popen(
                [str(a) for a in args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name], self.log_files[name] = process, path
        return process

    def start_airflow(self, timeout: float = 180) -> None:
        env = self.env()
        self.spawn(
            "api-server", [BIN / "airflow", "api-server", "-p", self.port, "-H", "127.0.0.1"], env
        )
        self.spawn("scheduler", [BIN / "airflow", "scheduler", "--skip-serve-logs"], env)
        self.spawn("dag-processor", [BIN / "airflow", "dag-processor"], env)
        self.wait_for(
            lambda: self._get("/api/v2/monitor/health") is not None, timeout, "api-server health"
        )

    def start_triggerer(self) -> None:
        """Opt-in: deferrable tasks need ``airflow triggerer`` on the scheduler side (it runs
        their triggers; the task resumes on an edge worker). No log server: nothing reads it."""
        self.spawn("triggerer", [BIN / "airflow", "triggerer", "--skip-serve-logs"], self.env())

    def add_scheduler(self, name: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """Another scheduler on the same database (Airflow HA: needs PostgreSQL or MySQL)."""
        args = [BIN / "airflow", "scheduler", "--skip-serve-logs"]
        return self.spawn(name, args, self.env(**extra_env))

    def worker_home(self, name: str) -> Path:
        return self.root / f"worker-{name}"

    def restart_scheduler(self) -> None:
        """SIGKILL the scheduler, as a crash would, and start a new one."""
        old = self.processes.pop("scheduler")
        os.killpg(old.pid, signal.SIGKILL)
        old.wait(30)
        self.spawn("scheduler", [BIN / "airflow", "scheduler", "--skip-serve-logs"], self.env())

    def add_worker(
        self,
        name: str,
        queues: str = "default",
        concurrency: int = 8,
        options: dict[str, Any] | None = None,
        **extra_env: str,
    ) -> subprocess.Popen[bytes]:
        home = self.worker_home(name)
        home.mkdir(exist_ok=True)
        key = home / "worker.pem"
        if not key.exists():
            self._run([BIN / "edge-mailbox-worker", "keygen", key])
            shutil.copy(f"{key}.pub", self.keys / "workers" / f"{name}.pub")
        config = {
            "core": {
                "executor": MAILBOX_EXECUTOR,
                "dags_folder": self.dags_folder,
                "load_examples": "False",
            },
            # No route to Airflow: nothing here points at the api-server or its database.
            "database": {"sql_alchemy_conn": f"sqlite:///{home / 'unused.db'}"},
            "logging": {"base_log_folder": home / "logs", "colored_console_log": "False"},
            "edge_mailbox": {
                **self._store_options(),
                "worker_key_path": key,
                "scheduler_public_keys": self.keys / "scheduler.pem.pub",
                "worker_name": name,
                "worker_queues": queues,
                "worker_concurrency": concurrency,
                **(options or {}),
            },
        }
        (home / "airflow.cfg").write_text(_ini(config))
        return self.spawn(
            f"worker-{name}", [BIN / "edge-mailbox-worker"], self.env(home, **extra_env)
        )

    def worker_cli(
        self, name: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``edge-mailbox-worker ARGS`` as an operator would on that worker's host."""
        return subprocess.run(
            [str(BIN / "edge-mailbox-worker"), *args],
            env=self.env(self.worker_home(name)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self, *, keep_store: bool = False) -> None:
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        self.processes.clear()
        if self.store and not keep_store:
            self.store.stop()

    # -- the REST API ------------------------------------------------------------------------

    def login(self, user: str) -> str:
        """A token for ``user`` (of ``users``), as Airflow's login page gets one."""
        assert self.users
        body = json.dumps({"username": user, "password": self.users[user][1]}).encode()
        request = urllib.request.Request(
            f"{self.api}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.users:
            self.token = self.token or self.login(next(iter(self.users)))
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            f"{self.api}{path}", data=data, method=method, headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def _get(self, path: str) -> Any:
        try:
            return self._request("GET", path)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_for(self, check: Any, timeout: float, what: str, every: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None and not name.startswith("worker"):
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}: see {self.log_files[name]}"
                    )
            value = check()
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        self.wait_for(
            lambda: self._get(f"/api/v2/dags/{dag_id}"), timeout, f"DAG {dag_id} to be parsed"
        )

    def add_connection(self, conn_id: str, **fields: Any) -> None:
        self._request("POST", "/api/v2/connections", {"connection_id": conn_id, **fields})

    def add_variable(self, key: str, value: str, description: str | None = None) -> None:
        self._request(
            "POST", "/api/v2/variables", {"key": key, "value": value, "description": description}
        )

    def trigger(
        self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None
    ) -> str:
        """Trigger a run; with ``logical_date`` (ISO 8601) templates also get ``ds``, ``ts``..."""
        run = self._request(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            {"logical_date": logical_date, "conf": conf or {}},
        )
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        run = self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return run["state"] if run else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        def finished() -> str | None:
            state = self.run_state(dag_id, run_id)
            return state if state in ("success", "failed") else None

        return self.wait_for(finished, timeout, f"run {run_id} of {dag_id}", every=0.2)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        data = self._request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000"
        )
        return data["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._request("GET", path)["value"]

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> list[dict[str, Any]]:
        """A task try's log as the UI gets it: the REST API's structured messages (each a dict
        with ``event``, and ``timestamp``, ``level``... when the line was a JSON log record)."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
            f"?map_index={map_index}"
        )
        return self._request("GET", path)["content"]

    def bucket_client(self) -> Any:
        from edge_mailbox.mailbox.config import StoreConfig
        from edge_mailbox.mailbox.store import ObjectStore

        assert self.store
        return ObjectStore(
            StoreConfig(
                bucket=self.store.bucket,
                prefix=self.prefix,
                endpoint_url=self.store.endpoint_url,
                access_key_id=self.store.access_key,
                secret_access_key=self.store.secret_key,
                addressing_style="path",
                region="us-east-1",
            )
        )

    def signed_body(self, client: Any, key: str) -> dict[str, Any]:
        """The body of a signed object, read without verifying (tests and demos only)."""
        from edge_mailbox.signer.keys import b64url_decode

        token = client.get(key).body.decode()
        return json.loads(b64url_decode(token.split(".")[1]))["body"]

    def claims(self, client: Any | None = None) -> list[dict[str, Any]]:
        """Every claim in the bucket, its embedded manifest's body under ``manifest``."""
        from edge_mailbox.signer.keys import b64url_decode

        client = client or self.bucket_client()
        out = []
        for entry in client.list_all(f"{self.prefix}/v1/jobs/"):
            if entry.key.endswith("/claim.jws"):
                claim = self.signed_body(client, entry.key)
                token = claim["manifest"].split(".")[1]
                claim["manifest"] = json.loads(b64url_decode(token))["body"]
                out.append(claim)
        return out

    def all_results_in(self, client: Any) -> bool:
        """Every claimed job has its result, and the inbox is empty (all of it was read)."""
        from edge_mailbox.mailbox.layout import Layout

        layout = Layout(self.prefix)
        kinds = [layout.parse_job_key(e.key) for e in client.list_all(layout.jobs)]
        claims = {job for job, kind in kinds if kind == "claim"}
        results = {job for job, kind in kinds if kind == "result"}
        inbox = list(client.list_all(layout.inbox))
        return bool(claims) and claims == results and not inbox

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_files.get(name) or self.root / "logs" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
