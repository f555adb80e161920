"""Sealing: only the intended recipient opens, and any change to the ciphertext is caught."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_mailbox.signer import SealError, SealKey, SigningKey, open_sealed, seal
from edge_mailbox.signer.keys import b64url, b64url_decode

SECRET = b'{"password": "s3cr3t-connection-password"}'


def test_only_the_recipient_opens() -> None:
    worker, other = SealKey.generate(), SealKey.generate()
    sealed = seal(SECRET, worker.public, context="job-1/req-1")
    assert b"s3cr3t" not in sealed.encode() and b"s3cr3t" not in b64url_decode(sealed)
    assert open_sealed(sealed, worker, context="job-1/req-1") == SECRET
    with pytest.raises(SealError):
        open_sealed(sealed, other, context="job-1/req-1")


def test_context_binds_the_ciphertext() -> None:
    worker = SealKey.generate()
    sealed = seal(SECRET, worker.public, context="job-1/req-1")
    with pytest.raises(SealError):
        open_sealed(sealed, worker, context="job-1/req-2")


def test_every_flipped_bit_fails() -> None:
    worker = SealKey.generate()
    data = bytearray(b64url_decode(seal(SECRET, worker.public, context="c")))
    for byte in range(len(data)):
        for bit in (0, 3, 7):
            flipped = bytearray(data)
            flipped[byte] ^= 1 << bit
            with pytest.raises(SealError):
                open_sealed(b64url(bytes(flipped)), worker, context="c")


def test_sealing_twice_gives_different_ciphertexts() -> None:
    worker = SealKey.generate()
    assert seal(SECRET, worker.public, context="c") != seal(SECRET, worker.public, context="c")


def test_derived_scheduler_keys_are_stable_per_job_and_distinct_across_jobs() -> None:
    seed = SigningKey.generate().seed()
    assert SealKey.derive(seed, "job-a").public == SealKey.derive(seed, "job-a").public
    assert SealKey.derive(seed, "job-a").public != SealKey.derive(seed, "job-b").public
    other_seed = SigningKey.generate().seed()
    assert SealKey.derive(seed, "job-a").public != SealKey.derive(other_seed, "job-a").public


def test_malformed_inputs_are_seal_errors() -> None:
    worker = SealKey.generate()
    with pytest.raises(SealError):
        seal(SECRET, "not-a-key", context="c")
    for bad in ("", "!!!", "AAAA"):
        with pytest.raises(SealError):
            open_sealed(bad, worker, context="c")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=4096))
def test_property_round_trip(plaintext: bytes) -> None:
    key = SealKey.generate()
    assert open_sealed(seal(plaintext, key.public, context="p"), key, context="p") == plaintext
