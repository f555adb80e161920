"""Task logs through the bucket: LogShipper (worker) writes signed, sealed chunks,
executor/task_log.py reads them back, against real SeaweedFS, with dropped answers, 503s and
an outage. (What the reader refuses: test_log_trust.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import store_config
from faults import FaultProxy

from edge_mailbox.executor.log_airflow import MailboxRemoteLogIO, read_running_log
from edge_mailbox.executor.log_transport import S3fsTransport, StoreTransport
from edge_mailbox.executor.task_log import NO_LOG_YET, BucketLogReader
from edge_mailbox.mailbox.config import RetryPolicy
from edge_mailbox.mailbox.layout import TaskCoordinates, new_id
from edge_mailbox.mailbox.models import Claim, JobManifest
from edge_mailbox.mailbox.protocol import Mailbox, nonce
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SealKey, SigningKey, open_sealed
from edge_mailbox.worker.logship import LogShipper, cleanup_local_logs

pytestmark = pytest.mark.seaweed

TI = {
    "id": "01a20147-3ff0-76e2-ac44-bf7425a784de",
    "dag_id": "logs_dag",
    "task_id": "chatty",
    "run_id": "manual__2026-11-22T03:22:56.345178+00:00",
    "try_number": 2,
    "map_index": -1,
}
COORDS = TaskCoordinates(TI["dag_id"], TI["run_id"], TI["task_id"], -1, 2)


@pytest.fixture
def key() -> SigningKey:
    """The scheduler's."""
    return SigningKey.generate()


@pytest.fixture
def worker() -> SigningKey:
    return SigningKey.generate()


def reader_for(mailbox: Mailbox, key: SigningKey, worker: SigningKey, transport=None, **kw):
    return BucketLogReader(mailbox, key, KeyRing([worker.public]), transport, **kw)


@pytest.fixture
def mailbox(weed_store: ObjectStore) -> Mailbox:
    return Mailbox(weed_store)


@pytest.fixture
def proxy(seaweed) -> Iterator[FaultProxy]:
    fp = FaultProxy(seaweed.endpoint_url).start()
    yield fp
    fp.stop()


def manifest_for(key: SigningKey, job_id: str | None = None, ti: dict = TI) -> JobManifest:
    job_id = job_id or new_id()
    return JobManifest(
        job_id=job_id,
        queue="default",
        enqueued_at=time.time(),
        ti=ti,
        dag_rel_path="logs_dag.py",
        bundle_info={"name": "dags-folder", "version": None},
        log_path="dag_id=logs_dag/attempt=2.log",
        seal_key=SealKey.derive(key.seed(), job_id).public,
        scheduler_version="0.1.0",
    )


def claimed(
    mailbox: Mailbox,
    key: SigningKey,
    worker: SigningKey,
    job_id: str | None = None,
    ti: dict = TI,
) -> JobManifest:
    """A manifest the scheduler signed, and the worker's claim of it in the bucket."""
    manifest = manifest_for(key, job_id, ti)
    queued = mailbox.put_manifest(manifest, key, ttl=600)
    mailbox.create_claim(
        Claim(
            job_id=manifest.job_id,
            queue="default",
            worker="w1",
            seal_key=SealKey.generate().public,
            claimed_at=time.time(),
            nonce=nonce(),
            worker_version="0.1.0",
            manifest=mailbox.store.get(queued).body.decode(),
        ),
        worker,
    )
    return manifest


def append(path: Path, data: str) -> None:
    with open(path, "ab") as handle:
        handle.write(data.encode())


def chunk_keys(mailbox: Mailbox) -> list[str]:
    return sorted(e.key for e in mailbox.store.list_all(mailbox.layout.log_root(COORDS)))


def plaintexts(
    mailbox: Mailbox, key: SigningKey, worker: SigningKey, manifest: JobManifest
) -> list[bytes]:
    """Each chunk of the job verified and opened on its own, in seq order."""
    out = []
    job_id = manifest.job_id
    for seq in range(len(chunk_keys(mailbox))):
        raw = mailbox.store.get(mailbox.layout.log_chunk(COORDS, job_id, seq)).body
        signed = mailbox.verify_log_chunk(raw, COORDS, job_id, seq, KeyRing([worker.public]))
        assert signed.kid == worker.kid
        opener = SealKey.derive(key.seed(), job_id)
        context = mailbox.log_context(COORDS, job_id, seq)
        out.append(open_sealed(signed.model.sealed, opener, context=context))
    return out


@pytest.mark.parametrize("transport", ["s3fs", "store"])
def test_bursts_become_ordered_chunks_that_read_back_exactly(
    mailbox: Mailbox, key: SigningKey, worker: SigningKey, tmp_path: Path, transport: str
) -> None:
    log_file = tmp_path / "attempt=2.log"
    manifest = claimed(mailbox, key, worker)
    shipper = LogShipper(mailbox, manifest, log_file, worker, interval=5.0)
    reader = reader_for(
        mailbox,
        key,
        worker,
        S3fsTransport(mailbox.store.config) if transport == "s3fs" else StoreTransport(mailbox),
    )
    shipper.tick(0.0)  # no file yet: nothing, no error
    append(log_file, '{"event": "one"}\n{"event": "two \u2028 é"}\n{"event": "thr')
    shipper.tick(1.0)  # interval not over, little waiting: nothing
    assert chunk_keys(mailbox) == []
    shipper.tick(5.0)
    assert shipper.seq == 1
    # Only complete lines while the task runs: the reader never sees half a line.
    assert reader.read(COORDS).lines == ['{"event": "one"}', '{"event": "two \u2028 é"}']
    append(log_file, 'ee"}\n{"event": "four"}\n')
    shipper.tick(7.0)  # 2 s after the last upload: waits
    shipper.tick(10.0)
    append(log_file, '{"event": "five, unfinished')
    assert shipper.finish() == 3
    assert shipper.finish() == 3  # safe to call again: nothing new, nothing twice
    assert [k.rsplit("/", 1)[1] for k in chunk_keys(mailbox)] == [
        "00000000.chunk",
        "00000001.chunk",
        "00000002.chunk",
    ]
    assert b"".join(plaintexts(mailbox, key, worker, manifest)) == log_file.read_bytes()
    task_log = reader.read(COORDS)
    assert task_log.text == log_file.read_text()
    assert task_log.chunks == 3 and task_log.problems == []
    assert task_log.lines[-1] == '{"event": "five, unfinished'
    assert manifest.job_id in task_log.sources[0]


def test_one_list_for_the_whole_try(mailbox, key, worker, tmp_path, seaweed, proxy) -> None:
    log_file = tmp_path / "a.log"
    shipper = LogShipper(mailbox, claimed(mailbox, key, worker), log_file, worker, chunk_size=10)
    append(log_file, "".join(f"line {i}\n" for i in range(5)))
    assert shipper.finish() == 5
    config = store_config(seaweed, mailbox.layout.prefix, endpoint_url=proxy.url)
    reader = reader_for(mailbox, key, worker, S3fsTransport(config))
    assert reader.read(COORDS).lines == [f"line {i}" for i in range(5)]
    lists = [p for m, p, _ in proxy.seen if m == "GET" and "list-type=2" in p]
    gets = [p for m, p, _ in proxy.seen if m == "GET" and p.endswith(".chunk")]
    assert len(lists) == 1 and len(gets) == 5
    assert not [m for m, _, _ in proxy.seen if m == "HEAD"]


def test_chunk_size_cap_splits_backlogs_and_long_lines(mailbox, key, worker, tmp_path) -> None:
    log_file = tmp_path / "a.log"
    manifest = claimed(mailbox, key, worker)
    shipper = LogShipper(mailbox, manifest, log_file, worker, interval=3600, chunk_size=250)
    shipper.tick(0.0)
    append(log_file, "".join(f"{i:03d}" + "x" * 96 + "\n" for i in range(10)))  # 100 B lines
    shipper.tick(0.1)  # 1,000 bytes wait, over chunk_size: no need to wait for the interval
    running = plaintexts(mailbox, key, worker, manifest)
    assert running and all(len(c) == 200 for c in running)  # whole lines only, <= 250
    append(log_file, "L" * 600 + "\nend")  # a line longer than a chunk cannot wait forever
    shipper.finish()
    chunks = plaintexts(mailbox, key, worker, manifest)
    assert all(len(c) <= 250 for c in chunks)
    assert b"".join(chunks) == log_file.read_bytes()
    assert reader_for(mailbox, key, worker).read(COORDS).text == log_file.read_text()


def test_dropped_answers_and_503s_neither_lose_nor_duplicate(
    seaweed, prefix, key, worker, tmp_path, proxy
) -> None:
    """Chunks are created once (If-None-Match): a retry sends the very same bytes, so the
    object an unanswered attempt created is recognised as this chunk, not as a stranger's."""
    flaky = Mailbox(ObjectStore(store_config(seaweed, prefix, endpoint_url=proxy.url)))
    manifest = claimed(flaky, key, worker)
    log_file = tmp_path / "a.log"
    shipper = LogShipper(flaky, manifest, log_file, worker, interval=1.0)

    def chunk(seq: int):
        name = f"{manifest.job_id}/{seq:08d}.chunk"
        return lambda method, path: method == "PUT" and path.split("?")[0].endswith(name)

    proxy.add(chunk(0), "drop")  # applied, answer lost: the store client writes it again
    proxy.add(chunk(1), "slowdown", times=2)
    proxy.add(chunk(2), "drop", times=4)  # every attempt applied, none answered: tick gives up
    shipper.tick(0.0)
    for i, now in enumerate([1.0, 2.0, 3.0]):
        append(log_file, f"burst {i} line a\nburst {i} line b\n")
        shipper.tick(now)
    assert shipper.seq == 2 and shipper._retry_end is not None  # chunk 2 waits, no exception
    append(log_file, "after the outage\n")
    shipper.tick(3.5)  # backing off: not yet
    assert shipper.seq == 2
    shipper.tick(5.0)  # the same byte range again under the same key, then the new line
    assert shipper.finish() == 4
    reader = reader_for(Mailbox(ObjectStore(store_config(seaweed, prefix))), key, worker)
    task_log = reader.read(COORDS)
    assert task_log.text == log_file.read_text() and task_log.problems == []
    opened = plaintexts(flaky, key, worker, manifest)
    assert opened[2] == b"burst 2 line a\nburst 2 line b\n"
    assert opened[3] == b"after the outage\n"
    puts = [s for m, p, s in proxy.seen if m == "PUT" and p.split("?")[0].endswith(".chunk")]
    assert puts.count(503) == 2 and len(puts) == 2 + 3 + 5 + 1
    # Each chunk created once; every later attempt met it (412) and found it as written.
    assert puts.count(200) == 4 and puts.count(412) == 1 + 3 + 1


def test_unreachable_bucket_in_tick_does_not_raise_and_data_arrives_later(
    seaweed, prefix, key, worker, tmp_path
) -> None:
    impatient = RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.1, deadline=3)
    config = store_config(seaweed, prefix, read_timeout=0.5, connect_timeout=0.5, retry=impatient)
    mailbox = Mailbox(ObjectStore(config))
    manifest = claimed(mailbox, key, worker)
    log_file = tmp_path / "a.log"
    shipper = LogShipper(mailbox, manifest, log_file, worker, interval=1.0)
    shipper.tick(0.0)
    append(log_file, "before\n")
    seaweed.pause()
    try:
        shipper.tick(1.0)  # times out: logged, kept
        assert shipper.seq == 0 and shipper.offset == 0
        append(log_file, "during\n")
        shipper.tick(1.5)  # backing off
    finally:
        seaweed.resume()
    append(log_file, "after")
    shipper.tick(3.0)
    assert shipper.seq >= 1
    assert shipper.finish() >= 2
    reader = reader_for(Mailbox(ObjectStore(store_config(seaweed, prefix))), key, worker)
    deadline = time.monotonic() + 10  # the request sent while paused may land late: same bytes
    while time.monotonic() < deadline:
        text = reader.read(COORDS).text
        if text == "before\nduring\nafter":
            break
        time.sleep(0.1)
    assert reader.read(COORDS).text == "before\nduring\nafter"
    assert plaintexts(mailbox, key, worker, manifest)[0] == b"before\n"


def test_skip_existing_and_several_jobs_of_one_try(mailbox, key, worker, tmp_path) -> None:
    log_file = tmp_path / "a.log"
    first = claimed(mailbox, key, worker, new_id(1000.0))
    second = claimed(mailbox, key, worker, new_id(1001.0))
    append(log_file, "first job\npartial")
    assert LogShipper(mailbox, first, log_file, worker).finish() == 1
    # A resumed (deferred) task appends to the same file on the same worker.
    shipper = LogShipper(mailbox, second, log_file, worker, skip_existing=True)
    append(log_file, "second job\n")
    assert shipper.finish() == 1
    task_log = reader_for(mailbox, key, worker).read(COORDS)
    # In job order, each job's lines whole: a partial last line ends where the next job begins.
    assert task_log.text == "first job\npartial\nsecond job\n"
    assert task_log.chunks == 2 and first.job_id < second.job_id


def test_reader_refuses_foreign_chunks_and_names_gaps(mailbox, key, worker, tmp_path) -> None:
    log_file = tmp_path / "a.log"
    manifest = claimed(mailbox, key, worker, new_id(time.time()))
    append(log_file, "a\nb\n")
    LogShipper(mailbox, manifest, log_file, worker, chunk_size=2).finish()
    mailbox.store.delete(mailbox.layout.log_chunk(COORDS, manifest.job_id, 0))
    stranger = SigningKey.generate()  # another scheduler's job: not ours to open
    other = claimed(mailbox, stranger, worker, new_id(time.time() - 60))  # sorts first
    LogShipper(mailbox, other, log_file, worker).finish()
    task_log = reader_for(mailbox, key, worker).read(COORDS)
    assert task_log.lines == [
        f"[edge-mailbox: chunk 0 of job {other.job_id} refused: the job's claim is refused "
        f"(unknown key id: {stranger.kid})]",
        f"[edge-mailbox: chunks 0..0 of job {manifest.job_id} are missing]",
        "b",
    ]
    assert any("chunks 0..0" in p for p in task_log.problems)
    assert any("refused" in p for p in task_log.problems)


def test_remote_log_io_and_get_task_log_never_show_a_line_twice(
    mailbox, key, worker, tmp_path
) -> None:
    log_file = tmp_path / "a.log"
    append(log_file, "hello\nworld\n")
    LogShipper(mailbox, claimed(mailbox, key, worker), log_file, worker).finish()
    reader = reader_for(mailbox, key, worker)
    remote = MailboxRemoteLogIO(lambda: reader, is_mailbox_task=lambda ti: True)
    ti = SimpleNamespace(**TI, state="running", executor=None)
    assert remote.processors == () and remote.upload("x", ti) is None
    assert remote.read("rel/path.log", ti) == ([], [])  # get_task_log covers a running task
    sources, lines = read_running_log(ti, 2, lambda: reader)
    assert lines == ["hello", "world"] and sources
    ti.state = "success"
    sources, lines = remote.read("rel/path.log", ti)
    assert lines == ["hello", "world"] and "1 sealed chunk" in sources[0]
    # Nothing in the bucket: a line that says so, never an empty answer (Airflow would then
    # ask the worker's log server on port 8793).
    ti.try_number = 3
    assert remote.read("rel/path.log", ti)[1] == [NO_LOG_YET]
    assert read_running_log(ti, 3, lambda: reader)[0]
    # A task of another executor keeps Airflow's own log reading.
    local = MailboxRemoteLogIO(lambda: reader, is_mailbox_task=lambda ti: False)
    assert local.read("rel/path.log", ti) == ([], [])


def test_read_failures_still_name_a_source() -> None:
    def broken() -> BucketLogReader:
        raise ValueError("[edge_mailbox] bucket is not set")

    ti = SimpleNamespace(**TI, state="success", executor=None)
    sources, lines = read_running_log(ti, 2, broken)
    assert lines == [] and "bucket is not set" in sources[0]
    sources, lines = MailboxRemoteLogIO(broken, is_mailbox_task=lambda ti: True).read("p", ti)
    assert sources and lines and "bucket is not set" in lines[0]


def test_cleanup_local_logs_by_age_and_total_size(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    day = 86400

    def log(name: str, size: int, age_days: float) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age_days * day, now - age_days * day))
        return path

    ancient = log("dag_id=a/run_id=1/task_id=t/attempt=1.log", 10, 40)
    old = log("dag_id=a/run_id=2/task_id=t/attempt=1.log", 400, 5)
    middle = log("dag_id=b/run_id=1/task_id=t/attempt=1.log", 300, 3)
    running = log("dag_id=b/run_id=2/task_id=t/attempt=1.log", 500, 9)  # old, but in use
    fresh = log("dag_id=c/run_id=1/task_id=t/attempt=1.log", 100, 0.1)
    other = log("dag_id=c/notes.txt", 10**6, 400)  # not a task log: never ours

    done = cleanup_local_logs(tmp_path, 30, 10**9, keep={running}, now=now)
    assert (done.files, done.bytes) == (1, 10) and not ancient.exists()
    assert not (tmp_path / "dag_id=a" / "run_id=1").exists()  # its emptied folders went too
    done = cleanup_local_logs(tmp_path, 30, 1000, keep={running}, now=now)
    # 1,300 bytes: the oldest (old, 400) goes; middle + running + fresh = 900 fit
    assert (done.files, done.bytes) == (1, 400)
    assert not old.exists() and middle.exists() and running.exists() and fresh.exists()
    assert other.exists() and (tmp_path / "dag_id=b" / "run_id=2").is_dir()
    assert cleanup_local_logs(tmp_path, 30, 1000, keep={running}, now=now).files == 0


@pytest.mark.parametrize("bucket", ["edge-bucket", ""])
def test_log_config_class_wires_the_reader_with_remote_logging_off(
    tmp_path: Path, bucket: str
) -> None:
    """Tier 1 of Airflow's remote-log resolution: REMOTE_TASK_LOG of logging_config_class,
    with [logging] remote_logging = False. No bucket configured: Airflow still starts."""
    (tmp_path / "airflow.cfg").write_text(
        "[core]\nload_examples = False\n"
        "[logging]\nremote_logging = False\n"
        "logging_config_class = edge_mailbox.executor.log_config.LOGGING_CONFIG\n"
        f"[edge_mailbox]\nbucket = {bucket}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AWS_"))}
    code = (
        "from airflow.logging_config import configure_logging, get_remote_task_log\n"
        "configure_logging()\n"
        "print('remote:', type(get_remote_task_log()).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "AIRFLOW_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = "MailboxRemoteLogIO" if bucket else "NoneType"
    assert f"remote: {expected}" in done.stdout
    assert bucket or "[edge_mailbox] bucket is not set" in done.stdout + done.stderr
