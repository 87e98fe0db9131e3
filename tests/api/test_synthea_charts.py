"""Real-shaped charts (Synthea R4, none with ALS): specificity, and the right card once ALS is added."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.record import resources_from_bundle
from tests.support import SYNTHEA, load_json, prefetch_from

CHARTS = sorted(SYNTHEA.glob("*.json"))
TEMPLATE_KEYS = {"patient": "", "conditions": "", "medications": "", "observations": ""}


def chart_request(chart: Path, extra: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    resources = [dict(r) for r in resources_from_bundle(load_json(chart))]
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    extra = [copy.deepcopy(r) for r in extra]
    for r in extra:
        r["subject"] = {"reference": f"Patient/{patient_id}"}
    return {
        "hook": "patient-view",
        "hookInstance": f"synthea-{patient_id}",
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
        # An EHR that sends more than the templates ask for: every Observation, not only ALT.
        "prefetch": prefetch_from([*resources, *extra], TEMPLATE_KEYS),
    }


ALS = {
    "resourceType": "Condition",
    "id": "added-als",
    "clinicalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
    },
    "verificationStatus": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
        ]
    },
    "code": {
        "coding": [
            {
                "system": "http://snomed.info/sct",
                "code": "86044005",
                "display": "Amyotrophic lateral sclerosis",
            }
        ]
    },
    "onsetDateTime": "2024-01-10",
}
RILUZOLE = {
    "resourceType": "MedicationRequest",
    "id": "added-riluzole",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "199206",
                "display": "riluzole 50 MG Oral Tablet",
            }
        ]
    },
    "authoredOn": "2024-02-01",
}


def test_the_shared_synthea_charts_are_there() -> None:
    assert len(CHARTS) >= 30


@pytest.mark.parametrize("chart", CHARTS, ids=lambda p: p.name.split("_")[0] + "_" + p.name.split("_")[1][:8])
def test_chart_without_als_gets_no_card_and_with_als_and_riluzole_exactly_the_lft_card(
    client: TestClient, chart: Path
) -> None:
    plain = client.post("/cds-services/als-patient-view", json=chart_request(chart))
    assert plain.status_code == 200 and plain.json() == {"cards": []}

    riluzole_only = client.post("/cds-services/als-patient-view", json=chart_request(chart, [RILUZOLE]))
    assert riluzole_only.json() == {"cards": []}  # riluzole without an ALS diagnosis: still no ALS card

    als = client.post("/cds-services/als-patient-view", json=chart_request(chart, [ALS, RILUZOLE]))
    assert als.status_code == 200
    assert [c["source"]["topic"]["code"] for c in als.json()["cards"]] == ["riluzole-lft-due"]
