"""``edge-mailbox-worker``: the edge worker's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_mailbox import __version__
from edge_mailbox.signer import KeyFileError, SigningKey

COMING = """\
coming next:
  (default)    run the worker: claim jobs from --queues in --bucket, run them with the Task SDK
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-mailbox-worker",
        description="An Airflow edge worker that reaches nothing but an S3-compatible bucket.",
        epilog=COMING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-mailbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    keygen = sub.add_parser("keygen", help="write this worker's Ed25519 key pair")
    keygen.add_argument("output", type=Path, nargs="?", default=Path("worker.pem"))
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    keygen.set_defaults(func=_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
