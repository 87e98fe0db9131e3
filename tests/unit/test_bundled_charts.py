"""The Synthea charts bundled in fhir_fixtures/synthea: there, readable, licensed, and the originals.

A fresh clone has no ../shared/, so the tests that must always run read these copies. Here: they are
a handful of readable patient charts, with the LICENSE and a provenance README beside them, and
(where ../shared/ is present; under CI it must be) the same bytes as the shared originals.
tests/integration/test_fresh_clone.py runs the suite's collection where ../shared/ is absent.
"""

from __future__ import annotations

import re

from tests.support import (
    BUNDLED_SYNTHEA,
    SYNTHEA,
    bundled_charts,
    chart_bytes,
    chart_name,
    load_chart,
    shared_charts,
)

MAX_CHARTS = 6
MAX_BYTES = 2_000_000  # compressed, all charts together


def test_a_handful_of_compressed_patient_charts_is_bundled() -> None:
    charts = bundled_charts()
    assert 3 <= len(charts) <= MAX_CHARTS, [p.name for p in charts]
    assert sum(p.stat().st_size for p in charts) < MAX_BYTES
    # Nothing else in the folder: no uncompressed copy, no stray file.
    assert {p.name for p in BUNDLED_SYNTHEA.iterdir()} == {p.name for p in charts} | {"LICENSE", "README.md"}
    for chart in charts:
        assert chart.read_bytes()[:2] == b"\x1f\x8b", f"{chart.name}: gzip"
        bundle = load_chart(chart)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
        assert len(patients) == 1, chart.name
        assert len(bundle["entry"]) > 100, f"{chart.name}: a real chart's size"


def test_the_licence_and_the_provenance_are_beside_them() -> None:
    licence = (BUNDLED_SYNTHEA / "LICENSE").read_text(encoding="utf-8")
    assert "Copyright 2018 Boston Children's Hospital" in licence
    assert "Licensed under the Apache License, Version 2.0" in licence
    readme = (BUNDLED_SYNTHEA / "README.md").read_text(encoding="utf-8")
    provenance = " ".join(readme.split())
    for source in (
        "smart-on-fhir/generated-sample-data",
        "`R4/SYNTHEA`",
        "commit 25ac808",
        "../shared/data/synthea-r4",
    ):
        assert source in provenance, source
    listed = set(re.findall(r"^\| `([^`]+\.json\.gz)` \|", readme, re.M))
    assert listed == {p.name for p in bundled_charts()}, "the README's table lists each chart"


def test_the_bundled_charts_are_the_shared_originals_byte_for_byte() -> None:
    """Skipped where ../shared/ is absent; under CI it is there, and this holds."""
    shared = {chart_name(p): p for p in shared_charts()}
    for chart in bundled_charts():
        original = shared.get(chart_name(chart))
        assert original is not None, f"{chart.name}: not in {SYNTHEA}"
        assert chart_bytes(chart) == original.read_bytes(), chart.name
    assert (BUNDLED_SYNTHEA / "LICENSE").read_bytes() == (SYNTHEA / "LICENSE").read_bytes()
    # tests/unit/test_record.py reads the largest bundled chart as the set's largest.
    largest = max(shared.values(), key=lambda p: p.stat().st_size)
    assert chart_name(largest) in {chart_name(p) for p in bundled_charts()}
