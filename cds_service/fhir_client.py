"""Reads and searches against the EHR's FHIR server, for prefetch keys the EHR did not fill.

The connections are `fhir_http.FhirHttp`'s (aiohttp's pool, kept per FHIR origin and reused:
pooling matters at EHR call rates); this module adds what FHIR needs on top of them:

* the access token goes only to the `fhirServer` origin: a `next` link that points anywhere else is
  not followed, so a hostile or misconfigured server cannot make us send the token elsewhere;
* paging follows `next` links up to a page cap and refuses a link it has already seen (loops);
* every failure becomes a `FhirFetchError` whose message is safe to log and to return: it names
  the kind of failure and the HTTP status, never the URL (which carries the patient id) or the token.

Bounds, so that no FHIR server can take more from a worker than its answers are worth:

* every answer is streamed and stopped at `max_response_bytes` (a declared Content-Length over it is
  refused unread), and all answers of one hook call together at the call's byte budget: a server
  that answers 100 MB per key once pushed a worker past 3 GB;
* a large answer is parsed in a worker thread, Bundle entries left in their bytes until the reader
  reaches them (`reader/lazy.py`), so the event loop keeps serving and the deadline keeps ticking;
* the call's deadline (`CallBudget`) covers everything: waiting for a connection slot, the
  request, the body, the parse. What is not done by then fails as a timeout.

Isolation, so that one EHR's failing FHIR server cannot take the others down with it (a bulkhead):
each FHIR origin gets its own connection pool and its own limit of requests in flight (a hanging
server once held every slot of a shared pool, and calls for a healthy server all timed out beside
it), and its own circuit breaker: after `failures` hook calls in a row that met a failure of the
origin (no answer in time, no connection, 5xx, 429; counted once per call however many of its
requests failed), the origin is not asked for `open_seconds`, and its keys fail at once
(`transient`) instead of each waiting out the budget; then one request probes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import msgspec

from cds_service import metrics
from cds_service.fhir_http import FhirHttp
from cds_service.reader import resources_from_bundle
from cds_service.reader.lazy import LazyResource, decode_bundle_lazily

FHIR_JSON = "application/fhir+json"

#: Answers up to this size are parsed on the event loop (a page of a typical chart is 2 to 30 kB:
#: well under a millisecond, less than a hand-off to a thread); larger ones in a worker thread.
INLINE_PARSE_BYTES = 64_000

#: Defaults of `max_response_bytes` and of a call's byte budget (the settings carry the same).
DEFAULT_MAX_RESPONSE_BYTES = 5_000_000
DEFAULT_MAX_CALL_BYTES = 10_000_000

_DECODER = msgspec.json.Decoder()

# httpx logs every request line at INFO, and our request lines carry the patient id
# (`Observation?patient=...`). Its loggers (and aiohttp's, under fhir_http) are held at WARNING
# whatever the logging configuration, so that no deployment can leak patient ids into logs by
# turning on INFO.
for _name in ("httpx", "httpcore", "aiohttp"):
    logging.getLogger(_name).setLevel(logging.WARNING)

log = logging.getLogger("cds_service.fhir")


class FhirFetchError(Exception):
    """A fetch that did not yield usable FHIR data. `reason` is free of PHI and secrets.

    `issue_code` is the FHIR OperationOutcome issue type the failure maps to: `security` when the
    server refused the token, `timeout` when it did not answer in time, `too-costly` when its answer
    was larger than we read, `incomplete` otherwise.
    """

    def __init__(self, reason: str, *, status: int | None = None, issue_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.issue_code = issue_code or ("security" if status in (401, 403) else "incomplete")


class CallBudget:
    """What one hook call may spend on FHIR: a deadline on the event loop's clock, and bytes.

    Shared by every fetch of the call (all keys, all pages, the Medications behind references), so
    the budget is one hard limit for the whole call, not a limit per request.
    """

    def __init__(self, seconds: float, max_bytes: int | None = DEFAULT_MAX_CALL_BYTES) -> None:
        self.seconds = seconds
        self.deadline = asyncio.get_running_loop().time() + seconds
        self.max_bytes = max_bytes
        self.bytes_read = 0
        self.failed_origins: set[str] = set()  # counted once per call by their circuit breakers

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def spend(self, size: int) -> None:
        self.bytes_read += size
        if self.max_bytes is not None and self.bytes_read > self.max_bytes:
            raise FhirFetchError(
                f"the FHIR server's answers for this call exceed {self.max_bytes} bytes "
                "(ALS_CDS_FHIR_MAX_CALL_BYTES); not read further",
                issue_code="too-costly",
            )

    def timed_out(self) -> FhirFetchError:
        return FhirFetchError(
            f"the FHIR server did not answer within the {self.seconds:g} s budget", issue_code="timeout"
        )


@dataclass(frozen=True)
class FetchResult:
    resources: list[Mapping[str, Any]]
    pages: int


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of `url`; None when it has no valid origin (a port out of range, an
    unclosed IPv6 bracket: from a FHIR server's next link, such a URL once escaped as a 500)."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


@dataclass(frozen=True)
class BreakerPolicy:
    """When an origin's circuit opens: `failures` in a row, and for how long it stays open."""

    failures: int = 5
    open_seconds: float = 10.0


@dataclass(eq=False)
class _Origin:
    """One FHIR origin's share of this process: its pool, its slots and its circuit breaker."""

    name: str  # scheme://host:port: the EHR's server, never a path (which may name a patient)
    http: FhirHttp
    owned: bool  # its pool is its own (closed with it), not the shared client of a test or the CLI
    slots: contextlib.AbstractAsyncContextManager[Any]
    in_flight: int = 0
    failures: int = 0  # in a row
    open_until: float = 0.0  # loop time; 0: closed
    probing: bool = False
    _policy: BreakerPolicy = field(default_factory=BreakerPolicy)

    def check(self, now: float, *, take_probe: bool = True) -> bool:
        """Raises if no request may go out now; True when this one is the probe of a half-open
        circuit (`take_probe=False`: only look, as before waiting for a slot)."""
        if not self.open_until:
            return False
        if now < self.open_until or self.probing:
            left = max(self.open_until - now, 0)
            raise FhirFetchError(
                f"the FHIR server failed {self._policy.failures} or more times in a row; it is not "
                f"asked again for {left:.0f} s (circuit open)",
                issue_code="transient",
            )
        self.probing = take_probe
        return take_probe

    def succeeded(self) -> None:
        if self.open_until:
            log.info("FHIR server answers again: circuit closed", extra={"fhir_origin": self.name})
        self.failures, self.open_until, self.probing = 0, 0.0, False

    def failed(self, now: float, why: str, budget: CallBudget | None) -> None:
        # One failure per hook call and origin: the eleven keys of one call that all time out are
        # one failing call, and a circuit opened half-way through a call would answer the rest of
        # its keys differently from the first ones.
        if budget is not None and not self.probing:
            if self.name in budget.failed_origins:
                return
            budget.failed_origins.add(self.name)
        self.failures += 1
        if self.probing or (not self.open_until and self.failures >= self._policy.failures):
            self.open_until = now + self._policy.open_seconds
            metrics.FHIR_CIRCUITS.inc()
            log.warning(
                "FHIR server failing: circuit opened",
                extra={
                    "fhir_origin": self.name,
                    "consecutive_failures": self.failures,
                    "open_seconds": self._policy.open_seconds,
                    "last_failure": why,
                },
            )
        self.probing = False


class FhirClient:
    def __init__(
        self,
        http: FhirHttp | None = None,
        *,
        max_pages: int,
        max_in_flight: int | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        new_pool: Callable[[], FhirHttp] | None = None,
        breaker: BreakerPolicy | None = None,
        max_origins: int = 64,
    ) -> None:
        """`max_in_flight`: most requests open at once *per FHIR origin* (None: the pool decides).

        The limit is kept here rather than left to the pool, so that a request waiting its turn
        waits inside the call's deadline, where the breaker and the budget see it (the pool,
        `fhir_http.FhirHttp`, holds as many connections as this lets be in flight).

        `new_pool` makes each origin's connection pool (the service: one per origin, kept and
        reused); without it every origin shares `http` (the CLI, unit tests), still with slots and
        a breaker of its own. At most `max_origins` origins are kept; the least recently used idle
        one goes first (a hostile `fhirServer` per call must not grow the table without end).
        """
        if http is None and new_pool is None:
            raise ValueError("give a shared client (http) or a pool factory (new_pool)")
        self._http = http
        self._new_pool = new_pool
        self._max_pages = max_pages
        self._max_in_flight = max_in_flight
        self._max_response_bytes = max_response_bytes
        self._breaker = breaker or BreakerPolicy()
        self._max_origins = max_origins
        self._origins: OrderedDict[tuple[str, str, int | None], _Origin] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def _origin_of(self, url: str) -> _Origin:
        key = _origin(url)
        if key is None:
            raise FhirFetchError("the FHIR server URL or a next link is not a valid URL")
        origin = self._origins.get(key)
        if origin is not None:
            self._origins.move_to_end(key)
            return origin
        owned = self._new_pool is not None
        origin = _Origin(
            name=f"{key[0]}://{key[1]}:{key[2]}",
            http=self._new_pool() if self._new_pool is not None else self._http,  # type: ignore[arg-type]
            owned=owned,
            slots=asyncio.Semaphore(self._max_in_flight) if self._max_in_flight else contextlib.nullcontext(),
            _policy=self._breaker,
        )
        self._origins[key] = origin
        if len(self._origins) > self._max_origins:
            for old_key, old in list(self._origins.items()):
                if old.in_flight == 0 and old is not origin:
                    del self._origins[old_key]
                    if old.owned:
                        task = asyncio.ensure_future(old.http.aclose())
                        self._closing.add(task)
                        task.add_done_callback(self._closing.discard)
                    break
        return origin

    async def aclose(self) -> None:
        """Close every pool this client made (not a shared `http`, which its owner closes)."""
        origins, self._origins = list(self._origins.values()), OrderedDict()
        for origin in origins:
            if origin.owned:
                await origin.http.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def get(
        self, base_url: str, relative_url: str, token: str | None, *, budget: CallBudget | None = None
    ) -> FetchResult:
        """Run a read (`Patient/123`) or a search (`Observation?...`) and collect every page."""
        rtype = metrics.resource_type_of(relative_url)
        started = asyncio.get_running_loop().time()
        try:
            result = await self._get(base_url, relative_url, token, budget, rtype)
        except FhirFetchError as exc:
            metrics.FHIR_FAILURES.labels(rtype, metrics.one_of(exc.issue_code, metrics.FETCH_FAILURES)).inc()
            raise
        metrics.FHIR_FETCH.labels(rtype).observe(asyncio.get_running_loop().time() - started)
        return result

    async def _get(
        self, base_url: str, relative_url: str, token: str | None, budget: CallBudget | None, rtype: str
    ) -> FetchResult:
        url = f"{base_url.rstrip('/')}/{relative_url.lstrip('/')}"
        body = await self._get_json(url, token, read="?" not in relative_url, budget=budget, rtype=rtype)
        if body is None:  # read of a resource that does not exist: "nothing found", not an error
            return FetchResult([], 1)
        if body.get("resourceType") == "Bundle":
            return await self.complete_bundle(
                base_url, body, token, first_url=url, budget=budget, rtype=rtype
            )
        if body.get("resourceType") == "OperationOutcome":
            raise FhirFetchError("FHIR server answered with an OperationOutcome")
        return FetchResult([body], 1)

    async def complete_bundle(
        self,
        base_url: str,
        bundle: Mapping[str, Any],
        token: str | None,
        *,
        first_url: str | None = None,
        budget: CallBudget | None = None,
        rtype: str = "other",
    ) -> FetchResult:
        """The entries of a searchset Bundle and of all its `next` pages (`rtype`: for metrics)."""
        resources = list(resources_from_bundle(bundle))
        _raise_on_error_outcome(bundle)
        seen = {first_url} if first_url else set()
        pages = 1
        next_url = _next_link(bundle)
        while next_url:
            try:
                absolute = urljoin(base_url.rstrip("/") + "/", next_url)
            except ValueError:  # e.g. an unclosed IPv6 bracket
                raise FhirFetchError("a next link is not a valid URL; not followed") from None
            origin = _origin(absolute)
            if origin is None or origin != _origin(base_url):
                raise FhirFetchError("a next link points outside the FHIR server; not followed")
            if absolute in seen:
                raise FhirFetchError("the FHIR server's next links loop")
            if pages >= self._max_pages:
                raise FhirFetchError(f"more than {self._max_pages} pages of results")
            seen.add(absolute)
            page = await self._get_json(absolute, token, read=False, budget=budget, rtype=rtype)
            if page is None or page.get("resourceType") != "Bundle":
                raise FhirFetchError("a next page is not a Bundle")
            _raise_on_error_outcome(page)
            resources.extend(resources_from_bundle(page))
            pages += 1
            next_url = _next_link(page)
        return FetchResult(resources, pages)

    async def _get_json(
        self, url: str, token: str | None, *, read: bool, budget: CallBudget | None, rtype: str = "other"
    ) -> dict[str, Any] | None:
        """One answer, streamed under the caps and parsed, all before the call's deadline."""
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if budget is None:
            return await self._fetch(url, headers, read, None, rtype)
        if budget.remaining() <= 0:
            raise budget.timed_out()
        try:
            async with asyncio.timeout_at(budget.deadline):
                return await self._fetch(url, headers, read, budget, rtype)
        except TimeoutError:
            raise budget.timed_out() from None

    async def _fetch(
        self, url: str, headers: dict[str, str], read: bool, budget: CallBudget | None, rtype: str
    ) -> dict[str, Any] | None:
        origin = self._origin_of(url)
        loop = asyncio.get_running_loop()
        origin.check(loop.time(), take_probe=False)  # open: fail now, not after waiting for a slot
        async with origin.slots:
            probe = origin.check(loop.time())  # it may have opened while this waited for a slot
            origin.in_flight += 1
            verdict: str | None = None  # why the origin failed; "" when it answered
            try:
                content = await self._exchange(origin.http, url, headers, read, budget)
                verdict = ""
            except FhirFetchError as exc:
                verdict = exc.reason if _origin_failure(exc) else ""
                raise
            except asyncio.CancelledError:
                # Cut off by the call's deadline while the server had not answered: a timeout.
                if budget is not None and budget.remaining() <= 0:
                    verdict = "no answer within the budget"
                raise
            finally:
                origin.in_flight -= 1
                if verdict:
                    origin.failed(loop.time(), verdict, budget)
                elif verdict == "":
                    origin.succeeded()
                elif probe:
                    origin.probing = False  # cancelled for another reason: another request may probe
        if content is None:
            return None
        metrics.FHIR_BYTES.labels(rtype).observe(len(content))
        # Parsed after the connection went back to the pool. A large answer in a thread: the event
        # loop (and with it every deadline of this worker) keeps running meanwhile.
        if len(content) <= INLINE_PARSE_BYTES:
            return parse_resource(content)
        return await asyncio.to_thread(parse_resource, content)

    async def _exchange(
        self,
        http: FhirHttp,
        url: str,
        headers: dict[str, str],
        read: bool,
        budget: CallBudget | None,
    ) -> bytearray | None:
        """The request and its body (None: a read answered 404), every failure a FhirFetchError."""
        try:
            response = await http.fetch(url, headers)
            try:
                if response.status_code == 404 and read:
                    return None  # a read of a resource that does not exist: the same as a null prefetch
                if response.status_code in (401, 403):
                    raise FhirFetchError(
                        f"FHIR server refused access (HTTP {response.status_code})",
                        status=response.status_code,
                    )
                if not response.is_success:  # 3xx too: redirects are not followed
                    raise FhirFetchError(
                        f"FHIR server error (HTTP {response.status_code})", status=response.status_code
                    )
                return await self._read_body(response, budget)
            finally:
                await response.aclose()  # an answer not read to its end closes its connection
        except httpx.TimeoutException as exc:
            raise FhirFetchError("FHIR server timed out", issue_code="timeout") from exc
        except httpx.HTTPError as exc:
            raise FhirFetchError(f"FHIR server unreachable ({type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:  # not an HTTPError; its message quotes the URL
            raise FhirFetchError("the FHIR server URL or a next link is not a valid URL") from exc

    async def _read_body(self, response: httpx.Response, budget: CallBudget | None) -> bytearray:
        """The body, read chunk by chunk and stopped at the caps: never more than the cap in memory."""
        limit = self._max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        # One growing buffer, parsed as it is (no joined copy: half the peak of a list of chunks).
        content = bytearray()
        # Decoded bytes (gzip included) are counted: a small compressed answer can be a large one.
        async for chunk in response.aiter_bytes():
            if len(content) + len(chunk) > limit:
                raise _too_large(limit)
            if budget is not None:
                budget.spend(len(chunk))
            content += chunk
        return content


def _origin_failure(exc: FhirFetchError) -> bool:
    """Whether a failure says the origin is failing (what opens its circuit), rather than this
    request: no answer in time, no connection, a 5xx or 429. A 401, a 404 or an answer too large or
    not FHIR come from a server that works."""
    if exc.status is not None:
        return exc.status >= 500 or exc.status == 429
    return exc.issue_code == "timeout" or exc.reason.startswith("FHIR server unreachable")


def _too_large(limit: int) -> FhirFetchError:
    return FhirFetchError(
        f"the FHIR server's answer is larger than {limit} bytes (ALS_CDS_FHIR_MAX_RESPONSE_BYTES); "
        "not read further",
        issue_code="too-costly",
    )


def parse_resource(content: bytes | bytearray) -> dict[str, Any]:
    """A FHIR server's answer as a resource: a Bundle's entries left in their bytes when it is large.

    Raises FhirFetchError when it is not JSON, or not a JSON object with a `resourceType`.
    """
    try:
        small = len(content) <= INLINE_PARSE_BYTES
        body = _DECODER.decode(content) if small else decode_bundle_lazily(content)
    except (msgspec.DecodeError, RecursionError):
        # msgspec refuses what JSON forbids but servers send (NaN, 1e999); Python's json reads
        # them, so that such a defect costs a field (the reader's rule), not the whole key. Only
        # for UTF-8 text that starts as an object: json.loads of binary garbage first guesses its
        # encoding and builds megabytes of text (seen: 5 MB of garbage per key, +140 MB).
        try:
            text = content.decode("utf-8-sig")
            if not text.lstrip().startswith("{"):
                raise ValueError("not a JSON object")
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; deep nesting
            raise FhirFetchError("FHIR server answered with something that is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirFetchError("FHIR server answered with JSON that is not a FHIR resource")
    return body


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _raise_on_error_outcome(bundle: Mapping[str, Any]) -> None:
    """A search-outcome entry with an error means the search did not run as asked."""
    entries = bundle.get("entry")
    # On the event loop, over every entry of a page that may hold thousands: exact type checks
    # first (an isinstance check against the Mapping ABC costs a microsecond each).
    for entry in entries if isinstance(entries, list) else ():
        if type(entry) is not dict and not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if type(resource) is LazyResource:
            if resource.resource_type != "OperationOutcome":
                continue
        elif not isinstance(resource, Mapping) or resource.get("resourceType") != "OperationOutcome":
            continue
        if operation_outcome_is_error(resource):
            raise FhirFetchError("the search reported an error (OperationOutcome)")


def operation_outcome_is_error(outcome: Mapping[str, Any]) -> bool:
    """Epic reports "no results" as an OperationOutcome with severity information: not an error."""
    issues = outcome.get("issue")
    return any(
        isinstance(issue, Mapping) and issue.get("severity") in ("error", "fatal")
        for issue in (issues if isinstance(issues, list) else ())
    )


def new_http_client(*, max_connections: int, timeout_seconds: float) -> FhirHttp:
    """Connections for one FHIR origin (the service) or for all (the CLI), at most
    `max_connections` open (fhir_http.py: a tenth of httpx's CPU a request). Redirects are not
    followed: a redirect could leave the origin."""
    return FhirHttp(max_connections=max_connections, timeout_seconds=timeout_seconds)
