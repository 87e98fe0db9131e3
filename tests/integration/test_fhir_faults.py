"""FHIR server faults against the real service: `als-cds serve` with two workers, on loopback, and
a FHIR server written to misbehave (`tests/faulty_fhir.py`): answers of 100 MB, garbage, answers
that hang or drip. Each call gets a defined answer, 412 with the issue code for the fault, within
the FHIR budget (plus generous slack for a shared machine: the bound proves the deadline holds,
the figures printed are the measurement), and the workers stay far below their memory limit.

The figures (round trip, worker RSS, /healthz stall) are printed for docs/performance.md; only the
defined outcome and bounds far from the targets are asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds_service.bundles import request_from_bundle
from cds_service.services import build_services
from cds_service.settings import Settings
from scripts.service_process import memory_snapshot, start_server, stop_process
from tests.faulty_fhir import FaultyFhirServer
from tests.integration.conftest import FhirTestServer
from tests.support import ROOT, hook_request

BUDGET = 2.0
#: Far above the issue's target (budget + 0.5 s): a bound that shows the deadline holds without
#: timing the machine.
SLACK = 3.0
#: The Kubernetes memory limit of a pod (deploy/): far above the issue's target of 400 MB.
RSS_LIMIT_MB = 768
TOKEN = "opaque-fault-token-7c1e"


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyFhirServer]:
    with FaultyFhirServer(big_bytes=3_000_000, drip_seconds=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    workdir = tmp_path_factory.mktemp("faults")
    log = workdir / "server.log"
    proc, url = start_server(
        2,
        f"sqlite:///{workdir / 'als-cds.db'}",
        workdir,
        log,
        "info",
        {"ALS_CDS_FHIR_BUDGET_SECONDS": str(BUDGET), "ALS_CDS_FHIR_MAX_CALL_BYTES": "100000000"},
    )
    try:
        yield url, proc.pid, log
    finally:
        stop_process(proc, 30)


def _request(base: str) -> dict[str, Any]:
    request = hook_request("patient-view-fetch-from-fhir-server")
    request["fhirServer"] = base
    request["fhirAuthorization"]["access_token"] = TOKEN
    return request


class _Sampler:
    """The service's RSS (its largest process) and /healthz round trips while a call runs."""

    def __init__(self, url: str, root: int) -> None:
        self.url, self.root = url, root
        self.peak_mb = 0.0
        self.stall_ms = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss), threading.Thread(target=self._health)]

    def __enter__(self) -> _Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _rss(self) -> None:
        while not self._stop.is_set():
            snapshot = memory_snapshot(self.root) or {"processes": []}
            for process in snapshot["processes"]:
                self.peak_mb = max(self.peak_mb, process["rss_kb"] / 1024)
            time.sleep(0.05)

    def _health(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{self.url}/healthz")
                self.stall_ms = max(self.stall_ms, (time.perf_counter() - started) * 1000)
                time.sleep(0.01)


def _call(service: tuple[str, int, Path], base: str, what: str) -> tuple[httpx.Response, float, _Sampler]:
    url, root, _ = service
    with _Sampler(url, root) as sampler, httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        response = client.post(f"{url}/cds-services/als-patient-view", json=_request(base))
        elapsed = time.perf_counter() - started
    print(
        f"\nfault {what}: HTTP {response.status_code} in {elapsed * 1000:.0f} ms (budget {BUDGET:g} s, "
        f"target budget + 0.5 s), largest service process {sampler.peak_mb:.0f} MB (target 400), "
        f"longest /healthz {sampler.stall_ms:.0f} ms"
    )
    assert TOKEN not in response.text
    assert "als-riluzole-lft-overdue" not in response.text
    return response, elapsed, sampler


def _codes(response: httpx.Response) -> set[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return {issue["code"] for issue in body["issue"]}


def test_answers_of_100_mb_per_key_are_cut_off_at_the_cap_with_412_too_costly(
    service: tuple[str, int, Path], faulty: FaultyFhirServer
) -> None:
    before = faulty.bytes_sent["huge"]
    response, elapsed, sampler = _call(service, faulty.base("huge"), "100 MB per key, no length")

    assert response.status_code == 412
    assert _codes(response) == {"too-costly"}
    assert all("5000000 bytes" in issue["diagnostics"] for issue in response.json()["issue"])
    assert elapsed < BUDGET + SLACK
    assert sampler.peak_mb < RSS_LIMIT_MB
    # Eleven keys of 100 MB each were offered; the service stopped reading each near the cap
    # (what the server wrote beyond it went into socket buffers until the connection was dropped).
    sent = faulty.bytes_sent["huge"] - before
    print(f"the FHIR server wrote {sent / 1e6:.0f} MB of the 1,100 MB it offered")
    assert sent < 1_100_000_000 / 4


def test_an_answer_declaring_100_mb_is_refused_without_reading_it(
    service: tuple[str, int, Path], faulty: FaultyFhirServer
) -> None:
    response, elapsed, _ = _call(service, faulty.base("huge-declared"), "100 MB declared")

    assert response.status_code == 412
    assert _codes(response) == {"too-costly"}
    assert elapsed < BUDGET + SLACK


def test_5_mb_of_garbage_per_key_is_412_not_json(
    service: tuple[str, int, Path], faulty: FaultyFhirServer
) -> None:
    response, elapsed, sampler = _call(service, faulty.base("garbage"), "5 MB of garbage per key")

    assert response.status_code == 412
    assert _codes(response) == {"incomplete"}
    assert all("not JSON" in issue["diagnostics"] for issue in response.json()["issue"])
    assert elapsed < BUDGET + SLACK
    assert sampler.peak_mb < RSS_LIMIT_MB


def test_large_valid_answers_are_parsed_off_the_event_loop_within_the_budget(
    service: tuple[str, int, Path], faulty: FaultyFhirServer
) -> None:
    response, _, sampler = _call(service, faulty.base("big"), "3 MB of valid JSON per key")

    # 33 MB in all, under the call cap this service runs with: read, parsed and answered. The
    # results name another patient, so there are no cards, and no error either.
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
    assert sampler.peak_mb < RSS_LIMIT_MB


@pytest.mark.parametrize("behaviour", ["hang", "drip"])
def test_a_server_that_hangs_or_drips_gets_412_timeout_at_the_budget(
    service: tuple[str, int, Path], faulty: FaultyFhirServer, behaviour: str
) -> None:
    response, elapsed, _ = _call(service, faulty.base(behaviour), f"a server that {behaviour}s")

    assert response.status_code == 412
    assert _codes(response) == {"timeout"}
    assert elapsed >= BUDGET * 0.9  # it did wait for the server, as long as the budget allows
    assert elapsed < BUDGET + SLACK


def test_the_service_log_holds_no_token_and_no_patient_id(service: tuple[str, int, Path]) -> None:
    text = service[2].read_text(encoding="utf-8", errors="replace")
    assert TOKEN not in text
    assert "als-riluzole-lft-overdue" not in text
    for line in text.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every line of the service is a JSON line


# ------------------------------------------------------------------------------------------------
# Isolation: one EHR's hanging FHIR server beside another's healthy one (Medplum, fhir-server/)


def _healthy_request(fhir: FhirTestServer) -> dict[str, Any]:
    fixture = "als-riluzole-lft-overdue"
    bundle = json.loads((ROOT / "fhir_fixtures" / "patients" / f"{fixture}.json").read_text())
    keys = list(build_services()["als-patient-view"].prefetch(Settings(_env_file=None), date.today()))
    request = request_from_bundle(bundle, "patient-view", keys)
    del request["prefetch"]
    request["fhirServer"] = fhir.base(fixture)
    request["fhirAuthorization"] = {"access_token": fhir.token, "token_type": "Bearer", "subject": "als-cds"}
    return request


async def test_calls_for_a_healthy_fhir_server_are_answered_beside_16_calls_to_a_hanging_one(
    service: tuple[str, int, Path], faulty: FaultyFhirServer, fhir: FhirTestServer
) -> None:
    url = service[0]
    healthy, hanging = _healthy_request(fhir), _request(faulty.base("hang"))

    async def call(body: dict[str, Any]) -> tuple[int, float, set[str]]:
        # A connection of its own per call, as separate EHR clients have.
        async with httpx.AsyncClient(timeout=60) as client:
            started = time.perf_counter()
            response = await client.post(f"{url}/cds-services/als-patient-view", json=body)
            codes = _codes(response) if response.status_code != 200 else set()
            return response.status_code, time.perf_counter() - started, codes

    stuck = [asyncio.ensure_future(call(hanging)) for _ in range(16)]
    await asyncio.sleep(0.3)  # the hanging server holds its slots now
    answered = await asyncio.gather(*(call(healthy) for _ in range(8)))
    stuck_results = await asyncio.gather(*stuck)

    print(
        "\nbeside 16 calls to a hanging FHIR server: healthy calls "
        + ", ".join(f"{status} in {seconds * 1000:.0f} ms" for status, seconds, _ in answered)
    )
    assert [status for status, _, _ in answered] == [200] * 8
    assert {status for status, _, _ in stuck_results} == {412}
    assert set().union(*(codes for _, _, codes in stuck_results)) <= {"timeout", "transient"}


def test_after_five_calls_that_time_out_the_circuit_answers_at_once(
    service: tuple[str, int, Path], faulty: FaultyFhirServer
) -> None:
    url = service[0]
    # Another origin than the other tests' (localhost, not 127.0.0.1): a breaker of its own.
    base = faulty.base("hang").replace("127.0.0.1", "localhost")
    results = []
    with httpx.Client(timeout=60) as client:  # one keep-alive connection: one worker, one breaker
        for _ in range(7):
            started = time.perf_counter()
            response = client.post(f"{url}/cds-services/als-patient-view", json=_request(base))
            results.append((response.status_code, time.perf_counter() - started, _codes(response)))
    print("\ncalls to a hanging server: " + ", ".join(f"{c} in {s * 1000:.0f} ms" for _, s, c in results))

    assert all(status == 412 for status, _, _ in results)
    assert all(codes == {"timeout"} for _, _, codes in results[:5])
    assert all(codes == {"transient"} for _, _, codes in results[5:])
    assert all(seconds < BUDGET / 2 for _, seconds, _ in results[5:])  # not waiting out the budget
    log = service[2].read_text(encoding="utf-8", errors="replace")
    assert "FHIR server failing: circuit opened" in log
