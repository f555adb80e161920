"""The comparison itself: a difference in state, in XCom, or in which task instances exist is
reported; a listed nondeterministic XCom is compared by type only; equal runs are "same"."""

from __future__ import annotations

import pytest

from conformance import compare as c


def _run(variant: str, state: str = "success", **tasks: c.TaskResult) -> c.RunResult:
    return c.RunResult("dag", variant, "run", state, dict(tasks))


def test_equal_runs_are_the_same() -> None:
    local = _run("local", a=c.TaskResult("success", 1, 3), b=c.TaskResult("skipped", 0))
    mailbox = _run("mailbox", a=c.TaskResult("success", 1, 3), b=c.TaskResult("skipped", 0))
    made = c.row("x.py", local, mailbox)
    assert made.verdict == "same"
    assert made.xcoms == "1/1 equal"


def test_state_xcom_and_missing_tasks_differ() -> None:
    local = _run("local", a=c.TaskResult("success", 1, 3), b=c.TaskResult("success", 1))
    mailbox = _run("mailbox", "failed", a=c.TaskResult("failed", 1), c=c.TaskResult("success", 1))
    found = {(d.task, d.what) for d in c.compare(local, mailbox)}
    assert found == {
        ("", "run state"),
        ("a", "state"),
        ("a", "xcom"),
        ("b", "missing task"),
        ("c", "missing task"),
    }
    assert c.row("x.py", local, mailbox).verdict == "DIFFERENT"


def test_deadline_is_a_difference_even_with_equal_states() -> None:
    local = _run("local", "running")
    mailbox = _run("mailbox", "running")
    mailbox.timed_out = True
    [difference] = c.compare(local, mailbox)
    assert difference.mailbox == "running (deadline)"


def test_nondeterministic_xcom_compares_type_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(c.NONDETERMINISTIC_XCOM, ("dag", "a"), "random")
    local = _run("local", **{"a[0]": c.TaskResult("success", 1, 5)})
    assert c.compare(local, _run("mailbox", **{"a[0]": c.TaskResult("success", 1, 7)})) == []
    [difference] = c.compare(local, _run("mailbox", **{"a[0]": c.TaskResult("success", 1, "7")}))
    assert difference.what == "xcom"


def test_expected_difference_carries_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(c.EXPECTED_DIFFERENCES, ("dag", "a"), "because")
    local = _run("local", a=c.TaskResult("success", 1))
    made = c.row("x.py", local, _run("mailbox", a=c.TaskResult("failed", 1)))
    assert [d.expected for d in made.differences] == ["because"]
    assert made.verdict == "expected difference"
    assert "because" in c.markdown([made], {"y.py": "needs a cluster"}, 1.0)


def test_normalize_replaces_inside_nested_values() -> None:
    value = {"k__local": ["/h/dags", 1, {"x": "dag__local__t"}]}
    assert c.normalize(value, {"dag__local": "dag", "/h": "$H"}) == {
        "k__local": ["$H/dags", 1, {"x": "dag__t"}]
    }
