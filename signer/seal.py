"""Need-to-know sealing: RFC 9180 HPKE (X25519, HKDF-SHA256, ChaCha20-Poly1305).

What is relayed for a task (connection passwords, variables, XCom values) is sealed to one
recipient's X25519 public key, so a reader of the bucket sees only ciphertext. ``context``
is bound into the HPKE key schedule: a ciphertext moved to another job or request id fails.

Keys are per job. The worker makes a fresh one per claim and keeps it in memory only. The
scheduler side derives its per-job key from its signing seed (``SealKey.derive``), so any
scheduler holding the signing key (after a restart, or in an HA pair) can open the job's
requests without that key ever being stored anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge_mailbox.signer.errors import SealError
from edge_mailbox.signer.keys import b64url, b64url_decode

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_INFO_PREFIX = b"edge-mailbox/seal/v1 "
MAX_SEALED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SealKey:
    """An X25519 private key that opens what was sealed to its public half."""

    key: X25519PrivateKey

    @classmethod
    def generate(cls) -> SealKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def derive(cls, seed: bytes, context: str) -> SealKey:
        """A key that depends only on ``seed`` and ``context`` (e.g. a job id)."""
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"edge-mailbox/seal-key/v1",
            info=context.encode(),
        ).derive(seed)
        return cls(X25519PrivateKey.from_private_bytes(okm))

    def private_bytes(self) -> bytes:
        """Raw private key, to hand to the one process that runs the job (never to disk)."""
        return self.key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SealKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    @property
    def public(self) -> str:
        """The public half as unpadded base64url, the form that travels in signed objects."""
        return b64url(
            self.key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )


def _public_from_text(public: str) -> X25519PublicKey:
    try:
        raw = b64url_decode(public)
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SealError(f"not an X25519 public key: {exc}") from None


def seal_bytes(plaintext: bytes, recipient: str, *, context: str) -> bytes:
    """Encrypt ``plaintext`` to the ``recipient`` public key; only its holder can open it.

    The result is HPKE's encapsulated key followed by the ciphertext (binary)."""
    return _SUITE.encrypt(
        plaintext, _public_from_text(recipient), info=_INFO_PREFIX + context.encode()
    )


def open_bytes(sealed: bytes, key: SealKey, *, context: str) -> bytes:
    """Decrypt what ``seal_bytes`` produced for ``key`` under the same ``context``."""
    if len(sealed) > MAX_SEALED_BYTES:
        raise SealError(f"sealed payload of {len(sealed)} bytes is over the limit")
    try:
        return _SUITE.decrypt(sealed, key.key, info=_INFO_PREFIX + context.encode())
    except Exception as exc:  # the binding raises InvalidTag or ValueError by case
        raise SealError(f"cannot open sealed payload ({type(exc).__name__})") from None


def seal(plaintext: bytes, recipient: str, *, context: str) -> str:
    """``seal_bytes`` as unpadded base64url text, for JSON fields."""
    return b64url(seal_bytes(plaintext, recipient, context=context))


def open_sealed(sealed: str, key: SealKey, *, context: str) -> bytes:
    """Decrypt what ``seal`` produced for ``key`` under the same ``context``."""
    if len(sealed) > MAX_SEALED_BYTES:
        raise SealError(f"sealed payload of {len(sealed)} bytes is over the limit")
    try:
        data = b64url_decode(sealed)
    except ValueError as exc:
        raise SealError(f"malformed sealed payload: {exc}") from None
    return open_bytes(data, key, context=context)
