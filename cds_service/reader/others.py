"""Patient, and the resources rules only match and date: procedures, allergies, encounters,
devices, documents, consents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_service.reader.fields import FieldReader
from cds_service.record import GenericFact, PatientFact
from cds_service.terminology import NO_CONCEPT, Concept

#: Per type: the statuses that mean the thing happened or holds now (None: no status sent).
KEEP_STATUSES: dict[str, frozenset[str | None]] = {
    "Procedure": frozenset({"completed", "in-progress"}),
    "Encounter": frozenset({"finished", "in-progress", "arrived", "triaged", "onleave"}),
    "Device": frozenset({"active", None}),
    "DocumentReference": frozenset({"current", None}),
    "Consent": frozenset({"active"}),
}
_ALLERGY_EXCLUDED_CLINICAL = frozenset({"inactive", "resolved"})
_ALLERGY_EXCLUDED_VERIFICATION = frozenset({"entered-in-error", "refuted"})
#: Where each type says when it happened, in order of preference.
_WHEN = ("performedDateTime", "recordedDate", "onsetDateTime", "date", "dateTime")
_PERIODS = ("performedPeriod", "period")


def read_patient(raw: Mapping[str, Any], f: FieldReader) -> PatientFact:
    gender = f.code(raw.get("gender"), "gender")
    if gender not in (None, "male", "female", "other", "unknown"):
        f.dropped("gender", "not an administrative gender")
        gender = None
    return PatientFact(f.resource_id, gender, f.when(raw.get("birthDate"), "birthDate"))


def read_generic(
    rtype: str, raw: Mapping[str, Any], concepts: tuple[Concept, ...], f: FieldReader
) -> GenericFact | None:
    if rtype == "AllergyIntolerance":
        verification = f.status_code(raw.get("verificationStatus"), "verificationStatus")
        if verification in _ALLERGY_EXCLUDED_VERIFICATION:
            return None
        clinical = f.status_code(raw.get("clinicalStatus"), "clinicalStatus")
        if clinical in _ALLERGY_EXCLUDED_CLINICAL:
            return None
        criticality = f.code(raw.get("criticality"), "criticality")
        return GenericFact(
            f.resource_id,
            concepts,
            clinical,
            _when(raw, f),
            verification_status=verification,
            criticality=criticality,
            unreadable=tuple(f.unreadable),
        )
    status = f.code(raw.get("status"), "status")
    if status not in KEEP_STATUSES[rtype]:
        return None
    if rtype == "DocumentReference" and f.code(raw.get("docStatus"), "docStatus") == "entered-in-error":
        return None
    categories = f.concepts(raw.get("category"), "category") if rtype == "Procedure" else ()
    return GenericFact(
        f.resource_id, concepts, status, _when(raw, f), categories=categories, unreadable=tuple(f.unreadable)
    )


def _when(raw: Mapping[str, Any], f: FieldReader) -> Any:
    for name in _WHEN:
        if name in raw:
            return f.when(raw[name], name, field_name="when")
    for name in _PERIODS:
        if name in raw:
            return f.period_start(raw[name], name, field_name="when")
    return None


#: Where each resource type says what it is about. Lists are read whole.
CONCEPT_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Observation": ("code",),
    "Condition": ("code",),
    "Procedure": ("code",),
    "AllergyIntolerance": ("code",),
    "ServiceRequest": ("code", "category"),
    "DeviceRequest": ("codeCodeableConcept",),
    "NutritionOrder": (),
    "VisionPrescription": (),
    "Encounter": ("type", "serviceType"),
    "Device": ("type",),
    "DocumentReference": ("type", "category"),
    "Consent": ("scope", "category"),
}


#: The types whose only concept element is `code` (and no reaction or class to add).
_CODE_ONLY = frozenset(t for t, elements in CONCEPT_ELEMENTS.items() if elements == ("code",)) - {
    "AllergyIntolerance"
}


def read_concepts(rtype: str, raw: Mapping[str, Any], f: FieldReader) -> tuple[Concept, ...]:
    """Every concept that says what a (non-medication) resource is about; the first is its code."""
    if rtype in _CODE_ONLY:
        code = raw.get("code")
        if type(code) is dict:  # nearly always: one concept, without the general loop
            return f.intern((f.concept(code, "code"),))
    found: list[Concept] = []
    for element in CONCEPT_ELEMENTS.get(rtype, ()):
        value = raw.get(element)
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            found.append(f.concept(item, element))
    if rtype == "AllergyIntolerance":
        for reaction in f.as_list(raw.get("reaction"), "reaction"):
            if isinstance(reaction, Mapping):
                for substance in f.as_list(reaction.get("substance"), "reaction.substance")[:1]:
                    found.append(f.concept(substance, "reaction.substance"))
    if rtype == "Encounter" and raw.get("class") is not None:
        klass = raw["class"]
        klass = klass[0] if isinstance(klass, list) and klass else klass
        if isinstance(klass, Mapping):
            found.append(f.concept({"coding": [klass]}, "class"))  # class is a bare Coding
    return f.intern(tuple(found)) if found else (NO_CONCEPT,)
