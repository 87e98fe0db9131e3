"""Reading one FHIR field at a time, as the sender meant it, and noting every deviation.

The reader works on plain JSON (dicts, lists, str, numbers) rather than fhir.resources models: a
model validates a resource whole, so one bad element anywhere (a `category` object where R4 wants
a list) costs every fact in it, and model construction was three quarters of the service's CPU on a
typical chart. Here each field the rules use is read on its own:

* what real senders mean is read as meant, and counted as *repaired*: one object where a list
  belongs, a dateTime without a zone (read in the site's zone), a date where a dateTime belongs, a
  number sent as a string, '<5' or '>1000' as a string, a reference range given only as text;
* what cannot be read costs that field only, and is counted as *dropped*: the fact records the
  field's name in `unreadable`, and rules treat it as unknown, never as normal.

Deviation names are this module's own vocabulary ('Observation.effective: no time zone'), never the
sender's element names or values: they go into logs and metrics, where patient data must not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, TypeVar

from cds_service.record import Deviation, Quantity, ReadReport, ReferenceRange
from cds_service.terminology import NO_CONCEPT, Code, Concept, normalise_system

_T = TypeVar("_T")


@dataclass(frozen=True)
class ReadOptions:
    """How to read what the sender left open: the site's time zone and the clock-skew allowance."""

    site_tz: tzinfo = UTC
    clock_skew: timedelta = timedelta(hours=2)
    keep_deviations: bool = False  # list every deviation (for `--strict` reports), not only counts


#: Concepts read through the fast path, by their raw strings (`FieldReader._well_formed_concept`).
CONCEPT_MEMO_ENTRIES = 4096
_CONCEPTS: dict[tuple[Any, ...], Concept] = {}


class FieldReader:
    """Reads the fields of one resource, noting repairs and unreadable fields in the report."""

    __slots__ = (
        "interned",
        "now",
        "options",
        "report",
        "resource_id",
        "rtype",
        "trusted_until",
        "unreadable",
    )

    def __init__(
        self,
        rtype: str,
        resource_id: str | None,
        now: datetime,
        options: ReadOptions,
        report: ReadReport,
        interned: dict[Any, Any] | None = None,
        trusted_until: datetime | None = None,
    ) -> None:
        self.rtype = rtype
        self.resource_id = resource_id
        self.now = now
        self.options = options
        #: The latest instant believed (`when`): now plus the clock-skew allowance, once per read.
        self.trusted_until = now + options.clock_skew if trusted_until is None else trusted_until
        self.report = report
        self.unreadable: list[str] = []
        # One table for the whole read (see `intern`); a reader on its own gets its own.
        self.interned: dict[Any, Any] = {} if interned is None else interned

    def intern(self, value: _T) -> _T:
        """One shared object for equal immutable values (concepts, quantities, ranges) in one read.

        A large chart says the same few things many times (50,000 results of ten tests, in two
        units, with one reference range each): shared, they cost memory once, and the garbage
        collector, which walks every live object while holding the GIL, walks far fewer. Only
        frozen values are interned, and the table lives as long as one call's read.
        """
        return self.interned.setdefault(value, value)

    # -- noting -----------------------------------------------------------------------------------
    def repaired(self, path: str, what: str) -> None:
        self.report.repaired[f"{self.rtype}.{path}: {what}"] += 1
        if self.report.deviations is not None:
            self.report.deviations.append(Deviation(self.rtype, self.resource_id, path, what, "repaired"))

    def dropped(self, path: str, what: str, field_name: str | None = None) -> None:
        """`path` could not be read; the fact's field `field_name` (default: path) is unknown."""
        self.report.dropped[f"{self.rtype}.{path}: {what}"] += 1
        name = field_name or path
        if name not in self.unreadable:
            self.unreadable.append(name)
        if self.report.deviations is not None:
            self.report.deviations.append(
                Deviation(self.rtype, self.resource_id, path, what, "field dropped")
            )

    # -- structure ----------------------------------------------------------------------------------
    def as_list(self, value: Any, path: str) -> list[Any]:
        """An element R4 makes a list: a list as is, one object (or value) as a list of one."""
        if value is None:
            return []
        if isinstance(value, list):
            return value
        self.repaired(path, "one value where a list belongs")
        return [value]

    def as_object(self, value: Any, path: str, field_name: str | None = None) -> Mapping[str, Any] | None:
        """An element R4 makes one object: a list of one object is read as that object."""
        if value is None or isinstance(value, Mapping):
            return value
        if isinstance(value, list) and value and isinstance(value[0], Mapping):
            self.repaired(path, "a list where one object belongs (first item read)")
            return value[0]
        self.dropped(path, "not an object", field_name)
        return None

    # -- primitives ---------------------------------------------------------------------------------
    def code(self, value: Any, path: str) -> str | None:
        """A FHIR `code` (status, intent, gender...): a string, trimmed; lower case as FHIR spells them."""
        if value is None:
            return None
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if text != value or text.lower() != text:
                self.repaired(path, "code with spaces or capitals")
                text = text.lower()
            return text
        self.dropped(path, "not a code")
        return None

    def string(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.repaired(path, "number where text belongs")
            return str(value)
        self.dropped(path, "not text")
        return None

    def boolean(self, value: Any, path: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            self.repaired(path, "boolean as text")
            return value.strip().lower() == "true"
        self.dropped(path, "not a boolean")
        return None

    def decimal(self, value: Any, path: str, field_name: str | None = None) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, bool):
            self.dropped(path, "not a number", field_name)
            return None
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                self.dropped(path, "not a finite number", field_name)
                return None
            return Decimal(repr(value))
        if isinstance(value, str):
            number = _number(value)
            if number is not None:
                self.repaired(path, "number as text")
                return number
        self.dropped(path, "not a number", field_name)
        return None

    def integer(self, value: Any, path: str) -> int | None:
        number = self.decimal(value, path)
        if number is None:
            return None
        if number != number.to_integral_value():
            self.dropped(path, "not a whole number")
            return None
        return int(number)

    # -- dates ----------------------------------------------------------------------------------------
    def when(self, value: Any, path: str, *, field_name: str | None = None) -> datetime | None:
        """A FHIR date, dateTime or instant as an aware datetime in the site's zone.

        Beyond the clock-skew allowance in the future it is not trusted (dropped): a result from the
        future cannot show that a test is up to date.
        """
        if value is None:
            return None
        if not isinstance(value, str):
            self.dropped(path, "not a date", field_name)
            return None
        parsed = parse_when(value, self.options.site_tz)
        if parsed is None:
            self.dropped(path, "unreadable date", field_name)
            return None
        instant, how = parsed
        if how is not None:
            self.repaired(path, how)
        if instant > self.trusted_until:
            self.dropped(path, "in the future beyond the clock-skew allowance", field_name)
            return None
        return instant

    def period_start(self, value: Any, path: str, *, field_name: str | None = None) -> datetime | None:
        period = self.as_object(value, path)
        if period is None:
            return None
        return self.when(period.get("start"), f"{path}.start", field_name=field_name) or self.when(
            period.get("end"), f"{path}.end", field_name=field_name
        )

    # -- datatypes ------------------------------------------------------------------------------------
    def concept(self, value: Any, path: str) -> Concept:
        """A CodeableConcept; a bare Coding or a list of CodeableConcepts is read as meant."""
        if type(value) is dict:
            found = self._well_formed_concept(value)
            if found is not None:
                return found
        return self._concept(value, path)

    def _well_formed_concept(self, value: dict[str, Any]) -> Concept | None:
        """The fast path, for the shape nearly every sender uses: a list of codings, each with a
        string code, and strings elsewhere. Nothing to repair or drop can be involved, so the
        answer depends only on the raw strings: a concept seen before in this read is found by
        them (they hash fast) and shared. Any other shape: None, and the long way notes why."""
        codings = value.get("coding")
        text = value.get("text")
        if type(codings) is not list or not (text is None or type(text) is str):
            return None
        key: list[Any] = [text]
        for coding in codings:
            if type(coding) is not dict:
                return None
            system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
            if (
                type(code) is not str
                or not (system is None or type(system) is str)
                or not (display is None or type(display) is str)
            ):
                return None
            key += (system, code, display)
        return concept_of_strings(tuple(key), self.interned)

    def _concept(self, value: Any, path: str) -> Concept:
        if value is None:
            return NO_CONCEPT
        if isinstance(value, list):
            if value and isinstance(value[0], Mapping):
                self.repaired(path, "a list where one concept belongs (first item read)")
                value = value[0]
            else:
                self.dropped(path, "not a concept")
                return NO_CONCEPT
        if not isinstance(value, Mapping):
            if isinstance(value, str) and value.strip():
                self.repaired(path, "text where a concept belongs")
                return Concept(text=value)
            self.dropped(path, "not a concept")
            return NO_CONCEPT
        codings = value.get("coding")
        if codings is None and isinstance(value.get("code"), str) and "system" in value:
            self.repaired(path, "a Coding where a CodeableConcept belongs")
            codings = [value]
        elif isinstance(codings, Mapping):
            self.repaired(f"{path}.coding", "one value where a list belongs")
            codings = [codings]
        codes: list[Code] = []
        if isinstance(codings, list):
            for coding in codings:
                if not isinstance(coding, Mapping):
                    continue
                code = coding.get("code")
                if isinstance(code, (int, float)) and not isinstance(code, bool):
                    self.repaired(f"{path}.coding.code", "number where a code belongs")
                    code = str(code)
                if not isinstance(code, str) or not code.strip():
                    continue
                system = coding.get("system")
                display = coding.get("display")
                codes.append(
                    Code(
                        _system(system) if isinstance(system, str) else "",
                        code,
                        display if isinstance(display, str) else None,
                    )
                )
        elif codings is not None:
            self.dropped(f"{path}.coding", "not a list of codings")
        text = value.get("text")
        return self.intern(Concept(tuple(codes), text if isinstance(text, str) else None))

    def concepts(self, value: Any, path: str) -> tuple[Concept, ...]:
        if value is None:
            return ()
        if type(value) is list and len(value) == 1:
            # Nearly every interpretation and category: one concept, without a generator's cost.
            concepts: tuple[Concept, ...] = (self.concept(value[0], path),)
        else:
            concepts = tuple(self.concept(item, path) for item in self.as_list(value, path))
        if not concepts:
            return ()
        return shared_concepts(concepts, self.interned)

    def reference_range(
        self, low: Quantity | None, high: Quantity | None, text: str | None
    ) -> ReferenceRange:
        """One shared ReferenceRange per (low, high, text) in this read (`shared_range`)."""
        return shared_range(low, high, text, self.interned)

    def status_code(self, value: Any, path: str) -> str | None:
        """A status held in a CodeableConcept (Condition.clinicalStatus): its first code."""
        concept = self.concept(value, path)
        for code in concept.codes:
            return code.code.strip().lower()
        if value is not None and concept.text:
            self.dropped(path, "status given only as text")
        return None

    def quantity(self, value: Any, path: str, field_name: str | None = None) -> Quantity | None:
        """A Quantity. Without a readable number it is unreadable (dropped), never zero."""
        if type(value) is dict:
            # The fast path, as for concepts: a finite number and strings, nothing to note.
            number = value.get("value")
            kind = type(number)
            if kind is int or (kind is float and number - number == 0):  # finite: not NaN or inf
                unit, code = value.get("unit"), value.get("code")
                system, comparator = value.get("system"), value.get("comparator")
                if (
                    (unit is None or type(unit) is str)
                    and (code is None or type(code) is str)
                    and (system is None or type(system) is str)
                    and (comparator is None or (type(comparator) is str and comparator in _COMPARATORS))
                ):
                    return quantity_of_number(number, unit, code, system, comparator, self.interned)
        return self._quantity(value, path, field_name)

    def _quantity(self, value: Any, path: str, field_name: str | None) -> Quantity | None:
        obj = self.as_object(value, path, field_name)
        if obj is None:
            return None
        number = self.decimal(obj.get("value"), f"{path}.value", field_name or path)
        if number is None:
            if obj.get("value") is None:
                self.dropped(f"{path}.value", "no number", field_name or path)
            return None
        comparator = obj.get("comparator")
        if not isinstance(comparator, (str, type(None))) or comparator not in _COMPARATORS:
            self.dropped(f"{path}.comparator", "unknown comparator", field_name or path)
            return None
        unit, code, system = obj.get("unit"), obj.get("code"), obj.get("system")
        return self.intern(
            Quantity(
                number,
                unit if isinstance(unit, str) else None,
                code if isinstance(code, str) else None,
                system if isinstance(system, str) else None,
                comparator,
            )
        )

    def quantity_from_text(self, text: str, path: str) -> Quantity | None:
        """'<5', '>1000', '45', '45 U/L' as a Quantity (a bound where there is a comparator)."""
        found = _VALUE_TEXT.match(text)
        if found is None:
            return None
        number = _number(found.group("number"))
        if number is None:
            return None
        self.repaired(path, "a number given as text")
        unit = (found.group("unit") or "").strip() or None
        return Quantity(number, unit, None, None, normalise_comparator(found.group("comparator")))

    def range_from_text(self, text: str, unit_from: Quantity | None, path: str) -> ReferenceRange | None:
        """'7-56', '7 - 56 U/L', '<40', '> 1.5' as a range. Without a unit of its own, the text is
        read in the result's own unit: a lab writes a result and its range in one unit."""
        found = _RANGE_TEXT.match(text) or _BOUND_TEXT.match(text)
        if found is None:
            return None
        groups = found.groupdict()
        unit_text = (groups.get("unit") or "").strip() or None

        def bound(raw: str | None) -> Quantity | None:
            number = _number(raw) if raw else None
            if number is None:
                return None
            if unit_text is not None:
                return Quantity(number, unit_text)
            if unit_from is not None:
                return Quantity(number, unit_from.unit, unit_from.code, unit_from.system)
            return Quantity(number)

        if "low" in groups:
            low, high = bound(groups["low"]), bound(groups["high"])
        elif normalise_comparator(groups.get("op")) in ("<", "<="):
            low, high = None, bound(groups["number"])
        else:
            low, high = bound(groups["number"]), None
        if low is None and high is None:
            return None
        self.repaired(path, "a range given only as text")
        return self.reference_range(low, high, text)

    def reference(self, value: Any, path: str) -> str | None:
        obj = self.as_object(value, path)
        if obj is None:
            return None
        ref = obj.get("reference")
        if ref is None:
            return None
        if isinstance(ref, str) and ref.strip():
            return ref.strip()
        self.dropped(path, "not a reference")
        return None


# -- shared values ------------------------------------------------------------------------------------
# Built from values already checked, by the FieldReader's fast paths and by the reading of a
# well-formed resource (`observations.read_well_formed_observation`), so that both give the same
# objects: one shared value per distinct concept, quantity and range in one read (`interned`).


def concept_of_strings(key: tuple[Any, ...], interned: dict[Any, Any]) -> Concept:
    """The concept of a well-formed CodeableConcept, from its raw strings: `(text, system, code,
    display, system, code, display...)`, each code a string, the rest strings or None.

    The same few concepts arrive in call after call: built once per process (at most
    CONCEPT_MEMO_ENTRIES, then forgotten all at once), then shared within this read. A blank code
    is no code, as on the long way (`FieldReader._concept`)."""
    found = interned.get(key)
    if found is None:
        found = _CONCEPTS.get(key)
        if found is None:
            codes = tuple(
                Code(_system(key[i]) if key[i] is not None else "", key[i + 1], key[i + 2])
                for i in range(1, len(key), 3)
                if key[i + 1].strip()
            )
            found = Concept(codes, key[0])
            if len(_CONCEPTS) >= CONCEPT_MEMO_ENTRIES:
                _CONCEPTS.clear()
            _CONCEPTS[key] = found
        found = interned.setdefault(found, found)
        interned[key] = found
    return found  # type: ignore[no-any-return]


def json_decimal(number: int | float) -> Decimal:
    """A finite JSON number's Decimal: an integer as it is, a float by its shortest repr (what it
    was sent as, for the numbers labs send), so that 56 and 56.0 print as they were sent."""
    return Decimal(number) if type(number) is int else Decimal(repr(number))


def quantity_of_number(
    number: int | float,
    unit: str | None,
    code: str | None,
    system: str | None,
    comparator: str | None,
    interned: dict[Any, Any],
) -> Quantity:
    """The Quantity of a finite JSON number and its strings (checked by the caller). The number's
    type is part of the key: 5 and 5.0 are equal, but their Decimals print differently."""
    key = (type(number), number, unit, code, system, comparator)
    found = interned.get(key)
    if found is None:
        found = interned[key] = Quantity(json_decimal(number), unit, code, system, comparator)
    return found  # type: ignore[no-any-return]


def shared_concepts(concepts: tuple[Concept, ...], interned: dict[Any, Any]) -> tuple[Concept, ...]:
    """One shared tuple per sequence of shared concepts. Keyed by the members' identities: they are
    shared already, and hashing the concepts themselves (dataclasses) would cost more than the
    tuple saves. The stored tuple keeps its members alive, so the identities cannot be reused while
    the key exists."""
    key = ("concepts", *map(id, concepts))
    return interned.setdefault(key, concepts)  # type: ignore[no-any-return]


def shared_range(
    low: Quantity | None, high: Quantity | None, text: str | None, interned: dict[Any, Any]
) -> ReferenceRange:
    """One shared ReferenceRange per (low, high, text) in this read (keyed as `shared_concepts`)."""
    key = ("range", id(low), id(high), text)
    found = interned.get(key)
    if found is None:
        found = interned[key] = ReferenceRange(low, high, text)
    return found  # type: ignore[no-any-return]


#: A Quantity's comparator as R4 spells it; None: the value is exact.
_COMPARATORS = frozenset({None, "<", "<=", ">=", ">"})


_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_VALUE_TEXT = re.compile(
    r"^\s*(?P<comparator><=|>=|<|>|≤|≥)?\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>[^\d\s].{0,30})?$"
)
_RANGE_TEXT = re.compile(
    r"^\s*(?P<low>\d+(?:\.\d*)?)\s*(?:-|–|—|to)\s*(?P<high>\d+(?:\.\d*)?)\s*(?P<unit>[^\d\s].{0,30})?$"
)
_BOUND_TEXT = re.compile(
    r"^\s*(?P<op><=|>=|<|>|≤|≥)\s*(?P<number>\d+(?:\.\d*)?)\s*(?P<unit>[^\d\s].{0,30})?$"
)


def _number(text: str) -> Decimal | None:
    if len(text) > 40 or not _NUMBER.match(text):
        return None
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        return None


def normalise_comparator(comparator: str | None) -> str | None:
    return {"≤": "<=", "≥": ">="}.get(comparator or "", comparator)


@lru_cache(maxsize=512)
def _system(system: str) -> str:
    """Code systems repeat across a chart: normalised once each."""
    return normalise_system(system)


_DATE_ONLY = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


def parse_when(value: str, site_tz: tzinfo) -> tuple[datetime, str | None] | None:
    """(instant, repair) for a FHIR date/dateTime/instant; None when it cannot be read.

    The instant is expressed in `site_tz`, so its `.date()` is the site's calendar day. A date
    ('2026-03-09', '2026-03', '2026') is the start of that day, month or year at the site.
    """
    text = value.strip()
    if len(text) <= 10 and _DATE_ONLY.match(text):  # a date is at most 10 characters: no search else
        parts = text.split("-")
        try:
            year = int(parts[0])
            month = int(parts[1]) if len(parts) > 1 else 1
            day = int(parts[2]) if len(parts) > 2 else 1
            return datetime(year, month, day, tzinfo=site_tz), None
        except ValueError:
            return None
    if len(text) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z") if "z" in text else text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=site_tz), "no time zone (read in the site's zone)"
    return parsed.astimezone(site_tz), None


def to_instant(value: object, site_tz: tzinfo = UTC) -> datetime | None:
    """A FHIR date, dateTime or instant (a string, or a date/datetime) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(site_tz) if value.tzinfo else value.replace(tzinfo=site_tz)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=site_tz)
    if isinstance(value, str):
        parsed = parse_when(value, site_tz)
        return parsed[0] if parsed else None
    return None
