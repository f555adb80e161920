"""Several schedulers watch one bucket: a job's claim and result are reported to Airflow by
the scheduler that queued it (or adopted it) only, and its notices are left for that one.
Otherwise another scheduler consumes them, its own Airflow ignores them (another scheduler
queued that task), and the owner keeps the task in its executor forever.

Reconcilers and worker-side objects are real; the bucket is SeaweedFS."""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Callable

from conftest import store_config
from test_relay_two_reconcilers import TI, claimed_job, make_settings

from edge_mailbox.executor.reconciler import Job, Reconciler
from edge_mailbox.mailbox.models import JobResult, JobState
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.mailbox.store import ObjectStore
from edge_mailbox.signer import KeyRing, SigningKey


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def drain(events: queue.Queue) -> list[tuple]:
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out


class Scheduler:
    """One scheduler's reconciler with the events it reports."""

    def __init__(self, config, settings) -> None:
        self.events: queue.Queue = queue.Queue()
        self.reconciler = Reconciler(
            Mailbox(ObjectStore(config)), settings, lambda ti, scope: "token", self.events
        )

    def __enter__(self) -> Scheduler:
        self.reconciler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.reconciler.stop()


def finish(mailbox: Mailbox, worker: SigningKey, job_id: str) -> None:
    """What a worker does when its job ends: the signed result, its notice, a ring."""
    now = time.time()
    mailbox.put_result(
        JobResult(
            job_id=job_id,
            worker="w1",
            state=JobState.SUCCESS,
            exit_code=0,
            started_at=now - 1,
            finished_at=now,
        ),
        worker,
    )
    mailbox.notify(mailbox.layout.inbox_result(job_id))


def setup(seaweed, prefix, **overrides):
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    config = store_config(seaweed, prefix)
    settings = dataclasses.replace(
        make_settings(config, scheduler, KeyRing([worker.public]), "", "http://127.0.0.1:9/"),
        **overrides,
    )
    return scheduler, worker, config, settings, Mailbox(ObjectStore(config))


def test_only_the_owner_reports_a_jobs_claim_and_result(seaweed, prefix) -> None:
    scheduler, worker, config, settings, mailbox = setup(seaweed, prefix)
    with Scheduler(config, settings) as owner, Scheduler(config, settings) as other:
        job_id = claimed_job(mailbox, scheduler, worker).job_id
        owner.reconciler.track(Job(job_id=job_id, ti_id=TI, queue="default", ti_key="key"))
        mailbox.notify(mailbox.layout.inbox_claim(job_id))
        finish(mailbox, worker, job_id)
        inbox = mailbox.layout.inbox
        wait_until(lambda: not list(mailbox.store.list_all(inbox)), "the owner to read both")
        assert [e[0] for e in drain(owner.events)] == ["running", "success"]
        assert drain(other.events) == []
        # the other scheduler still knows the job, but only to serve its relay calls
        known = other.reconciler.jobs.get(job_id)
        assert known is None or not known.owned


def test_a_notice_waits_for_the_scheduler_that_adopts_the_job(seaweed, prefix) -> None:
    """The owner is gone; the result arrives; another scheduler adopts the task later."""
    scheduler, worker, config, settings, mailbox = setup(seaweed, prefix)
    with Scheduler(config, settings) as other:
        job_id = claimed_job(mailbox, scheduler, worker).job_id
        finish(mailbox, worker, job_id)
        result_notice = mailbox.layout.inbox_result(job_id)
        wait_until(lambda: job_id in other.reconciler.jobs, "the other scheduler to see it")
        wait_until(lambda: other.reconciler.jobs[job_id].finished, "the job to read finished")
        assert mailbox.store.head(result_notice)  # left in the inbox for the owner
        assert drain(other.events) == []
        assert other.reconciler.adopt(job_id, TI, "default", "key")
        wait_until(lambda: not other.events.empty(), "the adopter to report the result")
        assert drain(other.events) == [("success", job_id, None)]
        wait_until(
            lambda: not list(mailbox.store.list_all(mailbox.layout.inbox)), "the notice consumed"
        )


def test_a_result_whose_notice_the_dead_owner_consumed_is_found_on_adoption(
    seaweed, prefix
) -> None:
    scheduler, worker, config, settings, mailbox = setup(seaweed, prefix)
    job_id = claimed_job(mailbox, scheduler, worker).job_id
    finish(mailbox, worker, job_id)
    mailbox.store.delete(mailbox.layout.inbox_result(job_id))  # read by the old owner, who died
    with Scheduler(config, settings) as adopter:
        assert adopter.reconciler.adopt(job_id, TI, "default", "key")
        wait_until(lambda: not adopter.events.empty(), "the adopter to find the result")
        assert drain(adopter.events) == [("success", job_id, None)]


def lists(sched: Scheduler) -> int:
    """How many LISTs this scheduler's reconciler has sent."""
    return sched.reconciler.mailbox.store.counter.snapshot().get("LIST", 0)


def look_twice_more(sched: Scheduler) -> None:
    """Wait until the reconciler has listed the inbox twice more: whatever it meant to do
    with what it saw, it has done."""
    seen = lists(sched)
    wait_until(lambda: lists(sched) >= seen + 2, "two more looks at the inbox")


# Each test below keeps the item young with the default timeout (an hour), then lets it be
# old with a timeout of one second: neither half depends on how fast the machine gets there.


def test_a_notice_nobody_owns_is_deleted_after_the_inbox_item_timeout(seaweed, prefix) -> None:
    scheduler, worker, config, settings, mailbox = setup(seaweed, prefix)
    job_id = claimed_job(mailbox, scheduler, worker).job_id
    finish(mailbox, worker, job_id)
    notice = mailbox.layout.inbox_result(job_id)
    with Scheduler(config, settings) as other:
        wait_until(lambda: job_id in other.reconciler.jobs, "the scheduler to see it")
        look_twice_more(other)
        assert mailbox.store.head(notice)  # young: kept for its owner
        assert drain(other.events) == []
    with Scheduler(config, dataclasses.replace(settings, inbox_item_timeout=1)) as other:
        wait_until(
            lambda: not list(mailbox.store.list_all(mailbox.layout.inbox)), "the old notice gone"
        )
        assert drain(other.events) == []


def test_an_item_signed_by_a_key_never_trusted_is_deleted_after_the_timeout(
    seaweed, prefix
) -> None:
    """Parked items wait for their worker's key to be enrolled, but not forever: otherwise
    anyone able to write to the bucket could fill the inbox."""
    scheduler, _, config, settings, mailbox = setup(seaweed, prefix)
    stranger = SigningKey.generate()
    job_id = claimed_job(mailbox, scheduler, stranger).job_id
    notice = mailbox.layout.inbox_claim(job_id)
    mailbox.notify(notice)
    with Scheduler(config, settings) as sched:
        wait_until(lambda: bool(sched.reconciler.parked), "the claim to be parked")
        look_twice_more(sched)
        assert mailbox.store.head(notice) and sched.reconciler.parked  # young: it waits
    with Scheduler(config, dataclasses.replace(settings, inbox_item_timeout=1)) as sched:
        wait_until(
            lambda: not list(mailbox.store.list_all(mailbox.layout.inbox)), "the parked claim gone"
        )
        assert not sched.reconciler.parked
        assert drain(sched.events) == []
