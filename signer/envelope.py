"""Signed envelopes: JWS compact serialization with EdDSA (RFC 7515, RFC 8037).

The envelope carries the exact payload bytes, the key id and the signature, so verification
never re-serialises JSON. Any JOSE library can check our objects; ours is written out here
because it must be stricter than common libraries: only EdDSA, no ``crit`` extensions, and
canonical base64url only (a lenient decoder lets a byte of the signature change unnoticed).

On top of the raw envelope, ``sign_claims``/``verify_claims`` add what every edge-mailbox
object needs: a type, issued-at and expiry, and a binding (bucket, prefix, queue, job id...)
that ties the object to where it may legitimately be found.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature

from edge_mailbox.signer import strictjson
from edge_mailbox.signer.errors import Reason, VerificationError
from edge_mailbox.signer.keys import KeyRing, SigningKey, b64url, b64url_decode

MAX_TOKEN_BYTES = 4 * 1024 * 1024
DEFAULT_LEEWAY_SECONDS = 60.0
MAX_TIMESTAMP = 1e11  # the year 5138: later is a forgery or a bug
CONTENT_TYPE = "application/jose"


@dataclass(frozen=True)
class Verified:
    """A verified envelope: who signed it and exactly what they signed."""

    kid: str
    header: Mapping[str, Any]
    payload: bytes


def sign(payload: bytes, key: SigningKey) -> str:
    header = json.dumps({"alg": "EdDSA", "kid": key.kid}, separators=(",", ":")).encode()
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode('ascii')))}"


def verify(token: str | bytes, keyring: KeyRing) -> Verified:
    """Check the envelope's form and signature; raise VerificationError with a reason."""
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_BYTES:
            raise VerificationError(Reason.MALFORMED, f"{len(token)} bytes is over the limit")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise VerificationError(Reason.MALFORMED, "not ASCII") from None
    if len(token) > MAX_TOKEN_BYTES:
        raise VerificationError(Reason.MALFORMED, f"{len(token)} bytes is over the limit")
    parts = token.split(".")
    if len(parts) != 3:
        raise VerificationError(Reason.MALFORMED, f"{len(parts)} segments, expected 3")
    try:
        header_bytes, payload, signature = (b64url_decode(p) for p in parts)
    except ValueError as exc:
        raise VerificationError(Reason.MALFORMED, str(exc)) from None
    try:
        header = strictjson.loads(header_bytes)
    except ValueError as exc:
        raise VerificationError(Reason.MALFORMED, f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise VerificationError(Reason.MALFORMED, "header is not a JSON object")
    if header.get("alg") != "EdDSA":
        raise VerificationError(Reason.MALFORMED, f"alg {header.get('alg')!r} is not EdDSA")
    if "crit" in header:
        raise VerificationError(Reason.MALFORMED, "critical header extensions are not supported")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise VerificationError(Reason.MALFORMED, "header has no key id")
    public = keyring.get(kid)
    if public is None:
        raise VerificationError(Reason.UNKNOWN_KEY, kid)
    try:
        public.key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise VerificationError(Reason.BAD_SIGNATURE, f"key {kid}") from None
    return Verified(kid=kid, header=header, payload=payload)


def _is_time(value: Any) -> bool:
    """A finite, plausible timestamp: arithmetic on it (``exp + leeway``) cannot fail."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_TIMESTAMP
    )


@dataclass(frozen=True)
class Claims:
    """A verified edge-mailbox object: its type, validity window, binding and body."""

    kid: str
    typ: str
    iat: float
    exp: float
    bind: Mapping[str, str]
    body: Mapping[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def sign_claims(
    body: Mapping[str, Any],
    key: SigningKey,
    *,
    typ: str,
    bind: Mapping[str, str],
    ttl: float,
    now: float | None = None,
) -> str:
    """Sign ``body`` as an object of type ``typ``, valid for ``ttl`` seconds, bound to ``bind``."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    issued = time.time() if now is None else now
    claims = {
        "typ": typ,
        "iat": round(issued, 3),
        "exp": round(issued + ttl, 3),
        "bind": dict(bind),
        "body": dict(body),
    }
    return sign(json.dumps(claims, separators=(",", ":"), default=str).encode(), key)


def verify_claims(
    token: str | bytes,
    keyring: KeyRing,
    *,
    typ: str,
    bind: Mapping[str, str],
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
) -> Claims:
    """Verify signature, type, validity window and every expected binding field."""
    verified = verify(token, keyring)
    try:
        claims = strictjson.loads(verified.payload)
    except ValueError as exc:
        raise VerificationError(Reason.MALFORMED, f"payload is not JSON ({exc})") from None
    if not isinstance(claims, dict):
        raise VerificationError(Reason.MALFORMED, "payload is not a JSON object")
    got_typ, iat, exp = claims.get("typ"), claims.get("iat"), claims.get("exp")
    got_bind, body = claims.get("bind"), claims.get("body")
    if not isinstance(got_typ, str):
        raise VerificationError(Reason.MALFORMED, "no type")
    if not all(_is_time(v) for v in (iat, exp)):
        raise VerificationError(Reason.MALFORMED, "iat/exp must be times in seconds since 1970")
    if not isinstance(got_bind, dict) or not isinstance(body, dict):
        raise VerificationError(Reason.MALFORMED, "bind and body must be JSON objects")
    if got_typ != typ:
        raise VerificationError(Reason.WRONG_TYPE, f"expected {typ!r}, got {got_typ!r}")
    current = time.time() if now is None else now
    if current > exp + leeway:
        raise VerificationError(Reason.EXPIRED, f"expired {current - exp:.0f} s ago")
    if iat > current + leeway:
        raise VerificationError(Reason.NOT_YET_VALID, f"issued {iat - current:.0f} s ahead")
    for name, expected in bind.items():
        if got_bind.get(name) != expected:
            raise VerificationError(
                Reason.WRONG_BINDING,
                f"{name}: expected {expected!r}, signed for {got_bind.get(name)!r}",
            )
    return Claims(
        kid=verified.kid,
        typ=got_typ,
        iat=float(iat),
        exp=float(exp),
        bind=got_bind,
        body=body,
        payload=verified.payload,
    )
