"""scripts/loadtest.py, run for real but briefly: the load is served without an error, and the report
holds every figure it promises.

The figures themselves (throughput, latency, memory) are printed, not tested: these tests run on
shared, noisy machines. docs/performance.md has the full 10,000-request runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

SCRIPT = ROOT / "scripts" / "loadtest.py"
KINDS = {
    "pv-prefetch": 200,
    "pv-fetch": 200,
    "select-prefetch": 200,
    "select-fetch": 200,
    "sign-prefetch": 200,
    "sign-fetch": 200,
    "feedback": 200,
    "pv-412": 412,
}
TOP_LEVEL = {
    "tool",
    "started_at",
    "machine",
    "target",
    "fhir_server",
    "config",
    "requests",
    "duration_s",
    "throughput_rps",
    "latency_ms",
    "errors",
    "feedback",
    "memory",
    "cpu_seconds",
    "server_cpu_ms_per_request",
    "server_shutdown",
    "ok",
}
PERCENTILES = {"count", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"}


def run_loadtest(tmp_path: Path, *args: str, timeout: float = 80) -> tuple[int, str, dict[str, Any]]:
    report = tmp_path / "report.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ALS_CDS_AUTH_REQUIRED": "false"},
        check=False,
    )
    print(completed.stdout)  # the figures, for whoever reads the test log
    print(completed.stderr[-3000:], file=sys.stderr)
    return completed.returncode, completed.stdout, json.loads(report.read_text(encoding="utf-8"))


def assert_complete_report(report: dict[str, Any], workers: int) -> None:
    assert set(report) == TOP_LEVEL
    assert report["target"]["started_by_loadtest"] is True
    assert report["target"]["workers"] == workers
    assert report["target"]["database"] == "sqlite"
    assert isinstance(report["throughput_rps"], float)
    assert report["duration_s"] > 0

    overall = report["latency_ms"]["overall"]
    assert set(overall) == PERCENTILES
    assert overall["count"] == report["requests"]["completed"] == report["requests"]["sent"]
    by_kind = report["latency_ms"]["by_kind"]
    assert set(by_kind) == set(KINDS)
    for kind, stats in by_kind.items():
        assert set(stats) == PERCENTILES | {"expected_status", "errors"}
        assert stats["expected_status"] == KINDS[kind]
        assert stats["count"] > 0, f"the default mix sends {kind}"
        assert stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["errors"] == 0

    assert report["errors"] == {"total": 0, "by_cause": {}, "warmup_by_cause": {}}

    feedback = report["feedback"]
    assert feedback["acknowledged"] == feedback["sent"] == feedback["stored_rows"] > 0
    assert feedback["missing"] == feedback["duplicate_rows"] == 0

    memory = report["memory"]
    assert memory["available"] is True
    for field in (
        "before_kb",
        "after_kb",
        "growth_kb",
        "growth_pct",
        "peak_kb",
        "second_half_growth_kb",
        "samples",
    ):
        assert field in memory
    assert memory["growth_kb"] == memory["after_kb"] - memory["before_kb"]
    assert memory["before_kb"] > 0 and memory["samples"]
    roles = [p["role"] for p in memory["processes_before"]]
    assert roles.count("worker") == (workers if workers > 1 else 0)
    assert roles[0] == "server"

    assert set(report["cpu_seconds"]) == {"server", "load_driver", "fhir_server"}
    assert report["cpu_seconds"]["fhir_server"] > 0
    assert report["server_cpu_ms_per_request"] > 0
    # The no-prefetch kinds made the service fetch from the real FHIR server, which answered them
    # all; pv-412's server is down (nobody listens), and its 412s are counted in by_kind above.
    # 404s are the reads of a Medication that one fixture names but no server holds (on purpose).
    answers = report["fhir_server"]["answers_by_status"]
    assert set(answers) <= {"200", "404"} and answers["200"] > 0
    assert report["server_shutdown"]["log_says_shutdown_complete"] is True
    assert report["ok"] is True


@pytest.mark.usefixtures("medplum_runnable")
def test_a_short_run_against_one_worker_has_no_error_and_a_full_report(tmp_path: Path) -> None:
    code, table, report = run_loadtest(
        tmp_path, "--requests", "300", "--concurrency", "8", "--max-seconds", "60", "--warmup", "40"
    )
    assert code == 0
    assert_complete_report(report, workers=1)
    assert report["requests"]["stopped_by"] == "requests"
    assert report["requests"]["completed"] == 300
    for heading in ("throughput:", "p50 ms", "p95 ms", "p99 ms", "memory (RSS", "result: OK"):
        assert heading in table


@pytest.mark.usefixtures("medplum_runnable")
def test_a_short_run_against_two_workers_measures_every_worker(tmp_path: Path) -> None:
    code, _, report = run_loadtest(
        tmp_path,
        "--workers", "2", "--requests", "150", "--concurrency", "8", "--max-seconds", "45", "--warmup", "40",
    )  # fmt: skip
    assert code == 0
    assert_complete_report(report, workers=2)


@pytest.mark.usefixtures("medplum_runnable")
def test_errors_make_the_exit_status_non_zero(tmp_path: Path) -> None:
    """Nothing listens at the URL: every request is an error, counted by cause, and the run fails."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, table, report = run_loadtest(
        tmp_path,
        "--url", f"http://127.0.0.1:{port}", "--mix", "pv-prefetch=1",
        "--requests", "20", "--concurrency", "2", "--warmup", "0", "--max-seconds", "20",
    )  # fmt: skip
    assert code == 1
    assert report["ok"] is False
    assert report["errors"]["total"] == 20
    assert report["errors"]["by_cause"] == {"pv-prefetch: ClientConnectorError": 20}  # aiohttp's name
    assert "result: ERRORS" in table
