"""Signed envelopes: round trip, tamper-evidence, validity window, binding, key rotation."""

from __future__ import annotations

import jwt  # PyJWT, installed with Airflow: an independent JOSE implementation
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_mailbox.mailbox.codec import binding, decode_signed, encode_signed
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import JobManifest
from edge_mailbox.signer import (
    KeyRing,
    Reason,
    SealKey,
    SigningKey,
    VerificationError,
    sign,
    sign_claims,
    verify,
    verify_claims,
)

KEY = SigningKey.generate()
RING = KeyRing([KEY.public])
NOW = 1_800_000_000.0


def manifest(queue: str = "default") -> JobManifest:
    return JobManifest(
        job_id=new_id(NOW),
        queue=queue,
        enqueued_at=NOW,
        ti={"id": "0190c0de-0000-7000-8000-000000000001", "dag_id": "d", "task_id": "t"},
        dag_rel_path="dags/d.py",
        bundle_info={"name": "dags-folder", "version": None},
        log_path="dag_id=d/run_id=r/task_id=t/attempt=1.log",
        pool_slots=1,
        priority=5,
        seal_key=SealKey.generate().public,
        scheduler_version="0.1.0",
    )


def manifest_bind(m: JobManifest, bucket: str = "b1", queue: str | None = None) -> dict:
    return binding(bucket, "edge-mailbox", queue=queue or m.queue, job_id=m.job_id)


def test_round_trip() -> None:
    m = manifest()
    raw = encode_signed(m, KEY, bind=manifest_bind(m), ttl=3600)
    signed = decode_signed(raw, JobManifest, RING, bind=manifest_bind(m))
    assert signed.model == m and signed.kid == KEY.kid
    assert signed.expires_at - signed.issued_at == pytest.approx(3600)


def test_every_single_byte_mutation_is_rejected() -> None:
    m = manifest()
    raw = encode_signed(m, KEY, bind=manifest_bind(m), ttl=3600)
    replacements = [ord(c) for c in "AaZz09-_.="] + [0x00, 0x7F, 0xFF]
    tried = 0
    for index in range(len(raw)):
        for value in replacements:
            if value == raw[index]:
                continue
            mutated = raw[:index] + bytes([value]) + raw[index + 1 :]
            with pytest.raises(VerificationError) as info:
                decode_signed(mutated, JobManifest, RING, bind=manifest_bind(m))
            assert info.value.reason in (
                Reason.MALFORMED,
                Reason.BAD_SIGNATURE,
                Reason.UNKNOWN_KEY,
            )
            tried += 1
    assert tried > 10 * len(raw)


def test_truncated_and_extended_tokens_are_rejected() -> None:
    m = manifest()
    raw = encode_signed(m, KEY, bind=manifest_bind(m), ttl=3600)
    for bad in (raw[:-1], raw + b"A", raw[1:], b"A" + raw, raw + b".x", b""):
        with pytest.raises(VerificationError):
            decode_signed(bad, JobManifest, RING, bind=manifest_bind(m))


def test_expired_manifest_is_rejected() -> None:
    m = manifest()
    token = sign_claims(
        m.model_dump(mode="json"), KEY, typ="job", bind=manifest_bind(m), ttl=60, now=NOW
    )
    verify_claims(token, RING, typ="job", bind=manifest_bind(m), now=NOW + 30)
    with pytest.raises(VerificationError) as info:
        verify_claims(token, RING, typ="job", bind=manifest_bind(m), now=NOW + 3600)
    assert info.value.reason is Reason.EXPIRED


def test_manifest_from_the_future_is_rejected() -> None:
    m = manifest()
    token = sign_claims({}, KEY, typ="job", bind=manifest_bind(m), ttl=60, now=NOW + 7200)
    with pytest.raises(VerificationError) as info:
        verify_claims(token, RING, typ="job", bind=manifest_bind(m), now=NOW)
    assert info.value.reason is Reason.NOT_YET_VALID


def test_manifest_copied_to_another_queue_is_rejected() -> None:
    m = manifest(queue="gpu")
    raw = encode_signed(m, KEY, bind=manifest_bind(m), ttl=3600)
    with pytest.raises(VerificationError) as info:
        decode_signed(raw, JobManifest, RING, bind=manifest_bind(m, queue="default"))
    assert info.value.reason is Reason.WRONG_BINDING and "queue" in info.value.detail


def test_manifest_copied_to_another_bucket_is_rejected() -> None:
    m = manifest()
    raw = encode_signed(m, KEY, bind=manifest_bind(m, bucket="b1"), ttl=3600)
    with pytest.raises(VerificationError) as info:
        decode_signed(raw, JobManifest, RING, bind=manifest_bind(m, bucket="b2"))
    assert info.value.reason is Reason.WRONG_BINDING and "bucket" in info.value.detail


def test_manifest_signed_by_an_unknown_key_is_rejected() -> None:
    m = manifest()
    stranger = SigningKey.generate()
    raw = encode_signed(m, stranger, bind=manifest_bind(m), ttl=3600)
    with pytest.raises(VerificationError) as info:
        decode_signed(raw, JobManifest, RING, bind=manifest_bind(m))
    assert info.value.reason is Reason.UNKNOWN_KEY and stranger.kid in str(info.value)


def test_a_claim_is_not_a_manifest() -> None:
    m = manifest()
    token = sign_claims(m.model_dump(mode="json"), KEY, typ="claim", bind=manifest_bind(m), ttl=60)
    with pytest.raises(VerificationError) as info:
        verify_claims(token, RING, typ="job", bind=manifest_bind(m))
    assert info.value.reason is Reason.WRONG_TYPE


def test_forged_kid_with_anothers_signature_is_bad_signature() -> None:
    stranger = SigningKey.generate()
    token = sign(b'{"x":1}', stranger)
    _header, payload, signature = token.split(".")
    forged_header = sign(b"", KEY).split(".")[0]  # claims to be KEY
    with pytest.raises(VerificationError) as info:
        verify(f"{forged_header}.{payload}.{signature}", RING)
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_rotation_old_and_new_keys_both_trusted() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    ring = KeyRing([old.public, new.public])
    for key in (old, new):
        assert verify(sign(b"{}", key), ring).kid == key.kid
    retired = KeyRing([new.public])
    with pytest.raises(VerificationError):
        verify(sign(b"{}", old), retired)


def test_other_jose_libraries_verify_our_envelopes() -> None:
    token = sign(b'{"hello":"edge"}', KEY)
    decoded = jwt.api_jws.decode_complete(token, KEY.public.key, algorithms=["EdDSA"])
    assert decoded["payload"] == b'{"hello":"edge"}' and decoded["header"]["kid"] == KEY.kid


def test_key_files_round_trip(tmp_path) -> None:
    path = KEY.write(tmp_path / "scheduler.pem")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert SigningKey.from_file(path).kid == KEY.kid
    ring = KeyRing.from_files([tmp_path / "scheduler.pem.pub"])
    assert KEY.kid in ring
    with pytest.raises(Exception, match="refusing to overwrite"):
        KEY.write(path)


@settings(max_examples=150, deadline=None)
@given(
    body=st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(st.integers(), st.text(max_size=50), st.booleans(), st.none()),
        max_size=8,
    ),
    queue=st.text(min_size=1, max_size=40),
    flip=st.integers(min_value=0),
)
def test_property_round_trip_and_tamper(body: dict, queue: str, flip: int) -> None:
    bind = {"bucket": "b", "queue": queue}
    token = sign_claims(body, KEY, typ="job", bind=bind, ttl=600)
    claims = verify_claims(token, RING, typ="job", bind=bind)
    assert claims.body == body and claims.bind == bind
    raw = bytearray(token.encode())
    index = flip % len(raw)
    raw[index] = ord("A") if raw[index] != ord("A") else ord("B")
    with pytest.raises(VerificationError):
        verify_claims(bytes(raw), RING, typ="job", bind=bind)
