"""Single-object S3 requests (GET, PUT, HEAD, DELETE) without boto3's per-call machinery.

A boto3 call spends about 1.3 ms of CPU in Python (endpoint rules, a dozen event hooks, the
user-agent string, request serialization, response parsing) around about 0.15 ms of HTTP.
Nearly every request of the protocol is one small object: a marker poll, a claim, a relay
request or answer, a heartbeat. Measured on the worker, boto3 was a third of the CPU per
task. These requests are built here instead, from botocore's own parts: its SigV4 signer
(credentials and their refresh come from the boto3 session), and the client's HTTP session
(so proxies, TLS verification, timeouts and the connection pool are exactly the client's).
LIST and batch deletes stay on the boto3 client.

The URL of an object is the client's own (virtual-hosted or path style, any endpoint): it is
read once from a presigned URL. Each request emits botocore's ``before-send`` event as a
boto3 call does, so whatever intercepts boto3 there (moto's mock, in the unit tests) sees
these requests too. Failures are raised as botocore's: ``ClientError`` shaped as boto3's
(``Error.Code`` from S3's XML, ``ResponseMetadata.HTTPStatusCode``) and its connection
errors, so the store's retry rules apply unchanged.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from urllib3.exceptions import HTTPError as Urllib3Error

_PROBE = "edge-mailbox-url-probe"
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,1000})</Message>")


class DirectObjects:
    """GET, PUT, HEAD and DELETE of one object in ``bucket``, through ``client``'s session."""

    def __init__(
        self, client: Any, bucket: str, credentials: Credentials | None, user_agent: str
    ) -> None:
        self.credentials = credentials
        self.region = client.meta.region_name or "us-east-1"
        self.events = client.meta.events
        self.http = client._endpoint.http_session  # the client's proxies, TLS and pool
        self.user_agent = user_agent
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": _PROBE}, ExpiresIn=60
        )
        self.base = probe.split("?", 1)[0][: -len(_PROBE)]

    def url(self, key: str) -> str:
        return self.base + quote(key, safe="/~")

    # -- the four requests -------------------------------------------------------------------

    def get(
        self, key: str, *, if_none_match: str | None = None, max_bytes: int
    ) -> tuple[int, Any, bytes]:
        """(status, headers, body) of a 200 or a 304; the headers are case-insensitive, the
        body is cut at ``max_bytes`` + 1 (the caller tells an oversized object from the
        headers or from that extra byte)."""
        headers = {"If-None-Match": if_none_match} if if_none_match else {}
        response = self._send("GetObject", "GET", key, headers, b"", stream=True)
        raw = response.raw
        try:
            if response.status_code == 304:
                return 304, response.headers, b""
            length = int(response.headers.get("content-length") or 0)
            body = b"" if length > max_bytes else raw.read(max_bytes + 1)
            return response.status_code, response.headers, body
        except Urllib3Error as exc:  # the connection broke in the middle of the body
            raise HTTPClientError(error=exc) from exc
        finally:
            raw.close()  # after a whole body the connection is back in the pool already

    def put(self, key: str, body: bytes, content_type: str, condition: dict[str, str]) -> str:
        """Write ``body``; ``condition`` holds If-None-Match or If-Match. Returns the ETag."""
        headers = {"Content-Type": content_type, **condition}
        return self._send("PutObject", "PUT", key, headers, body).headers.get("etag", "")

    def head(self, key: str) -> dict[str, Any]:
        headers = self._send("HeadObject", "HEAD", key, {}, b"").headers
        return {
            "ETag": headers.get("etag", ""),
            "ContentLength": int(headers.get("content-length") or 0),
            "LastModified": last_modified(headers),
        }

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._send("DeleteObject", "DELETE", key, {"If-Match": if_match} if if_match else {}, b"")

    # -- one signed request ------------------------------------------------------------------

    def _send(
        self,
        operation: str,
        method: str,
        key: str,
        headers: dict[str, str],
        body: bytes,
        *,
        stream: bool = False,
    ) -> AWSResponse:
        if self.credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(
            method=method,
            url=self.url(key),
            headers={"User-Agent": self.user_agent, **headers},
            data=body,
            stream_output=stream,
        )
        signer = S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region)
        signer.add_auth(request)
        prepared = request.prepare()
        event = f"before-send.s3.{operation}"
        _, response = self.events.emit_until_response(event, request=prepared)
        if response is None:
            response = self.http.send(prepared)
        status = response.status_code
        if status < 300 or (status == 304 and method == "GET"):
            return response
        raise _client_error(operation, status, b"" if method == "HEAD" else response.content)


def last_modified(headers: Any) -> datetime | None:
    value = headers.get("last-modified")
    return parsedate_to_datetime(value) if value else None


def _client_error(operation: str, status: int, body: bytes) -> ClientError:
    """A ClientError as boto3 raises it: the S3 error code, or the status for a bodyless
    answer (HEAD), and the HTTP status."""
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    error = {
        "Code": code.group(1).decode("utf-8", "replace") if code else str(status),
        "Message": message.group(1).decode("utf-8", "replace") if message else "",
    }
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
