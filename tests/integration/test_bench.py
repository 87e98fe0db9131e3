"""bench/run.py, run for real but small (`--quick`): it starts the service, every case is answered,
the table has every row, and the service stops cleanly.

No figure is asserted, only that each was measured: timings and memory depend on the machine, and
these tests run on shared ones. docs/performance.md has the full run.

The Synthea rows are measured on the charts bundled in fhir_fixtures/synthea (unpacked here), not
on the whole set in ../shared/, which a fresh clone lacks: the test is the same on every clone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from tests.support import ROOT, bundled_charts, chart_bytes, chart_name

BENCH = ROOT / "bench" / "run.py"
MEASURED = ("round_trip_ms", "json_loads_ms", "ratio", "ms_per_mb", "cpu_ms_per_call", "max_stall_ms")
MEMORY = ("peak_rss_kb", "rss_before_kb", "rss_after_kb")


def load_bench() -> ModuleType:
    """bench/run.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_quick_bench_measures_every_case_and_prints_the_table(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    synthea = tmp_path / "synthea"  # bench/run.py reads a folder of *.json charts
    synthea.mkdir()
    for chart in bundled_charts():
        (synthea / f"{chart_name(chart)}.json").write_bytes(chart_bytes(chart))
    assert len(list(synthea.glob("*.json"))) >= 2
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(report_path), "--synthea", str(synthea)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ALS_CDS_AUTH_REQUIRED": "false"},
        check=False,
    )
    print(completed.stdout)  # the figures, for whoever reads the test log
    print(completed.stderr[-3000:], file=sys.stderr)
    assert completed.returncode == 0
    table = completed.stdout.splitlines()
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["ok"] is True and report["errors"] == []

    def row(name: str) -> str:
        matches = [line for line in table if line.startswith(name + "  ")]
        assert len(matches) == 1, f"one row {name!r} in the table"
        return matches[0]

    header = next(line for line in table if line.startswith("case "))
    for heading in ("resources", "bytes", "round trip ms", "json.loads ms", "ratio", "ms/MB", "CPU ms/call"):
        assert heading in header
    for heading in ("max stall ms", "peak RSS MB", "RSS after MB", "cards"):
        assert heading in header
    assert "service CPU ms/call" in next(line for line in table if line.startswith("typical chart "))

    # The generated ALS patient: 100 or 1,000 results plus Patient, 2 Conditions and riluzole, each
    # result once under its own key, or under both Observation keys; the rules ran (cards).
    cases = {case["name"]: case for case in report["cases"]}
    for name, resources in (
        ("100 Observations", 104),
        ("1,000 Observations", 1004),
        ("1,000 Observations, every key", 2004),
    ):
        row(name)
        case = cases[name]
        assert case["resources"] == resources
        assert case["calls"] == 2  # the probe call and one timed call
        assert case["cards"] > 0
        for figure in MEASURED + MEMORY:
            assert case[figure] is not None, f"{name}: {figure} measured"

    typical = {case["name"]: case for case in report["typical"]}
    for name in ("patient-view-als-riluzole-lft-overdue", "patient-view-epic-style"):
        row(name)
        assert typical[name]["calls"] == 20
        assert typical[name]["cards"] > 0
        assert typical[name]["cpu_ms_per_call"] is not None

    row("Synthea, 2 charts (median)")  # --quick: the 2 smallest charts
    assert len(report["synthea"]["charts"]) == 2
    for chart in report["synthea"]["charts"]:
        assert chart["errors"] == [] and chart["ratio"] is not None

    assert "targets from the issue (printed, not asserted):" in table
    assert report["server"]["shutdown"]["log_says_shutdown_complete"] is True
    assert table[-1] == "result: OK"


def test_each_observation_goes_under_the_key_whose_template_asks_for_its_code() -> None:
    """'Sent once under their key': the key comes from the discovery templates, as an EHR's would."""
    bench = load_bench()
    codes = {lab.code for lab in bench.LABS}
    history = {"1742-6"}
    query = "Observation?patient={{context.patientId}}&code="
    templates = {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}",
        "medications": "MedicationRequest?patient={{context.patientId}}",
        "observations": query
        + ",".join(f"http://loinc.org|{c}" for c in sorted(codes - history))
        + "&date=ge2025-11-01&_sort=-date&_count=100",
        "observation-history": query + "http://loinc.org|1742-6&_sort=-date&_count=100",
        "devices": "Device?patient={{context.patientId}}",
    }
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    layout = bench.Layout.from_templates(templates, now.date())

    def codes_under(request: dict, key: str) -> list[str]:
        return [e["resource"]["code"]["coding"][0]["code"] for e in request["prefetch"][key]["entry"]]

    once = bench.als_request(300, layout, now, every_key=False, seed=1)
    assert set(once["prefetch"]) == set(templates)  # every key supplied: nothing left to fetch
    assert set(codes_under(once, "observation-history")) == history
    assert history.isdisjoint(codes_under(once, "observations"))
    assert len(codes_under(once, "observations")) + len(codes_under(once, "observation-history")) == 300
    windowed = [e["resource"]["effectiveDateTime"] for e in once["prefetch"]["observations"]["entry"]]
    assert min(windowed) >= "2025-11-01"  # within the template's date window
    assert once["prefetch"]["devices"]["entry"] == []
    assert [e["resource"]["id"] for e in once["prefetch"]["conditions"]["entry"]] == ["als-dx", "htn"]

    every = bench.als_request(300, layout, now, every_key=True, seed=1)
    assert len(codes_under(every, "observations")) == len(codes_under(every, "observation-history")) == 300
