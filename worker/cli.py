"""``edge-mailbox-worker``: the edge worker's command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge_mailbox import __version__
from edge_mailbox.signer import KeyFileError, SigningKey

COMING = """\
coming next:
  stop         graceful stop: finish running tasks, take no new ones
  maintenance  on --comment "..." [--wait] | off
  status       JSON with state, queues, slots and running jobs
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
    from edge_mailbox.worker.settings import WorkerConfigError, resolve
    from edge_mailbox.worker.worker import Worker, check_airflow_config

    base_log_folder, bundles = check_airflow_config()
    from airflow.configuration import conf

    try:
        settings = resolve(args, conf)
    except WorkerConfigError as exc:
        print(f"edge-mailbox-worker: {exc}", file=sys.stderr)
        return 2
    return Worker(settings, base_log_folder, bundles).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-mailbox-worker",
        description="An Airflow edge worker that reaches nothing but an S3-compatible bucket. "
        "Without a command it runs the worker; flags override [edge_mailbox] in airflow.cfg.",
        epilog=COMING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-mailbox {__version__}")
    parser.add_argument("--bucket", help="the shared bucket ([edge_mailbox] bucket)")
    parser.add_argument("--prefix", help="key prefix in the bucket (default edge-mailbox)")
    parser.add_argument("--endpoint-url", dest="endpoint_url", help="S3 endpoint (MinIO, ...)")
    parser.add_argument("--region", help="bucket region")
    parser.add_argument("--proxy", help="HTTP(S) proxy for the bucket")
    parser.add_argument(
        "--addressing-style", dest="addressing_style", choices=["auto", "path", "virtual"]
    )
    parser.add_argument(
        "--queues", help="comma-separated queues to take jobs from (default: default)"
    )
    parser.add_argument("--concurrency", help="slots: tasks take pool_slots each (default 8)")
    parser.add_argument("--name", help="worker name (default: host name)")
    parser.add_argument("--key", help="this worker's private key (default worker.pem)")
    parser.add_argument(
        "--scheduler-key", dest="scheduler_key", help="scheduler public key file(s) to trust"
    )
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
