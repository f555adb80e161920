"""Liveness is what the claim holder's key signed: an object at ``workers/{W}.jws`` that is
unsigned, forged, signed by another key (even a trusted one), names another worker, or is an
old heartbeat written back keeps no job alive. The job is failed as lost after
``worker_timeout``, as if nothing had been written. A real reconciler on SeaweedFS; the
watch's own bookkeeping on moto."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import store_config
from test_relay_two_reconcilers import TI, claimed_job, make_settings

from edge_mailbox.executor.liveness import WorkerWatch
from edge_mailbox.executor.reconciler import Job, Reconciler
from edge_mailbox.mailbox.codec import encode_signed
from edge_mailbox.mailbox.models import Heartbeat, WorkerState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SigningKey

TIMEOUT = 2.0


def heartbeat(name: str = "w1", queues: tuple[str, ...] = ("default",)) -> Heartbeat:
    return Heartbeat(
        worker=name,
        state=WorkerState.RUNNING,
        queues=list(queues),
        concurrency=4,
        free_slots=3,
        version="0.1.0",
        sent_at=time.time(),
    )


def signed(mailbox: Mailbox, key: SigningKey, body: Heartbeat, bind_name: str = "w1") -> bytes:
    return encode_signed(body, key, bind=mailbox.bind(worker=bind_name), ttl=300)


class Writer:
    """Writes ``make()`` at w1's heartbeat key every 0.2 s, in a thread, until stopped."""

    def __init__(self, mailbox: Mailbox, make: Callable[[], bytes]) -> None:
        self.mailbox, self.make = mailbox, make
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.mailbox.store.put(self.mailbox.layout.heartbeat("w1"), self.make())
            self.stopping.wait(0.2)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)


@dataclasses.dataclass
class Scene:
    mailbox: Mailbox
    worker: SigningKey  # holds the claim
    peer: SigningKey  # another enrolled worker
    job_id: str
    events: queue.Queue


@pytest.fixture
def scene(seaweed, prefix) -> Iterator[Scene]:
    """A running reconciler, a job claimed by worker w1, and one genuine heartbeat of w1."""
    scheduler, worker, peer = (SigningKey.generate() for _ in range(3))
    config = store_config(seaweed, prefix)
    settings = dataclasses.replace(
        make_settings(
            config, scheduler, KeyRing([worker.public, peer.public]), "", "http://127.0.0.1:9/"
        ),
        worker_timeout=TIMEOUT,
        worker_check_interval=1,
    )
    mailbox = Mailbox(ObjectStore(config))
    mailbox.put_heartbeat(heartbeat(), worker, ttl=300)
    events: queue.Queue = queue.Queue()
    reconciler = Reconciler(mailbox, settings, lambda ti, scope: "token", events)
    job_id = claimed_job(mailbox, scheduler, worker).job_id
    reconciler.track(Job(job_id=job_id, ti_id=TI, queue="default", ti_key="key"))
    mailbox.notify(mailbox.layout.inbox_claim(job_id))
    reconciler.start()
    try:
        assert events.get(timeout=30) == ("running", job_id, "w1")
        yield Scene(mailbox, worker, peer, job_id, events)
    finally:
        reconciler.stop()


def failed_within(scene: Scene, seconds: float) -> str | None:
    """The reason the job was failed with, if it was within ``seconds``."""
    try:
        kind, job_id, reason = scene.events.get(timeout=seconds)
    except queue.Empty:
        return None
    assert (kind, job_id) == ("failed", scene.job_id)
    return reason


FORGERIES: dict[str, Callable[[Scene], bytes]] = {
    "unsigned": lambda s: heartbeat().to_json(),
    "signed by an unknown key": lambda s: signed(s.mailbox, SigningKey.generate(), heartbeat()),
    "signed by another enrolled worker": lambda s: signed(s.mailbox, s.peer, heartbeat()),
    "naming another worker": lambda s: signed(s.mailbox, s.worker, heartbeat("w2")),
    "tampered": lambda s: signed(s.mailbox, s.worker, heartbeat())[:-4] + b"AAAA",
}


@pytest.mark.seaweed
@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_heartbeat_keeps_no_job_alive(scene: Scene, forgery: str) -> None:
    """The worker died after its last heartbeat; someone keeps writing at its key."""
    with Writer(scene.mailbox, lambda: FORGERIES[forgery](scene)):
        reason = failed_within(scene, 6 * TIMEOUT + 10)
    assert reason is not None, "a forged heartbeat kept the job alive"
    assert "'w1' stopped heartbeating" in reason and scene.worker.kid in reason


@pytest.mark.seaweed
def test_genuine_heartbeats_keep_the_job_alive_until_they_stop(scene: Scene) -> None:
    """The control: the same timing with the claim holder's own heartbeats."""
    beat = lambda: signed(scene.mailbox, scene.worker, heartbeat())  # noqa: E731
    with Writer(scene.mailbox, beat):
        assert failed_within(scene, 4 * TIMEOUT + 2) is None
    assert failed_within(scene, 6 * TIMEOUT + 10) is not None


@pytest.fixture
def watch(moto_store: ObjectStore) -> tuple[WorkerWatch, SigningKey]:
    worker = SigningKey.generate()
    return WorkerWatch(Mailbox(moto_store), KeyRing([worker.public]), timeout=60), worker


def test_an_old_heartbeat_written_back_does_not_move_the_clock(watch) -> None:
    watch, worker = watch
    mailbox, key = watch.mailbox, watch.mailbox.layout.heartbeat("w1")
    older = signed(mailbox, worker, heartbeat())
    mailbox.store.put(key, older)
    newer = signed(mailbox, worker, heartbeat().model_copy(update={"sent_at": time.time() + 1}))
    mailbox.store.put(key, newer)
    assert watch.refresh()
    clock = watch.last_seen["w1"]
    deadline = time.monotonic() + 10
    while True:  # written back later: LastModified moves (S3 counts whole seconds)
        for old in (older, newer):
            mailbox.store.put(key, old)
            assert watch.refresh()
        if mailbox.store.head(key).last_modified.timestamp() > clock:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert watch.last_seen["w1"] == clock
    assert "w1" in watch.refused  # the older one, logged once
    fresh = signed(mailbox, worker, heartbeat().model_copy(update={"sent_at": time.time() + 2}))
    mailbox.store.put(key, fresh)
    assert watch.refresh() and watch.last_seen["w1"] > clock and "w1" not in watch.refused


def test_each_changed_heartbeat_is_fetched_once(watch) -> None:
    watch, worker = watch
    mailbox = watch.mailbox
    mailbox.put_heartbeat(heartbeat(), worker, ttl=300)
    mailbox.store.put(mailbox.layout.heartbeat("w9"), b"not a heartbeat")
    mailbox.store.counter.reset()
    for _ in range(3):
        assert watch.refresh()
    assert mailbox.store.counter.snapshot()["GET"] == 2  # w1's and w9's, once each
    assert watch.alive("w1", kid=worker.kid) and not watch.alive("w9")
    assert set(watch.refused) == {"w9"}


def test_the_watch_forgets_gone_workers_and_jobs_no_longer_waiting(watch) -> None:
    watch, worker = watch
    mailbox = watch.mailbox
    for name in ("w1", "w2"):
        mailbox.put_heartbeat(heartbeat(name, queues=("cpu",)), worker, ttl=300)
    mailbox.store.put(mailbox.layout.heartbeat("w3"), b"forged")
    watch.healthy_since = time.time() - 2 * watch.timeout  # long healthy: it may judge
    assert watch.refresh()
    assert set(watch.beats) == {"w1", "w2"} and set(watch.refused) == {"w3"}
    for name in ("w2", "w3"):
        mailbox.store.delete(mailbox.layout.heartbeat(name))
    assert watch.refresh()
    assert set(watch.beats) == set(watch.last_seen) == {"w1"} and watch.refused == {}

    @dataclasses.dataclass
    class Queued:
        job_id: str
        queue: str = "gpu"  # nobody serves it
        pool_slots: int = 2
        enqueued_at: float = 0.0
        finished: bool = False
        claim: None = None
        worker: None = None
        claimed_at: None = None

    job = Queued("01a20147000000000000000000aa")
    assert watch.unrunnable([job], min_age=0) == [] and watch.warned == {job.job_id}
    job.finished = True
    assert watch.unrunnable([job], min_age=0) == [] and watch.warned == set()
