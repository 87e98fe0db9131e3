"""A minimal FHIR R4 read/search server over the fixture patients: a TEST DOUBLE, not a FHIR server.

It exists so that the load test and the shutdown tests can drive the service's FHIR-fetch path
(a hook call without prefetch, `fhirServer` pointing here) without a network. It implements just
what the service's prefetch templates ask for, over the charts in `fhir_fixtures/patients/` (one
patient per Bundle; orders with status `draft` are left out, as `request_from_bundle` does). The
real FHIR server integration tests come with a later issue.

Answers (GET only; `{base}` is `/fhir`):

    {base}/Patient/{id}                      the Patient, or 404 with an OperationOutcome
    {base}/{Type}?patient={id}&...           a searchset Bundle of that patient's resources
                                             (`subject=Patient/{id}` works too)

Search parameters: `code` (token list: `system|code`, `|code` or `code`, matched against
`code.coding`), `date` (one value with prefix `eq`/`ge`/`gt`/`le`/`lt`, compared on the first 10
characters, YYYY-MM-DD, of the resource's date), `_sort=date` / `-date` and `_count`. A page holds
at most `--page-size` entries; further pages are linked with `next` (`_offset`). Other parameters
are ignored. Two prefixes change the behaviour, for tests:

    /delay/{ms}/fhir/...     the same answer, `ms` milliseconds late
    /status/{code}/fhir/...  every request is answered with HTTP `code` and an OperationOutcome

`GET /_stats` answers the request counts (JSON). Standard library only, plus the project's own
`split_bundle`; one thread per connection; loopback only by default.

    python scripts/fhir_stub_server.py [--port 0] [--patients DIR] [--page-size N]

prints one JSON line `{"port": N, "base": "http://127.0.0.1:N/fhir"}` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project package is beside us
    sys.path.insert(0, str(ROOT))

from cds_service.bundles import split_bundle  # noqa: E402

DEFAULT_PATIENTS = ROOT / "fhir_fixtures" / "patients"
FHIR_JSON = "application/fhir+json"

_PATH = re.compile(r"^/(?:delay/(?P<delay>\d{1,6})/|status/(?P<status>[1-5]\d\d)/)?fhir/(?P<rest>[^?]*)$")

#: Where a resource keeps the date that the `date` search parameter and `_sort=date` use.
_DATE_ELEMENTS = ("effectiveDateTime", "effectiveInstant", "issued", "authoredOn", "recordedDate", "date")
_PERIOD_ELEMENTS = ("effectivePeriod", "period", "performedPeriod")


def load_charts(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{patient id: {resource type: [resources]}} from the patient Bundles in `folder`."""
    charts: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        chart, _drafts = split_bundle(bundle)
        patients = [r for r in chart if r.get("resourceType") == "Patient" and isinstance(r.get("id"), str)]
        if len(patients) != 1:
            continue
        by_type: dict[str, list[dict[str, Any]]] = {}
        for resource in chart:
            by_type.setdefault(resource["resourceType"], []).append(resource)
        charts[patients[0]["id"]] = by_type
    return charts


def resource_date(resource: Mapping[str, Any]) -> str | None:
    for name in _DATE_ELEMENTS:
        value = resource.get(name)
        if isinstance(value, str):
            return value
    for name in _PERIOD_ELEMENTS:
        period = resource.get(name)
        if isinstance(period, Mapping) and isinstance(period.get("start"), str):
            return period["start"]
    return None


def _matches_code(resource: Mapping[str, Any], tokens: list[str]) -> bool:
    codings = (resource.get("code") or {}).get("coding") or []
    for token in tokens:
        system, _, code = token.rpartition("|") if "|" in token else (None, "", token)
        for coding in codings:
            if coding.get("code") == code and (system is None or (coding.get("system") or "") == system):
                return True
    return False


def _matches_date(resource: Mapping[str, Any], value: str) -> bool:
    prefix, when = (value[:2], value[2:]) if value[:2] in ("eq", "ge", "gt", "le", "lt") else ("eq", value)
    found = resource_date(resource)
    if found is None:
        return False
    have, want = found[:10], when[:10]
    return {
        "eq": have == want,
        "ge": have >= want,
        "gt": have > want,
        "le": have <= want,
        "lt": have < want,
    }[prefix]


def operation_outcome(diagnostics: str, code: str = "processing") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], charts: dict[str, dict[str, list[dict[str, Any]]]], page_size: int
    ) -> None:
        super().__init__(address, _Handler)
        self.charts = charts
        self.page_size = page_size
        self.stats: Counter[str] = Counter()
        self.stats_lock = threading.Lock()
        #: Set when a request on a /delay/ path has arrived (tests wait for it: the service is then
        #: certainly in the middle of a hook call).
        self.delayed_request_arrived = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection (the service cancels the fetches still running when
        # its FHIR time budget runs out) is part of the game, not an error of this double.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def count(self, name: str) -> None:
        with self.stats_lock:
            self.stats[name] += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the service's connection pool expects
    server: StubServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without TCP_NODELAY the second waits for the
        # client's delayed ACK (~40 ms), which would be this double's latency, not the service's.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request lines carry patient ids; and at load they would only be noise

    def do_GET(self) -> None:
        if self.path == "/_stats":
            with self.server.stats_lock:
                self._send(200, dict(self.server.stats), content_type="application/json")
            return
        parts = urlsplit(self.path)
        match = _PATH.match(parts.path)
        if match is None:
            self.server.count("status_404")
            self._send(404, operation_outcome("no such path on this FHIR test double", "not-found"))
            return
        if match["status"]:
            self.server.count(f"status_{match['status']}")
            self._send(int(match["status"]), operation_outcome("answered as asked by the /status/ path"))
            return
        if match["delay"]:
            self.server.delayed_request_arrived.set()
            time.sleep(int(match["delay"]) / 1000)
        base = f"http://{self.headers.get('Host', 'localhost')}{parts.path[: match.start('rest')]}".rstrip(
            "/"
        )
        status, body = self._answer(match["rest"], parse_qsl(parts.query), base, parts.path)
        self.server.count(f"status_{status}")
        self._send(status, body)

    def _answer(
        self, rest: str, query: list[tuple[str, str]], base: str, path: str
    ) -> tuple[int, dict[str, Any]]:
        segments = [s for s in rest.split("/") if s]
        if len(segments) == 2 and segments[0] == "Patient":
            chart = self.server.charts.get(segments[1])
            if chart is None:
                return 404, operation_outcome("no such Patient", "not-found")
            return 200, chart["Patient"][0]
        if len(segments) != 1:
            return 400, operation_outcome("only Type/id reads and Type? searches are supported")
        rtype = segments[0]
        params: dict[str, str] = {}
        for name, value in query:
            params.setdefault(name, value)
        patient = params.get("patient") or params.get("subject", "").removeprefix("Patient/")
        if not patient:
            return 400, operation_outcome("a search needs patient= (this double serves one chart at a time)")
        found = [
            r
            for r in (self.server.charts.get(patient) or {}).get(rtype, [])
            if ("code" not in params or _matches_code(r, params["code"].split(",")))
            and ("date" not in params or _matches_date(r, params["date"]))
        ]
        if params.get("_sort") in ("date", "-date"):
            # Undated resources sort last either way.
            dated = sorted((r for r in found if resource_date(r)), key=lambda r: str(resource_date(r)))
            if params["_sort"] == "-date":
                dated.reverse()
            found = dated + [r for r in found if not resource_date(r)]
        try:
            count = max(1, min(int(params.get("_count", self.server.page_size)), self.server.page_size))
            offset = max(0, int(params.get("_offset", "0")))
        except ValueError:
            return 400, operation_outcome("_count and _offset must be integers")
        page = found[offset : offset + count]
        links = [{"relation": "self", "url": f"{base}/{rtype}?{urlencode(query)}"}]
        if offset + count < len(found):
            following = [(k, v) for k, v in query if k != "_offset"] + [("_offset", str(offset + count))]
            links.append({"relation": "next", "url": f"{base}/{rtype}?{urlencode(following)}"})
        return 200, {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": links,
            "entry": [
                {"fullUrl": f"{base}/{rtype}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
                for r in page
            ],
        }

    def _send(self, status: int, body: Mapping[str, Any], *, content_type: str = FHIR_JSON) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def make_server(
    host: str = "127.0.0.1", port: int = 0, patients: Path = DEFAULT_PATIENTS, page_size: int = 100
) -> StubServer:
    """A stub server bound to (host, port); run it with `serve_forever()` (in a thread, for tests)."""
    return StubServer((host, port), load_charts(patients), page_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--patients", type=Path, default=DEFAULT_PATIENTS, help="folder of patient Bundles")
    parser.add_argument("--page-size", type=int, default=100, help="most entries per searchset page")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.patients, max(1, args.page_size))

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"port": server.port, "base": f"http://{args.host}:{server.port}/fhir"}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
