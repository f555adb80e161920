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
from edge_mailbox.signer.envelope import MAX_TOKEN_BYTES

M = TypeVar("M", bound=WireModel)


@dataclass(frozen=True)
class Signed(Generic[M]):
    """A verified object: the model, who signed it, and when it expires."""

    model: M
    kid: str
    issued_at: float
    expires_at: float


class TooLarge(ProtocolError):
    """A signed object over its kind's limit: refused before it is uploaded or downloaded."""

    def __init__(self, kind: str, size: int, limit: int, *, key: str | None = None) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"{kind}: {size} bytes signed, over the limit of {limit} bytes", key=key)


def signed_limit(cls: type[WireModel]) -> int:
    """The largest signed object of a kind: twice its MAX_BYTES (base64 and the envelope),
    never more than the envelope's own limit, which every reader enforces."""
    return min(2 * cls.MAX_BYTES, MAX_TOKEN_BYTES)


def binding(bucket: str, prefix: str, **ids: str) -> dict[str, str]:
    return {"bucket": bucket, "prefix": prefix.strip("/"), **ids}


def encode_signed(model: WireModel, key: SigningKey, *, bind: dict[str, str], ttl: float) -> bytes:
    token = sign_claims(
        model.model_dump(mode="json"), key, typ=model.KIND, bind=bind, ttl=ttl
    ).encode("ascii")
    if len(token) > signed_limit(type(model)):
        raise TooLarge(model.KIND, len(token), signed_limit(type(model)))
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
    if len(raw) > signed_limit(cls):
        raise TooLarge(cls.KIND, len(raw), signed_limit(cls), key=key)
    claims = verify_claims(raw, keyring, typ=cls.KIND, bind=bind, now=now)
    return Signed(cls.from_dict(dict(claims.body), key=key), claims.kid, claims.iat, claims.exp)
