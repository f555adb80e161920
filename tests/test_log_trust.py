"""What the log reader believes: only chunks signed by the worker that holds the job's claim,
found where they were written. Forged, moved and replayed chunks show as a refusal line in
the UI's text, never as log lines. Real SeaweedFS, real shipper and reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_logship import COORDS, TI, append, claimed, reader_for

from edge_mailbox.mailbox.layout import TaskCoordinates
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SigningKey, seal_bytes
from edge_mailbox.worker.logship import LogShipper

pytestmark = pytest.mark.seaweed

OTHER_TI = {**TI, "id": "01a20147-3ff0-76e2-ac44-bf7425a784df", "task_id": "quiet"}
OTHER = TaskCoordinates.of_ti(OTHER_TI)


@pytest.fixture
def mailbox(weed_store: ObjectStore) -> Mailbox:
    return Mailbox(weed_store)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def holder() -> SigningKey:
    """The worker that claims the jobs."""
    return SigningKey.generate()


@pytest.fixture
def peer() -> SigningKey:
    """Another enrolled worker: trusted, but it holds none of these claims."""
    return SigningKey.generate()


def ship(mailbox: Mailbox, manifest, worker: SigningKey, path: Path, lines: list[str]) -> int:
    append(path, "".join(f"{line}\n" for line in lines))
    longest = max(len(line) + 1 for line in lines)
    return LogShipper(mailbox, manifest, path, worker, chunk_size=longest).finish()


def forge(mailbox: Mailbox, manifest, signer: SigningKey, seq: int, text: str) -> None:
    """A chunk as the worker writes one, for the job's own place, signed by ``signer``."""
    body = mailbox.encode_log_chunk(
        COORDS, manifest.job_id, seq, text.encode(), manifest.seal_key, signer
    )
    mailbox.store.create(mailbox.layout.log_chunk(COORDS, manifest.job_id, seq), body)


def test_forged_chunks_are_shown_refused_never_as_lines(
    mailbox, key, holder, peer, tmp_path
) -> None:
    manifest = claimed(mailbox, key, holder)
    job = manifest.job_id
    assert ship(mailbox, manifest, holder, tmp_path / "a.log", ["real 0", "real 1"]) == 2
    stranger = SigningKey.generate()  # not enrolled
    forge(mailbox, manifest, stranger, 2, "forged by a stranger\n")
    # Sealed to the job's key like a chunk of an older worker, unsigned: what any bucket
    # writer can make from the manifest alone.
    old_context = f"{mailbox.bucket}/{mailbox.layout.prefix}/{job}/log/3"
    unsigned = seal_bytes(b"forged, unsigned\n", manifest.seal_key, context=old_context)
    mailbox.store.put(mailbox.layout.log_chunk(COORDS, job, 3), unsigned)
    forge(mailbox, manifest, peer, 4, "forged by another enrolled worker\n")
    forge(mailbox, manifest, holder, 5, "the claim holder's own\n")

    reader = reader_for(mailbox, key, holder)
    reader.worker_keys.add(peer.public)
    task_log = reader.read(COORDS)
    assert task_log.lines == [
        "real 0",
        "real 1",
        f"[edge-mailbox: chunk 2 of job {job} refused: unknown key id: {stranger.kid}]",
        f"[edge-mailbox: chunk 3 of job {job} refused: malformed: not ASCII]",
        f"[edge-mailbox: chunk 4 of job {job} refused: signed by worker key {peer.kid}, "
        f"not by the claim holder's {holder.kid}]",
        "the claim holder's own",
    ]
    assert len(task_log.problems) == 3
    assert all("refused" in p and "s3://" in p for p in task_log.problems)


def test_a_chunk_moved_from_another_task_or_place_is_refused(
    mailbox, key, holder, tmp_path
) -> None:
    mine = claimed(mailbox, key, holder)
    theirs = claimed(mailbox, key, holder, ti=OTHER_TI)  # the same worker runs both
    ship(mailbox, mine, holder, tmp_path / "mine.log", ["mine 0"])
    ship(mailbox, theirs, holder, tmp_path / "theirs.log", ["secret of another task"])
    layout, store = mailbox.layout, mailbox.store
    moved = store.get(layout.log_chunk(OTHER, theirs.job_id, 0)).body
    store.put(layout.log_chunk(COORDS, mine.job_id, 1), moved)  # into this job's sequence
    store.put(layout.log_chunk(COORDS, theirs.job_id, 0), moved)  # its whole job, moved here
    own = store.get(layout.log_chunk(COORDS, mine.job_id, 0)).body
    store.put(layout.log_chunk(COORDS, mine.job_id, 2), own)  # this job's own, at another seq

    task_log = reader_for(mailbox, key, holder).read(COORDS)
    assert "secret" not in task_log.text
    jobs = sorted([mine.job_id, theirs.job_id])
    lines = {
        mine.job_id: [
            "mine 0",
            f"[edge-mailbox: chunk 1 of job {mine.job_id} refused: wrong binding: job_id",
            f"[edge-mailbox: chunk 2 of job {mine.job_id} refused: wrong binding: seq",
        ],
        theirs.job_id: [
            f"[edge-mailbox: chunk 0 of job {theirs.job_id} refused: the job runs another "
            f"task-instance try (logs_dag.quiet run {TI['run_id']} map -1 try 2)]"
        ],
    }
    expected = [*lines[jobs[0]], *lines[jobs[1]]]
    assert len(task_log.lines) == len(expected)
    for got, want in zip(task_log.lines, expected, strict=True):
        assert got.startswith(want), (got, want)
    # Where it belongs, the moved chunk reads as it was written.
    assert reader_for(mailbox, key, holder).read(OTHER).lines == ["secret of another task"]


def test_a_replayed_chunk_0_does_not_overwrite_the_real_one(
    mailbox, key, holder, peer, tmp_path
) -> None:
    manifest = claimed(mailbox, key, holder)
    ship(mailbox, manifest, holder, tmp_path / "real.log", ["the real first line"])
    chunk0 = mailbox.layout.log_chunk(COORDS, manifest.job_id, 0)
    before = mailbox.store.get(chunk0).body
    # The same job shipped again, by another enrolled worker (or a replay of its manifest).
    replayed = ship(mailbox, manifest, peer, tmp_path / "replay.log", ["a replayed line"])
    assert replayed == 2  # chunk 0 was taken: its lines went into chunk 1
    assert mailbox.store.get(chunk0).body == before
    reader = reader_for(mailbox, key, holder)
    reader.worker_keys.add(peer.public)
    assert reader.read(COORDS).lines == [
        "the real first line",
        f"[edge-mailbox: chunk 1 of job {manifest.job_id} refused: signed by worker key "
        f"{peer.kid}, not by the claim holder's {holder.kid}]",
    ]


def test_a_job_whose_claim_is_gone_names_its_signer_and_keeps_to_one(
    mailbox, key, holder, peer, tmp_path
) -> None:
    manifest = claimed(mailbox, key, holder)
    job = manifest.job_id
    ship(mailbox, manifest, holder, tmp_path / "a.log", ["line 0", "line 1"])
    forge(mailbox, manifest, peer, 2, "forged later\n")
    ring = KeyRing([holder.public, peer.public])
    remembered = reader_for(mailbox, key, holder)
    remembered.worker_keys.add(peer.public)
    assert remembered.read(COORDS).lines[:2] == ["line 0", "line 1"]  # the claim seen once
    mailbox.store.delete(mailbox.layout.claim(job))  # cleaned up after the job ended

    fresh = reader_for(mailbox, key, holder)
    fresh.worker_keys.replace_with(ring)
    task_log = fresh.read(COORDS)
    assert task_log.lines == [
        "line 0",
        "line 1",
        f"[edge-mailbox: chunk 2 of job {job} refused: signed by worker key {peer.kid}; "
        f"the job's others by {holder.kid}]",
    ]
    assert any("claim is gone" in s and holder.kid in s for s in task_log.sources)
    # A reader that verified the claim before still knows who held it.
    assert remembered.read(COORDS).lines[2] == (
        f"[edge-mailbox: chunk 2 of job {job} refused: signed by worker key {peer.kid}, "
        f"not by the claim holder's {holder.kid}]"
    )


def test_a_read_is_capped_and_says_where_it_stops(mailbox, key, holder, tmp_path) -> None:
    manifest = claimed(mailbox, key, holder)
    assert ship(mailbox, manifest, holder, tmp_path / "a.log", [f"l{i}" for i in range(5)]) == 5
    by_count = reader_for(mailbox, key, holder, max_chunks=3).read(COORDS)
    assert by_count.lines[:3] == ["l0", "l1", "l2"] and by_count.chunks == 3
    assert by_count.lines[3].startswith("[edge-mailbox: the log is cut here: a read shows at most")
    assert "2 more chunk(s)" in by_count.lines[3] and len(by_count.lines) == 4
    first_two = sum(
        mailbox.store.head(mailbox.layout.log_chunk(COORDS, manifest.job_id, seq)).size
        for seq in (0, 1)
    )
    by_bytes = reader_for(mailbox, key, holder, max_bytes=first_two).read(COORDS)
    assert by_bytes.lines[:2] == ["l0", "l1"] and "3 more chunk(s)" in by_bytes.lines[2]
