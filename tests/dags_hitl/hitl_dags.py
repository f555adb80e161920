"""DAGs of tests/test_e2e_hitl.py: a task that waits for a person's answer, and one task per
way a worker starts a job (a runner forked from it, or a fresh interpreter)."""

from __future__ import annotations

import os
import sys
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Param, task


class AnsweredHITL(HITLOperator):
    """The standard HITL operator, saying in its log what answer reached the worker."""

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        self.log.info(
            "answer on the edge: %s, note %r",
            event["chosen_options"],
            event["params_input"].get("note"),
        )
        return result


with DAG("hitl_approval", schedule=None, catchup=False):
    AnsweredHITL(
        task_id="ask",
        subject="Ship batch 7?",
        body="The plant's line 3 finished batch 7.",
        options=["Ship", "Hold"],
        params={"note": Param("", type="string")},
    )


@task
def where_am_i() -> dict[str, Any]:
    """What this task's process inherited: a runner forked from the worker carries the
    worker's preload (its boto client for runners); a fresh interpreter carries nothing."""
    import psutil

    job_process = sys.modules.get("edge_mailbox.worker.job_process")
    preloaded = bool(job_process and job_process._unused_clients)
    runner = psutil.Process(os.getppid()).cmdline()
    print(f"task process {os.getpid()}: preloaded={preloaded}, runner {' '.join(runner)}")
    return {"preloaded": preloaded, "runner": runner}


with DAG("fresh_or_forked", schedule=None, catchup=False):
    where_am_i.override(task_id="forked")()
    where_am_i.override(
        task_id="fresh", executor_config={"edge_mailbox": {"fresh_interpreter": True}}
    )()
