"""A misbehaving FHIR server on loopback, written for the fault tests: it answers too much, too
slowly, garbage, or not at all, as real servers have been seen to.

It runs an asyncio server in a thread of the test process (no dependency, nothing leaves
127.0.0.1). What it does is chosen by the first segment of the request path, so that one server
serves every fault and the service under test is pointed at `server.base("huge")` and so on:

=====================  ============================================================================
`/huge/...`            200, a valid-looking searchset Bundle streamed without Content-Length, as
                       long as `huge_bytes` (default 100 MB) or until the client hangs up
`/huge-declared/...`   the same, with that size declared in Content-Length
`/big/...`             200, a valid Bundle of about `big_bytes` (default 4 MB), sent at once
`/garbage/...`         200, `garbage_bytes` (default 5 MB) of bytes that are not JSON
`/hang/...`            reads the request and never answers
`/drip/...`            200 headers, then 10 bytes every `drip_seconds` (default 1 s), for ever
`/slow/...`            a valid empty searchset Bundle (or Patient for a read) after `slow_seconds`
`/ok/...`              at once: an empty searchset Bundle, or the Patient for a read
`/error/...`           503 at once
=====================  ============================================================================

`requests` counts requests by behaviour; `bytes_sent` counts the body bytes each behaviour wrote
(so a test can see that the service stopped reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

_OBSERVATION = (
    b'{"fullUrl":"Observation/o","resource":{"resourceType":"Observation","id":"o%d","status":"final",'
    b'"code":{"coding":[{"system":"http://loinc.org","code":"1742-6"}]},"subject":{"reference":'
    b'"Patient/p"},"effectiveDateTime":"2026-10-01","valueQuantity":{"value":30,"unit":"U/L"}},'
    b'"search":{"mode":"match"}}'
)
_HEAD = b'{"resourceType":"Bundle","type":"searchset","entry":['
_TAIL = b"]}"


def _bundle_chunks(total: int) -> Iterator[bytes]:
    """A searchset Bundle of about `total` bytes, in chunks of some 64 kB."""
    yield _HEAD
    sent, number = len(_HEAD), 0
    chunk: list[bytes] = []
    size = 0
    while sent + size < total:
        entry = (b"," if number else b"") + (_OBSERVATION % number)
        number += 1
        chunk.append(entry)
        size += len(entry)
        if size >= 65_536:
            yield b"".join(chunk)
            sent += size
            chunk, size = [], 0
    yield b"".join(chunk) + _TAIL


class FaultyFhirServer:
    def __init__(
        self,
        *,
        huge_bytes: int = 100_000_000,
        big_bytes: int = 4_000_000,
        garbage_bytes: int = 5_000_000,
        drip_seconds: float = 1.0,
        slow_seconds: float = 0.1,
    ) -> None:
        self.huge_bytes = huge_bytes
        self.big_bytes = big_bytes
        self.garbage_bytes = garbage_bytes
        self.drip_seconds = drip_seconds
        self.slow_seconds = slow_seconds
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-fhir", daemon=True)
        self._server: asyncio.Server | None = None
        self._big_body: bytes | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FaultyFhirServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._server.wait_closed(), 2)
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultyFhirServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def base(self, behaviour: str) -> str:
        """The FHIR base URL at which the server behaves so."""
        return f"http://127.0.0.1:{self.port}/{behaviour}/fhir"

    # -- serving --------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("latin-1")
            behaviour = path.lstrip("/").split("/", 1)[0]
            self.requests[behaviour] += 1
            await getattr(self, f"_{behaviour.replace('-', '_')}", self._ok)(writer, path, behaviour)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, behaviour: str, data: bytes) -> None:
        writer.write(data)
        self.bytes_sent[behaviour] += len(data)
        await writer.drain()

    @staticmethod
    def _headers(status: str = "200 OK", length: int | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status}", "Content-Type: application/fhir+json", "Connection: close"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    async def _huge(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        writer.write(self._headers())  # no length: read until the connection closes
        for chunk in _bundle_chunks(self.huge_bytes):
            await self._send(writer, behaviour, chunk)

    async def _huge_declared(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        chunks = list(_bundle_chunks(min(self.huge_bytes, 2_000_000)))
        writer.write(self._headers(length=self.huge_bytes))
        for chunk in chunks:
            await self._send(writer, behaviour, chunk)

    async def _big(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        if self._big_body is None:
            self._big_body = b"".join(_bundle_chunks(self.big_bytes))
        writer.write(self._headers(length=len(self._big_body)))
        await self._send(writer, behaviour, self._big_body)

    async def _garbage(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        writer.write(self._headers(length=self.garbage_bytes))
        block = bytes(range(256)) * 256
        left = self.garbage_bytes
        while left > 0:
            await self._send(writer, behaviour, block[:left])
            left -= len(block)

    async def _hang(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        await asyncio.sleep(3600)

    async def _drip(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        writer.write(self._headers())
        while True:
            await self._send(writer, behaviour, b" " * 10)
            await asyncio.sleep(self.drip_seconds)

    async def _slow(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        await asyncio.sleep(self.slow_seconds)
        await self._ok(writer, path, behaviour)

    async def _error(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        body = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'
        writer.write(self._headers("503 Service Unavailable", len(body)))
        await self._send(writer, behaviour, body)

    async def _ok(self, writer: asyncio.StreamWriter, path: str, behaviour: str) -> None:
        resource: dict[str, Any]
        tail = path.split("?", 1)[0].rstrip("/").rsplit("/", 2)
        if "?" not in path and len(tail) == 3 and tail[1] == "Patient":
            resource = {"resourceType": "Patient", "id": tail[2]}
        else:
            resource = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        body = json.dumps(resource).encode()
        writer.write(self._headers(length=len(body)))
        await self._send(writer, behaviour, body)
