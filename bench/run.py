"""Bench: what a hook call costs the service, measured against what reading its body costs.

    .venv/bin/python bench/run.py                       # 100, 1,000, 10,000, 50,000 Observations
    .venv/bin/python bench/run.py --quick               # the CI smoke run: small sizes, once each
    .venv/bin/python bench/run.py --sizes 1000 --repeat 5 --json bench.json

Why a ratio: a round trip in milliseconds depends on the machine; the same round trip divided by
`json.loads` of the identical body bytes, timed in the same process in the same run, much less so.
`json.loads` is the floor any Python service pays to read the body, so the ratio says how much the
service adds on top of that floor, and it should stay flat as the body grows (cost linear in size).
The issue's targets are a ratio at or under 5 for every case, 50,000 Observations answered with
the worker under 400 MB and its event loop never blocked for more than 100 ms, and a typical ALS
chart at or under 3 ms of service CPU. The script prints those figures next to the targets and
asserts none of them: the exit status says only whether every call was answered 200 with cards.

What it does, all on loopback and bounded (a fixed number of calls, each with a timeout):

1. starts the service as a deployment runs it (`scripts/service_process.py`, shared with the load
   test: `als-cds serve`, one uvicorn worker, authentication off, a fresh SQLite file in a
   temporary folder, a free port), with ALS_CDS_MAX_BODY_BYTES raised to fit the largest body, and
   reads the discovery document for the prefetch templates, as an EHR would;
2. service CPU per call of each bundled patient-view fixture (fhir_fixtures/requests): the worker's
   utime+stime (/proc/PID/stat) over --cpu-calls sequential calls, after a warm-up;
3. per size, a patient-view request for a patient with active ALS (SNOMED CT 86044005) on riluzole,
   so that the rules run, whose Observations are real-shaped results (ALT and the other codes the
   templates ask for, reference ranges, narrative, dates spread over the templates' windows), each
   sent once under the prefetch key whose template asks for its code; then 1,000 of them again
   under every Observation key. Every key is supplied, so the service fetches nothing;
4. the Synthea charts in ../shared/data/synthea-r4, each as a patient-view request with its
   resources split by type under the prefetch keys (see `chart_request`);
5. SIGTERM, and the table.

Per case: one probe call while a second connection polls GET /healthz every --poll-ms (the
longest /healthz round trip seen is "max stall", how long the worker's event loop was unavailable
to other requests), then --repeat timed calls (more for a small body) without the poller, each after
a json.loads of the body timed in this process: their medians are the ratio's two sides, and the
worker's CPU over the calls gives CPU per call. The worker's peak RSS (VmHWM, reset per case
through /proc/PID/clear_refs where the kernel allows it) and its RSS after the case come from
/proc/PID/status.

The bench imports nothing from `cds_service`: it is a client, and must run against revisions of the
service whose package it does not import. PYTHONPATH chooses the revision the started service runs
(bench/README.md).

Exit status: 0 when every call was answered 200 with a list of cards, 1 otherwise, 2 when the
service could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import platform
import random
import re
import select
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project is beside us
    sys.path.insert(0, str(ROOT))

from scripts.service_process import (  # noqa: E402
    cpu_seconds,
    reset_peak_rss,
    serving_pid,
    start_server,
    status_kb,
    stop_process,
)

SERVICE = "als-patient-view"
HOOK = "patient-view"
REQUESTS = ROOT / "fhir_fixtures" / "requests"
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
DEFAULT_SIZES = (100, 1_000, 10_000, 50_000)
QUICK_SIZES = (100, 1_000)
EVERY_KEY_SIZE = 1_000
#: The largest body the service may be told to accept (the setting's own upper bound).
MAX_BODY_LIMIT = 100_000_000
#: Stands in for the hookInstance in a prepared body; each call gets its own uuid (same length).
PLACEHOLDER = "00000000-0000-4000-8000-0000000be9c4"
#: A case's timed calls carry at least this many body bytes in all (`Bench.calls_for`): some 20
#: calls at 100 Observations, --repeat from 1,000 up.
MIN_TIMED_BYTES = 2_000_000
MAX_TIMED_CALLS = 50
PATIENT_ID = "bench-als-1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


# ------------------------------------------------------------------------------------------------
# Bodies: a real-shaped ALS chart with N Observations, laid out under the discovery document's keys


@dataclass(frozen=True)
class Lab:
    """One kind of result: what a lab or a nurse would send for it, and how often."""

    code: str
    display: str
    short: str
    unit: str
    low: float | None  # reference range, when the lab gives one
    high: float | None
    mean: float
    spread: float
    decimals: int
    category: str  # laboratory | vital-signs
    weight: int


#: The mix of results. Every code is one the patient-view templates ask for (checked against
#: discovery at run time), ALT first: the riluzole rules read its whole history.
LABS: tuple[Lab, ...] = (
    Lab("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "ALT",
        "U/L", 7, 33, 24, 9, 0, "laboratory", 6),
    Lab("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "AST",
        "U/L", 10, 40, 26, 8, 0, "laboratory", 4),
    Lab("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "Bilirubin", "mg/dL", 0.1, 1.2,
        0.6, 0.25, 1, "laboratory", 3),
    Lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "WBC", "10*3/uL", 4.0, 11.0,
        6.8, 1.6, 1, "laboratory", 3),
    Lab("751-8", "Neutrophils [#/volume] in Blood by Automated count", "Neutrophils", "10*3/uL", 1.8,
        7.7, 4.1, 1.2, 1, "laboratory", 3),
    Lab("29463-7", "Body weight", "Weight", "kg", None, None, 71, 1.2, 1, "vital-signs", 3),
    Lab("8310-5", "Body temperature", "Temperature", "Cel", None, None, 36.8, 0.3, 1, "vital-signs", 2),
    Lab("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "SpO2", "%", 95, 100, 96.5,
        1.2, 0, "vital-signs", 2),
    Lab("19872-1", "FVC measured/predicted", "FVC % predicted", "%", 80, 120, 78, 9, 0, "laboratory", 1),
    Lab("2019-8", "Carbon dioxide [Partial pressure] in Arterial blood", "pCO2", "mm[Hg]", 35, 45, 41,
        3, 0, "laboratory", 1),
)  # fmt: skip

_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def template_type(template: str) -> str:
    """The resource type a prefetch template asks for: `Observation?...` → Observation."""
    return re.split(r"[?/]", template, maxsplit=1)[0]


def template_codes(template: str) -> set[str]:
    """The `system|code` tokens of a template's `code=` search parameter."""
    query = template.partition("?")[2]
    return {c for value in parse_qs(query).get("code", []) for c in value.split(",") if c}


def template_since(template: str) -> date | None:
    """The start of a template's date window (`date=geYYYY-MM-DD`), if it has one."""
    query = template.partition("?")[2]
    for value in parse_qs(query).get("date", []):
        if value.startswith("ge"):
            with contextlib.suppress(ValueError):
                return date.fromisoformat(value[2:12])
    return None


@dataclass(frozen=True)
class Layout:
    """Where each Observation goes, read from discovery: the key whose template asks for its code,
    and the period its dates are spread over (the template's date window, or five years)."""

    templates: dict[str, str]
    key_of_code: dict[str, str]
    since_of_key: dict[str, date]

    @classmethod
    def from_templates(cls, templates: Mapping[str, str], today: date) -> Layout:
        key_of_code: dict[str, str] = {}
        since_of_key: dict[str, date] = {}
        for key, template in templates.items():
            if template_type(template) != "Observation":
                continue
            since_of_key[key] = template_since(template) or today - timedelta(days=5 * 365)
            for token in template_codes(template):
                key_of_code.setdefault(token, key)
        missing = [lab.code for lab in LABS if f"{LOINC}|{lab.code}" not in key_of_code]
        if missing:
            raise RuntimeError(
                f"discovery no longer asks for LOINC {', '.join(missing)}: update bench/run.py's LABS"
            )
        return cls(dict(templates), key_of_code, since_of_key)


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def observation(number: int, lab: Lab, when: datetime, value: float) -> dict[str, Any]:
    """One result as EHRs send them: narrative, category, coded test, value, range, flag."""
    stamp = when.isoformat(timespec="seconds").replace("+00:00", "Z")
    issued = (when + timedelta(hours=3)).isoformat(timespec="seconds").replace("+00:00", "Z")
    flag = "N"
    if lab.low is not None and value < lab.low:
        flag = "L"
    elif lab.high is not None and value > lab.high:
        flag = "H"
    shown = f"{value:g} {lab.unit}"
    ranged = f" (ref {lab.low:g}-{lab.high:g})" if lab.low is not None and lab.high is not None else ""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"res-{number:06d}",
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{lab.short}: {shown}{ranged}, '
            f"{stamp[:10]}</p></div>",
        },
        "status": "final",
        "category": [{"coding": [{"system": _CATEGORY, "code": lab.category}]}],
        "code": {"coding": [{"system": LOINC, "code": lab.code, "display": lab.display}], "text": lab.short},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": stamp,
        "issued": issued,
        "valueQuantity": _quantity(value, lab.unit),
    }
    if lab.low is not None and lab.high is not None:
        resource["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": flag}]}]
        resource["referenceRange"] = [
            {"low": _quantity(lab.low, lab.unit), "high": _quantity(lab.high, lab.unit)}
        ]
    return resource


def observations(count: int, layout: Layout, now: datetime, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """`count` results, each with the prefetch key it belongs under. Deterministic for a seed and day."""
    rng = random.Random(seed)  # noqa: S311 - test data, not cryptography
    weights = [lab.weight for lab in LABS]
    result = []
    for number in range(1, count + 1):
        lab = rng.choices(LABS, weights)[0]
        key = layout.key_of_code[f"{LOINC}|{lab.code}"]
        since = datetime.combine(layout.since_of_key[key], datetime.min.time(), UTC) + timedelta(days=1)
        span = max(60.0, (now - since).total_seconds() - 86_400)
        when = (since + timedelta(seconds=rng.uniform(0, span))).replace(microsecond=0)
        value: float = round(max(0.0, rng.gauss(lab.mean, lab.spread)), lab.decimals)
        if not lab.decimals:
            value = int(value)  # 96, not 96.0: as labs send whole numbers
        result.append((key, observation(number, lab, when, value)))
    return result


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def als_chart(today: date) -> list[dict[str, Any]]:
    """Patient, conditions and medications of a man with active ALS on riluzole: the rules all run."""
    onset = (today - timedelta(days=3 * 365)).isoformat()
    started = (today - timedelta(days=3 * 365 - 40)).isoformat()
    condition_status = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    verification = "http://terminology.hl7.org/CodeSystem/condition-ver-status"

    def condition(rid: str, system: str, code: str, display: str) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": rid,
            "clinicalStatus": {"coding": [{"system": condition_status, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": verification, "code": "confirmed"}]},
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                        }
                    ]
                }
            ],
            "code": _coding(system, code, display),
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "onsetDateTime": onset,
            "recordedDate": onset,
        }

    return [
        {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.2.1.4.1", "value": "9434765919"}],
            "active": True,
            "name": [{"use": "official", "family": "Bench", "given": ["Arthur"]}],
            "gender": "male",
            "birthDate": "1959-03-02",
        },
        condition("als-dx", "http://snomed.info/sct", "86044005", "Amyotrophic lateral sclerosis"),
        condition("htn", "http://snomed.info/sct", "38341003", "Hypertensive disorder"),
        {
            "resourceType": "MedicationRequest",
            "id": "riluzole",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": _coding(
                "http://www.nlm.nih.gov/research/umls/rxnorm", "199206", "riluzole 50 MG Oral Tablet"
            ),
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "authoredOn": started,
            "dosageInstruction": [
                {
                    "text": "50 mg twice a day",
                    "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
                    "doseAndRate": [{"doseQuantity": _quantity(50, "mg")}],
                }
            ],
        },
    ]


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r.get('id')}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def hook_request(patient_id: str, prefetch: dict[str, Any]) -> dict[str, Any]:
    return {
        "hook": HOOK,
        "hookInstance": PLACEHOLDER,
        "context": {"userId": "Practitioner/bench-1", "patientId": patient_id},
        "prefetch": prefetch,
    }


def als_request(count: int, layout: Layout, now: datetime, *, every_key: bool, seed: int) -> dict[str, Any]:
    """The patient-view request with every prefetch key filled: no key is left for the service to
    fetch. `every_key`: every Observation under every Observation key, not just under its own."""
    chart = als_chart(now.date())
    results = observations(count, layout, now, seed)
    prefetch: dict[str, Any] = {}
    for key, template in layout.templates.items():
        rtype = template_type(template)
        if rtype == "Patient":
            prefetch[key] = chart[0]
        elif rtype == "Observation":
            prefetch[key] = searchset([r for k, r in results if every_key or k == key])
        else:
            prefetch[key] = searchset([r for r in chart if r["resourceType"] == rtype])
    return hook_request(PATIENT_ID, prefetch)


def chart_request(bundle: Mapping[str, Any], templates: Mapping[str, str]) -> dict[str, Any] | None:
    """A Bundle of one patient's chart as an EHR filling every template sends it: under each key the
    resources of the template's type, unfiltered (the Patient, or a searchset of the rest; so every
    Observation under every Observation key). None when the Bundle does not hold one Patient.

    `cds_service.bundles.request_from_bundle` does the same from the service's own tables; the bench
    reads the discovery document instead because it is a client: it must run against revisions of
    the service whose package it does not import (or cannot, halfway through a rewrite)."""
    resources = [e.get("resource") for e in bundle.get("entry") or () if isinstance(e, Mapping)]
    resources = [r for r in resources if isinstance(r, Mapping)]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        return None
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        rtype = template_type(template)
        matching = [dict(r) for r in resources if r.get("resourceType") == rtype]
        prefetch[key] = matching[0] if rtype == "Patient" else searchset(matching)
    return hook_request(patients[0]["id"], prefetch)


def encode(request: Mapping[str, Any]) -> bytes:
    """Compact JSON, as EHRs send it."""
    return json.dumps({**request, "hookInstance": PLACEHOLDER}, separators=(",", ":")).encode("utf-8")


def resource_count(request: Mapping[str, Any]) -> int:
    """Resources in the prefetch (a Bundle counts its entries, a resource counts one)."""
    total = 0
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict):
            total += len(value.get("entry") or ()) if value.get("resourceType") == "Bundle" else 1
    return total


# ------------------------------------------------------------------------------------------------
# Calls


class HealthPoller:
    """GET /healthz every `interval` seconds on a connection and a thread of its own, while a big
    call is in flight: a worker whose event loop is busy (parsing a body, say) answers late, and the
    longest such round trip is how long the worker was unavailable to every other request."""

    def __init__(self, url: str, interval: float, timeout: float) -> None:
        self.url = f"{url}/healthz"
        self.interval = interval
        self.timeout = timeout
        self.round_trips_ms: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-poller", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            with contextlib.suppress(httpx.HTTPError):
                client.get(self.url)  # open the connection before the measured call starts
            self._ready.set()
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    client.get(self.url).raise_for_status()
                    self.round_trips_ms.append((time.perf_counter() - started) * 1000)
                except httpx.HTTPError:
                    self.failures += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        self._ready.wait(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    @property
    def max_ms(self) -> float | None:
        return max(self.round_trips_ms) if self.round_trips_ms else None


@dataclass
class Call:
    ms: float
    status: int
    cards: int | None  # None: the answer held no list of cards
    error: str | None = None


class Connection:
    """One keep-alive HTTP/1.1 connection to the service, with the standard library's client.

    Not httpx, for the timed calls: its pure-Python HTTP parsing (h11) and request machinery cost
    0.5 to 1 ms of the bench's own CPU a request on this machine (GET /healthz: 1.9 against 0.8 ms
    with http.client), and a round trip counts the client's time as much as the service's. What
    the client still costs is measured and printed (`floor_ms`), so no reader takes it for the
    service's."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body); a connection the server closed is opened again, once."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            if self._conn is not None and self._conn.sock is not None:
                # Readable while idle means closed by the server (its keep-alive timeout): open a
                # new one now rather than send a body into a dead connection and send it again.
                readable, _, _ = select.select([self._conn.sock], [], [], 0)
                if readable:
                    self.close()
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def floor_ms(self, calls: int = 50) -> float:
        """Median round trip of GET /healthz on this connection: what the client, the loopback and
        the HTTP layers cost each call before the service does anything (part of every round trip)."""
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            self.request("GET", "/healthz")
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def post(connection: Connection, path: str, body: bytes) -> Call:
    """One hook call with a fresh hookInstance, timed from send to the answer read and parsed."""
    body = body.replace(PLACEHOLDER.encode(), str(uuid.uuid4()).encode(), 1)  # before the clock starts
    started = time.perf_counter()
    try:
        status, content = connection.request("POST", path, body)
        cards = json.loads(content).get("cards") if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
        return Call((time.perf_counter() - started) * 1000, 0, None, type(exc).__name__)
    ms = (time.perf_counter() - started) * 1000
    if status != 200:
        return Call(ms, status, None, f"HTTP {status}")
    if not isinstance(cards, list):
        return Call(ms, 200, None, "answer without cards")
    return Call(ms, 200, len(cards))


def json_loads_ms(body: bytes, runs: int, *, collect: bool = True) -> float:
    """Median time of `json.loads` over the body: the floor of reading it, in this interpreter.

    Timed with the garbage collector paused, as `timeit` does. With it running, a large body's
    parse is interrupted by full collections whose count depends on how many objects the measuring
    process happens to hold (here: 1.8 to 3.8 s for a 52 MB body, against 0.55 to 0.77 s paused),
    which would make the denominator of every ratio noise. What collections cost the service while
    it reads a body is the service's own cost, and stays in the round trip."""
    if collect:
        gc.collect()
    times = []
    for _ in range(runs):
        gc.disable()
        try:
            started = time.perf_counter()
            parsed = json.loads(body)
            times.append((time.perf_counter() - started) * 1000)
        finally:
            gc.enable()
        del parsed
    return statistics.median(times)


@dataclass
class Case:
    """One row of the table: a body, and what calling the service with it cost."""

    name: str
    kind: str  # typical | observations | every-key | synthea | synthea-median
    resources: int
    bytes: int
    calls: int = 0
    round_trip_ms: float | None = None  # median of the timed calls
    json_loads_ms: float | None = None  # median, same bytes, this process
    ratio: float | None = None
    ms_per_mb: float | None = None  # round trip per MB of body: flat when cost is linear in size
    cpu_ms_per_call: float | None = None
    max_stall_ms: float | None = None
    peak_rss_kb: int | None = None
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    cards: int | None = None
    errors: list[str] = field(default_factory=list)

    def finish(self, timed: list[Call], cpu_ms: float) -> None:
        """The figures that follow from the timed calls and the worker's CPU over them."""
        self.errors += [c.error for c in timed if c.error]
        good = [c.ms for c in timed if c.error is None]
        if not good:
            return
        self.round_trip_ms = statistics.median(good)
        self.cpu_ms_per_call = cpu_ms / len(timed)
        if self.json_loads_ms:
            self.ratio = self.round_trip_ms / self.json_loads_ms
        self.ms_per_mb = self.round_trip_ms / (self.bytes / 1e6) if self.bytes else None


@dataclass
class Bench:
    """The started server's worker, one keep-alive connection to it, and how each case is measured."""

    url: str
    pid: int
    repeat: int
    poll_seconds: float
    timeout: float
    peak_resettable: bool = True
    run_peak_kb: int = 0  # the worker's peak over the whole run, across the per-case resets
    min_timed_bytes: int = MIN_TIMED_BYTES  # 0: exactly `repeat` timed calls (--quick)
    client: Connection = field(init=False)

    def __post_init__(self) -> None:
        self.client = Connection(self.url, self.timeout)

    @property
    def endpoint(self) -> str:
        return f"/cds-services/{SERVICE}"

    def _timed(
        self, body: bytes, calls: int, baseline: list[float] | None = None
    ) -> tuple[list[Call], float]:
        """`calls` sequential calls, and the worker's CPU over them (ms; /proc ticks, 10 ms each).
        With `baseline`: one `json.loads` of the body timed before each call, appended to it, so the
        ratio's two sides are measured at the same moments (a shared machine's speed drifts by a
        factor of two within minutes: measured apart, the ratio moved with it)."""
        before = cpu_seconds([self.pid])
        results = []
        for _ in range(calls):
            if baseline is not None:
                # Three in a row, their median: the parse at its best at this moment (a parse right
                # after a call, its caches taken by the service, took up to 1.7 times as long).
                baseline.append(json_loads_ms(body, 3, collect=False))
            results.append(post(self.client, self.endpoint, body))
        return results, (cpu_seconds([self.pid]) - before) * 1000

    def calls_for(self, body: bytes) -> int:
        """Timed calls for a body: --repeat, or more for a small one (at least MIN_TIMED_BYTES of
        bodies in all): a median of three 5 ms calls on a shared machine is mostly its noise."""
        return max(self.repeat, min(MAX_TIMED_CALLS, -(-self.min_timed_bytes // max(1, len(body)))))

    def measure(self, case: Case, body: bytes, *, settle: float = 0.5) -> Case:
        """A probe call under the /healthz poller (the stall), then `repeat` timed calls without it
        (the round trip and CPU: the poller's own requests would be counted in them); the worker's
        memory before, at its peak across both, and after."""
        gc.collect()  # the bench's own garbage, before any json.loads is timed
        self.peak_kb()  # the peak so far, before the reset forgets it
        self.peak_resettable = reset_peak_rss(self.pid) and self.peak_resettable
        case.rss_before_kb = status_kb(self.pid)["VmRSS"]
        with HealthPoller(self.url, self.poll_seconds, self.timeout) as poller:
            probe = post(self.client, self.endpoint, body)
        case.max_stall_ms = poller.max_ms
        if poller.failures:
            case.errors.append(f"{poller.failures} /healthz polls failed")
        if probe.error:
            case.errors.append(f"probe call: {probe.error}")
        case.cards = probe.cards
        baseline: list[float] = []
        timed, cpu_ms = self._timed(body, self.calls_for(body), baseline)
        case.json_loads_ms = statistics.median(baseline)
        case.calls = 1 + len(timed)
        case.finish(timed, cpu_ms)
        time.sleep(settle)  # let the call's garbage go before "after"
        memory = status_kb(self.pid)
        case.peak_rss_kb, case.rss_after_kb = memory["VmHWM"], memory["VmRSS"]
        self.run_peak_kb = max(self.run_peak_kb, case.peak_rss_kb)
        return case

    def peak_kb(self) -> int:
        """The worker's peak RSS over the run so far."""
        self.run_peak_kb = max(self.run_peak_kb, status_kb(self.pid)["VmHWM"])
        return self.run_peak_kb

    def cpu_per_call(self, name: str, body: bytes, resources: int, calls: int) -> Case:
        """Service CPU per call of one chart: the worker's utime+stime over `calls` sequential calls,
        after a warm-up (first-call imports, caches, the allocator's arenas)."""
        case = Case(name, "typical", resources, len(body))
        case.json_loads_ms = json_loads_ms(body, 20)
        self._timed(body, max(3, calls // 10))
        timed, cpu_ms = self._timed(body, calls)
        case.calls = calls
        case.cards = timed[0].cards
        case.finish(timed, cpu_ms)
        return case

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------------
# The cases


def discovery(url: str, timeout: float) -> dict[str, str]:
    """The patient-view service's prefetch templates, from the started server's discovery."""
    services = httpx.get(f"{url}/cds-services", timeout=timeout).raise_for_status().json()["services"]
    return dict(next(s for s in services if s["id"] == SERVICE)["prefetch"])


def typical_bodies() -> Iterator[tuple[str, bytes, int]]:
    """The bundled patient-view requests that carry their prefetch."""
    for path in sorted(REQUESTS.glob("patient-view-*.json")):
        request = json.loads(path.read_text(encoding="utf-8"))
        if not request.get("prefetch"):
            continue  # the FHIR-fetch example: scripts/loadtest.py measures that path
        request.pop("fhirServer", None)  # so that nothing could be fetched, whatever the prefetch
        request.pop("fhirAuthorization", None)
        yield path.stem, encode(request), resource_count(request)


def synthea_bodies(
    folder: Path, limit: int | None, templates: Mapping[str, str]
) -> Iterator[tuple[str, bytes, int]]:
    """Each chart as a patient-view request; with `limit`, only the smallest charts (a quick run)."""
    charts = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_size, p.name))
    taken = 0
    for path in charts:
        if limit is not None and taken >= limit:
            return
        request = chart_request(json.loads(path.read_text(encoding="utf-8")), templates)
        if request is None:
            continue  # not a patient's chart (Synthea can also write hospital and practitioner Bundles)
        taken += 1
        yield "_".join(path.stem.split("_")[:2]), encode(request), resource_count(request)


def size_plan(sizes: list[int], every_key: bool) -> list[tuple[int, bool]]:
    """(count, every key?) in the order they run: ascending, the every-key case after its size."""
    plan = [(n, False) for n in sorted(set(sizes))]
    if every_key:
        position = next((i for i, (n, _) in enumerate(plan) if n > EVERY_KEY_SIZE), len(plan))
        plan.insert(position, (EVERY_KEY_SIZE, True))
    return plan


def synthea_median(charts: list[Case]) -> Case:
    """One row for the charts: the median chart's figures, but the worst stall and the highest peak."""

    def median(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return Case(
        name=f"Synthea, {len(charts)} charts (median)",
        kind="synthea-median",
        resources=int(median([c.resources for c in charts]) or 0),
        bytes=int(median([c.bytes for c in charts]) or 0),
        calls=sum(c.calls for c in charts),
        round_trip_ms=median([c.round_trip_ms for c in charts]),
        json_loads_ms=median([c.json_loads_ms for c in charts]),
        ratio=median([c.ratio for c in charts]),
        ms_per_mb=median([c.ms_per_mb for c in charts]),
        cpu_ms_per_call=median([c.cpu_ms_per_call for c in charts]),
        max_stall_ms=max((c.max_stall_ms for c in charts if c.max_stall_ms is not None), default=None),
        peak_rss_kb=max((c.peak_rss_kb for c in charts if c.peak_rss_kb is not None), default=None),
        rss_after_kb=charts[-1].rss_after_kb if charts else None,
        cards=sum(c.cards or 0 for c in charts),
        errors=[f"{c.name}: {e}" for c in charts for e in c.errors],
    )


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run_cases(
    bench: Bench, args: argparse.Namespace, templates: dict[str, str], report: dict[str, Any]
) -> tuple[list[Case], list[Case], list[Case]]:
    """(typical charts, the table's cases, each Synthea chart), in the order they run."""
    typical = []
    for name, body, resources in typical_bodies():
        typical.append(bench.cpu_per_call(name, body, resources, args.cpu_calls))
        progress(f"{name}: {_fmt(typical[-1].cpu_ms_per_call, 2)} ms of service CPU per call")

    now = datetime.now(UTC).replace(microsecond=0)
    layout = Layout.from_templates(templates, now.date())
    cases = []
    for count, every_key in size_plan(args.sizes, not args.no_every_key):
        request = als_request(count, layout, now, every_key=every_key, seed=args.seed)
        name = f"{count:,} Observations" + (", every key" if every_key else "")
        resources, body = resource_count(request), encode(request)
        del request
        case = bench.measure(
            Case(name, "every-key" if every_key else "observations", resources, len(body)), body
        )
        cases.append(case)
        progress(f"{name}: round trip {_fmt(case.round_trip_ms)} ms, ratio {_fmt(case.ratio)}")
        del body

    charts: list[Case] = []
    folder: Path = args.synthea
    if args.synthea_limit == 0:
        report["synthea"]["note"] = "Synthea charts: skipped (--synthea-limit 0)"
    elif not folder.is_dir() or not any(folder.glob("*.json")):
        report["synthea"]["note"] = f"Synthea charts: skipped, no charts in {folder}"
    else:
        for name, body, resources in synthea_bodies(folder, args.synthea_limit, templates):
            charts.append(bench.measure(Case(name, "synthea", resources, len(body)), body, settle=0.1))
        progress(f"{len(charts)} Synthea charts")
        if charts:
            cases.append(synthea_median(charts))
            worst = max(
                (c for c in charts if c.ratio is not None), key=lambda c: c.ratio or 0.0, default=None
            )
            report["synthea"] |= {
                "count": len(charts),
                "bytes": sum(c.bytes for c in charts),
                "median_ratio": cases[-1].ratio,
                "max_ratio": worst.ratio if worst else None,
                "max_ratio_chart": worst.name if worst else None,
            }
    return typical, cases, charts


# ------------------------------------------------------------------------------------------------
# The table


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.0f}"


Column = tuple[str, int, Callable[[Case], str]]  # heading, width, cell

COLUMNS: tuple[Column, ...] = (
    ("case", 32, lambda c: c.name),
    ("resources", 10, lambda c: _fmt(c.resources)),
    ("bytes", 12, lambda c: _fmt(c.bytes)),
    ("round trip ms", 14, lambda c: _fmt(c.round_trip_ms)),
    ("json.loads ms", 14, lambda c: _fmt(c.json_loads_ms, 2)),
    ("ratio", 7, lambda c: _fmt(c.ratio)),
    ("ms/MB", 7, lambda c: _fmt(c.ms_per_mb, 0)),
    ("CPU ms/call", 12, lambda c: _fmt(c.cpu_ms_per_call, 0)),
    ("max stall ms", 13, lambda c: _fmt(c.max_stall_ms)),
    ("peak RSS MB", 12, lambda c: _mb(c.peak_rss_kb)),
    ("RSS after MB", 13, lambda c: _mb(c.rss_after_kb)),
    ("cards", 6, lambda c: _fmt(c.cards)),
)
TYPICAL_COLUMNS: tuple[Column, ...] = (
    ("typical chart", 40, lambda c: c.name),
    ("resources", 10, lambda c: _fmt(c.resources)),
    ("bytes", 10, lambda c: _fmt(c.bytes)),
    ("calls", 7, lambda c: _fmt(c.calls)),
    ("service CPU ms/call", 20, lambda c: _fmt(c.cpu_ms_per_call, 2)),
    ("round trip ms", 14, lambda c: _fmt(c.round_trip_ms, 2)),
    ("cards", 6, lambda c: _fmt(c.cards)),
)


def _table(columns: tuple[Column, ...], rows: list[Case]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, (_, width, _)) in enumerate(zip(cells, columns, strict=True))
        )

    return [line([heading for heading, _, _ in columns])] + [
        line([cell(row) for _, _, cell in columns]) for row in rows
    ]


def machine() -> dict[str, Any]:
    """What the figures came from: they mean little without it."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1) if memory_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def targets(cases: list[Case], typical: list[Case], charts: list[Case]) -> list[str]:
    """The issue's targets next to this run's figures: a reading aid, never a pass/fail."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    # Every case's ratio and each Synthea chart's own (their row holds only the median).
    rated = [c for c in [*cases, *charts] if c.ratio is not None and c.kind != "synthea-median"]
    worst = max(rated, key=lambda c: c.ratio or 0.0, default=None)
    lines = [
        f"every ratio <= 5: {verdict(all((c.ratio or 0) <= 5 for c in rated) if rated else None)}"
        + (f" (worst {worst.ratio:.1f}: {worst.name})" if worst and worst.ratio is not None else "")
    ]
    sized = [c for c in cases if c.kind == "observations" and c.ms_per_mb]
    if len(sized) >= 2:
        lines.append(
            "cost linear in size (ms/MB flat): " + ", ".join(f"{c.name} {c.ms_per_mb:,.0f}" for c in sized)
        )
    if sized:
        big = sized[-1]
        peak_ok = big.peak_rss_kb < 400 * 1024 if big.peak_rss_kb else None
        stall_ok = big.max_stall_ms <= 100 if big.max_stall_ms is not None else None
        lines.append(
            f"{big.name} (targets stated for 50,000): worker under 400 MB {verdict(peak_ok)} "
            f"(peak {_mb(big.peak_rss_kb)} MB); event loop never blocked over 100 ms "
            f"{verdict(stall_ok)} (max stall {_fmt(big.max_stall_ms)} ms)"
        )
    als = [c for c in typical if "no-als" not in c.name and c.cpu_ms_per_call is not None]
    if als:
        cpu_ok = all((c.cpu_ms_per_call or 0) <= 3 for c in als)
        lines.append(
            f"typical ALS chart <= 3 ms of service CPU: {verdict(cpu_ok)} "
            f"({', '.join(f'{c.name} {c.cpu_ms_per_call:.2f} ms' for c in als)})"
        )
    return lines


def render(report: dict[str, Any], typical: list[Case], cases: list[Case]) -> str:
    m, server, config = report["machine"], report["server"], report["config"]
    shutdown = server.get("shutdown") or {}
    code = shutdown.get("exit_code")
    lines = [
        f"als-cds bench {report['started_at']}: {m['cpus']} x {m['cpu']}, {m['memory_gb']} GB, "
        f"Linux {m['kernel']}, Python {m['python']}",
        f"load average (1, 5, 15 min) at start {m['loadavg_start']}, at end {m['loadavg_end']}: other "
        "work on the machine shows in every wall-clock figure",
        f"service: one uvicorn worker (pid {server['pid']}), SQLite, authentication off, loopback; per "
        f"case one probe call under a /healthz poll every {config['poll_ms']:g} ms, then "
        f"{config['repeat']} timed call(s)",
        f"client floor: GET /healthz on the same keep-alive connection (http.client), median "
        f"{_fmt(server.get('client_floor_ms'), 2)} ms: the client's, the loopback's and HTTP's share "
        "of every round trip",
        "",
        *_table(TYPICAL_COLUMNS, typical),
        "",
        *_table(COLUMNS, cases),
    ]
    synthea = report["synthea"]
    if synthea.get("note"):
        lines.append(f"  {synthea['note']}")
    if synthea.get("max_ratio") is not None:
        lines.append(
            f"  Synthea: {synthea['count']} charts, {synthea['bytes']:,} bytes in all, each Observation "
            f"under every Observation key; ratio median {synthea['median_ratio']:.1f}, max "
            f"{synthea['max_ratio']:.1f} ({synthea['max_ratio_chart']}); stall and peak: the worst chart's"
        )
    peak = "reset before each case" if server["peak_resettable"] else "since start (reset refused)"
    lines += [
        "",
        "round trip: client wall time of the POST (keep-alive connection, http.client), median of the",
        "timed calls;",
        "json.loads: the same bytes in this process, three in a row before each timed call, median,",
        "garbage collector paused (as timeit);",
        "ratio: round trip / json.loads; ms/MB: round trip per MB of body; CPU ms/call: the worker's",
        "utime+stime over the timed calls (10 ms ticks); max stall: longest GET /healthz round trip during",
        f"the probe call; peak RSS: the worker's VmHWM, {peak}; RSS after: its VmRSS after the case.",
        f"worker RSS at start {_mb(server['rss_start_kb'])} MB, "
        f"peak over the run {_mb(server['peak_kb'])} MB",
        "",
        "targets from the issue (printed, not asserted):",
        *(f"  {text}" for text in report["targets"]),
        f"server stopped with SIGTERM: exit code {code}"
        + (" (uvicorn re-raises the signal after a graceful shutdown)" if code == -15 else "")
        + f", log says application shutdown complete: {shutdown.get('log_says_shutdown_complete')}",
        "result: " + ("OK" if report["ok"] else f"ERRORS ({len(report['errors'])})"),
        *(f"  error {e}" for e in report["errors"][:20]),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1 or max(sizes) > 80_000:
        raise argparse.ArgumentTypeError("sizes are 1 to 80,000 Observations, comma-separated")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, help="Observation counts (default 100,1000,10000,50000)")
    parser.add_argument(
        "--repeat",
        type=int,
        help="timed calls per case at least, after its probe call (default 3; more for small bodies)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CI smoke run: sizes 100,1000, repeat 1, the 2 smallest Synthea charts, 20 calls per "
        "typical chart",
    )
    parser.add_argument("--cpu-calls", type=int, help="sequential calls per typical chart (default 200)")
    parser.add_argument("--synthea", type=Path, default=SYNTHEA, help=f"folder of Synthea charts ({SYNTHEA})")
    parser.add_argument(
        "--synthea-limit", type=int, help="only the N smallest charts (default: all; 0: none)"
    )
    parser.add_argument(
        "--no-every-key", action="store_true", help="leave out the every-Observation-key case"
    )
    parser.add_argument("--poll-ms", type=float, default=10.0, help="/healthz poll interval (default 10)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per call, seconds (default 180)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated results (default 42)")
    parser.add_argument("--server-log", type=Path, help="keep the service's log here")
    parser.add_argument("--json", help="also write the report as JSON to this file ('-': stdout)")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.cpu_calls is None:
        args.cpu_calls = 20 if args.quick else 200
    if args.synthea_limit is None and args.quick:
        args.synthea_limit = 2
    if min(args.repeat, args.cpu_calls) < 1 or args.repeat > 50 or args.cpu_calls > 5000:
        parser.error("--repeat is 1 to 50, --cpu-calls 1 to 5000")
    if args.poll_ms <= 0 or args.timeout <= 0 or (args.synthea_limit or 0) < 0:
        parser.error("--poll-ms and --timeout must be > 0, --synthea-limit >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Start the service, run every case, stop it: the report (None: the service did not start)."""
    workdir = Path(tempfile.mkdtemp(prefix="als-cds-bench-"))
    log_path = args.server_log or workdir / "server.log"
    # An Observation entry is about 1 kB; the every-key case and the Synthea charts are far smaller
    # than the largest size. The setting refuses more than MAX_BODY_LIMIT.
    limit = min(MAX_BODY_LIMIT, max(5_000_000, 1_300 * max(args.sizes) + 1_000_000))
    report: dict[str, Any] = {
        "tool": "bench/run.py",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "sizes": args.sizes,
            "repeat": args.repeat,
            "cpu_calls": args.cpu_calls,
            "poll_ms": args.poll_ms,
            "synthea_limit": args.synthea_limit,
            "seed": args.seed,
            "max_body_bytes": limit,
        },
        "server": {"pid": None, "workers": 1, "database": "sqlite", "peak_resettable": False},
        "synthea": {"folder": str(args.synthea), "note": None},
        "errors": [],
    }
    try:
        server, url = start_server(
            1, f"sqlite:///{workdir / 'als-cds.db'}", workdir, log_path, "info",
            {"ALS_CDS_MAX_BODY_BYTES": str(limit)},
        )  # fmt: skip
    except (RuntimeError, OSError) as exc:
        print(f"bench: cannot start the service: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return None
    typical: list[Case] = []
    cases: list[Case] = []
    charts: list[Case] = []
    bench: Bench | None = None
    try:
        pid = serving_pid(server.pid)
        report["server"] |= {"url": url, "pid": pid, "rss_start_kb": status_kb(pid)["VmRSS"]}
        bench = Bench(url, pid, args.repeat, args.poll_ms / 1000, args.timeout)
        if args.quick:
            bench.min_timed_bytes = 0  # a smoke run: one timed call a case
        report["server"]["client_floor_ms"] = bench.client.floor_ms()
        typical, cases, charts = run_cases(bench, args, discovery(url, args.timeout), report)
        report["server"]["peak_resettable"] = bench.peak_resettable
    except (httpx.HTTPError, OSError, RuntimeError, KeyError, StopIteration, ValueError) as exc:
        report["errors"].append(f"bench: {type(exc).__name__}: {exc}")
    finally:
        if bench is not None:
            with contextlib.suppress(OSError, KeyError):
                report["server"]["peak_kb"] = bench.peak_kb()
            bench.close()
        code = stop_process(server, 45)
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        report["server"]["shutdown"] = {
            "exit_code": code,
            "log_says_shutdown_complete": "Application shutdown complete." in log_text,
        }
        shutil.rmtree(workdir, ignore_errors=True)

    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["server"].setdefault("rss_start_kb", None)
    report["server"].setdefault("peak_kb", None)
    report["server"].setdefault("client_floor_ms", None)
    report["errors"] += [f"{c.name}: {e}" for c in [*typical, *cases] for e in c.errors]
    report["targets"] = targets(cases, typical, charts)
    report["typical"] = [asdict(c) for c in typical]
    report["cases"] = [asdict(c) for c in cases]
    report["synthea"]["charts"] = [asdict(c) for c in charts]
    report["ok"] = not report["errors"]
    report["table"] = render(report, typical, cases)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if report is None:
        return 2
    print(report["table"], file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
