"""Signed objects: a wire model inside a JWS envelope, bound to where it lives.

The binding names the bucket and prefix and the ids the key is built from, so a valid object
copied to another queue, job or bucket fails verification with the field that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from edge_mailbox.mailbox.errors import ProtocolError
from edge_mailbox.mailbox.models import WireModel
from edge_mailbox.signer import KeyRing, SigningKey, sign_claims, verify_claims

M = TypeVar("M", bound=WireModel)


@dataclass(frozen=True)
class Signed(Generic[M]):
    """A verified object: the model, who signed it, and when it expires."""

    model: M
    kid: str
    issued_at: float
    expires_at: float


def binding(bucket: str, prefix: str, **ids: str) -> dict[str, str]:
    return {"bucket": bucket, "prefix": prefix.strip("/"), **ids}


def encode_signed(model: WireModel, key: SigningKey, *, bind: dict[str, str], ttl: float) -> bytes:
    token = sign_claims(
        model.model_dump(mode="json"), key, typ=model.KIND, bind=bind, ttl=ttl
    ).encode("ascii")
    if len(token) > model.MAX_BYTES * 2:
        raise ProtocolError(f"{model.KIND}: signed object of {len(token)} bytes is over the limit")
    return token


def decode_signed(
    raw: bytes,
    cls: type[M],
    keyring: KeyRing,
    *,
    bind: dict[str, str],
    key: str | None = None,
    now: float | None = None,
) -> Signed[M]:
    """Verify then parse. Raises VerificationError (with a reason) or ProtocolError."""
    # base64 inflates by 4/3; the envelope adds a little. Refuse anything far larger unread.
    if len(raw) > cls.MAX_BYTES * 2:
        raise ProtocolError(f"{cls.KIND}: {len(raw)} bytes is over the limit", key=key)
    claims = verify_claims(raw, keyring, typ=cls.KIND, bind=bind, now=now)
    return Signed(cls.from_dict(dict(claims.body), key=key), claims.kid, claims.iat, claims.exp)
