"""The ``airflow edge-mailbox`` command group, registered through the provider info's ``cli``
key (Airflow 3.3 reads commands from there; an executor's ``get_cli_commands`` is legacy)."""

from __future__ import annotations

from typing import Any

from airflow.cli.cli_config import ActionCommand, GroupCommand, lazy_load_command


def get_cli_commands() -> list[GroupCommand]:
    return [
        GroupCommand(
            name="edge-mailbox",
            help="MailboxExecutor: edge workers that reach only an S3 bucket",
            subcommands=(
                ActionCommand(
                    name="check",
                    help="Check [edge_mailbox] settings, keys and the bucket",
                    func=lazy_load_command("edge_mailbox.executor.airflow_cli.check"),
                    args=(),
                ),
            ),
        )
    ]


def check(args: Any) -> None:
    """Read the settings as the scheduler will, then prove the bucket does what we need."""
    import uuid

    from airflow.configuration import conf
    from airflow.executors.base_executor import get_execution_api_server_url

    from edge_mailbox.executor.settings import EdgeMailboxConfigError, load_settings
    from edge_mailbox.mailbox.errors import AlreadyExists, StoreError
    from edge_mailbox.mailbox.layout import Layout
    from edge_mailbox.mailbox.store import ObjectStore

    try:
        settings = load_settings(conf, get_execution_api_server_url())
    except EdgeMailboxConfigError as exc:
        raise SystemExit(f"configuration: {exc}") from None
    print(f"bucket {settings.store.bucket}, prefix {settings.store.prefix}")
    print(f"endpoint {settings.store.endpoint_url or 'AWS S3'}, region {settings.store.region}")
    print(f"scheduler key {settings.signing_key.kid}")
    print(f"trusted worker keys: {', '.join(settings.worker_keys.kids()) or 'none'}")
    store = ObjectStore(settings.store)
    probe = f"{Layout(settings.store.prefix).root}check/{uuid.uuid4().hex}"
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
