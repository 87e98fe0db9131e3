"""The README's promise: on a fresh clone with nothing beside it, the test command passes.

A fresh clone has no ../shared/ (the whole Synthea set, the CDS Hooks sandbox build). Here the
repository is copied into an empty folder, so that nothing is beside it, and pytest is run there:
the whole suite must be collected without an error (no test may assert at import or collection
that ../shared/ is there), and the tests that need the shared Synthea set are skipped, or fail
under CI. The full run on a fresh clone is the README's command itself; this keeps its cheap part.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# The tests that read the whole shared Synthea set (tests.support.shared_charts).
NEEDS_SHARED_SYNTHEA = [
    "tests/api/test_synthea_charts.py::test_the_shared_synthea_charts_are_there",
    "tests/unit/test_bundled_charts.py::test_the_bundled_charts_are_the_shared_originals_byte_for_byte",
]


def fresh_clone(tmp_path: Path) -> Path:
    """The repository's files in tmp_path/empty/als-cds: no ../shared/ beside it."""
    target = tmp_path / "empty" / "als-cds"
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "node_modules", "*.db", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"
    )
    shutil.copytree(ROOT, target, ignore=ignore)
    assert not (target.parent / "shared").exists()
    return target


def clean_env(clone: Path, *, ci: bool) -> dict[str, str]:
    """No CI, no ALS_CDS_REQUIRE_*, no ALS_CDS_TEST_* folders: as on a developer's fresh clone."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "CI" and not key.startswith(("ALS_CDS_REQUIRE_", "ALS_CDS_TEST_", "PYTEST_"))
    }
    env["PYTHONPATH"] = str(clone)  # the clone's code, not the one installed in the virtualenv
    if ci:
        env["CI"] = "true"
    return env


def pytest_in(clone: Path, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsf", *args],
        cwd=clone,
        env=clean_env(clone, ci=ci),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_fresh_clone_collects_every_test_and_skips_what_needs_the_shared_data(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)

    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cds_service, tests.support as s; print(cds_service.__file__, s.SYNTHEA)",
        ],
        cwd=clone,
        env=clean_env(clone, ci=False),
        capture_output=True,
        text=True,
        check=True,
    )
    module, synthea = probe.stdout.split()
    assert Path(module).is_relative_to(clone), "the clone's own code is tested"
    assert not Path(synthea).exists()

    collected = pytest_in(clone, "--collect-only", ci=False)
    assert collected.returncode == 0, collected.stdout[-5000:] + collected.stderr[-3000:]
    assert re.search(r"^\d+ tests collected", collected.stdout, re.M), collected.stdout[-2000:]
    assert " error" not in collected.stdout.splitlines()[-1]

    outside_ci = pytest_in(clone, *NEEDS_SHARED_SYNTHEA, ci=False)
    assert outside_ci.returncode == 0, outside_ci.stdout[-5000:]
    assert f"{len(NEEDS_SHARED_SYNTHEA)} skipped" in outside_ci.stdout
    assert "the shared Synthea R4 charts are not at" in outside_ci.stdout

    under_ci = pytest_in(clone, *NEEDS_SHARED_SYNTHEA, ci=True)
    assert under_ci.returncode == 1, under_ci.stdout[-5000:]
    assert f"{len(NEEDS_SHARED_SYNTHEA)} failed" in under_ci.stdout
    assert "required because CI=true" in under_ci.stdout
