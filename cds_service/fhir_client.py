"""Reads and searches against the EHR's FHIR server, for prefetch keys the EHR did not fill.

One `httpx.AsyncClient` is shared by the whole process (connection pooling matters at EHR call
rates); this module adds what FHIR needs on top of it:

* the access token goes only to the `fhirServer` origin: a `next` link that points anywhere else is
  not followed, so a hostile or misconfigured server cannot make us send the token elsewhere;
* paging follows `next` links up to a page cap and refuses a link it has already seen (loops);
* every failure becomes a `FhirFetchError` whose message is safe to log and to return: it names
  the kind of failure and the HTTP status, never the URL (which carries the patient id) or the token.

Time limits are the caller's: `prefetch.py` runs all fetches of one hook call under one budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from cds_service.reader import resources_from_bundle

FHIR_JSON = "application/fhir+json"

# httpx logs every request line at INFO, and our request lines carry the patient id
# (`Observation?patient=...`). Its loggers are held at WARNING whatever the logging configuration,
# so that no deployment can leak patient ids into logs by turning on INFO.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class FhirFetchError(Exception):
    """A fetch that did not yield usable FHIR data. `reason` is free of PHI and secrets.

    `issue_code` is the FHIR OperationOutcome issue type the failure maps to: `security` when the
    server refused the token, `timeout` when it did not answer, `incomplete` otherwise.
    """

    def __init__(self, reason: str, *, status: int | None = None, issue_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.issue_code = issue_code or ("security" if status in (401, 403) else "incomplete")


@dataclass(frozen=True)
class FetchResult:
    resources: list[Mapping[str, Any]]
    pages: int


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of `url`; None when it has no valid origin (e.g. port out of range)."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


class FhirClient:
    def __init__(self, http: httpx.AsyncClient, *, max_pages: int, max_in_flight: int | None = None) -> None:
        """`max_in_flight`: most requests this process has open at once (None: the pool decides).

        The limit is kept here rather than left to the pool: httpcore's pool rescans all its
        connections and queued requests on every request start and finish, so its CPU cost per
        request grows with what it holds (1.3 ms at 1 in flight, 5-7 ms at 40, on the development
        machine; docs/performance.md). Waiting here keeps its queue empty and its scans short.
        """
        self._http = http
        self._max_pages = max_pages
        self._slots: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(max_in_flight) if max_in_flight else contextlib.nullcontext()
        )

    async def get(self, base_url: str, relative_url: str, token: str | None) -> FetchResult:
        """Run a read (`Patient/123`) or a search (`Observation?...`) and collect every page."""
        url = f"{base_url.rstrip('/')}/{relative_url.lstrip('/')}"
        body = await self._get_json(url, token, read="?" not in relative_url)
        if body is None:  # read of a resource that does not exist: "nothing found", not an error
            return FetchResult([], 1)
        if body.get("resourceType") == "Bundle":
            return await self.complete_bundle(base_url, body, token, first_url=url)
        if body.get("resourceType") == "OperationOutcome":
            raise FhirFetchError("FHIR server answered with an OperationOutcome")
        return FetchResult([body], 1)

    async def complete_bundle(
        self, base_url: str, bundle: Mapping[str, Any], token: str | None, *, first_url: str | None = None
    ) -> FetchResult:
        """The entries of a searchset Bundle and of all its `next` pages."""
        resources = list(resources_from_bundle(bundle))
        _raise_on_error_outcome(bundle)
        seen = {first_url} if first_url else set()
        pages = 1
        next_url = _next_link(bundle)
        while next_url:
            absolute = urljoin(base_url.rstrip("/") + "/", next_url)
            origin = _origin(absolute)
            if origin is None or origin != _origin(base_url):
                raise FhirFetchError("a next link points outside the FHIR server; not followed")
            if absolute in seen:
                raise FhirFetchError("the FHIR server's next links loop")
            if pages >= self._max_pages:
                raise FhirFetchError(f"more than {self._max_pages} pages of results")
            seen.add(absolute)
            page = await self._get_json(absolute, token, read=False)
            if page is None or page.get("resourceType") != "Bundle":
                raise FhirFetchError("a next page is not a Bundle")
            _raise_on_error_outcome(page)
            resources.extend(resources_from_bundle(page))
            pages += 1
            next_url = _next_link(page)
        return FetchResult(resources, pages)

    async def _get_json(self, url: str, token: str | None, *, read: bool) -> dict[str, Any] | None:
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._slots:
                response = await self._http.get(url, headers=headers)
        except httpx.TimeoutException as exc:
            raise FhirFetchError("FHIR server timed out", issue_code="timeout") from exc
        except httpx.HTTPError as exc:
            raise FhirFetchError(f"FHIR server unreachable ({type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:  # not an HTTPError; its message quotes the URL
            raise FhirFetchError("the FHIR server URL or a next link is not a valid URL") from exc
        if response.status_code == 404 and read:
            return None  # a read of a resource that does not exist: the same as a null prefetch
        if response.status_code in (401, 403):
            raise FhirFetchError(
                f"FHIR server refused access (HTTP {response.status_code})", status=response.status_code
            )
        if not response.is_success:  # 3xx too: redirects are not followed, their body is not the answer
            raise FhirFetchError(
                f"FHIR server error (HTTP {response.status_code})", status=response.status_code
            )
        try:
            body = response.json()
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
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if (
            isinstance(resource, Mapping)
            and resource.get("resourceType") == "OperationOutcome"
            and operation_outcome_is_error(resource)
        ):
            raise FhirFetchError("the search reported an error (OperationOutcome)")


def operation_outcome_is_error(outcome: Mapping[str, Any]) -> bool:
    """Epic reports "no results" as an OperationOutcome with severity information: not an error."""
    issues = outcome.get("issue")
    return any(
        isinstance(issue, Mapping) and issue.get("severity") in ("error", "fatal")
        for issue in (issues if isinstance(issues, list) else ())
    )


def new_http_client(*, max_connections: int, timeout_seconds: float) -> httpx.AsyncClient:
    """The process-wide client. Redirects are not followed: a redirect could leave the origin."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
        headers={"User-Agent": "als-cds"},
    )
