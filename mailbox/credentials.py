"""Storage credentials that cannot be found, told in one message that says where they come from.

The store's boto3 session looks for credentials when the store is built (its client signs a
URL then): [edge_mailbox] aws_access_key_id and aws_secret_access_key when set, else the AWS
chain. A host with none stopped there with botocore's NoCredentialsError traceback, which
names nothing an operator can set. Both command lines (``edge-mailbox-worker`` and
``airflow edge-mailbox``) build their store inside ``credentials_required``, which turns that
error, and its cousins for half a key pair and a profile that does not exist, into
``MissingCredentials``: what is missing, and the places credentials are taken from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import NoCredentialsError, PartialCredentialsError, ProfileNotFound

from edge_mailbox.mailbox.errors import StoreError

# Where the store takes credentials from, the first found winning.
SOURCES = (
    "[edge_mailbox] aws_access_key_id and aws_secret_access_key in airflow.cfg "
    "(or AIRFLOW__EDGE_MAILBOX__AWS_ACCESS_KEY_ID and ..._AWS_SECRET_ACCESS_KEY)",
    "the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(and AWS_SESSION_TOKEN for temporary ones)",
    "a profile in ~/.aws/credentials or ~/.aws/config (AWS_PROFILE names it; else [default])",
    "an instance role (EC2 instance profile, ECS task role, EKS web identity)",
)


class MissingCredentials(StoreError):
    """No usable credentials for the bucket: retrying will not help, configuring will."""


def explain(exc: Exception, bucket: str) -> str:
    """What is missing, for ``bucket``, and where credentials come from (one per line)."""
    if isinstance(exc, PartialCredentialsError):
        what = f"only part of a key pair ({exc})"
    elif isinstance(exc, ProfileNotFound):
        profile = exc.kwargs.get("profile", "")
        what = f"the AWS profile {profile!r} is in neither ~/.aws/config nor ~/.aws/credentials"
    else:
        what = "none found"
    sources = "".join(f"\n  - {source}" for source in SOURCES)
    return f"no credentials for bucket {bucket!r}: {what}. They come from (first found):{sources}"


@contextmanager
def credentials_required(bucket: str) -> Iterator[None]:
    """Build a store in here: botocore's credential errors leave as ``MissingCredentials``."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError, ProfileNotFound) as exc:
        raise MissingCredentials(explain(exc, bucket)) from None
