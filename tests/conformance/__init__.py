"""Conformance suite: Airflow's own example DAGs run under LocalExecutor and under
MailboxExecutor on one stack, and every task instance's final state and XCom return value
compared (issue 11)."""
