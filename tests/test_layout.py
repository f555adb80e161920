"""The key layout: safe, injective names; LIST order = priority then age; parseable keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_mailbox.mailbox.layout import (
    Layout,
    TaskCoordinates,
    decode_name,
    encode_name,
    id_time,
    new_id,
)

SAFE = re.compile(r"^[A-Za-z0-9_.~-]+$")
queue_names = st.text(
    alphabet=st.characters(
        min_codepoint=0x20, exclude_characters="\x7f", exclude_categories=["Cs"]
    ),
    min_size=1,
    max_size=256,
)


@given(queue_names)
def test_any_queue_name_maps_to_a_safe_short_segment(name: str) -> None:
    segment = encode_name(name)
    assert SAFE.match(segment) and len(segment) <= 120
    assert decode_name(segment) in (name, None)
    if "~" not in segment:
        assert decode_name(segment) == name


@given(queue_names, queue_names)
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_name(a) != encode_name(b)


def test_readable_names_stay_readable() -> None:
    assert encode_name("default") == "default"
    assert encode_name("gpu.large") == "gpu.2elarge"
    assert encode_name("plant/line 3") == "plant.2fline.203"
    assert "~" in encode_name("ü" * 256)


@pytest.mark.parametrize("bad", ["", "x" * 257, "tab\there", "nul\x00", "lone\ud800surrogate"])
def test_bad_queue_names_are_refused_clearly(bad: str) -> None:
    with pytest.raises(ValueError, match="queue name"):
        encode_name(bad)


def test_manifest_keys_sort_by_priority_then_age() -> None:
    layout = Layout("pfx")
    jobs = [  # (priority, enqueued_at)
        (1, 100.0),
        (10, 300.0),
        (10, 200.0),
        (-5, 50.0),
        (2**40, 400.0),  # clamped to Airflow's int32 range
        (-(2**40), 10.0),
    ]
    keys = {layout.manifest("q", new_id(t), p, t): (p, t) for p, t in jobs}
    ordered = [keys[k] for k in sorted(keys)]
    assert ordered == [
        (2**40, 400.0),
        (10, 200.0),
        (10, 300.0),
        (1, 100.0),
        (-5, 50.0),
        (-(2**40), 10.0),
    ]


def test_manifest_key_round_trip() -> None:
    layout = Layout("a/b/")
    job_id = new_id()
    key = layout.manifest("gpu.large", job_id, 7, 1234.5)
    assert key.startswith("a/b/v1/queues/gpu.2elarge/jobs/")
    parsed = layout.parse_manifest(key)
    assert (parsed.job_id, parsed.priority, parsed.enqueued_ms) == (job_id, 7, 1234500)
    with pytest.raises(ValueError):
        layout.parse_manifest("a/b/v1/queues/q/jobs/garbage.jws")


def test_ids_sort_by_time_and_are_unique() -> None:
    ids = [new_id(1000.0 + i) for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert len({new_id(5.0) for _ in range(1000)}) == 1000


def test_inbox_keys_parse_back() -> None:
    layout = Layout()
    job, req = new_id(), new_id()
    assert layout.parse_inbox(layout.inbox_claim(job)) == (job, "claim", None)
    assert layout.parse_inbox(layout.inbox_result(job)) == (job, "result", None)
    assert layout.parse_inbox(layout.inbox_request(job, req)) == (job, "request", req)
    with pytest.raises(ValueError):
        layout.parse_inbox(f"{layout.inbox}{job}/unknown.jws")


def test_user_ids_in_keys_cannot_escape_their_folder() -> None:
    layout = Layout()
    with pytest.raises(ValueError):
        layout.claim("../../other")
    ti = TaskCoordinates(dag_id="../x", run_id="manual__2026-01-01T00:00:00+00:00", task_id="t/..")
    root = layout.log_root(ti, new_id())
    # logs/, dag, run, task, map, try, job: seven segments, none of them a path trick
    assert "/../" not in root and root.count("/") == layout.root.count("/") + 7


def test_invalid_prefix_is_refused() -> None:
    for bad in ("", "/", "a//b"):
        with pytest.raises(ValueError, match="prefix"):
            Layout(bad)


def test_ids_tell_when_they_were_made() -> None:
    assert id_time(new_id(1_700_000_000.1234)) == 1_700_000_000.123
    for bad in ("", "xyz", new_id()[:-1], new_id().upper()):
        with pytest.raises(ValueError, match="malformed id"):
            id_time(bad)


def test_job_folder_keys_parse_back_to_their_job_and_kind() -> None:
    layout = Layout()
    job, req = new_id(), new_id()
    keys = {
        layout.claim(job): "claim",
        layout.result(job, "kid-1"): "result",
        layout.revocation(job): "revocation",
        layout.relay_lease(job, req): "lease",
        layout.relay_response(job, req): "response",
        f"{layout.job_root(job)}stray.txt": None,
        f"{layout.job_root(job)}results/../claim.jws": None,
    }
    for key, kind in keys.items():
        assert layout.parse_job_key(key) == (job, kind)
    for bad in (
        f"{layout.jobs}{job}",
        f"{layout.jobs}{job[:-1]}/claim.jws",
        layout.inbox_claim(job),
    ):
        with pytest.raises(ValueError, match="job's folder"):
            layout.parse_job_key(bad)


def test_jobs_since_splits_a_listing_of_jobs_by_creation_time() -> None:
    layout = Layout()
    older, newer = layout.claim(new_id(999.999)), layout.claim(new_id(1000.0))
    start = layout.jobs_since(1000.0)
    assert start.startswith(layout.jobs) and older < start < newer


def test_queue_folder_keys_parse_back_to_their_queue() -> None:
    layout = Layout()
    manifest = layout.manifest("gpu.large", new_id(), 1, 1.0)
    assert layout.parse_queue_key(manifest) == "gpu.2elarge"
    assert layout.parse_queue_key(layout.queue_marker("gpu.large")) == "gpu.2elarge"
    for bad in (layout.queues_marker, f"{layout.queues}q", f"{layout.queues}/x", layout.inbox):
        with pytest.raises(ValueError, match="queue's folder"):
            layout.parse_queue_key(bad)


def test_heartbeat_keys_give_their_segment_even_when_hashed() -> None:
    layout = Layout()
    long_name = "w" * 200
    assert layout.parse_heartbeat(layout.heartbeat("edge 1")) == "edge 1"
    assert layout.parse_heartbeat(layout.heartbeat(long_name)) is None
    assert layout.heartbeat_segment(layout.heartbeat(long_name)) == encode_name(long_name)
    for bad in (f"{layout.heartbeats}a/b.jws", f"{layout.heartbeats}.jws", layout.command("w")):
        with pytest.raises(ValueError, match="heartbeat key"):
            layout.heartbeat_segment(bad)


def test_log_chunk_keys_parse_back_only_under_their_try() -> None:
    layout = Layout()
    ti = TaskCoordinates(dag_id="d", run_id="r", task_id="t", try_number=2)
    job = new_id()
    assert layout.parse_log_chunk(layout.log_chunk(ti, job, 12), ti) == (job, 12)
    other_try = TaskCoordinates(dag_id="d", run_id="r", task_id="t", try_number=3)
    for bad in (
        layout.log_chunk(other_try, job, 0),
        f"{layout.log_root(ti, job)}0001.chunk",
        f"{layout.log_root(ti, job)}00000001.chunk.tmp",
    ):
        with pytest.raises(ValueError, match="not a log chunk"):
            layout.parse_log_chunk(bad, ti)


def test_the_check_probe_lives_in_its_own_folder() -> None:
    layout = Layout()
    token = "0" * 32
    assert layout.check_probe(token) == f"{layout.root}check/{token}"
    with pytest.raises(ValueError, match="probe token"):
        layout.check_probe("../claim.jws")
