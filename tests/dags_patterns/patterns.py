"""The patterns users write over XComs, each ending in a task whose return value says whether
the pattern worked: fan-in over a mapped task, len() and indexing of a mapped task's output,
a mapped task over a mapped task's output, a branch after a fan-in, and a 1 MB XCom.
tests/test_e2e_patterns.py runs the DAG on an edge worker and checks each value.

A task that takes a mapped task's output gets a lazy sequence: iterating it fetches item
after item, ``len()`` asks the Execution API for the count (HEAD xcoms/..., answered in the
``Content-Range`` header), indexing fetches one item.
"""

from __future__ import annotations

import hashlib

import pendulum
from airflow.sdk import DAG, task

BIG_BYTES = 1024 * 1024


def big_text() -> str:
    """1 MiB of text that does not compress to nothing, the same on both sides."""
    block = hashlib.sha256(b"edge-mailbox").hexdigest()  # 64 characters
    return (block * (BIG_BYTES // len(block) + 1))[:BIG_BYTES]


with DAG(
    dag_id="patterns",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["edge-mailbox"],
):

    @task
    def numbers() -> list[int]:
        return [1, 2, 3, 4, 5]

    @task
    def square(x: int) -> int:
        return x * x

    # Fan-in: one task reduces the mapped task's outputs by iterating them.
    @task
    def total(values: list[int]) -> int:
        return sum(values)

    # len() and indexing of the mapped output.
    @task
    def measure(values: list[int]) -> dict:
        return {"len": len(values), "first": values[0], "last": values[-1], "third": values[2]}

    # A mapped task over a mapped task's output, then its own fan-in.
    @task
    def plus_one(x: int) -> int:
        return x + 1

    @task
    def collect(values: list[int]) -> list[int]:
        return list(values)

    # A branch decided by a fan-in: the branch not taken is skipped.
    @task.branch
    def big_or_small(value: int) -> str:
        return "big" if value > 50 else "small"

    @task
    def big(value: int) -> str:
        return f"big: {value}"

    @task
    def small(value: int) -> str:
        return f"small: {value}"

    squares = square.expand(x=numbers())
    summed = total(squares)
    measure(squares)
    collect(plus_one.expand(x=squares))
    big_or_small(summed) >> [big(summed), small(summed)]

    # A 1 MiB XCom, pushed by one task and pulled by another.
    @task
    def produce_big() -> str:
        return big_text()

    @task
    def consume_big(text: str) -> dict:
        return {"len": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}

    consume_big(produce_big())
