"""Airflow provider metadata, found through the ``apache_airflow_provider`` entry point.

The ``config`` key documents every [edge_mailbox] option with its default; Airflow serves
these defaults to ``conf.get`` and honours AIRFLOW__EDGE_MAILBOX__* overrides.
"""

from __future__ import annotations

from typing import Any

from edge_mailbox import __version__


def _option(description: str, default: str | None, example: str | None = None, **extra: Any):
    return {
        "description": description,
        "version_added": None,
        "type": extra.pop("type", "string"),
        "example": example,
        "default": default,
        **extra,
    }


CONFIG: dict[str, Any] = {
    "edge_mailbox": {
        "description": "MailboxExecutor: edge workers reach only an S3-compatible bucket.",
        "options": {
            "bucket": _option(
                "The bucket shared by the scheduler side and the workers.", None, "airflow-edge"
            ),
            "prefix": _option(
                "Key prefix inside the bucket; all objects live under PREFIX/v1/.", "edge-mailbox"
            ),
            "endpoint_url": _option(
                "S3 endpoint for MinIO, SeaweedFS, ...; empty for AWS S3.", "", "http://minio:9000"
            ),
            "region": _option(
                "Region of the bucket; empty uses the AWS default chain.", "", "eu-central-1"
            ),
            "aws_access_key_id": _option(
                "Access key; empty uses the standard AWS credential chain.", "", sensitive=True
            ),
            "aws_secret_access_key": _option(
                "Secret key; empty uses the standard AWS credential chain.", "", sensitive=True
            ),
            "proxy": _option(
                "HTTP(S) proxy URL for bucket requests; empty uses HTTPS_PROXY.",
                "",
                "http://proxy:3128",
            ),
            "addressing_style": _option(
                "S3 addressing style: auto, path or virtual.", "auto", "path"
            ),
            "signing_key_path": _option(
                "The scheduler's Ed25519 private key (PEM) that signs manifests.",
                None,
                "/etc/airflow/edge-mailbox.pem",
            ),
            "worker_public_keys": _option(
                "Comma-separated worker public key files (or folders of .pub files) to trust.",
                None,
                "/etc/airflow/workers/",
            ),
            "manifest_ttl": _option(
                "Seconds a job manifest stays valid for a worker to claim.", "3600", type="float"
            ),
            "poll_interval": _option(
                "How often (s) the inbox's change marker is polled with a conditional GET while "
                "jobs are queued or running (after 40 polls without a change, backing off to "
                "five times this); a LIST follows only when it changed.",
                "0.05",
                type="float",
            ),
            "poll_interval_idle": _option(
                "How often (s) the inbox's change marker is polled when no job is outstanding.",
                "5",
                type="float",
            ),
            "list_interval": _option(
                "A LIST of the inbox at least this often (s) while jobs are outstanding, "
                "whatever the change marker says.",
                "10",
                type="float",
            ),
            "worker_timeout": _option(
                "Seconds without a heartbeat after which a worker counts as lost and its "
                "tasks are failed (and retried per their retries).",
                "120",
                type="float",
            ),
            "cleanup_success_after": _option(
                "Seconds after which the bucket objects of a successful job (manifest, claim, "
                "relay answers, result) are deleted. Logs are kept: give logs/ a lifecycle rule.",
                "300",
                type="float",
            ),
            "cleanup_failed_after": _option(
                "The same for failed, lost and revoked jobs: kept longer, for troubleshooting.",
                "3600",
                type="float",
            ),
            "inbox_item_timeout": _option(
                "How long (s) an inbox item this scheduler cannot act on is kept before it is "
                "deleted: a claim or result notice of a job another scheduler queued (left "
                "for that scheduler, or for the one that adopts its tasks). An item signed "
                "by a worker key not trusted yet (a worker enrolled a moment ago) waits 300 s "
                "at most.",
                "3600",
                type="float",
            ),
            "queue_sweep_interval": _option(
                "How often (s) the front of each queue is checked for objects no worker may "
                "run (unsigned, tampered, foreign or expired manifests, stray keys), which are "
                "deleted: one LIST per queue.",
                "300",
                type="float",
            ),
            "relay_request_max_age": _option(
                "A relay request sent longer ago than this (s) is refused unread: no call is "
                "replayed late (a worker stops waiting for an answer after 900 s).",
                "1200",
                type="float",
            ),
            "worker_check_interval": _option(
                "How often (s) worker heartbeats are checked (one LIST).", "15", type="float"
            ),
            "relay_threads": _option(
                "Threads replaying relayed Execution API calls in parallel.", "8", type="integer"
            ),
            "execution_api_timeout": _option(
                "Timeout (s) of one replayed Execution API call.", "30", type="float"
            ),
        },
    }
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "edge-mailbox",
        "name": "Edge Mailbox",
        "description": "Run Airflow tasks on edge workers that reach only an S3-compatible bucket.",
        "versions": [__version__],
        "executors": ["edge_mailbox.executor.MailboxExecutor"],
        "config": CONFIG,
        "cli": ["edge_mailbox.executor.airflow_cli.get_cli_commands"],
    }
