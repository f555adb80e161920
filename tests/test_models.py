"""Wire models: strict, versioned (minor-tolerant, major-strict) and size-limited."""

from __future__ import annotations

import json

import pytest

from edge_mailbox.mailbox.errors import ProtocolError
from edge_mailbox.mailbox.layout import new_id
from edge_mailbox.mailbox.models import ALL_KINDS, ChangeMarker, Claim, Heartbeat, JobResult


def claim_dict(**changes) -> dict:
    data = Claim(
        job_id=new_id(),
        queue="default",
        worker="plant-7",
        seal_key="A" * 43,
        claimed_at=1.5,
        nonce="0123456789abcdef",
        worker_version="0.1.0",
        manifest="header.payload.signature",
    ).model_dump(mode="json")
    data.update(changes)
    return data


def test_round_trip_every_kind_has_version_and_limit() -> None:
    for kind in ALL_KINDS:
        assert kind.KIND and kind.MAX_BYTES > 0
        assert "schema_version" in kind.model_fields
    c = Claim.from_dict(claim_dict())
    assert Claim.from_json(c.to_json()) == c


def test_newer_minor_fields_are_tolerated() -> None:
    c = Claim.from_dict(claim_dict(schema_version="1.7", gpu_count=2))
    assert c.worker == "plant-7"


def test_unknown_field_at_our_version_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="gpu_count"):
        Claim.from_dict(claim_dict(gpu_count=2))


def test_unknown_major_version_is_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match=r"schema version 2\.0 is not supported"):
        Claim.from_dict(claim_dict(schema_version="2.0"))
    with pytest.raises(ProtocolError, match="schema_version"):
        Claim.from_dict(claim_dict(schema_version="one"))


def test_types_are_strict() -> None:
    with pytest.raises(ProtocolError, match="claimed_at"):
        Claim.from_dict(claim_dict(claimed_at="1.5"))
    with pytest.raises(ProtocolError, match="job_id"):
        Claim.from_dict(claim_dict(job_id="../../etc"))
    with pytest.raises(ProtocolError, match="state"):
        JobResult.from_dict(
            {
                "schema_version": "1.0",
                "job_id": new_id(),
                "worker": "w",
                "state": "maybe",
                "started_at": 1,
                "finished_at": 2,
            }
        )


def test_oversized_and_malformed_objects_are_refused_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        ChangeMarker.from_json(b"{" + b" " * 5000 + b"}")
    with pytest.raises(ProtocolError, match="not JSON"):
        Claim.from_json(b"{nope")
    with pytest.raises(ProtocolError, match="JSON object"):
        Claim.from_json(b"[1,2]")


def test_heartbeat_lists_are_bounded() -> None:
    base = dict(
        worker="w",
        state="idle",
        queues=["q"],
        concurrency=2,
        free_slots=2,
        version="0.1.0",
        sent_at=1.0,
        schema_version="1.0",
    )
    assert Heartbeat.from_json(json.dumps(base)).state.value == "idle"
    with pytest.raises(ProtocolError, match="queues"):
        Heartbeat.from_dict({**base, "queues": ["q"] * 300})
