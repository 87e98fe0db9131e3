"""One access log line per HTTP call, whatever its outcome: 200, 400, 401, 404, 413, 500 alike.

Why: a CDS client shows a refused call the way it shows an empty answer. The CDS Hooks sandbox says
"All clear" after a 401, a 400 or a CORS refusal as after a call with no card, so the service's log
is where a misconfiguration must show. The line is written by this middleware, the outermost layer
of the app, when the answer has been sent: its `status` is the one the client got and its
`duration_ms` covers everything the call cost, authentication and any JWK Set fetch included.

Fields, all of our own making or counts, never patient data and never the token:

* `event`: `hook call` (a service invoked), `feedback`, `cors preflight`, or `request` (anything
  else: discovery, health, an unknown path);
* `method`, `path` (the route's template, e.g. `/cds-services/{service_id}`; null for a path the
  service does not serve), `status`, `duration_ms`, `request_id` (a random id, also sent back as
  the `X-Request-Id` header and written on the call's `authentication failed` line, if any);
* `origin` and `cors` (`allowed` or `refused`) when the browser sent an `Origin` header: a
  `refused` origin makes the line a warning, since the page that called will never see the answer;
* what the route adds with `note()`: the service id (only a known one), the verified issuer, the
  hook, the EHR's `hookInstance`, card counts and rule ids, feedback counts, the ingest report.

Health probes (`/healthz`, `/readyz`) that succeed are logged at debug level: a load balancer
asks every few seconds. Uvicorn's own access log stays off (`logs.py`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Match

from cds_service import metrics

log = logging.getLogger("cds_service.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the fields of the call's line live in the ASGI scope (copies of the scope share the dict).
SCOPE_KEY = "als_cds.access"
#: Longest Origin header value written to the log (it is the browser page's, not a secret).
_ORIGIN_CHARS = 200
_PROBES = frozenset({"/healthz", "/readyz"})
#: The `endpoint` label of the request metric, by event, then by route (bounded: no raw path).
_ENDPOINTS = {"hook call": "hook", "feedback": "feedback", "cors preflight": "preflight"}


def _endpoint(path: str | None) -> str:
    if path in ("/cds-services", "/cds-services/"):
        return "discovery"
    if path in _PROBES:
        return "probe"
    if path == "/metrics":
        return "metrics"
    if path is not None and path.startswith("/console"):
        return "console"
    return "other"


def note(request: Request, **fields: Any) -> None:
    """Add fields to the access line of this call (nothing outside the middleware, e.g. in a test
    that calls a route directly)."""
    line = request.scope.get(SCOPE_KEY)
    if line is not None:
        line.update(fields)


def request_id(request: Request) -> str | None:
    """The id of this call's access line, for another line that must be matched with it."""
    line = request.scope.get(SCOPE_KEY)
    return line.get("request_id") if line is not None else None


class AccessLog:
    """Pure ASGI middleware: one line per HTTP request, written once its answer has gone."""

    def __init__(self, app: ASGIApp, *, cors_origins: Sequence[str], routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._any_origin = "*" in cors_origins
        self._origins = frozenset(cors_origins)
        self._routes = routes  # the app's route list: filled in after the middleware is added

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        line: dict[str, Any] = {"request_id": uuid.uuid4().hex}
        scope[SCOPE_KEY] = line
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", line["request_id"].encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # The error handler outside this middleware answers 500 (nothing was sent yet), or
            # the connection is gone: either way this call gets its line.
            self._write(scope, line, status if status is not None else 500, started)
            raise
        self._write(scope, line, status, started)

    def _write(self, scope: Scope, line: dict[str, Any], status: int | None, started: float) -> None:
        method = scope.get("method", "")
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        path = self._route_path(scope)
        preflight = method == "OPTIONS" and b"access-control-request-method" in headers
        event = line.pop("event", None) or ("cors preflight" if preflight else "request")
        fields: dict[str, Any] = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        level = logging.INFO
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            allowed = self._any_origin or text in self._origins
            fields["origin"] = text[:_ORIGIN_CHARS]
            fields["cors"] = "allowed" if allowed else "refused"
            if not allowed:
                level = logging.WARNING
        if status is None or status >= 500:
            level = logging.ERROR
        elif path in _PROBES and status < 400 and level == logging.INFO:
            level = logging.DEBUG
        log.log(level, event, extra={**fields, **line})
        metrics.REQUESTS.labels(
            _ENDPOINTS.get(event) or _endpoint(path),
            metrics.one_of(line.get("service"), metrics.SERVICES) if "service" in line else "",
            metrics.one_of(line.get("hook"), metrics.HOOKS) if "hook" in line else "",
            str(status) if status is not None else "none",
        ).observe(time.perf_counter() - started)

    def _route_path(self, scope: Scope) -> str | None:
        """The template of the route that serves this path (any method), or None."""
        # The router leaves the route it chose (a full match, else the first partial one, as
        # below) in the scope; matching every route again cost ~1 % of a hook call's CPU. A call
        # answered before the router (413, 503, a CORS refusal) has none: matched here.
        chosen = scope.get("route")
        if chosen is not None:
            return getattr(chosen, "path", None)
        partial = None
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "path", None)
            if match is Match.PARTIAL and partial is None:
                partial = getattr(route, "path", None)
        return partial
