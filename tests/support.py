"""Helpers shared by the tests: fixture loading, record building, a fixed clock."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service.prefetch import TYPE_BY_KEY
from cds_service.reader import build_record, resources_from_bundle
from cds_service.record import Interest, PatientRecord
from cds_service.services import build_services

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fhir_fixtures"
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"

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
