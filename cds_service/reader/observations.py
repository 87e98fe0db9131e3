"""Observation → ObservationFact: status, time, value in any of its forms, range, flags, components.

A result is read the way a lab means it: a number with a comparator ('<5', '>1000') is a bound, a
number sent as text is a number, a range given only as text is a range in the result's unit, and a
lab's interpretation flag (H, HH, L, LL...) is kept, so a rule can act on a flag where no value can
be read. A value in a unit that cannot be read stays a Quantity in that unit; conversion (or its
refusal) is the rules' business (`terminology/units.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_service.reader.fields import FieldReader
from cds_service.record import (
    OBSERVATION_RESULT_STATUSES,
    Component,
    ObservationFact,
    Quantity,
    ReferenceRange,
)
from cds_service.terminology import NO_CONCEPT, Concept

#: The value[x] choices the rules read; others (valueRatio, valueSampledData...) are no value to them.
_VALUE_KEYS = ("valueQuantity", "valueString", "valueCodeableConcept", "valueBoolean", "valueInteger")


def read_observation(raw: Mapping[str, Any], concept: Concept, f: FieldReader) -> ObservationFact | None:
    status = raw.get("status")
    if type(status) is not str or status not in OBSERVATION_RESULT_STATUSES:
        status = f.code(status, "status")  # as sent, nearly always: nothing to note, no call
    if status not in OBSERVATION_RESULT_STATUSES:
        if status is None:
            f.dropped("status", "no readable status: not known to be a result")
        return None
    value, value_concept, value_boolean, value_string = _value(raw, f, "value")
    reference_range = _reference_range(raw.get("referenceRange"), value, f)
    if value is not None and value.unit is None and value.code is None and reference_range is not None:
        # A number read from text has no unit of its own; the lab's range on the same result has.
        unit_from = reference_range.high or reference_range.low
        if unit_from is not None and (unit_from.unit or unit_from.code):
            f.repaired("value", "unit taken from the result's reference range")
            value = Quantity(value.value, unit_from.unit, unit_from.code, unit_from.system, value.comparator)
    components = []
    if "component" in raw:
        for item in f.as_list(raw["component"], "component"):
            if not isinstance(item, Mapping):
                continue
            c_value, c_concept, _, c_string = _value(item, f, "component.value")
            components.append(
                Component(f.concept(item.get("code"), "component.code"), c_value, c_concept, c_string)
            )
    return ObservationFact(
        id=f.resource_id,
        concept=concept,
        status=status,
        effective=_effective(raw, f),
        value=value,
        reference_range=reference_range,
        value_concept=value_concept,
        components=tuple(components),
        value_boolean=value_boolean,
        value_string=value_string,
        interpretation=f.concepts(raw.get("interpretation"), "interpretation"),
        unreadable=tuple(f.unreadable),
    )


def _effective(raw: Mapping[str, Any], f: FieldReader) -> Any:
    if "effectiveDateTime" in raw:
        return f.when(raw["effectiveDateTime"], "effectiveDateTime", field_name="effective")
    if "effectiveInstant" in raw:
        return f.when(raw["effectiveInstant"], "effectiveInstant", field_name="effective")
    if "effectivePeriod" in raw:
        return f.period_start(raw["effectivePeriod"], "effectivePeriod", field_name="effective")
    return None  # `issued` is when it was reported, not when it was measured


def _value(
    raw: Mapping[str, Any], f: FieldReader, field_name: str
) -> tuple[Quantity | None, Concept, bool | None, str | None]:
    """(quantity, concept, boolean, text) of a value[x]: whichever the sender used."""
    quantity, concept, boolean, text = None, NO_CONCEPT, None, None
    if "valueQuantity" in raw:
        quantity = f.quantity(raw["valueQuantity"], "valueQuantity", field_name)
    if "valueInteger" in raw:
        number = f.decimal(raw["valueInteger"], "valueInteger", field_name)
        quantity = Quantity(number) if number is not None else quantity
    if "valueString" in raw:
        text = f.string(raw["valueString"], "valueString")
        if text is not None and quantity is None:
            quantity = f.quantity_from_text(text, "valueString")
    if "valueCodeableConcept" in raw:
        concept = f.concept(raw["valueCodeableConcept"], "valueCodeableConcept")
    if "valueBoolean" in raw:
        boolean = f.boolean(raw["valueBoolean"], "valueBoolean")
    return quantity, concept, boolean, text


def _reference_range(value: Any, result: Quantity | None, f: FieldReader) -> ReferenceRange | None:
    """The first reference range; low/high when given, else read from its text."""
    for item in f.as_list(value, "referenceRange"):
        if type(item) is not dict and not isinstance(item, Mapping):  # the ABC's check is slow
            continue
        low = f.quantity(item.get("low"), "referenceRange.low", "reference_range")
        high = f.quantity(item.get("high"), "referenceRange.high", "reference_range")
        text = item.get("text")
        text = text if type(text) is str else None
        if low is None and high is None and text:
            from_text = f.range_from_text(text, result, "referenceRange.text")
            if from_text is not None:
                return from_text
        if result is not None and (result.unit or result.code):
            unitless = [q for q in (low, high) if q is not None and q.unit is None and q.code is None]
            if unitless:
                # A range with numbers and no unit: the lab's unit is the result's.
                f.repaired("referenceRange", "unit taken from the result")
                low, high = (
                    Quantity(q.value, result.unit, result.code, result.system, q.comparator)
                    if q is not None and q in unitless
                    else q
                    for q in (low, high)
                )
        return f.reference_range(low, high, text)
    return None
