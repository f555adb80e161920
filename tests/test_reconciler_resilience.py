"""The reconciler's thread outlives a bucket that fails during its worker check: the cleanup
is postponed, not the end of every job's reporting (in-memory store: no race involved)."""

from __future__ import annotations

import dataclasses
import queue

from test_reconciler_ownership import finish, wait_until
from test_relay_two_reconcilers import TI, claimed_job, make_settings

from edge_mailbox.executor.reconciler import Job, Reconciler
from edge_mailbox.mailbox.errors import StoreUnavailable
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, SigningKey


def test_a_failing_cleanup_does_not_end_the_reconciler(mem_store) -> None:
    scheduler, worker = SigningKey.generate(), SigningKey.generate()
    settings = dataclasses.replace(
        make_settings(mem_store.config, scheduler, KeyRing([worker.public]), "", "http://x/"),
        cleanup_success_after=0,
        worker_check_interval=1,
    )
    mailbox = Mailbox(mem_store)
    events: queue.Queue = queue.Queue()
    reconciler = Reconciler(mailbox, settings, lambda ti, scope: "token", events)
    first = claimed_job(mailbox, scheduler, worker).job_id
    reconciler.track(Job(job_id=first, ti_id=TI, queue="default", ti_key="k"))
    mailbox.notify(mailbox.layout.inbox_claim(first))
    finish(mailbox, worker, first)
    mem_store.fail_next("delete_many", StoreUnavailable("the bucket is down"), times=3)
    reconciler.start()
    try:
        results = f"{mailbox.layout.job_root(first)}results/"
        wait_until(lambda: not list(mem_store.list_all(results)), "the cleanup, once it can")
        assert reconciler.thread.is_alive()
        second = claimed_job(mailbox, scheduler, worker).job_id  # and it still reports
        reconciler.track(Job(job_id=second, ti_id=TI, queue="default", ti_key="k"))
        finish(mailbox, worker, second)
        seen: list[tuple[str, str]] = []

        def reported() -> bool:
            while not events.empty():
                kind, job_id, _ = events.get_nowait()
                seen.append((kind, job_id))
            return ("success", second) in seen

        wait_until(reported, "the second job's result")
    finally:
        reconciler.stop()
