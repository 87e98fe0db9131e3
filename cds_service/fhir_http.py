"""The FHIR fetch path's HTTP connections: aiohttp's pool, answers as `httpx.Response`.

Why aiohttp, and why not through `httpx.AsyncClient`: measured against the project's FHIR server
on loopback with the eleven requests of one typical chart (docs/performance.md, "The FHIR-fetch
path"), httpx over httpcore cost 1.3 ms of CPU a request. httpcore's pool asks every idle
connection whether its socket is readable on each request's start and finish; httpx's client
parses each URL character by character in Python (our Observation searches name dozens of codes:
URLs of 1 to 1.5 kB), and keeps a cookie jar. aiohttp, its HTTP parser in C, cost 0.14 ms a
request for the same requests. The answer is still an `httpx.Response` (status, headers, a
streamed body with httpx's content decoding), so `FhirClient` and its tests (respx, through the
mocker in tests/conftest.py) speak one API whatever carried the bytes.

What `FhirClient`'s bounds rely on, and this keeps:

* the body is streamed chunk by chunk, never read whole here (the byte caps stop it part way); a
  body left unread closes its connection instead of returning it to the pool mid-answer;
* content decoding is httpx's (aiohttp's own is off), so the caps count decoded bytes;
* redirects are never followed;
* failures arrive as httpx's exceptions (`ConnectError`, `ConnectTimeout`, `ReadTimeout`,
  `RemoteProtocolError`, ...), and their messages are the failure's type only: aiohttp's quote
  the URL, which carries the patient id;
* a time-out on connecting (waiting for a connection included) and on each read, as httpx's
  client had; the call's hard deadline is `FhirClient`'s;
* proxies from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), looked up once per origin,
  and certificate verification with httpx's default context (certifi, or SSL_CERT_FILE /
  SSL_CERT_DIR). No ~/.netrc credentials and no cookies are sent: nothing is carried from one
  hook call (one user's token) to the next.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

import aiohttp
import httpx
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

#: The body is handed on in chunks of at most this size, as they arrive.
_CHUNK_BYTES = 64 * 1024

_DEFAULT_HEADERS = {"User-Agent": "als-cds", "Accept-Encoding": "gzip, deflate"}

#: What httpx would change in a URL: characters it percent-encodes (space, quotes, angle brackets,
#: braces, backtick, anything not ASCII) and those it refuses (controls), and a fragment.
_NOT_AS_IS = re.compile(r'[^\x21-\x7e]|["<>`{}#]')


def _target(url: str) -> URL:
    """The request target exactly as httpx sent it. A URL as FhirClient builds it (a template, an
    id, codes with `|`) has nothing httpx would change and goes as it is, with no parse in Python:
    that parse, character by character, was a third of httpx's cost. Anything else is quoted by
    httpx as before (httpx.InvalidURL for a control character)."""
    if _NOT_AS_IS.search(url):
        url = str(httpx.URL(url))
    return URL(url, encoded=True)


class FhirHttp:
    """Connections to FHIR servers, at most `max_connections` open: the service makes one per
    FHIR origin (its bulkhead, fhir_client.py), the CLI one for its single server."""

    def __init__(
        self, *, max_connections: int, timeout_seconds: float, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_seconds, sock_connect=timeout_seconds, sock_read=timeout_seconds
        )
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        # Made on first use: an aiohttp session belongs to the event loop it was made in.
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str | None, int | None], str | None] = {}
        self._closed = False

    def _session_now(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("FhirHttp is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, limit_per_host=0, ssl=self._ssl_context
                ),
                timeout=self._timeout,
                auto_decompress=False,  # httpx.Response decodes: the caps count decoded bytes
                # Off: with it aiohttp reads ~/.netrc and the proxy variables in a worker thread on
                # every request (two thread hand-offs each) and would send netrc credentials to a
                # FHIR server. Proxies are looked up once per origin instead (`_proxy_for`).
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept-Encoding", "User-Agent"),  # ours, in _DEFAULT_HEADERS
            )
        return self._session

    def _proxy_for(self, url: URL) -> str | None:
        key = (url.scheme, url.host, url.port)
        if key not in self._proxies:
            try:
                proxy, _ = get_env_proxy_for_url(url.origin())
            except LookupError:
                proxy = None
            self._proxies[key] = str(proxy) if proxy is not None else None
        return self._proxies[key]

    async def fetch(self, url: str, headers: Mapping[str, str]) -> httpx.Response:
        """GET `url`; the answer's body streamed. The caller reads it and must `aclose()` it."""
        target = _target(url)
        try:
            response = await self._session_now().get(
                target,
                headers=_DEFAULT_HEADERS | dict(headers),
                allow_redirects=False,
                proxy=self._proxy_for(target),
            )
        except Exception as exc:
            mapped = _as_httpx_error(exc, connecting=True)
            if mapped is exc:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=response.status,
            headers=[(bytes(k), bytes(v)) for k, v in response.raw_headers],
            stream=_Body(response),
        )

    async def get(self, url: str, headers: Mapping[str, str]) -> httpx.Response:
        """GET `url` and read its whole body (a CapabilityStatement, not a search: no caps)."""
        response = await self.fetch(url, headers)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FhirHttp:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK_BYTES):
                yield chunk
        except Exception as exc:
            mapped = _as_httpx_error(exc, connecting=False)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # read to its end: the connection goes back to the pool
        else:
            self._response.close()  # stopped part way (a cap, the deadline): never reused


#: The server answered, but not with HTTP that can be read to its end.
_BROKEN_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)


def _as_httpx_error(exc: Exception, *, connecting: bool) -> Exception:
    """aiohttp's failure as the httpx exception httpx's own transport raises for it (`exc` itself
    when it is none of aiohttp's)."""
    what = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError) or (
        connecting and isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.SocketTimeoutError)
    ):
        return httpx.ConnectTimeout(what)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(what)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(what)
    if isinstance(exc, _BROKEN_ANSWER):
        return httpx.RemoteProtocolError(what)
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return httpx.InvalidURL(what)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return httpx.ConnectError(what) if connecting else httpx.ReadError(what)
    return exc
