"""Why a signed object was refused: every verification failure carries one named reason."""

from __future__ import annotations

import enum


class Reason(str, enum.Enum):
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad signature"
    UNKNOWN_KEY = "unknown key id"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    WRONG_BINDING = "wrong binding"
    WRONG_TYPE = "wrong type"


class VerificationError(Exception):
    """A signed object failed verification; ``reason`` says which check refused it."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class SealError(Exception):
    """A sealed payload could not be opened: wrong recipient, tampered, or malformed."""


class KeyFileError(Exception):
    """A key file is missing, unreadable or not the kind of key expected."""
