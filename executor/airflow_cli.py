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
ARG_WORKER = Arg(("worker",), help="the worker's name")
ARG_WORKER_OPT = Arg(("worker",), nargs="?", help="a worker's name: change its queues")
ARG_MODE = Arg(("mode",), choices=("on", "off"), help="enter (on) or exit (off) maintenance")
ARG_COMMENT = Arg(("--comment",), default=None, help="why (shown with who and when)")
ARG_WAIT = Arg(("--wait",), action="store_true", help="wait until the heartbeat shows it")
ARG_TIMEOUT = Arg(("--timeout",), type=float, default=600.0, help="for --wait (default 600 s)")
ARG_ALL = Arg(("--all",), action="store_true", help="every worker with a heartbeat")
ARG_WORKERS_OPT = Arg(("worker",), nargs="?", help="the worker's name (or --all)")
ARG_SET = Arg(("--set",), default=None, help="serve exactly these queues (comma-separated)")
ARG_ADD = Arg(("--add",), action="append", default=[], help="also serve this queue")
ARG_REMOVE = Arg(("--remove",), action="append", default=[], help="stop serving this queue")
ARG_TARGET = Arg(("target",), nargs="?", help="an object's key, or s3://BUCKET/KEY")
ARG_JOB = Arg(("--job",), default=None, help="a job id: print its whole story")
ARG_SLOTS = Arg(("concurrency",), type=int, help="how many slots the worker runs")


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
                _command(
                    "queues",
                    "Pending jobs per queue; with WORKER, change the queues it serves",
                    ARG_WORKER_OPT,
                    ARG_SET,
                    ARG_ADD,
                    ARG_REMOVE,
                    ARG_WAIT,
                    ARG_TIMEOUT,
                    ARG_OUTPUT,
                ),
                _command(
                    "maintenance",
                    "Put a worker in maintenance (it takes no new tasks) or take it out",
                    ARG_WORKER,
                    ARG_MODE,
                    ARG_COMMENT,
                    ARG_WAIT,
                    ARG_TIMEOUT,
                ),
                _command(
                    "shutdown",
                    "Stop a worker after its running tasks finish",
                    ARG_WORKERS_OPT,
                    ARG_ALL,
                    ARG_WAIT,
                    ARG_TIMEOUT,
                ),
                _command(
                    "concurrency",
                    "Set how many slots a worker runs",
                    ARG_WORKER,
                    ARG_SLOTS,
                    ARG_WAIT,
                    ARG_TIMEOUT,
                ),
                _command("forget", "Remove a gone worker's heartbeat and command", ARG_WORKER),
                _command(
                    "inspect",
                    "Decode a mailbox object: kind, signer, whether it verifies, its body",
                    ARG_TARGET,
                    ARG_JOB,
                ),
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
    from edge_mailbox.executor.fleet_control import Change
    from edge_mailbox.executor.inventory import queues

    if args.worker:
        chosen = tuple(q.strip() for q in args.set.split(",") if q.strip()) if args.set else None
        if chosen is None and not (args.add or args.remove):
            raise SystemExit("queues WORKER: give --set a,b or --add Q or --remove Q")
        _send(
            [args.worker],
            Change(queues=chosen, add_queues=tuple(args.add), remove_queues=tuple(args.remove)),
            args,
        )
        return
    _, mailbox = _context()
    _print(queues(mailbox), args.output)


def maintenance_command(args: Any) -> None:
    from edge_mailbox.executor.fleet_control import Change

    on = args.mode == "on"
    _send([args.worker], Change(maintenance=on, comment=args.comment), args)


def shutdown_command(args: Any) -> None:
    from edge_mailbox.executor.fleet_control import Change

    if bool(args.worker) == bool(args.all):
        raise SystemExit("shutdown: give a WORKER or --all")
    names = [args.worker] if args.worker else None
    _send(names, Change(shutdown=True), args)


def concurrency_command(args: Any) -> None:
    from edge_mailbox.executor.fleet_control import Change

    _send([args.worker], Change(concurrency=args.concurrency), args)


def forget_command(args: Any) -> None:
    from edge_mailbox.executor.fleet_control import FleetError

    control = _fleet()
    try:
        control.forget(args.worker)
    except FleetError as exc:
        raise SystemExit(str(exc)) from None
    print(f"forgot worker {args.worker}: its heartbeat and command are deleted")


def inspect_command(args: Any) -> None:
    from edge_mailbox.executor.inspect import Inspector
    from edge_mailbox.signer import KeyRing

    if bool(args.target) == bool(args.job):
        raise SystemExit("inspect: give an object's KEY (or s3://BUCKET/KEY), or --job JOB")
    settings, mailbox = _context()
    inspector = Inspector(mailbox, KeyRing([settings.signing_key.public]), settings.worker_keys)
    try:
        reports = (
            list(inspector.job_story(args.job)) if args.job else [inspector.inspect(args.target)]
        )
    except ValueError as exc:
        raise SystemExit(f"inspect: {exc}") from None
    if not reports:
        print(f"no objects of job {args.job}")
    for report in reports:
        print("\n".join(report.lines()))


def _fleet() -> Any:
    from edge_mailbox.executor.fleet_control import FleetControl

    settings, mailbox = _context()
    return FleetControl(
        mailbox, settings.signing_key, settings.worker_keys, settings.worker_timeout
    )


def _send(names: list[str] | None, change: Any, args: Any) -> None:
    """Write each worker's next command; with --wait, wait for each heartbeat to show it."""
    import getpass
    import socket

    from edge_mailbox.executor.fleet_control import FleetError, reached

    control = _fleet()
    if names is None:  # --all: every worker whose heartbeat is in the bucket
        names = [
            n
            for e in control.mailbox.list_heartbeats()
            if (n := control.mailbox.layout.parse_heartbeat(e.key))
        ]
    user = f"{getpass.getuser()}@{socket.gethostname()}"
    sent = []
    failed = False
    for name in names:
        try:
            command = control.send(name, user, change)
        except FleetError as exc:
            print(f"{name}: {exc}")
            failed = True
            continue
        print(f"{name}: command {command.seq} written ({_describe(command)})")
        sent.append(command)
    if getattr(args, "wait", False):
        for command in sent:
            try:
                hb = control.wait_applied(
                    command.worker, command.seq, args.timeout, reached(change)
                )
            except FleetError as exc:
                print(str(exc))
                failed = True
                continue
            print(
                f"{command.worker}: {hb.state.value}, queues {','.join(hb.queues)}, "
                f"concurrency {hb.concurrency}"
            )
    if failed:
        raise SystemExit(1)


def _describe(command: Any) -> str:
    parts = [
        "maintenance" if command.maintenance else "in service",
        f"queues {','.join(command.queues)}",
        f"concurrency {command.concurrency}",
    ]
    if command.shutdown:
        parts.insert(0, "shutdown")
    return ", ".join(parts)


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
