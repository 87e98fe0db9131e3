"""FhirHttp: the FHIR fetch path's connections (aiohttp), against real servers on loopback.

The FHIR client's own tests answer `FhirHttp.fetch` through respx; these are the ones that put
bytes on a socket: what the client's byte caps, time-outs and fault outcomes rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from cds_service.fhir_http import FhirHttp

Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Seen:
    """What a test server saw: each request's headers and the client port it came from."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    @property
    def ports(self) -> list[int]:
        return [r["port"] for r in self.requests]


async def _web_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Seen, dict[str, Any]]]:
    """A FHIR-like server; `behaviour` (the third item) changes what it answers."""
    seen = Seen()
    behaviour: dict[str, Any] = {"body": b'{"resourceType":"Bundle"}' * 2000}

    async def handle(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.requests.append(
            {
                "path": request.path_qs,
                "raw": request.raw_path,
                "headers": dict(request.headers),
                "port": peer[1] if peer else 0,
            }
        )
        if behaviour.get("redirect"):
            return web.Response(status=302, headers={"Location": behaviour["redirect"]})
        headers = dict(behaviour.get("headers", {}))
        body = behaviour["body"]
        if behaviour.get("gzip"):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers, content_type="application/fhir+json")

    runner, base = await _web_server(handle)
    yield base, seen, behaviour
    await runner.cleanup()


@contextlib.asynccontextmanager
async def _raw_server(serve: Raw) -> AsyncIterator[str]:
    """A server on loopback that answers with whatever bytes `serve` writes: its base URL."""
    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        srv.close()


async def _read_all(response: httpx.Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in response.aiter_bytes()])
    finally:
        await response.aclose()


async def test_a_body_read_to_its_end_returns_its_connection_to_the_pool(server: Any) -> None:
    base, seen, behaviour = server
    async with FhirHttp(max_connections=4, timeout_seconds=5) as http:
        for _ in range(3):
            response = await http.fetch(f"{base}/Observation?patient=p1", {"Accept": "application/fhir+json"})
            assert response.status_code == 200
            assert await _read_all(response) == behaviour["body"]
    assert len(set(seen.ports)) == 1, "one keep-alive connection for three requests"


async def test_a_body_left_part_way_closes_its_connection_instead_of_reusing_it(server: Any) -> None:
    base, seen, behaviour = server
    behaviour["body"] = b"x" * 2_000_000  # several chunks: the first is all the caller reads
    async with FhirHttp(max_connections=4, timeout_seconds=5) as http:
        for _ in range(2):
            response = await http.fetch(f"{base}/Observation", {})
            chunk = await response.aiter_bytes().__anext__()
            assert 0 < len(chunk) < len(behaviour["body"])
            await response.aclose()
    assert len(set(seen.ports)) == 2, "the half-read connection was not handed to the next request"


async def test_a_gzip_answer_is_decoded_by_httpx_so_the_caps_count_decoded_bytes(server: Any) -> None:
    base, seen, behaviour = server
    behaviour["gzip"] = True
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        response = await http.fetch(f"{base}/Condition", {})
        assert await _read_all(response) == behaviour["body"]
    assert seen.requests[0]["headers"]["Accept-Encoding"] == "gzip, deflate"
    assert seen.requests[0]["headers"]["User-Agent"] == "als-cds"


async def test_the_callers_headers_are_sent(server: Any) -> None:
    base, seen, _ = server
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        await _read_all(
            await http.fetch(f"{base}/Patient/p1", {"Authorization": "Bearer t0k", "Accept": "a/b"})
        )
    assert seen.requests[0]["headers"]["Authorization"] == "Bearer t0k"
    assert seen.requests[0]["headers"]["Accept"] == "a/b"


async def test_a_percent_encoded_url_is_sent_as_it_is_not_encoded_twice(server: Any) -> None:
    base, seen, _ = server
    query = "Observation?patient=p1&code=http%3A%2F%2Floinc.org%7C1742-6,http://loinc.org|1920-8"
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        await _read_all(await http.fetch(f"{base}/{query}", {}))
    assert seen.requests[0]["path"] == f"/{query}"


async def test_a_redirect_is_answered_as_it_is_never_followed(server: Any) -> None:
    base, seen, behaviour = server
    behaviour["redirect"] = "https://elsewhere.example/steal"
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        response = await http.fetch(f"{base}/Patient/p1", {"Authorization": "Bearer t0k"})
        await response.aclose()
    assert response.status_code == 302
    assert len(seen.requests) == 1


async def test_cookies_from_one_answer_are_not_sent_with_the_next_request(server: Any) -> None:
    base, seen, behaviour = server
    behaviour["headers"] = {"Set-Cookie": "session=abc; Path=/"}
    by_name = base.replace("127.0.0.1", "localhost")  # a cookie jar keeps no cookie of an IP address
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        for _ in range(2):
            await _read_all(await http.fetch(f"{by_name}/Patient/p1", {}))
    assert "Cookie" not in seen.requests[1]["headers"]


async def test_netrc_credentials_are_never_sent(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, seen, _ = server
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        await _read_all(await http.fetch(f"{base}/Patient/p1", {}))
    assert "Authorization" not in seen.requests[0]["headers"]


async def test_a_proxy_from_the_environment_carries_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    through_proxy: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        through_proxy.append(str(request.url))
        return web.Response(body=b'{"resourceType":"Patient"}', content_type="application/fhir+json")

    runner, proxy_url = await _web_server(proxy)
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
            body = await _read_all(await http.fetch("http://fhir.invalid/fhir/Patient/p1", {}))
        assert body == b'{"resourceType":"Patient"}'
        assert through_proxy == ["http://fhir.invalid/fhir/Patient/p1"]
    finally:
        await runner.cleanup()


async def test_no_listener_is_a_connect_error_that_does_not_quote_the_url() -> None:
    async with _raw_server(lambda r, w: asyncio.sleep(0)) as base:
        pass  # closed: nothing listens at `base` any more
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.fetch(f"{base}/Patient/patient-secret-id", {})
    assert "patient-secret-id" not in str(caught.value)


async def test_a_server_silent_after_its_headers_is_a_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(10)
        writer.close()

    async with _raw_server(stall) as base, FhirHttp(max_connections=2, timeout_seconds=0.3) as http:
        response = await http.fetch(f"{base}/Patient/p1", {})
        with pytest.raises(httpx.ReadTimeout):
            await _read_all(response)


async def test_a_server_that_never_answers_is_a_timeout_within_the_configured_seconds() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)
        writer.close()

    async with _raw_server(silent) as base, FhirHttp(max_connections=2, timeout_seconds=0.3) as http:
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.TimeoutException):
            await http.fetch(f"{base}/Patient/p1", {})
        assert asyncio.get_running_loop().time() - started < 3


async def test_a_connection_cut_mid_body_is_a_protocol_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10)
        await writer.drain()
        writer.close()

    async with _raw_server(cut) as base, FhirHttp(max_connections=2, timeout_seconds=5) as http:
        response = await http.fetch(f"{base}/Patient/p1", {})
        with pytest.raises(httpx.RemoteProtocolError):
            await _read_all(response)


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"\x00\x01 this is not HTTP at all\r\n\r\n")
        await writer.drain()
        writer.close()

    async with _raw_server(garbage) as base, FhirHttp(max_connections=2, timeout_seconds=5) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.fetch(f"{base}/Patient/p1", {})


async def test_at_most_max_connections_are_open_at_once(server: Any) -> None:
    base, seen, behaviour = server
    behaviour["body"] = b"{}"
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:

        async def one() -> bytes:
            return await _read_all(await http.fetch(f"{base}/Patient/p1", {}))

        await asyncio.gather(*(one() for _ in range(12)))
    assert len(seen.requests) == 12
    assert len(set(seen.ports)) <= 2


async def test_a_closed_pool_refuses_further_requests(server: Any) -> None:
    base, _, _ = server
    http = FhirHttp(max_connections=2, timeout_seconds=5)
    await _read_all(await http.fetch(f"{base}/Patient/p1", {}))
    await http.aclose()
    assert http.is_closed
    with pytest.raises(RuntimeError):
        await http.fetch(f"{base}/Patient/p1", {})


@pytest.mark.parametrize(
    "query",
    [
        "Observation?patient=p1&code=http://loinc.org|1742-6,http://loinc.org|1920-8",
        "Observation?patient=p%201&code=http%3A%2F%2Floinc.org%7C1742-6",
        "Patient/an id with spaces",
        "Patient/patient-ü-ß",
        'Observation?patient=p1&note="quoted"<b>{x}`',
        "Observation?patient=p1&date=ge2026-01-01T00:00:00+00:00",
    ],
)
async def test_the_request_target_is_the_one_httpx_sends(server: Any, query: str) -> None:
    """Sent as httpx's own client sent it (what FHIR servers have been answering): as it is when
    httpx would change nothing, quoted by httpx otherwise."""
    base, seen, _ = server
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        await _read_all(await http.fetch(f"{base}/{query}", {}))
    expected = httpx.URL(f"{base}/{query}").raw_path.decode()
    assert seen.requests[0]["raw"] == expected


async def test_a_control_character_in_a_url_is_refused_before_anything_is_sent(server: Any) -> None:
    base, seen, _ = server
    async with FhirHttp(max_connections=2, timeout_seconds=5) as http:
        with pytest.raises(httpx.InvalidURL):
            await http.fetch(f"{base}/Patient/p1\r\nX-Injected: 1", {})
    assert seen.requests == []
