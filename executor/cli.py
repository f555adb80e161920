"""``edge-mailbox``: admin tools for the scheduler side (keys now; more as they land)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_mailbox import __version__
from edge_mailbox.signer import KeyFileError, SigningKey

SEE_ALSO = """\
on the scheduler side, Airflow's own CLI has the rest:
  airflow edge-mailbox check|workers|queues|jobs|sweep
"""


def _keys_generate(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    try:
        path = key.write(args.output, overwrite=args.force)
    except KeyFileError as exc:
        print(f"edge-mailbox: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (private, mode 0600) and {path}.pub; key id {key.kid}")
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from edge_mailbox.signer import PublicKey

    try:
        key = PublicKey.from_file(args.path)
    except KeyFileError as exc:
        print(f"edge-mailbox: {exc}", file=sys.stderr)
        return 2
    print(f"key id {key.kid}\n{key.to_pem()}", end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-mailbox",
        description="Admin tools for edge-mailbox, the Airflow executor whose workers "
        "reach only an S3-compatible bucket.",
        epilog=SEE_ALSO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-mailbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    keys = sub.add_parser("keys", help="Ed25519 signing keys").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True
    )
    generate = keys.add_parser("generate", help="write a new key pair (PEM)")
    generate.add_argument("output", type=Path, help="private key file; the public key gets .pub")
    generate.add_argument("--force", action="store_true", help="overwrite an existing file")
    generate.set_defaults(func=_keys_generate)
    show = keys.add_parser("show", help="print a key's id and public PEM")
    show.add_argument("path", type=Path)
    show.set_defaults(func=_keys_show)
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
