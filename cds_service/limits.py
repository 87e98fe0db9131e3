"""Request limits, checked before any body is parsed: size (413) and content type (415); and load
shedding, which answers a hook call beyond the worker's capacity at once (503).

A pure ASGI middleware, so an oversized body is refused while it streams in, without ever being
held in memory whole: a declared Content-Length over the limit is refused at once, and a body
without one (chunked) is counted as it arrives and cut off at the limit. Only POST bodies are
checked; preflight OPTIONS and GETs pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from cds_service import access_log, metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Content types a CDS Hooks body may be sent as. A missing Content-Type is accepted: the body
#: must still parse as JSON, and some clients leave the header out.
_JSON_TYPES = ("application/json", "application/fhir+json", "application/json+fhir")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or media.endswith("+json")


class BodyTooLarge(HTTPException):
    """Raised while the body streams in. An HTTPException, so that FastAPI's body reading passes it
    on as a 413 (it turns other exceptions into a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the limit of {limit} bytes.")


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type")
        if content_type is not None and not _is_json(content_type):
            await _refuse(send, 415, "The request body must be JSON (Content-Type: application/json).")
            return
        if content_type is None:
            # Every body this service takes is JSON: say so for the framework, which parses only
            # bodies declared as JSON.
            scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, self._too_large())
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await _refuse(send, 413, self._too_large())

    def _too_large(self) -> str:
        return f"The request body is larger than the limit of {self.max_body_bytes} bytes."


class LoadShedding:
    """Beyond `max_in_flight` hook calls in this worker, answer the next one at once: 503 with
    `Retry-After` and an OperationOutcome (`throttled`), which EHRs treat as "no cards".

    Why: without it, a burst queues on the event loop and every call slows together; 1,000
    concurrent calls all finished after ~5 s, so under an EHR time-out of ~5 s all would have failed.
    Shed at once, the calls taken are answered in time and the rest can be retried or skipped.
    Only hook calls are counted and shed (`POST /cds-services/{id}`): feedback is small and carries
    a clinician's answer, and discovery and probes are cheap. Checked before authentication, so
    that a shed call costs nothing; its access log line says `shed`.
    """

    def __init__(self, app: ASGIApp, *, max_in_flight: int, retry_after_seconds: int) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after = str(retry_after_seconds)
        self.in_flight = 0
        #: Calls shed since start, for whoever watches (metrics).
        self.shed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_hook_call(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            metrics.SHED.inc()
            line = scope.get(access_log.SCOPE_KEY)
            if line is not None:
                line.update(event="hook call", shed=True, in_flight=self.in_flight)
            await _refuse(
                send,
                503,
                f"The service is at capacity ({self.max_in_flight} calls in progress); retry shortly.",
                {"retry-after": self.retry_after},
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _is_hook_call(path: str) -> bool:
    """`/cds-services/{id}` (a service invoked), not its `/feedback` nor discovery."""
    if not path.startswith("/cds-services/"):
        return False
    rest = path[len("/cds-services/") :].strip("/")
    return bool(rest) and "/" not in rest


async def _refuse(send: Send, status: int, diagnostics: str, headers: dict[str, str] | None = None) -> None:
    code = {413: "too-long", 503: "throttled"}.get(status, "not-supported")
    body = json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
