"""Who may say what: Ed25519 keys, signed envelopes (JWS/EdDSA) and HPKE sealing."""

from edge_mailbox.signer.envelope import Claims, Verified, sign, sign_claims, verify, verify_claims
from edge_mailbox.signer.errors import KeyFileError, Reason, SealError, VerificationError
from edge_mailbox.signer.keys import KeyRing, PublicKey, SigningKey
from edge_mailbox.signer.seal import SealKey, open_bytes, open_sealed, seal, seal_bytes

__all__ = [
    "Claims",
    "KeyFileError",
    "KeyRing",
    "PublicKey",
    "Reason",
    "SealError",
    "SealKey",
    "SigningKey",
    "VerificationError",
    "Verified",
    "open_bytes",
    "open_sealed",
    "seal",
    "seal_bytes",
    "sign",
    "sign_claims",
    "verify",
    "verify_claims",
]
