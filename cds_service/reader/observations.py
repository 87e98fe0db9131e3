"""Observation → ObservationFact: status, time, value in any of its forms, range, flags, components.

A result is read the way a lab means it: a number with a comparator ('<5', '>1000') is a bound, a
number sent as text is a number, a range given only as text is a range in the result's unit, and a
lab's interpretation flag (H, HH, L, LL...) is kept, so a rule can act on a flag where no value can
be read. A value in a unit that cannot be read stays a Quantity in that unit; conversion (or its
refusal) is the rules' business (`terminology/units.py`).

Two ways to one fact. `read_observation` reads a decoded dict field by field, repairing and noting
as it goes. `read_well_formed_observation` reads a `WellFormedObservation`: the result decoded by
msgspec straight from its JSON bytes into Structs of only the fields read, typed as R4 types them.
That decode refuses any other shape, and the reading refuses anything the long way would repair,
drop or read from text, so what it accepts is exactly what the long way reads without a note, and
it gives the same fact (tests/unit/test_reader_well_formed.py holds the two side by side). Anything
refused is read the long way from the same bytes. Why two: a lab result is most of a chart, nearly
every one is well formed, and the long way's dict (decoded, then asked for each field and its type)
made reading a 100-result chart cost 2.8-3.3 ms against 1.65-1.9 this way, on one machine in the
same minutes (docs/performance.md, "Issue 9, fifth pass").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any, Union

import msgspec
from msgspec import UNSET, UnsetType

from cds_service.reader.fields import (
    _COMPARATORS,
    FieldReader,
    concept_of_strings,
    json_decimal,
    parse_when,
    shared_concepts,
    shared_range,
)
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


# -- the well-formed fast path ----------------------------------------------------------------------
# Structs of the fields `read_observation` reads, each typed as R4 types it. Unknown fields are
# skipped, as the long way skips them. Fields whose presence alone sends a result the long way
# (other value[x] kinds, components, other effective[x] kinds, a `patient` element) are `Any`,
# UNSET when absent.


class _Coding(msgspec.Struct, gc=False):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class _CodeableConcept(msgspec.Struct, gc=False):
    coding: tuple[_Coding, ...] | None = None
    text: str | None = None


class _Reference(msgspec.Struct, gc=False):
    reference: str | None = None


# Frozen, so hashable by its contents (in C): a bound or a value repeats across a chart, and is
# read once a read, then found by the Struct itself (`_well_formed_quantity`).
class _Quantity(msgspec.Struct, frozen=True, gc=False):
    value: int | float | None = None
    unit: str | None = None
    code: str | None = None
    system: str | None = None
    comparator: str | None = None


class _Range(msgspec.Struct, gc=False):
    low: _Quantity | None = None
    high: _Quantity | None = None
    text: str | None = None


#: An element a `WellFormedObservation` keeps in its bytes, not sent (the default itself, as is).
ABSENT = msgspec.Raw(b"")


class WellFormedObservation(msgspec.Struct, tag_field="resourceType", tag="Observation", gc=False):
    """An Observation in the shape nearly every sender uses (FHIR's element names)."""

    id: str | None = None
    meta: Any = None  # read only for its version (`reader.dedupe`), as the long way reads it
    status: str | None = None
    subject: _Reference | None = None
    effectiveDateTime: str | UnsetType | None = UNSET
    valueQuantity: _Quantity | None = None
    # Kept in their bytes, `ABSENT` when not sent: a chart's results repeat a few codes, ranges and
    # sets of flags many times over. Each distinct one is decoded and read once a process, and then
    # found by its bytes (`_CODES_READ`, `ResultReading`): a third less to decode than as Structs,
    # and no Structs to hash, compare and free for every result. What does not decode is read the
    # long way.
    code: msgspec.Raw = ABSENT
    referenceRange: msgspec.Raw = ABSENT
    interpretation: msgspec.Raw = ABSENT
    # Read the long way when present:
    patient: Any = UNSET
    effectiveInstant: Any = UNSET
    effectivePeriod: Any = UNSET
    valueString: Any = UNSET
    valueCodeableConcept: Any = UNSET
    valueBoolean: Any = UNSET
    valueInteger: Any = UNSET
    component: Any = UNSET


class TypeRequired(msgspec.Struct, tag_field="resourceType", tag="\x00"):
    """Never matches: in a union with it, msgspec requires `resourceType` to be present (a lone
    tagged Struct takes an object without its tag as one of its own). Here and in lazy.py."""


#: A result in the well-formed shape, `resourceType` required (in a Bundle's entries too: lazy.py).
WellFormedResult = Union[WellFormedObservation, TypeRequired]  # noqa: UP007
_WELL_FORMED = msgspec.json.Decoder(WellFormedResult)
_CONCEPT = msgspec.json.Decoder(_CodeableConcept | None)
_RANGES = msgspec.json.Decoder(tuple[_Range, ...] | None)
_FLAGS = msgspec.json.Decoder(tuple[_CodeableConcept, ...] | None)


def decode_well_formed(raw: bytes | msgspec.Raw) -> WellFormedObservation | None:
    """The resource in `raw` as a WellFormedObservation; None when it is anything else: another
    type, another shape, or JSON that msgspec refuses (the long way decodes it with Python's)."""
    try:
        return _WELL_FORMED.decode(raw)  # type: ignore[no-any-return]
    except msgspec.DecodeError:  # ValidationError included
        return None


def well_formed_code(raw: bytes, interned: dict[Any, Any]) -> Concept | None:
    """A result's code from its bytes (`WellFormedObservation.code`), as `well_formed_concept`
    reads it; None when it is not sent or not in the well-formed shape. Remembered by its bytes
    for the process (`_CODES_READ`)."""
    found = _CODES_READ.get(raw, _UNREAD)
    if found is _UNREAD:
        try:
            found = well_formed_concept(_CONCEPT.decode(raw), interned)
        except msgspec.DecodeError:  # ValidationError included; b"" (not sent) too
            found = None
        _remember(_CODES_READ, raw, found)
    return found  # type: ignore[no-any-return]


def well_formed_concept(value: _CodeableConcept | None, interned: dict[Any, Any]) -> Concept | None:
    """As `FieldReader.concept` reads a CodeableConcept whose codings all have a code; None else.
    Asked once per distinct code or set of flags a process (`_CODES_READ`, `_FLAGS_READ` find them
    by their bytes); the concept itself is shared by its strings (`concept_of_strings`)."""
    return None if value is None else _concept_of(value, interned)


def _concept_of(value: _CodeableConcept, interned: dict[Any, Any]) -> Concept | None:
    if value.coding is None:
        return None
    key: list[Any] = [value.text]
    for coding in value.coding:
        if coding.code is None:
            return None
        key += (coding.system, coding.code, coding.display)
    return concept_of_strings(tuple(key), interned)


#: Not yet read (None is an answer: the value is not for this path).
_UNREAD = object()

#: What a result's code, reference range and set of flags read as, by their bytes, for the whole
#: process. A site's results repeat a few hundred codes, ranges and flags over all its patients and
#: calls; each was decoded and read again at every call, a tenth of reading 100 results (some 15 k
#: instructions each, ten to thirty a chart). Each answer depends on the bytes alone (not on the
#: site's zone, the clock or the patient) and is immutable; at most RESULT_PARTS_MEMO_ENTRIES of
#: each are kept, then all are forgotten at once, as `fields.CONCEPT_MEMO_ENTRIES`.
RESULT_PARTS_MEMO_ENTRIES = 4096
_CODES_READ: dict[bytes, Concept | None] = {}
_RANGES_READ: dict[bytes, Any] = {}  # ReferenceRange, None (no range) or REFUSED
_FLAGS_READ: dict[bytes, Any] = {}  # concepts or REFUSED


def _remember(memo: dict[bytes, Any], key: bytes, value: Any) -> Any:
    if len(memo) >= RESULT_PARTS_MEMO_ENTRIES:
        memo.clear()
    memo[key] = value
    return value


class ResultReading:
    """What the well-formed results of one read share: where instants are read, the clock-skew
    allowance, and the read's shared values (`interned`). A result's range and flags are found by
    their bytes in the process's memos (`_RANGES_READ`, `_FLAGS_READ`), kept here too so that the
    result's reading finds them without a global lookup: reading each distinct one once, and then
    finding it in one lookup, is what keeps a result's reading to one call."""

    __slots__ = ("flags", "interned", "ranges", "site_tz", "trusted_until")

    def __init__(self, interned: dict[Any, Any], site_tz: tzinfo, trusted_until: datetime) -> None:
        self.interned = interned
        self.site_tz = site_tz
        self.trusted_until = trusted_until
        self.ranges = _RANGES_READ
        self.flags = _FLAGS_READ


def read_well_formed_observation(
    obs: WellFormedObservation, concept: Concept, reading: ResultReading
) -> ObservationFact | None:
    """The fact `read_observation` reads from the same result, when it would read it without a
    note; None when it would repair, drop or read something from text (read it the long way).
    `concept`: the result's code (`well_formed_concept`). One function, its steps inline: it runs
    for nearly every resource of a large chart, and each call it made cost more than its work."""
    status = obs.status
    if (
        status not in OBSERVATION_RESULT_STATUSES
        or obs.component is not UNSET
        or obs.valueString is not UNSET
        or obs.valueInteger is not UNSET
        or obs.valueCodeableConcept is not UNSET
        or obs.valueBoolean is not UNSET
    ):
        return None
    interned = reading.interned
    value = None
    if (quantity := obs.valueQuantity) is not None:
        key = (type(quantity.value), quantity)  # as `_well_formed_quantity`, inline
        value = interned.get(key, _UNREAD)
        if value is _UNREAD:
            value = interned[key] = _quantity_of(quantity)
        if value is None:
            return None
    reference_range = None
    if (ranges := obs.referenceRange) is not ABSENT:
        key = bytes(ranges)
        reference_range = reading.ranges.get(key, _UNREAD)
        if reference_range is _UNREAD:
            reference_range = _remember(reading.ranges, key, _well_formed_range(key, interned))
        if reference_range is REFUSED:
            return None
        if value is not None and reference_range is not None:
            low, high = reference_range.low, reference_range.high
            if value.unit or value.code:
                if (low is not None and low.unit is None and low.code is None) or (
                    high is not None and high.unit is None and high.code is None
                ):
                    return None  # bounds without a unit, which the long way takes from the result
            elif value.unit is None and value.code is None:
                unit_from = high or low
                if unit_from is not None and (unit_from.unit or unit_from.code):
                    return None  # a unit the long way takes from the range
    when = obs.effectiveDateTime
    effective = None
    if when is UNSET:
        if obs.effectiveInstant is not UNSET or obs.effectivePeriod is not UNSET:
            return None
    elif when is not None:
        effective = _instant(when, reading.site_tz)
        if effective is None or effective > reading.trusted_until:
            return None  # unreadable, without a zone, or beyond the clock-skew allowance
    interpretation: Any = ()
    if (flags := obs.interpretation) is not ABSENT:
        key = bytes(flags)
        interpretation = reading.flags.get(key, _UNREAD)
        if interpretation is _UNREAD:
            interpretation = _remember(reading.flags, key, _well_formed_flags(key, interned))
        if interpretation is REFUSED:
            return None
    # Positional, in the fields' order: a fifth cheaper than by name, for every result.
    return ObservationFact(
        obs.id, concept, status, effective, value, reference_range, NO_CONCEPT, (), None, None, interpretation
    )


#: A range or set of flags the long way must read (`ResultReading`): refused, not absent.
REFUSED = object()


def _well_formed_range(raw: bytes, interned: dict[Any, Any]) -> Any:
    """The shared ReferenceRange of a result's first range; None when it has none; REFUSED when
    the long way would read it otherwise (another shape, a bound it cannot read, or a range that
    may be given only as text)."""
    try:
        ranges = _RANGES.decode(raw)
    except msgspec.DecodeError:
        return REFUSED
    if not ranges:
        return None
    first = ranges[0]
    low = high = None
    if first.low is not None and (low := _well_formed_quantity(first.low, interned)) is None:
        return REFUSED
    if first.high is not None and (high := _well_formed_quantity(first.high, interned)) is None:
        return REFUSED
    if low is None and high is None and first.text:
        return REFUSED
    return shared_range(low, high, first.text, interned)


def _well_formed_flags(raw: bytes, interned: dict[Any, Any]) -> Any:
    """The shared concepts of a result's interpretation; REFUSED when it or a flag is not well formed."""
    try:
        flags = _FLAGS.decode(raw)
    except msgspec.DecodeError:
        return REFUSED
    if not flags:
        return ()
    concepts = []
    for item in flags:
        flag = well_formed_concept(item, interned)
        if flag is None:
            return REFUSED
        concepts.append(flag)
    return shared_concepts(tuple(concepts), interned)


def _instant(when: str, site_tz: tzinfo) -> datetime | None:
    """`parse_when`'s instant when it notes nothing; None else. A dateTime with its zone, the
    common case, without the general function's steps (some 0.4 us a result)."""
    if 10 < len(when) <= 40:  # as parse_when: a date is read there, beyond 40 nothing is read
        try:
            instant = datetime.fromisoformat(when)
        except ValueError:
            instant = None
        if instant is not None and instant.tzinfo is not None:
            return instant.astimezone(site_tz)
    parsed = parse_when(when, site_tz)
    return parsed[0] if parsed is not None and parsed[1] is None else None


def _well_formed_quantity(q: _Quantity, interned: dict[Any, Any]) -> Quantity | None:
    # The number's type is part of the key: 5 and 5.0 are equal, but their Decimals print differently.
    key = (type(q.value), q)
    found = interned.get(key, _UNREAD)
    if found is _UNREAD:
        found = interned[key] = _quantity_of(q)
    return found  # type: ignore[no-any-return]


def _quantity_of(q: _Quantity) -> Quantity | None:
    """As `quantity_of_number` builds it (a JSON number's Decimal, as `FieldReader.decimal` reads it)."""
    number = q.value
    if number is None or q.comparator not in _COMPARATORS:
        return None
    return Quantity(json_decimal(number), q.unit, q.code, q.system, q.comparator)
