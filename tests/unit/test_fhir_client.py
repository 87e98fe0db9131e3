"""FhirClient: reads, searches, paging and every way a FHIR server can fail, against a mocked server.

The FHIR server is mocked with respx at https://ehr.example.org/fhir. respx refuses any request that
no route matches, so a request the client should not have made fails the test even where it is not
asserted on explicitly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from cds_service.fhir_client import (
    FHIR_JSON,
    BreakerPolicy,
    CallBudget,
    FetchResult,
    FhirClient,
    FhirFetchError,
    new_http_client,
)
from cds_service.logs import JsonFormatter
from cds_service.reader.lazy import LazyResource, materialise

BASE = "https://ehr.example.org/fhir"
ORIGIN = ("https", "ehr.example.org", 443)
EVIL = "https://evil.example.com"
#: Distinctive values that must never surface in an error message.
PID = "pid-zq8x7-4711"
TOKEN = "tok-SECRET-9f8e7d6c5b4a"

OBS_URL = f"{BASE}/Observation?patient={PID}"


# --------------------------------------------------------------------------------------------
# Helpers and fixtures


def patient(pid: str = PID) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def observation(oid: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{PID}"},
    }


def outcome(severity: str, code: str = "informational") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": "No results were found."}],
    }


def bundle(*resources: dict[str, Any], next_url: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
        **extra,
    }
    if next_url is not None:
        body["link"] = [{"relation": "self", "url": "ignored"}, {"relation": "next", "url": next_url}]
    return body


def ids(result: FetchResult) -> list[str]:
    return [r["id"] for r in result.resources]


def origin_of(request: httpx.Request) -> tuple[str, str, int]:
    url = request.url
    return (url.scheme, url.host, url.port or {"https": 443, "http": 80}[url.scheme])


@pytest.fixture
def server() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client(max_connections=10, timeout_seconds=5) as client:
        yield client


@pytest.fixture
def fhir(http: httpx.AsyncClient) -> FhirClient:
    return FhirClient(http, max_pages=5)


# --------------------------------------------------------------------------------------------
# Reads


async def test_read_returns_the_resource(server: respx.MockRouter, fhir: FhirClient) -> None:
    route = server.get(f"{BASE}/Patient/{PID}").respond(200, json=patient())

    result = await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    assert result.resources == [patient()]
    assert result.pages == 1
    assert route.call_count == 1


async def test_read_tolerates_a_trailing_slash_on_the_base_and_a_leading_slash_on_the_path(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    route = server.get(f"{BASE}/Patient/{PID}").respond(200, json=patient())

    result = await fhir.get(BASE + "/", f"/Patient/{PID}", TOKEN)

    assert ids(result) == [PID]
    assert route.call_count == 1


async def test_read_answering_404_yields_no_resources_like_a_null_prefetch(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    route = server.get(f"{BASE}/Patient/{PID}").respond(404, json=outcome("error", "not-found"))

    result = await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    assert result.resources == []
    assert route.call_count == 1


async def test_search_answering_404_raises(server: respx.MockRouter, fhir: FhirClient) -> None:
    server.get(OBS_URL).respond(404, json=outcome("error", "not-found"))

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert caught.value.status == 404
    assert "404" in caught.value.reason


async def test_a_top_level_operation_outcome_answer_raises(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    server.get(f"{BASE}/Patient/{PID}").respond(200, json=outcome("error", "processing"))

    with pytest.raises(FhirFetchError, match="OperationOutcome"):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)


# --------------------------------------------------------------------------------------------
# Search Bundles


async def test_search_returns_the_bundle_entries(server: respx.MockRouter, fhir: FhirClient) -> None:
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), observation("o2"), total=2))

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert ids(result) == ["o1", "o2"]
    assert result.pages == 1


async def test_search_entries_with_mode_outcome_are_not_data(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    body = bundle(observation("o1"))
    body["entry"].append({"resource": outcome("warning"), "search": {"mode": "outcome"}})
    server.get(OBS_URL).respond(200, json=body)

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert ids(result) == ["o1"]


async def test_search_empty_bundle_yields_no_resources(server: respx.MockRouter, fhir: FhirClient) -> None:
    server.get(OBS_URL).respond(200, json={"resourceType": "Bundle", "type": "searchset", "total": 0})

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert result.resources == []
    assert result.pages == 1


@pytest.mark.parametrize("severity", ["error", "fatal"])
@pytest.mark.parametrize("mode", ["outcome", "match", None])
async def test_search_with_an_error_operation_outcome_entry_raises(
    server: respx.MockRouter, fhir: FhirClient, severity: str, mode: str | None
) -> None:
    body = bundle(observation("o1"))
    entry: dict[str, Any] = {"resource": outcome(severity, "processing")}
    if mode is not None:
        entry["search"] = {"mode": mode}
    body["entry"].append(entry)
    server.get(OBS_URL).respond(200, json=body)

    with pytest.raises(FhirFetchError, match="OperationOutcome"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)


@pytest.mark.parametrize("severity", ["information", "warning"])
async def test_search_with_an_informational_operation_outcome_entry_is_epics_no_results(
    server: respx.MockRouter, fhir: FhirClient, severity: str
) -> None:
    epic_no_results = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [{"resource": outcome(severity), "search": {"mode": "outcome"}}],
    }
    server.get(OBS_URL).respond(200, json=epic_no_results)

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert result.resources == []


# --------------------------------------------------------------------------------------------
# Paging


async def test_paging_follows_absolute_and_relative_next_links_and_counts_pages(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    page2_url = f"{OBS_URL}&page=2"  # absolute
    page3_url = f"{OBS_URL}&page=3"
    first = server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=page2_url))
    second = server.get(page2_url).respond(
        200,
        json=bundle(observation("o2"), next_url=f"Observation?patient={PID}&page=3"),  # relative to base
    )
    third = server.get(page3_url).respond(
        200,
        json=bundle(observation("o3"), next_url=f"/fhir/Observation?patient={PID}&page=4"),  # host-relative
    )
    fourth = server.get(f"{OBS_URL}&page=4").respond(200, json=bundle(observation("o4")))

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert ids(result) == ["o1", "o2", "o3", "o4"]
    assert result.pages == 4
    assert [first.call_count, second.call_count, third.call_count, fourth.call_count] == [1, 1, 1, 1]


async def test_paging_sends_the_token_and_accept_header_on_every_page(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    server.get(f"{OBS_URL}&page=2").respond(200, json=bundle(observation("o2")))

    await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert len(server.calls) == 2
    for call in server.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.request.headers["Accept"] == FHIR_JSON


async def test_paging_stops_with_an_error_beyond_max_pages(
    server: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    fhir = FhirClient(http, max_pages=2)
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    server.get(f"{OBS_URL}&page=2").respond(200, json=bundle(observation("o2"), next_url=f"{OBS_URL}&page=3"))
    third = server.get(f"{OBS_URL}&page=3").respond(200, json=bundle(observation("o3")))

    with pytest.raises(FhirFetchError, match="more than 2 pages"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert not third.called
    assert len(server.calls) == 2


async def test_paging_up_to_exactly_max_pages_succeeds(
    server: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    fhir = FhirClient(http, max_pages=2)
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    server.get(f"{OBS_URL}&page=2").respond(200, json=bundle(observation("o2")))

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert ids(result) == ["o1", "o2"]
    assert result.pages == 2


async def test_a_next_link_back_to_the_first_page_is_a_loop(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    first = server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    second = server.get(f"{OBS_URL}&page=2").respond(200, json=bundle(observation("o2"), next_url=OBS_URL))

    with pytest.raises(FhirFetchError, match="loop"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert first.call_count == 1
    assert second.call_count == 1


async def test_a_next_link_to_itself_is_a_loop(server: respx.MockRouter, fhir: FhirClient) -> None:
    page2_url = f"{OBS_URL}&page=2"
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=page2_url))
    second = server.get(page2_url).respond(200, json=bundle(observation("o2"), next_url=page2_url))

    with pytest.raises(FhirFetchError, match="loop"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert second.call_count == 1


async def test_a_next_page_that_is_not_a_bundle_raises(server: respx.MockRouter, fhir: FhirClient) -> None:
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    server.get(f"{OBS_URL}&page=2").respond(200, json=patient())

    with pytest.raises(FhirFetchError, match="not a Bundle"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)


async def test_a_next_page_with_an_error_outcome_raises(server: respx.MockRouter, fhir: FhirClient) -> None:
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    page2 = bundle(observation("o2"))
    page2["entry"].append({"resource": outcome("fatal", "exception"), "search": {"mode": "outcome"}})
    server.get(f"{OBS_URL}&page=2").respond(200, json=page2)

    with pytest.raises(FhirFetchError, match="OperationOutcome"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)


async def test_a_failing_next_page_raises_with_its_status(server: respx.MockRouter, fhir: FhirClient) -> None:
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2"))
    server.get(f"{OBS_URL}&page=2").respond(500)

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert caught.value.status == 500


OFF_ORIGIN_NEXT_LINKS = {
    "other host": f"{EVIL}/fhir/Observation?page=2",
    "other scheme": f"http://ehr.example.org/fhir/Observation?patient={PID}&page=2",
    "other port": f"https://ehr.example.org:8443/fhir/Observation?patient={PID}&page=2",
    "scheme-relative": "//evil.example.com/fhir/Observation?page=2",
    "userinfo trick": "https://ehr.example.org@evil.example.com/fhir/Observation?page=2",
    "lookalike host": "https://ehr.example.org.evil.example.com/fhir/Observation?page=2",
    "port out of range": f"https://ehr.example.org:99999/fhir/Observation?patient={PID}&page=2",
}


@pytest.mark.parametrize("next_url", OFF_ORIGIN_NEXT_LINKS.values(), ids=OFF_ORIGIN_NEXT_LINKS.keys())
async def test_a_next_link_outside_the_fhir_server_origin_is_not_requested(
    server: respx.MockRouter, fhir: FhirClient, next_url: str
) -> None:
    first = server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=next_url))
    # Added last, so it answers any request but the first page: wherever the next link points.
    elsewhere = server.route().respond(200, json=bundle(observation("x")))

    with pytest.raises(FhirFetchError, match="outside the FHIR server"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert first.call_count == 1
    assert not elsewhere.called
    assert len(server.calls) == 1


@pytest.mark.parametrize("next_url", ["https://[::1/fhir/Observation?page=2", "//[bad/fhir?page=2"])
async def test_a_next_link_that_is_not_a_url_is_a_fetch_error_not_a_crash(
    server: respx.MockRouter, fhir: FhirClient, next_url: str
) -> None:
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=next_url))
    elsewhere = server.route().respond(200, json=bundle(observation("x")))

    with pytest.raises(FhirFetchError, match="not a valid URL"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)
    assert not elsewhere.called


async def test_the_token_is_only_ever_sent_to_the_fhir_server_origin(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    """Across every kind of next link, each request that left carried the token only to the origin."""
    starts = []
    for i, next_url in enumerate(OFF_ORIGIN_NEXT_LINKS.values()):
        server.get(f"{OBS_URL}&case={i}").respond(200, json=bundle(observation("o1"), next_url=next_url))
        starts.append(f"Observation?patient={PID}&case={i}")
    catch_all = server.route().respond(200, json=bundle())  # added last: answers only what nothing else does

    for relative_url in starts:
        with pytest.raises(FhirFetchError):
            await fhir.get(BASE, relative_url, TOKEN)

    assert len(server.calls) == len(OFF_ORIGIN_NEXT_LINKS)
    for call in server.calls:
        assert origin_of(call.request) == ORIGIN
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert not catch_all.called


async def test_a_next_link_that_is_not_a_valid_url_raises_a_fetch_error(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    server.get(OBS_URL).respond(
        200, json=bundle(observation("o1"), next_url=f"Observation?patient={PID}\x00&p=2")
    )

    with pytest.raises(FhirFetchError):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert len(server.calls) == 1


async def test_complete_bundle_follows_the_pages_of_a_prefetched_bundle(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    prefetched = bundle(observation("o1"), next_url=f"{OBS_URL}&page=2")
    route = server.get(f"{OBS_URL}&page=2").respond(200, json=bundle(observation("o2")))

    result = await fhir.complete_bundle(BASE, prefetched, TOKEN)

    assert ids(result) == ["o1", "o2"]
    assert result.pages == 2
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


# --------------------------------------------------------------------------------------------
# Headers


async def test_bearer_token_and_fhir_json_accept_header_are_sent(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    route = server.get(f"{BASE}/Patient/{PID}").respond(200, json=patient())

    await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/fhir+json"


@pytest.mark.parametrize("token", [None, ""])
async def test_no_authorization_header_without_a_token(
    server: respx.MockRouter, fhir: FhirClient, token: str | None
) -> None:
    route = server.get(f"{BASE}/Patient/{PID}").respond(200, json=patient())

    await fhir.get(BASE, f"Patient/{PID}", token)

    request = route.calls.last.request
    assert "Authorization" not in request.headers
    assert request.headers["Accept"] == FHIR_JSON


# --------------------------------------------------------------------------------------------
# Failures


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_access_raises_with_the_status(
    server: respx.MockRouter, fhir: FhirClient, status: int
) -> None:
    server.get(f"{BASE}/Patient/{PID}").respond(status)

    with pytest.raises(FhirFetchError, match="refused access") as caught:
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    assert caught.value.status == status


@pytest.mark.parametrize("status", [400, 500, 502, 503])
async def test_server_errors_raise_with_the_status(
    server: respx.MockRouter, fhir: FhirClient, status: int
) -> None:
    server.get(OBS_URL).respond(status, json=outcome("error", "exception"))

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert caught.value.status == status
    assert str(status) in caught.value.reason


@pytest.mark.parametrize(
    "content",
    [
        b"<html><body>Service Unavailable</body></html>",
        b"",
        b'{"resourceType": "Patient"',
        b'{"id": "\xff\xfe"}',
    ],
    ids=["html", "empty", "truncated", "invalid-utf8"],
)
async def test_a_body_that_is_not_json_raises(
    server: respx.MockRouter, fhir: FhirClient, content: bytes
) -> None:
    server.get(f"{BASE}/Patient/{PID}").respond(200, content=content, headers={"Content-Type": FHIR_JSON})

    with pytest.raises(FhirFetchError, match="not JSON"):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)


async def test_a_pathologically_nested_json_body_raises_a_fetch_error(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    server.get(f"{BASE}/Patient/{PID}").respond(200, content=b"[" * 200_000 + b"]" * 200_000)

    with pytest.raises(FhirFetchError):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)


@pytest.mark.parametrize(
    "body",
    [[patient()], "Patient", 42, None, {"id": PID}, {"resourceType": 7}, {"resourceType": None}],
    ids=["list", "string", "number", "null", "no-resourceType", "numeric-resourceType", "null-resourceType"],
)
async def test_json_that_is_not_a_fhir_resource_raises(
    server: respx.MockRouter, fhir: FhirClient, body: Any
) -> None:
    server.get(f"{BASE}/Patient/{PID}").respond(200, content=json.dumps(body).encode())

    with pytest.raises(FhirFetchError, match="not a FHIR resource"):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)


@pytest.mark.parametrize(
    "timeout_error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout]
)
async def test_a_timeout_raises_with_a_timed_out_reason(
    server: respx.MockRouter, fhir: FhirClient, timeout_error: type[httpx.TimeoutException]
) -> None:
    server.get(f"{BASE}/Patient/{PID}").mock(side_effect=timeout_error)

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    assert "timed out" in caught.value.reason
    assert caught.value.status is None


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError])
async def test_an_unreachable_server_raises(
    server: respx.MockRouter, fhir: FhirClient, error: type[httpx.HTTPError]
) -> None:
    server.get(f"{BASE}/Patient/{PID}").mock(side_effect=error)

    with pytest.raises(FhirFetchError, match="unreachable") as caught:
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    assert "timed out" not in caught.value.reason


async def test_a_fhir_server_url_httpx_cannot_parse_raises_a_fetch_error(fhir: FhirClient) -> None:
    with respx.mock() as mock:  # no route: a request that left would fail the test
        with pytest.raises(FhirFetchError):
            await fhir.get("https://ehr.example.org/fh\x00ir", f"Patient/{PID}", TOKEN)
        assert len(mock.calls) == 0


# --------------------------------------------------------------------------------------------
# Redirects


async def test_a_redirect_to_another_host_is_not_followed() -> None:
    async with new_http_client(max_connections=2, timeout_seconds=2) as http:
        fhir = FhirClient(http, max_pages=5)
        with respx.mock(assert_all_called=False) as mock:
            mock.get(f"{BASE}/Patient/{PID}").respond(302, headers={"Location": f"{EVIL}/fhir/Patient/{PID}"})
            elsewhere = mock.get(f"{EVIL}/fhir/Patient/{PID}").respond(200, json=patient())

            with pytest.raises(FhirFetchError):
                await fhir.get(BASE, f"Patient/{PID}", TOKEN)

            assert not elsewhere.called
            assert len(mock.calls) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_carrying_a_json_resource_is_not_taken_as_the_answer(status: int) -> None:
    async with new_http_client(max_connections=2, timeout_seconds=2) as http:
        fhir = FhirClient(http, max_pages=5)
        with respx.mock(assert_all_called=False) as mock:
            mock.get(f"{BASE}/Patient/{PID}").respond(
                status, json=patient("someone-else"), headers={"Location": f"{EVIL}/fhir/Patient/{PID}"}
            )
            elsewhere = mock.get(f"{EVIL}/fhir/Patient/{PID}").respond(200, json=patient())

            with pytest.raises(FhirFetchError) as caught:
                await fhir.get(BASE, f"Patient/{PID}", TOKEN)

            assert caught.value.status == status
            assert not elsewhere.called


# --------------------------------------------------------------------------------------------
# Error messages are safe to log and to return


def _setup_status(status: int) -> Callable[[respx.MockRouter], None]:
    return lambda mock: mock.route(host="ehr.example.org").respond(status, json=outcome("error", "exception"))


def _setup_side_effect(error: type[Exception]) -> Callable[[respx.MockRouter], None]:
    return lambda mock: mock.route(host="ehr.example.org").mock(side_effect=error)


def _setup_body(**response: Any) -> Callable[[respx.MockRouter], None]:
    return lambda mock: mock.route(host="ehr.example.org").respond(200, **response)


def _setup_next(next_url: str, then: dict[str, Any] | None = None) -> Callable[[respx.MockRouter], None]:
    def setup(mock: respx.MockRouter) -> None:
        mock.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=next_url))
        mock.route().respond(200, json=then if then is not None else bundle(next_url=next_url))

    return setup


def _setup_redirect(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/Patient/{PID}").respond(302, headers={"Location": f"{EVIL}/Patient/{PID}?t={TOKEN}"})
    mock.route().respond(200, json=patient())


FAILURES: dict[str, tuple[Callable[[respx.MockRouter], None], str]] = {
    "401": (_setup_status(401), f"Patient/{PID}"),
    "403": (_setup_status(403), f"Patient/{PID}"),
    "search-404": (_setup_status(404), f"Observation?patient={PID}"),
    "500": (_setup_status(500), f"Observation?patient={PID}"),
    "503": (_setup_status(503), f"Patient/{PID}"),
    "read-timeout": (_setup_side_effect(httpx.ReadTimeout), f"Patient/{PID}"),
    "connect-timeout": (_setup_side_effect(httpx.ConnectTimeout), f"Patient/{PID}"),
    "connect-error": (_setup_side_effect(httpx.ConnectError), f"Patient/{PID}"),
    "not-json": (_setup_body(text=f"<html>no such patient {PID}</html>"), f"Patient/{PID}"),
    "not-a-resource": (_setup_body(json={"patient": PID}), f"Patient/{PID}"),
    "operation-outcome": (_setup_body(json=outcome("error", "processing")), f"Patient/{PID}"),
    "error-outcome-entry": (
        _setup_body(json={"resourceType": "Bundle", "entry": [{"resource": outcome("fatal")}]}),
        f"Observation?patient={PID}",
    ),
    "off-origin-next": (
        _setup_next(f"{EVIL}/Observation?patient={PID}&token={TOKEN}"),
        f"Observation?patient={PID}",
    ),
    "next-loop": (_setup_next(f"{OBS_URL}&page=2"), f"Observation?patient={PID}"),
    "next-not-a-bundle": (_setup_next(f"{OBS_URL}&page=2", then=patient()), f"Observation?patient={PID}"),
    "redirect": (_setup_redirect, f"Patient/{PID}"),
}


@pytest.mark.parametrize("case", FAILURES.keys())
async def test_no_error_message_names_the_patient_the_url_or_the_token(fhir: FhirClient, case: str) -> None:
    setup, relative_url = FAILURES[case]
    with respx.mock(assert_all_called=False) as mock:
        setup(mock)
        with pytest.raises(FhirFetchError) as caught:
            await fhir.get(BASE, relative_url, TOKEN)

    message = str(caught.value)
    assert message == caught.value.reason
    assert message  # says what went wrong
    for secret in (PID, TOKEN, "ehr.example.org", "evil.example.com", "/fhir", "Observation?", "Bearer"):
        assert secret not in message, f"{secret!r} leaked into {message!r}"


async def test_too_many_pages_message_names_no_patient_url_or_token(
    server: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    fhir = FhirClient(http, max_pages=1)
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{OBS_URL}&page=2&t={TOKEN}"))

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    message = str(caught.value)
    assert "more than 1 pages" in message
    for secret in (PID, TOKEN, "ehr.example.org"):
        assert secret not in message


# --------------------------------------------------------------------------------------------
# Requests in flight


@pytest.mark.parametrize("limit", [1, 3])
async def test_no_more_requests_are_in_flight_than_the_limit_and_the_rest_wait_their_turn(limit: int) -> None:
    in_flight, peak = 0, 0

    async def slow_patient(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json=patient(request.url.path.rsplit("/", 1)[-1]))

    async with new_http_client(max_connections=limit, timeout_seconds=5) as http:
        fhir = FhirClient(http, max_pages=5, max_in_flight=limit)
        with respx.mock() as mock:
            mock.get(url__regex=rf"^{BASE}/Patient/p\d+$").mock(side_effect=slow_patient)
            results = await asyncio.gather(*(fhir.get(BASE, f"Patient/p{i}", TOKEN) for i in range(8)))

    assert [r.resources[0]["id"] for r in results] == [f"p{i}" for i in range(8)]
    assert peak == limit


# --------------------------------------------------------------------------------------------
# Bounds: bytes per answer, bytes and time per call


def _stream(chunks: int, size: int, produced: list[int], pause: float = 0.0) -> Any:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            produced.append(size)
            if pause:
                await asyncio.sleep(pause)
            yield b" " * size

    return body()


async def test_an_answer_declaring_more_than_the_cap_is_refused_unread(server: respx.MockRouter) -> None:
    server.get(OBS_URL).respond(200, content=json.dumps(bundle(observation("o1"))).encode() + b" " * 20_000)

    async with new_http_client(max_connections=10, timeout_seconds=5) as http:
        fhir = FhirClient(http, max_pages=5, max_response_bytes=10_000)
        with pytest.raises(FhirFetchError) as caught:
            await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert caught.value.issue_code == "too-costly"
    assert "10000 bytes" in caught.value.reason
    assert PID not in caught.value.reason


async def test_an_answer_without_a_length_is_stopped_at_the_cap_while_it_streams(
    server: respx.MockRouter,
) -> None:
    produced: list[int] = []
    server.get(OBS_URL).mock(return_value=httpx.Response(200, content=_stream(1000, 4096, produced)))

    async with new_http_client(max_connections=10, timeout_seconds=5) as http:
        fhir = FhirClient(http, max_pages=5, max_response_bytes=40_000)
        with pytest.raises(FhirFetchError) as caught:
            await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert caught.value.issue_code == "too-costly"
    assert sum(produced) <= 40_000 + 4096  # stopped at the first chunk over the cap, not at 4 MB


async def test_the_answers_of_one_call_share_its_byte_budget(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    padding = {"meta": {"tag": [{"code": "x" * 6000}]}}
    server.get(OBS_URL).respond(200, json=bundle(observation("o1"), next_url=f"{BASE}/page2", **padding))
    server.get(f"{BASE}/page2").respond(200, json=bundle(observation("o2"), **padding))

    budget = CallBudget(5, max_bytes=10_000)
    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN, budget=budget)

    assert caught.value.issue_code == "too-costly"
    assert "10000 bytes" in caught.value.reason


async def test_the_budget_is_a_deadline_for_the_body_too_not_only_for_the_headers(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    produced: list[int] = []
    server.get(OBS_URL).mock(return_value=httpx.Response(200, content=_stream(100, 10, produced, pause=0.1)))

    budget = CallBudget(0.3)
    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN, budget=budget)

    assert caught.value.issue_code == "timeout"
    assert "0.3 s budget" in caught.value.reason
    assert len(produced) < 100  # cut off mid-body
    assert budget.remaining() > -1.0  # at the deadline, not after the whole body


async def test_no_request_is_made_once_the_budget_has_run_out(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    route = server.get(f"{BASE}/Patient/{PID}").respond(200, json=patient())
    budget = CallBudget(0.01)
    await asyncio.sleep(0.02)

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Patient/{PID}", TOKEN, budget=budget)

    assert caught.value.issue_code == "timeout"
    assert route.call_count == 0


async def test_a_large_page_keeps_its_entries_in_their_bytes_and_reads_the_same(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    many = [observation(f"o{i}") for i in range(1000)]  # some 130 kB: parsed in a thread
    server.get(OBS_URL).respond(200, json=bundle(*many))

    result = await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)

    assert all(isinstance(r, LazyResource) for r in result.resources)
    assert [materialise(r) for r in result.resources] == many


@pytest.mark.parametrize(
    "content", [b"[" * 200_000 + b"]" * 200_000, b"{" + b" " * 100_000, b"\xff" * 70_000]
)
async def test_a_large_answer_that_is_not_json_raises_a_fetch_error(
    server: respx.MockRouter, fhir: FhirClient, content: bytes
) -> None:
    server.get(OBS_URL).respond(200, content=content)

    with pytest.raises(FhirFetchError, match="not JSON"):
        await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)


# --------------------------------------------------------------------------------------------
# Isolation: a pool, slots and a circuit breaker per FHIR origin

OTHER = "https://other-ehr.example.net/fhir"


async def test_a_hanging_origin_holds_only_its_own_slots(server: respx.MockRouter) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("never answered")

    server.get(url__startswith=BASE).mock(side_effect=hang)
    healthy = server.get(f"{OTHER}/Patient/{PID}").respond(200, json=patient())
    async with new_http_client(max_connections=10, timeout_seconds=5) as http:
        fhir = FhirClient(http, max_pages=5, max_in_flight=2)
        hanging = [
            asyncio.ensure_future(fhir.get(BASE, f"Patient/p{i}", TOKEN, budget=CallBudget(1.0)))
            for i in range(6)
        ]
        await asyncio.sleep(0.05)  # every slot of the hanging origin is taken, the rest queue

        result = await fhir.get(OTHER, f"Patient/{PID}", TOKEN, budget=CallBudget(0.5))

        assert ids(result) == [PID]
        assert healthy.call_count == 1
        outcomes = await asyncio.gather(*hanging, return_exceptions=True)
    assert {type(o) for o in outcomes} == {FhirFetchError}
    assert {o.issue_code for o in outcomes if isinstance(o, FhirFetchError)} == {"timeout"}


async def test_each_origin_gets_a_pool_of_its_own_reused_across_calls(server: respx.MockRouter) -> None:
    server.get(url__startswith=BASE).respond(200, json=patient())
    server.get(url__startswith=OTHER).respond(200, json=patient())
    made: list[httpx.AsyncClient] = []

    def new_pool() -> httpx.AsyncClient:
        made.append(new_http_client(max_connections=4, timeout_seconds=5))
        return made[-1]

    fhir = FhirClient(new_pool=new_pool, max_pages=5, max_in_flight=4)
    for _ in range(3):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)
        await fhir.get(OTHER + "/", f"Patient/{PID}", TOKEN)
    assert len(made) == 2

    await fhir.aclose()
    assert all(pool.is_closed for pool in made)


async def test_the_least_recently_used_idle_origin_goes_beyond_the_table_size(
    server: respx.MockRouter,
) -> None:
    server.get(url__regex=r"^https://ehr\d\.example\.org/").respond(200, json=patient())
    made: list[httpx.AsyncClient] = []

    def new_pool() -> httpx.AsyncClient:
        made.append(new_http_client(max_connections=10, timeout_seconds=5))
        return made[-1]

    fhir = FhirClient(new_pool=new_pool, max_pages=5, max_origins=2)
    for n in (1, 2, 1, 3):
        await fhir.get(f"https://ehr{n}.example.org/fhir", "Patient/x", TOKEN)
    await asyncio.sleep(0)  # the evicted pool closes in the background

    assert made[1].is_closed  # ehr2, the least recently used
    assert not made[0].is_closed and not made[2].is_closed
    await fhir.aclose()


def _breaker_client(http: httpx.AsyncClient) -> FhirClient:
    return FhirClient(http, max_pages=5, breaker=BreakerPolicy(failures=3, open_seconds=0.3))


async def test_after_failures_in_a_row_the_circuit_opens_and_keys_fail_at_once(
    server: respx.MockRouter, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    route = server.get(url__startswith=BASE).respond(503)
    fhir = _breaker_client(http)
    for _ in range(3):
        with pytest.raises(FhirFetchError):
            await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    with pytest.raises(FhirFetchError) as caught:
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)

    assert route.call_count == 3  # the fourth was not sent
    assert caught.value.issue_code == "transient"
    assert "circuit open" in caught.value.reason
    opened = [r for r in caplog.records if r.getMessage() == "FHIR server failing: circuit opened"]
    assert len(opened) == 1
    assert opened[0].fhir_origin == "https://ehr.example.org:443"  # type: ignore[attr-defined]
    line = JsonFormatter().format(opened[0])  # the line as the service writes it
    assert PID not in line and TOKEN not in line and "/fhir" not in line


async def test_an_open_circuit_lets_one_probe_through_and_an_answer_closes_it(
    server: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = server.get(url__startswith=BASE)
    route.respond(503)
    fhir = _breaker_client(http)
    for _ in range(3):
        with pytest.raises(FhirFetchError):
            await fhir.get(BASE, f"Patient/{PID}", TOKEN)
    await asyncio.sleep(0.35)
    route.respond(200, json=patient())

    assert ids(await fhir.get(BASE, f"Patient/{PID}", TOKEN)) == [PID]
    assert ids(await fhir.get(BASE, f"Patient/{PID}", TOKEN)) == [PID]
    assert route.call_count == 5


async def test_a_failed_probe_opens_the_circuit_again(
    server: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = server.get(url__startswith=BASE).mock(side_effect=httpx.ConnectError("refused"))
    fhir = _breaker_client(http)
    for _ in range(3):
        with pytest.raises(FhirFetchError):
            await fhir.get(BASE, f"Patient/{PID}", TOKEN)
    await asyncio.sleep(0.35)
    with pytest.raises(FhirFetchError, match="unreachable"):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)  # the probe

    with pytest.raises(FhirFetchError, match="circuit open"):
        await fhir.get(BASE, f"Patient/{PID}", TOKEN)
    assert route.call_count == 4


async def test_an_origin_cut_off_by_the_deadline_counts_as_failing(server: respx.MockRouter) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("never answered")

    server.get(url__startswith=BASE).mock(side_effect=hang)
    async with new_http_client(max_connections=10, timeout_seconds=5) as http:
        fhir = _breaker_client(http)
        for _ in range(3):  # three calls, each with three requests cut off at its deadline
            budget = CallBudget(0.2)
            outcomes = await asyncio.gather(
                *(fhir.get(BASE, f"Patient/p{i}", TOKEN, budget=budget) for i in range(3)),
                return_exceptions=True,
            )
            assert {o.issue_code for o in outcomes if isinstance(o, FhirFetchError)} == {"timeout"}

        with pytest.raises(FhirFetchError, match="circuit open"):
            await fhir.get(BASE, f"Patient/{PID}", TOKEN, budget=CallBudget(5))


@pytest.mark.parametrize(
    "answer", [httpx.Response(401), httpx.Response(404), httpx.Response(200, text="<html>")], ids=str
)
async def test_answers_that_show_the_server_works_do_not_open_the_circuit(
    server: respx.MockRouter, http: httpx.AsyncClient, answer: httpx.Response
) -> None:
    route = server.get(url__startswith=BASE).mock(return_value=answer)
    fhir = _breaker_client(http)
    for _ in range(5):
        with pytest.raises(FhirFetchError) as caught:
            await fhir.get(BASE, f"Observation?patient={PID}", TOKEN)
        assert caught.value.issue_code != "transient"
    assert route.call_count == 5


async def test_the_failing_requests_of_one_call_count_once_so_the_call_is_answered_alike(
    server: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    route = server.get(url__startswith=BASE).respond(503)
    fhir = _breaker_client(http)
    budget = CallBudget(5)
    for _ in range(6):  # six keys of one call
        with pytest.raises(FhirFetchError) as caught:
            await fhir.get(BASE, f"Observation?patient={PID}", TOKEN, budget=budget)
        assert caught.value.status == 503

    assert route.call_count == 6
