"""An evaluator of the part of the IAM policy language that infra/iam-*-policy.json use, and a
mapping of S3 HTTP requests (path style) to the IAM requests S3 authorizes them as.

Why: the policy documents are what an operator installs; a wrong one only shows on a real AWS
or MinIO deployment. tests/test_iam_policies.py records every request the worker and the
scheduler side make and judges each with this module, so the evaluation must follow AWS:

- an explicit Deny wins over any Allow; without a matching Allow a request is denied;
- ``Action`` matches case-insensitively, ``Resource`` and condition values case-sensitively;
  ``*`` matches any run of characters (``/`` included), ``?`` any one;
- within ``Condition`` every operator and every key must hold (AND), any of a key's values
  may match (OR); a key missing from the request fails a positive operator, satisfies a
  negated one (``StringNotEquals``, ``StringNotLike``) and any ``...IfExists``; ``Null`` tests
  presence.

Anything else in a document (NotAction, NotResource, Principal, policy variables, other
operators) raises ``UnsupportedPolicy``: a test must never pass on a statement it misreads.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

_STATEMENT_FIELDS = {"Sid", "Effect", "Action", "Resource", "Condition"}
_STRING_OPERATORS = {"StringEquals", "StringNotEquals", "StringLike", "StringNotLike"}
# Query parameters that only shape a LIST or name the operation (boto3 adds x-id); any other
# parameter is a subresource (acl, tagging, uploads...) this mapping does not know.
_LIST_PARAMS = {
    "list-type",
    "prefix",
    "start-after",
    "max-keys",
    "delimiter",
    "continuation-token",
    "encoding-type",
    "fetch-owner",
    "x-id",
}


class UnsupportedPolicy(ValueError):
    """The document uses something this evaluator does not implement."""


class UnknownRequest(ValueError):
    """An HTTP request that this mapping cannot name as an IAM action."""


@dataclass(frozen=True)
class Request:
    """What IAM authorizes: an action on a resource, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = "".join(f" {k}={v!r}" for k, v in sorted(self.context.items()))
        return f"{self.action} {self.resource}{extra}"


def _wildcard(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    if "${" in pattern:
        raise UnsupportedPolicy(f"policy variables are not supported: {pattern!r}")
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _strings(value: object, what: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise UnsupportedPolicy(f"{what} must be a string or a list of strings: {value!r}")
    return values


@dataclass(frozen=True)
class _Condition:
    operator: str
    key: str
    values: tuple[str, ...]

    def holds(self, context: Mapping[str, str]) -> bool:
        present = {k.lower(): v for k, v in context.items()}
        actual = present.get(self.key.lower())
        if self.operator == "Null":
            return (actual is None) == (self.values[0] == "true")
        operator, if_exists = self.operator, self.operator.endswith("IfExists")
        if if_exists:
            operator = operator[: -len("IfExists")]
        negated = "Not" in operator
        if actual is None:
            return if_exists or negated
        if operator in ("StringLike", "StringNotLike"):
            matched = any(_wildcard(v).fullmatch(actual) for v in self.values)
        else:
            matched = actual in self.values
        return matched != negated


def _conditions(block: object) -> list[_Condition]:
    if not isinstance(block, dict):
        raise UnsupportedPolicy(f"Condition must be an object: {block!r}")
    out = []
    for operator, keys in block.items():
        base = operator.removesuffix("IfExists")
        if base not in _STRING_OPERATORS and operator != "Null":
            raise UnsupportedPolicy(f"condition operator {operator!r} is not supported")
        if not isinstance(keys, dict) or not keys:
            raise UnsupportedPolicy(f"{operator} must map condition keys to values")
        for key, value in keys.items():
            if operator == "Null":
                flag = str(value).lower() if isinstance(value, (bool, str)) else ""
                if flag not in ("true", "false"):
                    raise UnsupportedPolicy(f"Null takes true or false, not {value!r}")
                out.append(_Condition(operator, key, (flag,)))
            else:
                out.append(_Condition(operator, key, tuple(_strings(value, f"{operator} {key}"))))
    return out


@dataclass(frozen=True)
class Statement:
    sid: str
    allow: bool
    actions: tuple[re.Pattern[str], ...]
    resources: tuple[re.Pattern[str], ...]
    conditions: tuple[_Condition, ...]

    @classmethod
    def parse(cls, raw: object, index: int) -> Statement:
        if not isinstance(raw, dict):
            raise UnsupportedPolicy(f"statement {index} is not an object")
        unknown = set(raw) - _STATEMENT_FIELDS
        if unknown:
            raise UnsupportedPolicy(f"statement {index}: unsupported fields {sorted(unknown)}")
        if raw.get("Effect") not in ("Allow", "Deny"):
            raise UnsupportedPolicy(f"statement {index}: Effect must be Allow or Deny")
        for required in ("Action", "Resource"):
            if required not in raw:
                raise UnsupportedPolicy(f"statement {index} has no {required}")
        return cls(
            sid=str(raw.get("Sid", index)),
            allow=raw["Effect"] == "Allow",
            actions=tuple(
                _wildcard(a, ignore_case=True) for a in _strings(raw["Action"], "Action")
            ),
            resources=tuple(_wildcard(r) for r in _strings(raw["Resource"], "Resource")),
            conditions=tuple(_conditions(raw.get("Condition", {}))),
        )

    def matches(self, request: Request) -> bool:
        return (
            any(a.fullmatch(request.action) for a in self.actions)
            and any(r.fullmatch(request.resource) for r in self.resources)
            and all(c.holds(request.context) for c in self.conditions)
        )


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, document: object) -> Policy:
        if not isinstance(document, dict) or document.get("Version") != "2012-10-17":
            raise UnsupportedPolicy('a policy is an object with "Version": "2012-10-17"')
        if set(document) - {"Version", "Id", "Statement"}:
            raise UnsupportedPolicy(f"unsupported top-level fields in {sorted(document)}")
        raw = document.get("Statement")
        raw = raw if isinstance(raw, list) else [raw]
        return cls(tuple(Statement.parse(s, i) for i, s in enumerate(raw)))

    @classmethod
    def load(cls, path: Path, substitutions: Mapping[str, str]) -> Policy:
        """Read a document, replacing placeholders as infra/minio-setup.sh does."""
        text = path.read_text()
        for old, new in substitutions.items():
            text = text.replace(old, new)
        return cls.parse(json.loads(text))

    def decide(self, request: Request) -> str:
        """ "deny" (an explicit Deny matched), "allow", or "implicit" (nothing allowed it)."""
        matching = [s for s in self.statements if s.matches(request)]
        if any(not s.allow for s in matching):
            return "deny"
        return "allow" if matching else "implicit"

    def allows(self, request: Request) -> bool:
        return self.decide(request) == "allow"


# -- S3 requests as IAM sees them ------------------------------------------------------------


def bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _deleted_keys(body: bytes) -> list[str]:
    """The keys of a DeleteObjects request body (``<Delete><Object><Key>``...)."""
    root = ET.fromstring(body)
    return [el.text or "" for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Key"]


def s3_requests(
    method: str, target: str, status: int, bucket: str, body: bytes = b""
) -> list[Request]:
    """The IAM requests one path-style S3 HTTP request needs to be allowed as it was answered.

    A GET or HEAD of a missing object needs s3:ListBucket on the bucket besides s3:GetObject:
    AWS answers it 403, not 404, to whoever may not list the bucket, so that a key's absence
    is not revealed. That check has no list prefix to match, so a ListBucket allowed only for
    some ``s3:prefix`` does not count (the cautious reading of AWS's documentation: a policy
    that passes it gets 404s on AWS however that check is done; MinIO answers an
    authenticated caller 404 either way)."""
    parts = urlsplit(target)
    path = unquote(parts.path)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not path.startswith(f"/{bucket}"):
        raise UnknownRequest(f"{method} {target}: not a path-style request to bucket {bucket!r}")
    key = path[len(bucket) + 1 :].removeprefix("/")
    unknown = set(query) - _LIST_PARAMS - ({"delete"} if method == "POST" else set())
    if unknown:
        raise UnknownRequest(f"{method} {target}: unknown subresource {sorted(unknown)}")
    if not key:
        if method == "GET":
            context = {k: query[k] for k in ("prefix", "delimiter", "max-keys") if k in query}
            return [Request("s3:ListBucket", bucket_arn(bucket), _s3_keys(context))]
        if method == "HEAD":  # HeadBucket is authorized as ListBucket
            return [Request("s3:ListBucket", bucket_arn(bucket))]
        if method == "PUT":
            return [Request("s3:CreateBucket", bucket_arn(bucket))]
        if method == "POST" and "delete" in query:  # DeleteObjects: DeleteObject per key
            return [Request("s3:DeleteObject", object_arn(bucket, k)) for k in _deleted_keys(body)]
        raise UnknownRequest(f"{method} {target}: unknown bucket request")
    if method in ("GET", "HEAD"):
        needed = [Request("s3:GetObject", object_arn(bucket, key))]
        if status == 404:
            needed.append(Request("s3:ListBucket", bucket_arn(bucket)))
        return needed
    if method == "PUT":
        return [Request("s3:PutObject", object_arn(bucket, key))]
    if method == "DELETE":
        return [Request("s3:DeleteObject", object_arn(bucket, key))]
    raise UnknownRequest(f"{method} {target}: unknown object request")


def _s3_keys(params: Mapping[str, str]) -> dict[str, str]:
    return {f"s3:{name}": value for name, value in params.items()}
