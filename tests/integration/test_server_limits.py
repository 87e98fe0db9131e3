"""The served service's defences against slow and greedy clients: `als-cds serve` as a subprocess on
loopback, clients written for the purpose on raw sockets.

* a connection that sends nothing, or its headers 10 bytes at a time, is answered 408 (JSON) and
  closed at the header deadline, however steadily the bytes come;
* a body that keeps dripping after its 401 (authentication on: the token is checked before the
  body is read) cannot hold the connection past the body deadline;
* beyond the connection limit a connection gets 503 with Retry-After and a JSON body, at once;
* beyond the in-flight limit a hook call gets 503 with Retry-After at once, while the calls taken
  are answered (the FHIR server behind them answers 1 s late).

Deadlines are short here (2 s and 3 s) so that the tests are quick; the bounds asserted are generous
(a shared machine): they prove that a connection is not held indefinitely, not how fast it goes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from scripts.service_process import free_port, stop_process
from tests.faulty_fhir import FaultyFhirServer
from tests.support import hook_request

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
SLACK = 3.0
MAX_CONNECTIONS = 4


def _serve(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = workdir / "server.log"
    full_env = {
        **os.environ,
        "ALS_CDS_HOST": "127.0.0.1",
        "ALS_CDS_PORT": str(port),
        "ALS_CDS_DATABASE_URL": f"sqlite:///{workdir / 'als-cds.db'}",
        "ALS_CDS_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "ALS_CDS_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        **env,
    }
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve"],
            cwd=workdir,
            env=full_env,
            stdout=sink,
            stderr=sink,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_process(proc, 10)
    pytest.fail(f"the service did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The service with authentication on (one trusted client with a key nobody uses here)."""
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "alg": "ES384", "use": "sig"}
    proc, url, log = _serve(
        tmp_path_factory.mktemp("guarded"),
        {
            "ALS_CDS_AUTH_REQUIRED": "true",
            "ALS_CDS_TRUSTED_CLIENTS": json.dumps({"https://ehr.example.org": {"jwks": {"keys": [jwk]}}}),
            "ALS_CDS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    )
    try:
        yield url, log
    finally:
        stop_process(proc, 30)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or `limit` seconds pass)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() - started < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def _json_body(response: bytes) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return json.loads(body)


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(guarded: tuple[str, Path]) -> None:
    with _connect(guarded[0]) as sock:
        response, elapsed = _read_until_closed(sock, HEADER_TIMEOUT + SLACK + 5)

    assert response.startswith(b"HTTP/1.1 408 ")
    assert _json_body(response)["issue"][0]["code"] == "timeout"
    assert HEADER_TIMEOUT * 0.8 <= elapsed < HEADER_TIMEOUT + SLACK


def test_headers_dripping_10_bytes_at_a_time_cannot_hold_a_connection(guarded: tuple[str, Path]) -> None:
    request = b"POST /cds-services/als-patient-view HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 400
    started = time.monotonic()
    closed = False
    with _connect(guarded[0]) as sock:
        for start in range(0, len(request), 10):  # 10 bytes every 0.5 s: far more than 2 s in all
            try:
                sock.sendall(request[start : start + 10])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.5)
            if time.monotonic() - started > HEADER_TIMEOUT + SLACK:
                break
        response, _ = _read_until_closed(sock, 5)
    elapsed = time.monotonic() - started

    assert closed or response.startswith(b"HTTP/1.1 408 ")
    assert elapsed < HEADER_TIMEOUT + SLACK + 5
    if response:
        assert b"408" in response.split(b"\r\n", 1)[0]


def test_a_body_dripping_after_its_401_cannot_hold_the_connection(guarded: tuple[str, Path]) -> None:
    head = (
        b"POST /cds-services/als-patient-view HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    with _connect(guarded[0]) as sock:
        sock.sendall(head + b'{"hook": ')
        sock.settimeout(10)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401 ")  # answered before the body, as designed
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < BODY_TIMEOUT + SLACK + 5:
            try:
                sock.sendall(b" " * 10)
                sock.settimeout(0.5)
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break

    assert closed_after is not None, "the server kept the dripping connection open"
    assert closed_after < BODY_TIMEOUT + SLACK


def test_beyond_the_connection_limit_a_connection_gets_503_json_at_once(guarded: tuple[str, Path]) -> None:
    held = [_connect(guarded[0]) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with _connect(guarded[0]) as extra:
            response, elapsed = _read_until_closed(extra, 5)
    finally:
        for sock in held:
            sock.close()

    assert response.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in response.lower()
    assert _json_body(response)["issue"][0]["code"] == "throttled"
    assert elapsed < HEADER_TIMEOUT  # at once, not at a deadline


def test_the_log_says_what_was_cut_off_and_nothing_more(guarded: tuple[str, Path]) -> None:
    lines = [json.loads(line) for line in guarded[1].read_text().splitlines() if line.startswith("{")]
    events = {line["event"] for line in lines}
    assert {"request read timed out", "connection refused: too many open"} <= events
    assert not any("Traceback" in json.dumps(line) for line in lines)


@pytest.fixture(scope="module")
def shedding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FaultyFhirServer]]:
    """Authentication off, at most 4 hook calls in flight, a FHIR server that answers 1 s late."""
    with FaultyFhirServer(slow_seconds=1.0) as fhir:
        proc, url, _ = _serve(
            tmp_path_factory.mktemp("shedding"),
            {"ALS_CDS_AUTH_REQUIRED": "false", "ALS_CDS_MAX_IN_FLIGHT_CALLS": "4"},
        )
        try:
            yield url, fhir
        finally:
            stop_process(proc, 30)


async def test_calls_beyond_the_in_flight_limit_get_503_at_once_and_the_others_their_answer(
    shedding: tuple[str, FaultyFhirServer],
) -> None:
    url, fhir = shedding
    body = hook_request("patient-view-fetch-from-fhir-server")
    body["fhirServer"] = fhir.base("slow")

    async def call(client: httpx.AsyncClient) -> tuple[int, float, httpx.Response]:
        started = time.perf_counter()
        response = await client.post(f"{url}/cds-services/als-patient-view", json=body)
        return response.status_code, time.perf_counter() - started, response

    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        results = await asyncio.gather(*(call(client) for _ in range(20)))

    shed = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] != 503]
    print(
        f"\n20 concurrent calls, 4 allowed in flight: {len(served)} answered "
        f"({', '.join(f'{s * 1000:.0f}' for _, s, _ in served)} ms), {len(shed)} shed "
        f"(slowest {max((s for _, s, _ in shed), default=0) * 1000:.0f} ms)"
    )
    assert len(served) == 4 and {status for status, _, _ in served} == {200}
    assert len(shed) == 16
    for _, seconds, response in shed:
        assert response.headers["retry-after"] == "1"
        assert response.json()["issue"][0]["code"] == "throttled"
        assert seconds < 1.0  # before the FHIR server has answered a single one of the others
