"""The least-privilege policies in infra/ against the requests each side really makes.

One job's whole life runs on real Airflow 3.3, a real edge worker and SeaweedFS: claim,
relay requests and answers, heartbeats, a log chunk, the result, the revocation check, a task
revoked for waiting too long, cleanup, the task's log read through the REST API, and
``airflow edge-mailbox check``. Every request of the worker (its loop and its job processes)
and of the scheduler side (scheduler, api-server, CLI) passes a recording proxy of its own;
creates whose answer is dropped (a fault proxy in front) make each writer read its object
back. Each recorded request must be allowed by its side's policy document, as AWS would
judge it (tests/iampolicy.py). The worker policy must also refuse what no worker may do.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults import FaultProxy
from iampolicy import Policy, Request, bucket_arn, object_arn, s3_requests
from s3record import Recorded, RecordingProxy

from demo.stack import BIN, Stack
from edge_mailbox.mailbox.layout import Layout, TaskCoordinates, new_id

ROOT = Path(__file__).resolve().parents[1]
DAGS = Path(__file__).parent / "dags_iam"
WORKER_POLICY = ROOT / "infra" / "iam-worker-policy.json"
SCHEDULER_POLICY = ROOT / "infra" / "iam-scheduler-policy.json"
CLAIM = re.compile(r"/v1/jobs/([0-9a-f]{28})/claim\.jws$")


def load(path: Path, bucket: str, prefix: str) -> Policy:
    """A document as an operator installs it: the bucket filled in, and the key prefix when it
    is not the default (replaced first: the bucket's name may contain "edge-mailbox")."""
    return Policy.load(path, {"edge-mailbox/v1/": f"{prefix}/v1/", "BUCKET": bucket})


def put_to(*fragments: str) -> Callable[[str, str], bool]:
    return lambda method, path: method == "PUT" and all(f in path for f in fragments)


@dataclass
class Life:
    bucket: str
    prefix: str
    worker: list[Recorded]
    scheduler: list[Recorded]


@pytest.fixture(scope="module")
def life(seaweed, tmp_path_factory) -> Iterator[Life]:
    recorders = {side: RecordingProxy(seaweed.endpoint_url).start() for side in ("w", "s")}
    faults = {side: FaultProxy(recorders[side].url).start() for side in ("w", "s")}
    # Ambiguous creates: the store applies them, the answer is lost, the retry meets a 412,
    # and the writer reads the key back to see that the object is its own.
    faults["w"].add(put_to("/v1/jobs/", "/claim.jws"), "drop")
    faults["w"].add(put_to("/v1/inbox/", "/request-"), "drop")
    faults["w"].add(put_to("/v1/logs/", ".chunk"), "drop")
    faults["s"].add(put_to("/v1/queues/", "/jobs/"), "drop")
    faults["s"].add(put_to("/responses/"), "drop")
    faults["s"].add(put_to("/taken/"), "drop")
    prefix = f"iam-{secrets.token_hex(4)}"
    stack = Stack(
        root=tmp_path_factory.mktemp("iam") / "stack",
        dags_folder=DAGS,
        prefix=prefix,
        scheduler_options={
            "endpoint_url": faults["s"].url,
            "cleanup_success_after": 1,
            "worker_check_interval": 2,
        },
        airflow_options={
            "scheduler": {
                "task_queued_timeout": 20,
                "task_queued_timeout_check_interval": 2,
                "num_stuck_in_queued_retries": 0,
            }
        },
    )
    try:
        stack.prepare(store=seaweed)
        stack.add_worker(
            "iam-1",
            concurrency=2,
            options={"endpoint_url": faults["w"].url, "worker_heartbeat_interval": 2},
        )
        stack.start_airflow()
        stack.wait_for_dag("iam_life")
        run_id = stack.trigger("iam_life")
        assert stack.wait_for_run("iam_life", run_id, timeout=240) == "failed"  # the orphan
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances("iam_life", run_id)}
        assert states == {"work": "success", "orphan": "failed"}, states
        assert stack.xcom("iam_life", run_id, "work") == "done at the edge"
        events = [m.get("event", "") for m in stack.task_log("iam_life", run_id, "work")]
        assert "iam line from the edge" in events, events
        claimed = {m.group(1) for r in recorders["w"].requests() if (m := CLAIM.search(r.target))}
        (job_id,) = claimed
        job_root = Layout(prefix).job_root(job_id).encode()

        def cleaned_up() -> bool:  # a batch delete of the job's objects (its claim stays)
            return any(job_root in r.body for r in recorders["s"].requests() if r.method == "POST")

        stack.wait_for(cleaned_up, 60, "the job's cleanup", every=0.5)
        check = subprocess.run(
            [str(BIN / "airflow"), "edge-mailbox", "check"],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "bucket OK" in check.stdout, check.stdout + check.stderr
    finally:
        stack.stop(keep_store=True)
        for proxy in (*faults.values(), *recorders.values()):
            proxy.stop()
    yield Life(seaweed.bucket, prefix, recorders["w"].requests(), recorders["s"].requests())


def saw(records: list[Recorded], method: str, *fragments: str, status: int | None = None) -> bool:
    return any(
        r.method == method
        and all(f in r.target for f in fragments)
        and (status is None or r.status == status)
        for r in records
    )


def denied(records: list[Recorded], policy: Policy, bucket: str) -> list[str]:
    out = []
    for r in records:
        for request in s3_requests(r.method, r.target, r.status, bucket, r.body):
            decision = policy.decide(request)
            if decision != "allow":
                out.append(f"{r.method} {r.target} -> {r.status}: {request} ({decision})")
    return list(dict.fromkeys(out))


@pytest.mark.e2e
@pytest.mark.seaweed
def test_the_run_went_through_a_whole_job_life(life: Life) -> None:
    """What the policies are judged on: without these the two tests below prove little."""
    w, s = life.worker, life.scheduler
    expected_worker = {
        "idle poll of the queues marker": saw(w, "GET", "/v1/queues.marker.json"),
        "LIST of the queue": saw(w, "GET", "list-type=2", "queues%2Fdefault%2Fjobs%2F"),
        "manifest read": saw(w, "GET", "/v1/queues/default/jobs/"),
        "claim read back": saw(w, "GET", "/claim.jws", status=200),
        "revocation check (absent)": saw(w, "GET", "/revoked.jws", status=404),
        "relay request read back": saw(w, "GET", "/v1/inbox/", "/request-", status=200),
        "relay answer polled": saw(w, "GET", "/responses/", status=200),
        "heartbeat": saw(w, "PUT", "/v1/workers/iam-1.jws"),
        "log chunk": saw(w, "PUT", "/v1/logs/iam_life/", ".chunk"),
        "result": saw(w, "PUT", "/v1/jobs/", "/result"),
        "result notice": saw(w, "PUT", "/v1/inbox/", "/result.jws"),
        "inbox ring": saw(w, "PUT", "/v1/inbox.marker.json"),
    }
    expected_scheduler = {
        "manifest read back": saw(s, "GET", "/v1/queues/", "/jobs/", status=200),
        "queues marker rung": saw(s, "PUT", "/v1/queues.marker.json"),
        "inbox marker poll": saw(s, "GET", "/v1/inbox.marker.json"),
        "inbox LIST": saw(s, "GET", "list-type=2", "%2Fv1%2Finbox%2F"),
        "answer read back": saw(s, "GET", "/responses/", status=200),
        "lease read back": saw(s, "GET", "/taken/", status=200),
        "revocation": saw(s, "PUT", "/revoked.jws"),
        "heartbeats LIST": saw(s, "GET", "list-type=2", "%2Fv1%2Fworkers%2F"),
        "log read for the UI": saw(s, "GET", ".chunk", status=200),
        "cleanup": saw(s, "POST", "?delete") or saw(s, "DELETE", "/claim.jws"),
        "check probe": saw(s, "PUT", "/v1/check/"),
        "fleet snapshot": saw(s, "PUT", "/v1/fleet/"),
    }
    missing = [k for k, v in {**expected_worker, **expected_scheduler}.items() if not v]
    assert not missing, missing


@pytest.mark.e2e
@pytest.mark.seaweed
def test_every_worker_request_is_allowed_by_the_worker_policy(life: Life) -> None:
    policy = load(WORKER_POLICY, life.bucket, life.prefix)
    refused = denied(life.worker, policy, life.bucket)
    assert not refused, "\n".join(refused)


@pytest.mark.e2e
@pytest.mark.seaweed
def test_every_scheduler_side_request_is_allowed_by_the_scheduler_policy(life: Life) -> None:
    policy = load(SCHEDULER_POLICY, life.bucket, life.prefix)
    refused = denied(life.scheduler, policy, life.bucket)
    assert not refused, "\n".join(refused)


# -- what a worker must not do (no store needed) ---------------------------------------------

BUCKET = "airflow-edge"
LAYOUT = Layout()
JOB, REQ = new_id(), new_id()
TI = TaskCoordinates("d", "r", "t")


def worker_policy() -> Policy:
    return load(WORKER_POLICY, BUCKET, LAYOUT.prefix)


def obj(action: str, key: str) -> Request:
    return Request(action, object_arn(BUCKET, key))


FORBIDDEN = {
    "forge a manifest": obj("s3:PutObject", LAYOUT.manifest("default", JOB, 1, 0.0)),
    "ring a queue": obj("s3:PutObject", LAYOUT.queue_marker("default")),
    "ring all queues": obj("s3:PutObject", LAYOUT.queues_marker),
    "forge an answer": obj("s3:PutObject", LAYOUT.relay_response(JOB, REQ)),
    "revoke a job": obj("s3:PutObject", LAYOUT.revocation(JOB)),
    "take a relay lease": obj("s3:PutObject", LAYOUT.relay_lease(JOB, REQ)),
    "command a worker": obj("s3:PutObject", LAYOUT.command("w")),
    "delete a command": obj("s3:DeleteObject", LAYOUT.command("w")),
    "forge a fleet snapshot": obj("s3:PutObject", LAYOUT.fleet_snapshot("host:1")),
    "delete a fleet snapshot": obj("s3:DeleteObject", LAYOUT.fleet_snapshot("host:1")),
    "write under keys/": obj("s3:PutObject", f"{LAYOUT.root}keys/scheduler/k.pem"),
    "write outside the prefix": obj("s3:PutObject", "elsewhere/x"),
    "delete a manifest": obj("s3:DeleteObject", LAYOUT.manifest("default", JOB, 1, 0.0)),
    "delete a claim": obj("s3:DeleteObject", LAYOUT.claim(JOB)),
    "delete an inbox item": obj("s3:DeleteObject", LAYOUT.inbox_request(JOB, REQ)),
    "delete a log chunk": obj("s3:DeleteObject", LAYOUT.log_chunk(TI, JOB, 0)),
    "delete a heartbeat": obj("s3:DeleteObject", LAYOUT.heartbeat("w")),
    "read a lease": obj("s3:GetObject", LAYOUT.relay_lease(JOB, REQ)),
    "read a heartbeat": obj("s3:GetObject", LAYOUT.heartbeat("w")),
    "read outside the prefix": obj("s3:GetObject", "elsewhere/x"),
    "create a bucket": Request("s3:CreateBucket", bucket_arn(BUCKET)),
    "change the bucket policy": Request("s3:PutBucketPolicy", bucket_arn(BUCKET)),
    "act on another bucket": Request("s3:GetObject", object_arn("other", LAYOUT.queues_marker)),
}


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_the_worker_policy_refuses(what: str) -> None:
    assert not worker_policy().allows(FORBIDDEN[what]), FORBIDDEN[what]


def test_the_worker_policy_still_allows_what_the_protocol_gives_workers() -> None:
    """The refusals above must not come from a policy that allows nothing."""
    policy = worker_policy()
    allowed = [
        obj("s3:GetObject", LAYOUT.queues_marker),
        obj("s3:GetObject", LAYOUT.manifest("default", JOB, 1, 0.0)),
        obj("s3:PutObject", LAYOUT.claim(JOB)),
        obj("s3:PutObject", LAYOUT.inbox_request(JOB, REQ)),
        obj("s3:GetObject", LAYOUT.relay_response(JOB, REQ)),
        obj("s3:PutObject", LAYOUT.log_chunk(TI, JOB, 3)),
    ]
    assert [r for r in allowed if not policy.allows(r)] == []


def test_the_scheduler_policy_allows_steering_and_seeing_the_fleet() -> None:
    """Commands written, read back and removed (forget), heartbeats removed (forget), fleet
    snapshots written, read (the dashboard) and removed (a dead scheduler's)."""
    policy = load(SCHEDULER_POLICY, BUCKET, LAYOUT.prefix)
    wanted = [
        obj(action, key)
        for key in (LAYOUT.command("w"), LAYOUT.fleet_snapshot("host:1"))
        for action in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject")
    ] + [
        obj("s3:DeleteObject", LAYOUT.heartbeat("w")),
        Request("s3:ListBucket", bucket_arn(BUCKET), {"s3:prefix": LAYOUT.fleet_snapshots}),
    ]
    assert [r for r in wanted if not policy.allows(r)] == []


# -- the evaluator itself ----------------------------------------------------------------------


def policy_of(*statements: dict) -> Policy:
    return Policy.parse({"Version": "2012-10-17", "Statement": list(statements)})


LIST_QUEUES = {
    "Effect": "Allow",
    "Action": "s3:ListBucket",
    "Resource": "arn:aws:s3:::b",
    "Condition": {"StringLike": {"s3:prefix": ["p/v1/queues/*"]}},
}


def test_wildcards_span_slashes_and_actions_ignore_case() -> None:
    policy = policy_of({"Effect": "Allow", "Action": "s3:get*", "Resource": "arn:aws:s3:::b/p/*"})
    assert policy.allows(Request("s3:GetObject", "arn:aws:s3:::b/p/a/b/c"))
    assert not policy.allows(Request("s3:GetObject", "arn:aws:s3:::b/P/a"))  # keys: exact case
    assert not policy.allows(Request("s3:GetObject", "arn:aws:s3:::b/px"))
    assert not policy.allows(Request("s3:PutObject", "arn:aws:s3:::b/p/a"))
    assert policy.decide(Request("s3:PutObject", "arn:aws:s3:::b/p/a")) == "implicit"


def test_an_explicit_deny_wins() -> None:
    policy = policy_of(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/p/?/x"},
    )
    assert policy.decide(Request("s3:PutObject", "arn:aws:s3:::b/p/1/x")) == "deny"
    assert policy.allows(Request("s3:PutObject", "arn:aws:s3:::b/p/12/x"))


def test_a_prefix_condition_needs_the_key_in_the_request() -> None:
    policy = policy_of(LIST_QUEUES)
    bucket = "arn:aws:s3:::b"
    assert policy.allows(Request("s3:ListBucket", bucket, {"s3:prefix": "p/v1/queues/q/jobs/"}))
    assert not policy.allows(Request("s3:ListBucket", bucket, {"s3:prefix": "p/v1/inbox/"}))
    assert not policy.allows(Request("s3:ListBucket", bucket))  # a whole-bucket LIST, or a 404


def test_negated_null_and_if_exists_operators_on_a_missing_key() -> None:
    def one(operator: str, value: object) -> Policy:
        rule = {**LIST_QUEUES, "Condition": {operator: {"s3:prefix": value}}}
        return policy_of(rule)

    bare = Request("s3:ListBucket", "arn:aws:s3:::b")
    inbox = Request("s3:ListBucket", "arn:aws:s3:::b", {"S3:Prefix": "p/v1/inbox/"})
    assert one("StringNotLike", "p/v1/queues/*").allows(bare)
    assert one("StringNotLike", "p/v1/queues/*").allows(inbox)  # condition keys ignore case
    assert one("StringLikeIfExists", "p/v1/queues/*").allows(bare)
    assert not one("StringLikeIfExists", "p/v1/queues/*").allows(inbox)
    assert one("StringEquals", "p/v1/inbox/").allows(inbox)
    assert one("Null", "true").allows(bare) and not one("Null", "true").allows(inbox)


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Allow", "NotAction": "s3:PutObject", "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:*", "NotResource": "arn:aws:s3:::b/x"},
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/${aws:username}/*"},
        {**LIST_QUEUES, "Condition": {"ArnLike": {"aws:SourceArn": "x"}}},
        {"Effect": "Maybe", "Action": "s3:*", "Resource": "*"},
    ],
)
def test_what_the_evaluator_does_not_know_is_an_error(statement: dict) -> None:
    with pytest.raises(ValueError):
        policy_of(statement)


def test_http_requests_as_iam_sees_them() -> None:
    b = "b"
    assert s3_requests("GET", "/b/p/k%20x", 200, b) == [
        Request("s3:GetObject", object_arn(b, "p/k x"))
    ]
    assert s3_requests("HEAD", "/b/p/k", 404, b) == [
        Request("s3:GetObject", object_arn(b, "p/k")),
        Request("s3:ListBucket", bucket_arn(b)),
    ]
    assert s3_requests("GET", "/b?list-type=2&prefix=p%2Fv1%2F&encoding-type=url", 200, b) == [
        Request("s3:ListBucket", bucket_arn(b), {"s3:prefix": "p/v1/"})
    ]
    delete = b"<Delete><Object><Key>p/a</Key></Object><Object><Key>p/b</Key></Object></Delete>"
    assert s3_requests("POST", "/b?delete", 200, b, delete) == [
        Request("s3:DeleteObject", object_arn(b, "p/a")),
        Request("s3:DeleteObject", object_arn(b, "p/b")),
    ]
    with pytest.raises(ValueError):
        s3_requests("GET", "/b/p/k?acl", 200, b)
    with pytest.raises(ValueError):
        s3_requests("GET", "/other/p/k", 200, b)


# -- infra/minio-setup.sh, against a stand-in for `mc` -----------------------------------------

FAKE_MC = """#!/usr/bin/env bash
# Records each call; keeps what `policy create` was given and what `user add` read on stdin.
set -euo pipefail
echo "$*" >>"$MC_LOG/calls"
case "$1 $2 $3" in
  "admin policy create") cp "$6" "$MC_LOG/policy-$5.json"; echo "$6" >>"$MC_LOG/paths" ;;
  "admin user add") read -r secret; printf '%s' "$secret" >"$MC_LOG/secret-$5" ;;
esac
"""


def run_setup(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir, log = tmp_path / "bin", tmp_path / "mc-log"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MC_LOG": str(log), "TMPDIR": str(tmp_path)}
    script = ROOT / "infra" / "minio-setup.sh"
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_minio_setup_writes_each_secret_to_a_private_file_and_prints_none(tmp_path) -> None:
    out = tmp_path / "creds"
    out.mkdir()
    done = run_setup(tmp_path, "plant-bucket", "edge/mb", str(out))
    assert done.returncode == 0, done.stderr
    log = tmp_path / "mc-log"
    calls = (log / "calls").read_text()
    for side in ("scheduler", "worker"):
        user = f"edge-mailbox-{side}"
        secret = (log / f"secret-{user}").read_text()
        assert len(secret) >= 24
        assert secret not in done.stdout + done.stderr + calls  # never printed, never in argv
        env_file = out / f"{user}.env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert env_file.read_text() == (
            f"AWS_ACCESS_KEY_ID={user}\nAWS_SECRET_ACCESS_KEY={secret}\n"
        )
        assert str(env_file) in done.stdout
        policy = (log / f"policy-{user}.json").read_text()
        assert "BUCKET" not in policy and "edge-mailbox/v1/" not in policy
        assert "arn:aws:s3:::plant-bucket/edge/mb/v1/" in policy
    for path in (log / "paths").read_text().split():  # the policy temp files are gone
        assert not Path(path).exists(), path
    assert not list(tmp_path.glob("tmp.*"))

    again = run_setup(tmp_path, "plant-bucket", "edge/mb", str(out))
    assert again.returncode == 1 and "exists: remove it to issue a new secret" in again.stderr
    assert (log / "calls").read_text() == calls  # refused before touching MinIO


def test_minio_setup_refuses_a_bad_bucket_or_prefix(tmp_path) -> None:
    for args in (("Bad_Bucket",), ("ok-bucket", "a|b"), ("ok-bucket", "/lead")):
        done = run_setup(tmp_path, *args, str(tmp_path))
        assert done.returncode == 2 and "invalid" in done.stderr, (args, done.stderr)
