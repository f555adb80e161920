"""The ``airflow edge-mailbox`` command group, registered through the provider info's ``cli``
key (Airflow 3.3 reads commands from there; an executor's ``get_cli_commands`` is legacy)."""

from __future__ import annotations

import json
from typing import Any

from airflow.cli.cli_config import ActionCommand, Arg, GroupCommand, lazy_load_command

ARG_OUTPUT = Arg(("-o", "--output"), choices=("table", "json"), default="table", help="format")
ARG_SINCE = Arg(("--since",), type=float, default=3600.0, help="seconds back (default 3600)")
ARG_OLDER = Arg(("--older-than",), type=float, default=7 * 86400.0, help="seconds (default 7 days)")
ARG_DRY = Arg(("--dry-run",), action="store_true", help="only count what would be deleted")


def _command(name: str, help_text: str, *args: Arg) -> ActionCommand:
    return ActionCommand(
        name=name,
        help=help_text,
        func=lazy_load_command(f"edge_mailbox.executor.airflow_cli.{name}_command"),
        args=args,
    )


def get_cli_commands() -> list[GroupCommand]:
    return [
        GroupCommand(
            name="edge-mailbox",
            help="MailboxExecutor: edge workers that reach only an S3 bucket",
            subcommands=(
                _command("check", "Check the edge_mailbox settings, keys and the bucket"),
                _command("workers", "Workers: state, queues, slots, last heartbeat", ARG_OUTPUT),
                _command("queues", "Pending jobs per queue and the age of the oldest", ARG_OUTPUT),
                _command("jobs", "Recent jobs and their states", ARG_OUTPUT, ARG_SINCE),
                _command("sweep", "Delete old finished jobs' objects", ARG_OLDER, ARG_DRY),
            ),
        )
    ]


def _context() -> tuple[Any, Any]:
    from airflow.configuration import conf
    from airflow.executors.base_executor import get_execution_api_server_url

    from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_settings
    from edge_mailbox.mailbox.credentials import MissingCredentials, credentials_required
    from edge_mailbox.mailbox.protocol import Mailbox
    from edge_mailbox.mailbox.store import ObjectStore

    try:
        settings = load_settings(conf, get_execution_api_server_url())
    except EdgeMailboxConfigError as exc:
        raise SystemExit(f"configuration: {exc}") from None
    try:
        with credentials_required(settings.store.bucket):
            return settings, Mailbox(ObjectStore(settings.store))
    except MissingCredentials as exc:
        raise SystemExit(f"credentials: {exc}") from None


def _print(rows: list[Any], output: str) -> None:
    from edge_mailbox.executor.inventory import as_dicts

    data = as_dicts(rows)
    if output == "json":
        print(json.dumps(data, indent=2))
        return
    if not data:
        print("(none)")
        return
    columns = list(data[0])
    cells = [[_cell(row[c]) for c in columns] for row in data]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}s"
    return "" if value is None else str(value)


def workers_command(args: Any) -> None:
    from edge_mailbox.executor.inventory import workers

    settings, mailbox = _context()
    _print(workers(mailbox, settings.worker_keys, settings.worker_timeout), args.output)


def queues_command(args: Any) -> None:
    from edge_mailbox.executor.inventory import queues

    _, mailbox = _context()
    _print(queues(mailbox), args.output)


def jobs_command(args: Any) -> None:
    from edge_mailbox.executor.inventory import jobs

    settings, mailbox = _context()
    _print(jobs(mailbox, settings.worker_keys, args.since), args.output)


def sweep_command(args: Any) -> None:
    from edge_mailbox.executor.inventory import sweep

    _, mailbox = _context()
    count = sweep(mailbox, args.older_than, dry_run=args.dry_run)
    print(f"{'would delete' if args.dry_run else 'deleted'} {count} objects")


def check_command(args: Any) -> None:
    """Read the settings as the scheduler will, then prove the bucket does what we need."""
    import uuid

    from edge_mailbox.mailbox.errors import AlreadyExists, StoreError

    settings, mailbox = _context()
    store = mailbox.store
    print(f"bucket {settings.store.bucket}, prefix {settings.store.prefix}")
    print(f"endpoint {settings.store.endpoint_url or 'AWS S3'}, region {settings.store.region}")
    print(f"scheduler key {settings.signing_key.kid}")
    print(f"trusted worker keys: {', '.join(settings.worker_keys.kids()) or 'none'}")
    probe = mailbox.layout.check_probe(uuid.uuid4().hex)
    try:
        store.create(probe, b'{"probe":1}')
        try:
            store.create(probe, b'{"probe":2}')
            raise SystemExit("the store ignored If-None-Match: claims would not be exclusive")
        except AlreadyExists:
            pass
        store.delete(probe)
    except StoreError as exc:
        raise SystemExit(f"bucket: {exc}") from None
    print(f"bucket OK: create, conditional create (412), delete; {store.counter.total()} requests")
