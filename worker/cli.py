"""``edge-mailbox-worker``: the edge worker's command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edge_mailbox import __version__
from edge_mailbox.mailbox.options import SECTION, WorkerOptions, default
from edge_mailbox.signer import KeyFileError, SigningKey
from edge_mailbox.worker.control import RunDir, default_run_dir
from edge_mailbox.worker.settings import add_flags

EPILOG = """\
examples:
  edge-mailbox-worker keygen /etc/edge-worker/worker.pem
  edge-mailbox-worker --queues default,gpu --concurrency 8
  edge-mailbox-worker status
  edge-mailbox-worker maintenance on --comment "disk swap" --wait
  edge-mailbox-worker stop --wait
"""


def _keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    try:
        path = key.write(args.output, overwrite=args.force)
    except KeyFileError as exc:
        print(f"edge-mailbox-worker: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path}.pub; key id {key.kid}")
    print("trust it on the scheduler side: add the .pub file to [edge_mailbox] worker_public_keys")
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from edge_mailbox.mailbox.credentials import MissingCredentials, credentials_required
    from edge_mailbox.worker.airflow_config import check_airflow_config
    from edge_mailbox.worker.settings import WorkerConfigError, resolve
    from edge_mailbox.worker.worker import Worker

    base_log_folder, bundles = check_airflow_config()
    from airflow.configuration import conf

    try:
        settings = resolve(args, conf)
        with credentials_required(settings.store.bucket):
            worker = Worker(settings, base_log_folder, bundles, run_dir=_run_dir(args))
    except (WorkerConfigError, MissingCredentials) as exc:
        print(f"edge-mailbox-worker: {exc}", file=sys.stderr)
        return 2
    return worker.run()


def _worker_name(args: argparse.Namespace) -> str:
    """The name as the running worker resolved it: flag, [edge_mailbox] worker_name, host."""
    if getattr(args, "name", None):
        return str(args.name)
    from airflow.configuration import conf

    name = conf.get(SECTION, "worker_name", fallback="")
    return name or default(WorkerOptions, "worker_name")


def _run_dir(args: argparse.Namespace) -> RunDir:
    path = getattr(args, "run_dir", None)
    return RunDir(Path(path) if path else default_run_dir(_worker_name(args)))


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def _status(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    status = run_dir.read_status()
    if status is None:
        print(f"edge-mailbox-worker: no worker status in {run_dir.path}", file=sys.stderr)
        return 1
    if not run_dir.running_pid():
        status["state"] = "offline"
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0


def _stop(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    pid = run_dir.request_stop()
    if not pid:
        print(f"edge-mailbox-worker: no running worker in {run_dir.path}", file=sys.stderr)
        return 1
    print(f"asked worker (pid {pid}) to stop: running tasks finish, no new ones start")
    if args.wait and not _wait_until(lambda: run_dir.running_pid() is None, args.timeout):
        print("edge-mailbox-worker: still running after --timeout", file=sys.stderr)
        return 1
    return 0


def _maintenance(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args)
    if not run_dir.running_pid():
        print(f"edge-mailbox-worker: no running worker in {run_dir.path}", file=sys.stderr)
        return 1
    on = args.mode == "on"
    run_dir.set_maintenance(on, args.comment or "")
    print(f"maintenance {args.mode} requested")
    if args.wait:

        def reached() -> bool:
            status = run_dir.read_status() or {}
            local = "local" in status.get("maintenance_by", [])
            return local == on and (status.get("state") == "maintenance" or not on)

        if not _wait_until(reached, args.timeout):
            print("edge-mailbox-worker: not there yet after --timeout", file=sys.stderr)
            return 1
        status = run_dir.read_status() or {}
        if not on and status.get("maintenance_by"):  # off here; the scheduler side holds it
            print(f"worker stays in maintenance: {status.get('maintenance_comment', '')}")
        else:
            print(f"worker is in {'maintenance' if on else 'service'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-mailbox-worker",
        description="An Airflow edge worker that reaches nothing but an S3-compatible bucket. "
        "Without a command it runs the worker; flags override [edge_mailbox] in airflow.cfg.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-mailbox {__version__}")
    add_flags(parser)  # one per worker option: --bucket, --queues, --concurrency, ...
    parser.add_argument(
        "--run-dir",
        dest="run_dir",
        help="status/control folder (default $AIRFLOW_HOME/edge-mailbox-worker/NAME)",
    )
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser("status", help="print the running worker's state as JSON")
    status.set_defaults(func=_status)
    stop = sub.add_parser("stop", help="graceful stop: running tasks finish, no new ones start")
    stop.add_argument("--wait", action="store_true", help="wait until the worker has exited")
    stop.add_argument("--timeout", type=float, default=3600.0)
    stop.set_defaults(func=_stop)
    maintenance = sub.add_parser(
        "maintenance", help="stop taking jobs and drain (on), or resume (off)"
    )
    maintenance.add_argument("mode", choices=["on", "off"])
    maintenance.add_argument("--comment", help="why; shown in the worker's heartbeat")
    maintenance.add_argument(
        "--wait", action="store_true", help="wait until drained (on) or back (off)"
    )
    maintenance.add_argument("--timeout", type=float, default=3600.0)
    maintenance.set_defaults(func=_maintenance)
    for command in (status, stop, maintenance):
        command.add_argument(
            "--name", help="the worker's name (default: as the worker resolves it)"
        )
        command.add_argument("--run-dir", dest="run_dir", help="the worker's run folder")
    keygen = sub.add_parser("keygen", help="write this worker's Ed25519 key pair")
    keygen.add_argument("output", type=Path, nargs="?", default=Path("worker.pem"))
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    keygen.set_defaults(func=_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
