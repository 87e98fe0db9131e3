"""Small builders of FHIR R4 JSON for rule tests: only what a test must state, realistic defaults.

Every builder returns plain JSON (dicts), exactly as an EHR would send it, so tests exercise the
same parsing path as production. Dates are `datetime`s relative to tests.support.NOW.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from tests.support import NOW

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"

PID = "p1"
_ids = itertools.count(1)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    found = {"system": system, "code": code}
    if display:
        found["display"] = display
    return found


def snomed_coding(code: str, display: str | None = None) -> dict[str, Any]:
    return coding(SNOMED, code, display)


def concept(*codings: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if codings:
        found["coding"] = list(codings)
    if text:
        found["text"] = text
    return found


def patient(gender: str = "female", pid: str = PID, birth: str = "1960-01-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": birth}


def condition(
    code: dict[str, Any],
    *,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    onset: datetime | None = None,
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": rid or _id("cond"),
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if clinical:
        resource["clinicalStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical)
        )
    if verification:
        resource["verificationStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification)
        )
    if onset:
        resource["onsetDateTime"] = onset.isoformat()
    return resource


def als(**kwargs: Any) -> dict[str, Any]:
    """An active, confirmed ALS diagnosis (SNOMED CT 86044005 and ICD-10-CM G12.21)."""
    code = concept(coding(SNOMED, "86044005", "Amyotrophic lateral sclerosis"), coding(ICD10CM, "G12.21"))
    return condition(code, **{"rid": "als", **kwargs})


def observation(
    code: dict[str, Any],
    when: datetime | None,
    value: float | None = None,
    unit: str | None = None,
    *,
    ucum: str | None = None,
    low: float | None = None,
    high: float | None = None,
    status: str = "final",
    value_concept: dict[str, Any] | None = None,
    components: list[dict[str, Any]] | None = None,
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    """An Observation; `ucum` defaults to `unit` (pass ucum='' to send a unit with no UCUM code)."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid or _id("obs"),
        "status": status,
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if when is not None:
        resource["effectiveDateTime"] = when.isoformat()
    code_ucum = unit if ucum is None else ucum

    def quantity(number: float) -> dict[str, Any]:
        q: dict[str, Any] = {"value": number}
        if unit:
            q["unit"] = unit
        if code_ucum:
            q.update(system=UCUM, code=code_ucum)
        return q

    if value is not None:
        resource["valueQuantity"] = quantity(value)
    if value_concept is not None:
        resource["valueCodeableConcept"] = value_concept
    if low is not None or high is not None:
        resource["referenceRange"] = [
            {k: quantity(v) for k, v in (("low", low), ("high", high)) if v is not None}
        ]
    if components:
        resource["component"] = components
    return resource


def loinc(code: str, display: str | None = None) -> dict[str, Any]:
    return concept(coding(LOINC, code, display))


def snomed(code: str, display: str | None = None) -> dict[str, Any]:
    return concept(coding(SNOMED, code, display))


def rxnorm(code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    return concept(coding(RXNORM, code, display), text=text)


def medication_request(
    medication: dict[str, Any],
    *,
    status: str = "active",
    intent: str = "order",
    authored: datetime | None = None,
    dose: tuple[float, str] | None = None,
    every_hours: float | None = None,
    route: dict[str, Any] | None = None,
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid or _id("medrx"),
        "status": status,
        "intent": intent,
        "medicationCodeableConcept": medication,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if authored is not None:
        resource["authoredOn"] = authored.isoformat()
    if dose or every_hours or route:
        dosage: dict[str, Any] = {}
        if dose:
            dosage["doseAndRate"] = [
                {
                    "type": concept(
                        coding("http://terminology.hl7.org/CodeSystem/dose-rate-type", "ordered")
                    ),
                    "doseQuantity": {"value": dose[0], "unit": dose[1], "system": UCUM, "code": dose[1]},
                }
            ]
        if every_hours:
            dosage["timing"] = {"repeat": {"frequency": 1, "period": every_hours, "periodUnit": "h"}}
        if route:
            dosage["route"] = route
        resource["dosageInstruction"] = [dosage]
    return resource


def allergy(
    code: dict[str, Any],
    *,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    substances: list[dict[str, Any]] | None = None,
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "id": rid or _id("allergy"),
        "code": code,
        "patient": {"reference": f"Patient/{pid}"},
    }
    if clinical:
        resource["clinicalStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", clinical)
        )
    if verification:
        resource["verificationStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", verification)
        )
    if substances:
        # R4 requires a manifestation on every reaction.
        resource["reaction"] = [
            {"substance": s, "manifestation": [concept(snomed_coding("271807003", "Eruption of skin"))]}
            for s in substances
        ]
    return resource


def procedure(
    code: dict[str, Any],
    when: datetime | None,
    *,
    status: str = "completed",
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": rid or _id("proc"),
        "status": status,
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if when is not None:
        resource["performedDateTime"] = when.isoformat()
    return resource


def encounter(
    types: list[dict[str, Any]],
    when: datetime,
    *,
    status: str = "finished",
    encounter_class: str = "AMB",
    service_type: dict[str, Any] | None = None,
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid or _id("enc"),
        "status": status,
        "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", encounter_class),
        "type": types,
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": when.isoformat(), "end": (when + timedelta(hours=1)).isoformat()},
    }
    if service_type:
        resource["serviceType"] = service_type
    return resource


def device(type_: dict[str, Any], *, status: str = "active", rid: str | None = None, pid: str = PID) -> dict:
    return {
        "resourceType": "Device",
        "id": rid or _id("device"),
        "status": status,
        "type": type_,
        "patient": {"reference": f"Patient/{pid}"},
    }


def document(
    type_: dict[str, Any], when: datetime, *, status: str = "current", rid: str | None = None, pid: str = PID
) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": rid or _id("doc"),
        "status": status,
        "type": type_,
        "subject": {"reference": f"Patient/{pid}"},
        "date": when.isoformat(),
        "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/1"}}],
    }


def consent(
    scope: dict[str, Any],
    categories: list[dict[str, Any]],
    when: datetime,
    *,
    status: str = "active",
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": rid or _id("consent"),
        "status": status,
        "scope": scope,
        "category": categories,
        "patient": {"reference": f"Patient/{pid}"},
        "dateTime": when.isoformat(),
    }


def service_request(
    code: dict[str, Any],
    *,
    status: str = "draft",
    category: list[dict[str, Any]] | None = None,
    rid: str | None = None,
    pid: str = PID,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": rid or _id("sr"),
        "status": status,
        "intent": "order",
        "code": code,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if category:
        resource["category"] = category
    return resource


def draft_orders(*orders: dict[str, Any]) -> dict[str, Any]:
    """A draftOrders Bundle as the spec examples send it: no `type`."""
    return {"resourceType": "Bundle", "entry": [{"resource": o} for o in orders]}
