"""Helpers shared by the tests: fixture loading, record building, a fixed clock."""

from __future__ import annotations

import copy
import gzip
import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cds_service.prefetch import TYPE_BY_KEY
from cds_service.reader import build_record, resources_from_bundle
from cds_service.record import Interest, PatientRecord
from cds_service.services import build_services

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fhir_fixtures"
#: A handful of the Synthea R4 charts, gzip-compressed, in the repository: they are always there.
BUNDLED_SYNTHEA = FIXTURES / "synthea"
#: The whole Synthea R4 set (38 charts), beside the clone in ../shared/, which a fresh clone lacks.
SYNTHEA = Path(os.environ.get("ALS_CDS_TEST_SYNTHEA_DIR") or ROOT.parent / "shared" / "data" / "synthea-r4")
#: Fewer charts than this in SYNTHEA: the whole set is not there.
SYNTHEA_SET_SIZE = 30

#: The prefetch tokens CDS Hooks 2.0.1 allows for our hooks (written from the spec, not from the
#: code under test): the tokenisable context fields and the four user identifier tokens.
SPEC_ALLOWED_TOKENS = frozenset(
    {
        "context.patientId",
        "context.userId",
        "context.encounterId",
        "userPractitionerId",
        "userPractitionerRoleId",
        "userPatientId",
        "userRelatedPersonId",
    }
)

#: The date the tests run "at": fixtures are written relative to it.
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_chart(path: Path) -> Any:
    """A Synthea chart, from the bundled copy (`.json.gz`) or the shared set (`.json`)."""
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)


def chart_bytes(path: Path) -> bytes:
    """The chart's JSON as the shared set holds it (a bundled chart decompressed)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def chart_name(path: Path) -> str:
    """`Rich_Kshlerin_ce8c42b0-....json(.gz)` → `Rich_Kshlerin_ce8c42b0-...`, either copy."""
    return path.name.removesuffix(".gz").removesuffix(".json")


def bundled_charts() -> list[Path]:
    """The Synthea charts in the repository (fhir_fixtures/synthea/*.json.gz): every clone has them."""
    return sorted(BUNDLED_SYNTHEA.glob("*.json.gz"))


def synthea_required() -> bool:
    """Under CI (or with ALS_CDS_REQUIRE_SYNTHEA=1) the whole shared set must be there."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ALS_CDS_REQUIRE_SYNTHEA") == "1"


def shared_charts() -> list[Path]:
    """The whole shared Synthea set; absent, the calling test is skipped, or fails under CI.

    Call it from a test or a fixture, never at import or collection: a fresh clone has no
    ../shared/, and the README's test command must still pass there.
    """
    charts = sorted(SYNTHEA.glob("*.json"))
    if len(charts) < SYNTHEA_SET_SIZE:
        message = (
            f"the shared Synthea R4 charts are not at {SYNTHEA} ({len(charts)} charts, "
            f"{SYNTHEA_SET_SIZE}+ expected); set ALS_CDS_TEST_SYNTHEA_DIR to their folder"
        )
        if synthea_required():
            pytest.fail(f"{message} (required because CI=true or ALS_CDS_REQUIRE_SYNTHEA=1)")
        pytest.skip(message)
    return charts


def patient_bundle(name: str) -> dict[str, Any]:
    return load_json(FIXTURES / "patients" / f"{name}.json")


def hook_request(name: str) -> dict[str, Any]:
    return load_json(FIXTURES / "requests" / f"{name}.json")


def patient_resources(name: str) -> list[dict[str, Any]]:
    return [dict(r) for r in resources_from_bundle(patient_bundle(name))]


def service_interest(service_id: str = "als-patient-view") -> Interest:
    return build_services()[service_id].interest


def record_from(
    resources: Iterable[Mapping[str, Any]],
    *,
    patient_id: str,
    now: datetime = NOW,
    interest: Interest | None = None,
    draft_orders: Mapping[str, Any] | None = None,
    selections: Iterable[str] = (),
) -> PatientRecord:
    return build_record(
        patient_id=patient_id,
        now=now,
        resources=list(resources),
        interest=interest or service_interest(),
        draft_orders=draft_orders,
        selections=list(selections),
    )


def searchset(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    items = list(resources)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(items),
        "entry": [
            {"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
            for r in items
        ],
    }


def prefetch_from(resources: Iterable[Mapping[str, Any]], keys: Mapping[str, str]) -> dict[str, Any]:
    """Group resources by resource type into the prefetch keys a service declared."""
    items = list(resources)
    prefetch: dict[str, Any] = {}
    for key in keys:
        rtype = TYPE_BY_KEY[key]
        matching = [r for r in items if r["resourceType"] == rtype]
        if key == "patient":
            prefetch[key] = matching[0] if matching else None
        else:
            prefetch[key] = searchset(matching)
    return prefetch


def with_changes(resource: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    updated = copy.deepcopy(dict(resource))
    for key, value in changes.items():
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated
