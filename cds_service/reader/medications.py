"""MedicationRequest → MedicationFact, with its medication resolved wherever the sender put it.

A request names its drug inline (`medicationCodeableConcept`) or by `medicationReference`: to a
contained Medication ('#med'), to a Medication elsewhere in the request (any prefetch key or the
draft orders Bundle, by id or fullUrl), or to one only the FHIR server has (the prefetch step
reads those before the record is built, see `prefetch.py`). A reference that resolves nowhere
leaves the drug unknown, and says so (`unreadable` holds 'medication').
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from cds_service.reader.fields import FieldReader
from cds_service.reader.lazy import LazyResource, UnreadableResource, materialise
from cds_service.reader.repair import repaired_json
from cds_service.record import Dosage, MedicationFact
from cds_service.terminology import NO_CONCEPT, Concept

#: Timing codes (HL7 GTSAbbreviation) as administrations per day.
_GTS_PER_DAY = {
    "QD": 1,
    "BID": 2,
    "TID": 3,
    "QID": 4,
    "Q12H": 2,
    "Q8H": 3,
    "Q6H": 4,
    "Q4H": 6,
    "AM": 1,
    "PM": 1,
}


class MedicationIndex:
    """Medication resources by every way a request may point at them: 'Medication/id', fullUrl."""

    def __init__(self) -> None:
        self._by_ref: dict[str, Mapping[str, Any]] = {}

    def add(self, raw: Mapping[str, Any], full_url: Any = None) -> None:
        try:
            raw = materialise(raw)  # read once here, not at every look-up
        except UnreadableResource:
            return
        rid = raw.get("id")
        if isinstance(rid, str) and rid:
            self._by_ref[f"Medication/{rid}"] = raw
        if isinstance(full_url, str) and full_url:
            self._by_ref[full_url] = raw

    def add_all(self, resources: Iterable[Mapping[str, Any]]) -> None:
        for raw in resources:
            if type(raw) is LazyResource:  # its header answers (a Python call less a result)
                if raw.resource_type == "Medication":
                    self.add(raw)
            elif raw.get("resourceType") == "Medication":
                self.add(raw)

    def find(self, reference: str) -> Mapping[str, Any] | None:
        found = self._by_ref.get(reference)
        if found is not None:
            return found
        med_id = reference_id(reference, "Medication")
        return self._by_ref.get(f"Medication/{med_id}") if med_id else None


def reference_id(reference: object, resource_type: str) -> str | None:
    """The id in 'Patient/123', 'https://ehr/fhir/Patient/123' or 'Patient/123/_history/2'."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == resource_type:
            return parts[i + 1] or None
    return None


def unresolved_reference(raw: Mapping[str, Any], index: MedicationIndex) -> str | None:
    """The Medication reference this request makes that nothing in hand resolves, if any."""
    if raw.get("medicationCodeableConcept") is not None:
        return None
    ref = raw.get("medicationReference")
    target = ref.get("reference") if isinstance(ref, Mapping) else None
    if not isinstance(target, str) or not target or target.startswith("#"):
        return None
    return None if index.find(target) is not None else target


def medication_concept(raw: Mapping[str, Any], index: MedicationIndex, f: FieldReader) -> Concept:
    """What drug the request is for, however it was said; a display is the last resort."""
    inline = raw.get("medicationCodeableConcept")
    if inline is not None:
        return f.concept(inline, "medicationCodeableConcept")
    ref = f.as_object(raw.get("medicationReference"), "medicationReference")
    if ref is None:
        f.dropped("medication[x]", "no medication", "medication")
        return NO_CONCEPT
    target = ref.get("reference")
    medication: Mapping[str, Any] | None = None
    if isinstance(target, str) and target.startswith("#"):
        for contained in f.as_list(raw.get("contained"), "contained"):
            if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                medication = contained
                break
    elif isinstance(target, str) and target:
        medication = index.find(target)
    if medication is not None:
        return f.concept(medication.get("code"), "medicationReference(Medication.code)")
    display = ref.get("display")
    if isinstance(display, str) and display.strip():
        f.repaired("medicationReference", "medication known only by the reference's display")
        return Concept(text=display)
    f.dropped("medicationReference", "reference to a Medication that could not be read", "medication")
    return NO_CONCEPT


def read_medication_request(
    raw: Mapping[str, Any], concept: Concept, f: FieldReader
) -> MedicationFact | None:
    status = f.code(raw.get("status"), "status")
    intent = f.code(raw.get("intent"), "intent")
    if status is None:
        f.dropped("status", "no readable status")
        status = "unknown"
    if intent is None:
        f.dropped("intent", "no readable intent")
        intent = "unknown"
    dispense = f.as_object(raw.get("dispenseRequest"), "dispenseRequest")
    validity = (
        f.as_object(dispense.get("validityPeriod"), "dispenseRequest.validityPeriod") if dispense else None
    )
    reasons = f.concepts(raw.get("reasonCode"), "reasonCode")
    reason_refs = tuple(
        ref
        for item in f.as_list(raw.get("reasonReference"), "reasonReference")
        if (ref := f.reference(item, "reasonReference")) is not None
    )
    status_reason = (
        f.concept(raw["statusReason"], "statusReason") if raw.get("statusReason") is not None else None
    )
    return MedicationFact(
        id=f.resource_id,
        concept=concept,
        status=status,
        intent=intent,
        authored_on=f.when(raw.get("authoredOn"), "authoredOn", field_name="authored_on"),
        dosages=tuple(
            d
            for item in f.as_list(raw.get("dosageInstruction"), "dosageInstruction")
            if (d := read_dosage(item, f)) is not None
        ),
        validity_start=f.when(validity.get("start"), "dispenseRequest.validityPeriod.start")
        if validity
        else None,
        validity_end=f.when(validity.get("end"), "dispenseRequest.validityPeriod.end") if validity else None,
        status_reason=status_reason,
        reasons=reasons,
        reason_references=reason_refs,
        unreadable=tuple(f.unreadable),
        resource_builder=functools.partial(repaired_json, "MedicationRequest", raw),
    )


def read_dosage(item: Any, f: FieldReader) -> Dosage | None:
    if not isinstance(item, Mapping):
        f.dropped("dosageInstruction", "not an object", "dosage")
        return None
    dose = None
    rates = [
        r
        for r in f.as_list(item.get("doseAndRate"), "dosageInstruction.doseAndRate")
        if isinstance(r, Mapping)
    ]
    ordered = [
        r
        for r in rates
        if any(c.code == "ordered" for c in f.concept(r.get("type"), "doseAndRate.type").codes)
    ]
    for rate in ordered + [r for r in rates if r not in ordered]:
        if rate.get("doseQuantity") is not None:
            dose = f.quantity(rate["doseQuantity"], "dosageInstruction.doseAndRate.doseQuantity", "dose")
            break
    frequency = period = period_unit = duration = duration_unit = bounds_end = None
    timing = f.as_object(item.get("timing"), "dosageInstruction.timing")
    repeat = f.as_object(timing.get("repeat"), "dosageInstruction.timing.repeat") if timing else None
    if repeat is not None:
        frequency = f.integer(repeat.get("frequency"), "timing.repeat.frequency")
        period = f.decimal(repeat.get("period"), "timing.repeat.period")
        period_unit = f.code(repeat.get("periodUnit"), "timing.repeat.periodUnit")
        if period_unit is not None and period_unit not in ("s", "min", "h", "d", "wk", "mo", "a"):
            f.dropped("timing.repeat.periodUnit", "not a UCUM time unit", "timing")
            period_unit = None
        duration = f.decimal(repeat.get("duration"), "timing.repeat.duration")
        duration_unit = repeat.get("durationUnit") if isinstance(repeat.get("durationUnit"), str) else None
        bounds = f.as_object(repeat.get("boundsPeriod"), "timing.repeat.boundsPeriod")
        if bounds is not None:
            bounds_end = f.when(bounds.get("end"), "timing.repeat.boundsPeriod.end")
    if (frequency is None or period is None) and timing is not None:
        frequency = period = period_unit = None
        for code in f.concept(timing.get("code"), "timing.code").codes:
            if code.code.upper() in _GTS_PER_DAY:
                frequency, period, period_unit = _GTS_PER_DAY[code.code.upper()], Decimal(1), "d"
                break
    text = item.get("text") if isinstance(item.get("text"), str) else None
    return Dosage(
        dose=dose,
        frequency=frequency,
        period=period,
        period_unit=period_unit,
        route=f.concept(item.get("route"), "dosageInstruction.route"),
        text=text,
        duration=duration,
        duration_unit=duration_unit,
        bounds_end=bounds_end,
    )
