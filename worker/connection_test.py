"""One connection test ("Test connection" in Airflow's UI), run on the edge worker that
claimed it: a plant's database or a lab instrument is reachable only from the edge site.

It runs Airflow's own connection-test supervisor, as Airflow's executors do for a
TestConnection workload (``BaseExecutor.run_workload``): it fetches the connection under test
from the Execution API (``GET connection-tests/{id}/connection``, which marks the test
running), runs the hook's ``test_connection`` within the test's timeout, and reports the
outcome itself (``PATCH connection-tests/{id}``: success or failed, with the hook's message).
Both calls go through the relay like a task's, the connection's secrets sealed to this
worker's key for this claim; the relay lets this job make those two calls, for its own test,
and nothing else.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from edge_mailbox.mailbox.models import ConnectionTest
from edge_mailbox.worker.transport import BASE_URL


def run_connection_test(test: ConnectionTest, client: Any, token: str) -> int:
    """Run ``test`` with the Task SDK's supervisor, its API calls on ``client`` (the relay's).

    The exit code is the supervisor's: 0 once it ran, whether the connection works or not
    (the test's own state is what it reported to Airflow); an error only when even that
    report failed."""
    from airflow.sdk.execution_time import connection_test_supervisor as supervisor

    with _client_of(supervisor, client):
        return supervisor.supervise_connection_test(
            connection_test_id=uuid.UUID(test.id),
            connection_id=test.connection_id,
            timeout=test.timeout,
            token=token,
            server=BASE_URL,
        )


@contextlib.contextmanager
def _client_of(supervisor: Any, client: Any) -> Iterator[None]:
    """Make the supervisor talk through ``client``. Unlike ``supervise_task``, which takes a
    client, ``supervise_connection_test`` builds its own from (server, token), and that one
    would go to the network: the name it builds it with is swapped for the call, and put
    back (a runner runs many jobs)."""
    built = supervisor.Client

    def relayed(**_: Any) -> Any:
        return client

    supervisor.Client = relayed
    try:
        yield
    finally:
        supervisor.Client = built
