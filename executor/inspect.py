"""``airflow edge-mailbox inspect``: any object of the bucket decoded, for an operator next to
``aws s3 ls``. What kind it is (from its key), who signed it, whether it verifies as its
reader would verify it (the same keys, binding and expiry), and its body, with sealed parts
shown by size only. ``--job`` prints a job's whole story from its objects."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edge_mailbox.mailbox.codec import decode_signed
from edge_mailbox.mailbox.errors import NotFound, ProtocolError, StoreError
from edge_mailbox.mailbox.layout import TaskCoordinates, decode_name
from edge_mailbox.mailbox.models import (
    ChangeMarker,
    Claim,
    FleetSnapshot,
    JobResult,
    RelayRequest,
    RelayResponse,
    Revocation,
    WireModel,
)
from edge_mailbox.mailbox.protocol import Mailbox
from edge_mailbox.signer import KeyRing, VerificationError, strictjson
from edge_mailbox.signer.keys import b64url_decode

SEALED_FIELDS = ("sealed",)  # the rest is public: a seal key is a public key
MAX_SHOWN = 2000  # characters of a body printed


@dataclass
class Report:
    key: str
    kind: str
    size: int = 0
    last_modified: str = ""
    signed_by: str = ""  # key id, and whose it is
    verdict: str = ""  # "verified" or why not
    details: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"{self.key}",
            f"  kind       {self.kind}   ({self.size} bytes, {self.last_modified})",
        ]
        if self.signed_by:
            out.append(f"  signed by  {self.signed_by}")
        if self.verdict:
            out.append(f"  verifies   {self.verdict}")
        for name, value in self.details.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out.append(f"  {name:<10} {text[:MAX_SHOWN]}")
        return out


class Inspector:
    def __init__(self, mailbox: Mailbox, scheduler_keys: KeyRing, worker_keys: KeyRing) -> None:
        self.mailbox = mailbox
        self.layout = mailbox.layout
        self.scheduler_keys = scheduler_keys
        self.worker_keys = worker_keys

    # -- one object ----------------------------------------------------------------------------

    def key_of(self, where: str) -> str:
        """A key, or an s3://bucket/key URL of this bucket."""
        if where.startswith("s3://"):
            bucket, _, key = where[5:].partition("/")
            if bucket != self.mailbox.bucket:
                raise ValueError(f"{where} is not in bucket {self.mailbox.bucket}")
            return key
        return where

    def inspect(self, where: str) -> Report:
        key = self.key_of(where)
        kind, check = self._classify(key)
        report = Report(key, kind)
        try:
            obj = self.mailbox.store.get(key, max_bytes=4 * 1024 * 1024)
        except NotFound:
            report.verdict = "not found"
            return report
        report.size = len(obj.body)
        report.last_modified = obj.last_modified.isoformat() if obj.last_modified else ""
        if not obj.body:
            report.details["body"] = "(empty: a notice)"
            return report
        envelope = _unverified(obj.body)
        if envelope is None:  # plain JSON (a marker, a lease) or something else
            report.details["body"] = _shown(obj.body)
            if check is not None:
                report.verdict = _verdict(lambda: check(obj.body))
            return report
        header, claims = envelope
        kid = str(header.get("kid", "?"))
        report.signed_by = f"{kid} ({self._whose(kid)})"
        report.details["typ"] = str(claims.get("typ"))
        report.details["bind"] = claims.get("bind")
        report.details["issued"] = _when(claims.get("iat"))
        report.details["expires"] = _when(claims.get("exp"))
        report.details["body"] = _redacted(claims.get("body"))
        if check is not None:
            report.verdict = _verdict(lambda: check(obj.body))
        return report

    def _whose(self, kid: str) -> str:
        if kid in self.scheduler_keys:
            return "the scheduler side"
        if kid in self.worker_keys:
            return "a trusted worker key"
        return "an unknown key: not trusted"

    def _classify(self, key: str) -> tuple[str, Callable[[bytes], Any] | None]:
        """The kind of object at ``key`` and how its reader verifies it."""
        m, layout = self.mailbox, self.layout
        checks: list[tuple[str, Callable[[str], Any]]] = [
            ("job manifest", lambda k: self._manifest_check(k)),
            ("job object", lambda k: self._job_check(k)),
            ("inbox item", lambda k: self._inbox_check(k)),
            ("heartbeat", lambda k: self._heartbeat_check(k)),
            ("fleet snapshot", lambda k: self._snapshot_check(k)),
        ]
        if key in (layout.queues_marker, layout.inbox_marker) or key.endswith("/marker.json"):
            return "change marker (unsigned)", lambda raw: ChangeMarker.from_json(raw)
        if key.startswith(f"{layout.root}commands/") and key.endswith(".jws"):
            name = _named(decode_name(key.rsplit("/", 1)[1].removesuffix(".jws")))
            return "worker command", lambda raw: m.verify_command(raw, name, self.scheduler_keys)
        for kind, probe in checks:
            try:
                return kind, probe(key)
            except ValueError:
                continue
        if key.startswith(f"{layout.root}logs/"):
            return "log chunk (checked against its job's claim: use --job)", None
        return "not a mailbox object", None

    def _signed(self, cls: type[WireModel], keys: KeyRing, **bind: str) -> Callable[[bytes], Any]:
        return lambda raw: decode_signed(raw, cls, keys, bind=self.mailbox.bind(**bind))

    def _inbox_check(self, key: str) -> Callable[[bytes], Any] | None:
        job_id, kind, request_id = self.layout.parse_inbox(key)
        if kind != "request" or request_id is None:
            return None  # an empty notice: nothing to verify
        bind = {"job_id": job_id, "request_id": request_id, "kind": "request"}
        return self._signed(RelayRequest, self.worker_keys, **bind)

    def _heartbeat_check(self, key: str) -> Callable[[bytes], Any]:
        name = _named(self.layout.parse_heartbeat(key))
        return lambda raw: self.mailbox.verify_heartbeat(raw, name, self.worker_keys)

    def _snapshot_check(self, key: str) -> Callable[[bytes], Any]:
        owner = self.layout.parse_fleet_snapshot(key)
        return self._signed(FleetSnapshot, self.scheduler_keys, owner=owner)

    def _manifest_check(self, key: str) -> Callable[[bytes], Any]:
        parsed = self.layout.parse_manifest(key)
        queue = _named(decode_name(self.layout.parse_queue_key(key)))
        return lambda raw: self.mailbox.verify_manifest(
            raw, queue, parsed.job_id, self.scheduler_keys
        )

    def _job_check(self, key: str) -> Callable[[bytes], Any] | None:
        job_id, kind = self.layout.parse_job_key(key)
        bind = {"job_id": job_id}
        by_kind: dict[str | None, tuple[type[WireModel], KeyRing] | None] = {
            "claim": (Claim, self.worker_keys),
            "result": (JobResult, self.worker_keys),
            "revocation": (Revocation, self.scheduler_keys),
            "response": (RelayResponse, self.scheduler_keys),
            "lease": None,
            None: None,
        }
        found = by_kind.get(kind)
        if kind == "response":
            bind.update(request_id=self.layout.parse_relay_response(key), kind="response")
        return self._signed(found[0], found[1], **bind) if found else None

    # -- a job's story ---------------------------------------------------------------------

    def job_story(self, job_id: str) -> Iterator[Report]:
        """Every object of the job, oldest first: its folder, its inbox notices and requests,
        and its log chunks (found from the claim's manifest)."""
        layout = self.layout
        entries = [
            *self.mailbox.store.list_all(layout.job_root(job_id)),
            *self.mailbox.store.list_all(f"{layout.inbox}{job_id}/"),
        ]
        claim = None
        with contextlib.suppress(NotFound, VerificationError, ProtocolError):
            claim = self.mailbox.read_claim(job_id, self.worker_keys).model
        if claim is not None:
            raw = claim.manifest.encode()
            try:
                manifest = self.mailbox.verify_manifest(
                    raw, claim.queue, job_id, self.scheduler_keys, at=claim.claimed_at
                ).model
                yield Report(
                    f"(the manifest embedded in {layout.claim(job_id)})",
                    "job manifest",
                    size=len(raw),
                    signed_by="the scheduler side",
                    verdict="verified (as of the claim)",
                    details={"task": manifest.describe(), "queue": manifest.queue},
                )
                if manifest.ti:
                    ti = TaskCoordinates.of_ti(manifest.ti)
                    entries += list(self.mailbox.store.list_all(layout.log_root(ti, job_id)))
            except (VerificationError, ProtocolError) as exc:
                yield Report("(embedded manifest)", "job manifest", verdict=f"refused: {exc}")
        for entry in sorted(entries, key=lambda e: e.last_modified):
            if entry.key.startswith(f"{layout.root}logs/") and claim is not None:
                yield self._chunk(entry.key, claim)
            else:
                yield self.inspect(entry.key)

    def _chunk(self, key: str, claim: Claim) -> Report:
        report = self.inspect(key)
        report.kind = "log chunk"
        manifest = strictjson.loads(b64url_decode(claim.manifest.split(".")[1]))["body"]
        ti = TaskCoordinates.of_ti(manifest["ti"])
        job_id, seq = self.layout.parse_log_chunk(key, ti)
        try:
            raw = self.mailbox.store.get(key).body
            signed = self.mailbox.verify_log_chunk(raw, ti, job_id, seq, self.worker_keys)
            holder = self.mailbox.read_claim(job_id, self.worker_keys).kid
            report.verdict = (
                "verified, signed by the claim holder"
                if signed.kid == holder
                else f"refused: signed by {signed.kid}, the claim is {holder}'s"
            )
        except (VerificationError, ProtocolError, StoreError) as exc:
            report.verdict = f"refused: {exc}"
        return report


def _named(name: str | None) -> str:
    if name is None:
        raise ValueError("a hashed name cannot be read back")
    return name


def _unverified(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The header and claims of a JWS, read without verifying (to show what it says)."""
    parts = raw.split(b".")
    if len(parts) != 3:
        return None
    try:
        header = strictjson.loads(b64url_decode(parts[0].decode("ascii")))
        claims = strictjson.loads(b64url_decode(parts[1].decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return header, claims


def _redacted(body: Any) -> Any:
    """The body with sealed parts replaced by their size, and an embedded manifest by its
    task."""
    if not isinstance(body, dict):
        return body
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in SEALED_FIELDS and isinstance(value, str):
            out[name] = f"({len(value)} characters sealed)"
        elif name == "manifest" and isinstance(value, str):
            out[name] = f"(the signed manifest, {len(value)} characters)"
        else:
            out[name] = value
    return out


def _shown(raw: bytes) -> str:
    try:
        return json.dumps(strictjson.loads(raw))
    except ValueError:
        return f"({len(raw)} bytes, not JSON)"


def _when(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return repr(value)
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
    except (OverflowError, ValueError, OSError):
        return repr(value)
    return f"{stamp} ({'in the past' if value < time.time() else 'in the future'})"


def _verdict(check: Callable[[], Any]) -> str:
    try:
        check()
    except VerificationError as exc:
        return f"refused: {exc}"
    except ProtocolError as exc:
        return f"refused: {exc}"
    return "verified"
