"""The patient record that rules read: facts, and the questions rules ask of them.

Facts are built by the tolerant reader (`cds_service/reader/`) from whatever FHIR JSON arrived
(prefetch, the EHR's FHIR server, the hook's draft orders); this module does no parsing. What the
reader could not read is never silently normal here:

* A fact keeps the names of the fields that could not be read (`unreadable`), so a rule can say so
  in its card's evidence instead of acting as if the value were absent or fine.
* The record keeps what could not be read at all (`unread`): resources and draft orders dropped
  whole, by type, so a card (or the unreadable-order card) can say that a check was incomplete.
* Statuses were applied by the reader: entered-in-error and refuted conditions are gone, a
  condition is active unless its clinical status says otherwise, an observation counts only once
  it has a result, a medication is current while active or on hold.
* Every time is an aware datetime in the site's time zone (`ALS_CDS_SITE_TIMEZONE`). A partial
  date ('2026-10') is the start of its period: for "is a test due" questions that errs towards
  "due", never towards "recent".

`now` is carried by the record, so rules never read a clock.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from cds_service.terminology import NO_CONCEPT, Concept, Match, ValueSet, units

#: How an evidence line about data that was sent but could not be read begins. Cards always show
#: such lines, whatever else they leave out (`cards.evidence_shown`).
UNREAD_PREFIX = "Data that could not be read:"
#: Observation statuses that carry a result. 'preliminary' is included: the test was done.
OBSERVATION_RESULT_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
#: MedicationRequest statuses that mean "the patient is on this drug now".
MEDICATION_CURRENT_STATUSES = frozenset({"active", "on-hold"})
#: Statuses that say a medication was really taken at some point (used to find when it started).
MEDICATION_HISTORY_STATUSES = frozenset({"active", "on-hold", "completed", "stopped"})
#: Intents that are prescriptions rather than ideas.
MEDICATION_ORDER_INTENTS = frozenset(
    {"order", "original-order", "reflex-order", "filler-order", "instance-order"}
)
CONDITION_INACTIVE = frozenset({"inactive", "remission", "resolved"})

#: Resource types that may appear among draft orders (R4). DSTU2/STU3 types are not read.
DRAFT_ORDER_TYPES = frozenset(
    {"MedicationRequest", "ServiceRequest", "NutritionOrder", "DeviceRequest", "VisionPrescription"}
)

#: HL7 v3 ObservationInterpretation codes that say "above the reference range" / "below it";
#: the doubled letters and AA are the lab's critical flags.
HIGH_FLAGS = frozenset({"H", "HH", "HU", ">"})
LOW_FLAGS = frozenset({"L", "LL", "LU", "<"})
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA"})


# --------------------------------------------------------------------------------------------
# Small value types


class Quantity(msgspec.Struct, frozen=True, gc=False):
    """A measured amount. `comparator` ('<', '<=', '>=', '>') makes `value` a bound, not a value.

    A msgspec Struct, as `ObservationFact`: nearly every result carries one of its own (its value),
    and a frozen dataclass sets each field through `object.__setattr__` (1.5 us a quantity against
    0.15). Compared and hashed by its fields alike (the reader interns quantities in a dict)."""

    value: Decimal
    unit: str | None = None  # what a human reads ('U/L')
    code: str | None = None  # the UCUM code when `system` is UCUM
    system: str | None = None
    comparator: str | None = None

    def __str__(self) -> str:
        """As a card shows it: '50 U/L', '< 5 U/L', '3.1 × 10⁹/L' (UCUM spellings made readable)."""
        unit = units.human(self.unit or self.code or "")
        prefix = f"{self.comparator} " if self.comparator else ""
        return f"{prefix}{self.value.normalize():f} {unit}".strip()

    @property
    def exact(self) -> bool:
        return self.comparator is None


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    low: Quantity | None = None
    high: Quantity | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Dosage:
    """One dosage instruction of a medication order, as far as it is structured."""

    dose: Quantity | None  # the 'ordered' dose when several doseAndRate entries are given
    frequency: int | None  # timing.repeat.frequency ...
    period: Decimal | None  # ... per `period` `period_unit`
    period_unit: str | None  # UCUM: s, min, h, d, wk, mo, a
    route: Concept
    text: str | None
    duration: Decimal | None = None  # timing.repeat.duration (an infusion's length)
    duration_unit: str | None = None
    bounds_end: datetime | None = None  # timing.repeat.boundsPeriod.end

    @property
    def per_day(self) -> Decimal | None:
        """Administrations per day, when the timing says so."""
        hours = {
            "s": Decimal(1) / 3600,
            "min": Decimal(1) / 60,
            "h": Decimal(1),
            "d": Decimal(24),
            "wk": Decimal(168),
            "mo": Decimal(720),
            "a": Decimal(8760),
        }
        if self.frequency is None or self.period is None or self.period_unit not in hours or self.period == 0:
            return None
        return Decimal(self.frequency) * 24 / (self.period * hours[self.period_unit])

    @property
    def interval_hours(self) -> Decimal | None:
        per_day = self.per_day
        return Decimal(24) / per_day if per_day else None


# --------------------------------------------------------------------------------------------
# Facts


@dataclass(frozen=True, slots=True)
class ConditionFact:
    id: str | None
    concept: Concept
    clinical_status: str | None
    verification_status: str | None
    onset: datetime | None
    recorded: datetime | None
    abated: bool = False  # an abatement[x] is recorded
    unreadable: tuple[str, ...] = ()  # fields that were sent but could not be read

    @property
    def is_active(self) -> bool:
        # A missing (or unreadable) clinical status is not "resolved": without an abatement, active.
        if self.clinical_status is not None:
            return self.clinical_status not in CONDITION_INACTIVE
        return not self.abated


@dataclass(frozen=True, slots=True)
class Component:
    concept: Concept
    value: Quantity | None
    value_concept: Concept
    value_string: str | None = None


class ObservationFact(msgspec.Struct, frozen=True, gc=False):
    """One result. A msgspec Struct rather than a frozen dataclass like the other facts: a large
    chart holds thousands, and a frozen dataclass sets each of its twelve fields through
    `object.__setattr__` (2 us a result against 0.2). Immutable, compared and hashed by its fields
    alike; `gc=False`, as it holds only values that never refer back to a fact (no cycle)."""

    id: str | None
    concept: Concept
    status: str
    effective: datetime | None
    value: Quantity | None
    reference_range: ReferenceRange | None
    value_concept: Concept = NO_CONCEPT
    components: tuple[Component, ...] = ()
    value_boolean: bool | None = None
    value_string: str | None = None  # a text result as sent ('SOD1 p.A5V detected', or '>1000')
    interpretation: tuple[Concept, ...] = ()
    unreadable: tuple[str, ...] = ()  # fields that were sent but could not be read

    def value_in(self, unit: str) -> Decimal | None:
        """The exact value converted to `unit`; None when there is none, it cannot be converted,
        or it is only a bound ('<5', '>1000': see `at_least_in`)."""
        if self.value is None or self.value.comparator is not None:
            return None
        return units.convert(self.value, unit)

    def at_least_in(self, unit: str) -> Decimal | None:
        """A number the result is known to be at or above: the exact value, or a '>' / '>=' bound."""
        if self.value is None or self.value.comparator in ("<", "<="):
            return None
        return units.convert(self.value, unit)

    def reference_high_in(self, unit: str) -> Decimal | None:
        return units.convert(self.reference_range.high, unit) if self.reference_range else None

    def reference_low_in(self, unit: str) -> Decimal | None:
        return units.convert(self.reference_range.low, unit) if self.reference_range else None

    @property
    def flags(self) -> frozenset[str]:
        """The lab's interpretation codes (HL7 v3 ObservationInterpretation), upper case."""
        return frozenset(code.code.upper() for concept in self.interpretation for code in concept.codes)

    @property
    def flagged_high(self) -> bool:
        return bool(self.flags & HIGH_FLAGS)

    @property
    def flagged_low(self) -> bool:
        return bool(self.flags & LOW_FLAGS)

    @property
    def flagged_critical(self) -> bool:
        return bool(self.flags & CRITICAL_FLAGS)


@dataclass(frozen=True, slots=True)
class MedicationFact:
    """A MedicationRequest, with its medication resolved to a concept (reference or inline)."""

    id: str | None
    concept: Concept
    status: str
    intent: str
    authored_on: datetime | None
    dosages: tuple[Dosage, ...] = ()
    validity_start: datetime | None = None  # dispenseRequest.validityPeriod
    validity_end: datetime | None = None
    status_reason: Concept | None = None
    reasons: tuple[Concept, ...] = ()  # reasonCode
    reason_references: tuple[str, ...] = ()  # reasonReference, as 'Condition/123'
    unreadable: tuple[str, ...] = ()
    #: Builds the request as the sender sent it (its list-shaped elements repaired), the base of an
    #: "update" suggestion (e.g. stopping it); the service validates what it sends. A builder, not
    #: the copy itself: a copy per request was a tenth of reading a chart, and few calls stop an
    #: order. Not compared: facts are compared by what was read.
    resource_builder: Callable[[], Mapping[str, Any]] | None = field(default=None, compare=False, repr=False)

    @property
    def resource(self) -> Mapping[str, Any] | None:
        """A fresh copy of the request as sent (repaired), or None when it was not kept."""
        return self.resource_builder() if self.resource_builder is not None else None

    @property
    def dosage(self) -> Dosage | None:
        return self.dosages[0] if self.dosages else None

    @property
    def started(self) -> datetime | None:
        """When therapy started: the validity start of the first supply, else the authoring date."""
        return self.validity_start or self.authored_on


@dataclass(frozen=True, slots=True)
class MedicationMatch:
    fact: MedicationFact
    match: Match


@dataclass(frozen=True, slots=True)
class DraftOrder:
    """One order in `context.draftOrders`, selected or not (order-select `selections`).

    `resource` is the order as JSON with the reader's repairs applied (a `category` object made a
    list, ...), the base for an "update" suggestion; the service validates what it sends.
    """

    resource_type: str
    id: str | None
    concept: Concept
    selected: bool
    resource: Mapping[str, Any]
    medication: MedicationFact | None = None
    categories: tuple[Concept, ...] = ()
    unreadable: tuple[str, ...] = ()

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.id}" if self.id else None


@dataclass(frozen=True, slots=True)
class UnreadOrder:
    """A draft order that could not be read at all: it was not checked, and a card must say so."""

    resource_type: str
    reference: str | None
    selected: bool
    why: str  # general terms only, never the sender's values


@dataclass(frozen=True, slots=True)
class GenericFact:
    """Procedures, allergies, encounters, devices, documents, consents.

    `concepts` holds every concept that says what the resource is about (an allergy's code and its
    reactions' substances; an encounter's types, service type and class), so a value set can match
    any of them.
    """

    id: str | None
    concepts: tuple[Concept, ...]
    status: str | None
    when: datetime | None
    categories: tuple[Concept, ...] = ()
    verification_status: str | None = None  # AllergyIntolerance
    criticality: str | None = None  # AllergyIntolerance
    unreadable: tuple[str, ...] = ()

    @property
    def concept(self) -> Concept:
        return self.concepts[0] if self.concepts else NO_CONCEPT

    def match(self, valueset: ValueSet) -> Match | None:
        return first_match(valueset, self.concepts)


def first_match(valueset: ValueSet, concepts: Iterable[Concept]) -> Match | None:
    """The value set's match for the first of `concepts` it matches."""
    for concept in concepts:
        found = valueset.match(concept)
        if found is not None:
            return found
    return None


@dataclass(frozen=True, slots=True)
class PatientFact:
    id: str | None
    gender: str | None
    birth_date: datetime | None = None


#: Facts by their concepts: (position in the list, fact), in list order.
_Groups = dict[tuple[Concept, ...], list[tuple[int, Any]]]


def _grouped_by_identity(facts: Sequence[Any]) -> _Groups | None:
    """`PatientRecord._grouped_with_codes`'s groups for facts of one concept each (None if a
    GenericFact is among them). That concept is nearly always an object the read shares
    (`interned`): found by its identity, without a Python __hash__ call and a tuple for every fact,
    and then merged with any equal concept that is not the same object (one group, in list order)."""
    by_identity: dict[int, tuple[Concept, list[tuple[int, Any]]]] = {}
    for position, fact in enumerate(facts):
        if type(fact) is GenericFact:
            return None
        concept = fact.concept
        group = by_identity.get(id(concept))
        if group is None:
            group = by_identity[id(concept)] = (concept, [])
        group[1].append((position, fact))
    groups: dict[tuple[Concept, ...], list[tuple[int, Any]]] = {}
    for concept, members in by_identity.values():
        merged = groups.setdefault((concept,), members)
        if merged is not members:
            merged.extend(members)
            merged.sort()  # by position, which is unique: the facts themselves are never compared
    return groups


#: A result's time, as a sort key (dated results only): read in C, not by a function per result.
_EFFECTIVE = operator.attrgetter("effective")


@dataclass
class ReadReport:
    """What happened to the resources that arrived: counts only, never content (no PHI).

    Keys of `repaired` and `dropped` are 'Type.field: what' strings of the reader's own vocabulary
    (never element names or values from the request), so they are safe in logs and metrics.
    """

    read: Counter[str] = field(default_factory=Counter)
    not_relevant: Counter[str] = field(default_factory=Counter)
    other_patient: Counter[str] = field(default_factory=Counter)
    unreadable: Counter[str] = field(default_factory=Counter)  # resources that could not be read at all
    duplicates: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)  # a deviation read as the sender meant it
    dropped: Counter[str] = field(default_factory=Counter)  # a field, or a resource, that could not be read
    unsupported_draft_types: Counter[str] = field(default_factory=Counter)
    #: Every deviation with where it was, for `--strict` reports; filled only when asked for.
    deviations: list[Deviation] | None = None

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: dict(counter)
            for name, counter in (
                ("read", self.read),
                ("not_relevant", self.not_relevant),
                ("other_patient", self.other_patient),
                ("unreadable", self.unreadable),
                ("duplicates", self.duplicates),
                ("repaired", self.repaired),
                ("dropped", self.dropped),
                ("unsupported_draft_types", self.unsupported_draft_types),
            )
            if counter
        }


@dataclass(frozen=True, slots=True)
class Deviation:
    """One place where the data was not valid R4: for `--strict` reports (ids, paths, no values)."""

    resource_type: str
    resource_id: str | None
    path: str
    what: str
    action: str  # 'repaired', 'field dropped', 'resource dropped'


# --------------------------------------------------------------------------------------------
# The record


_T = TypeVar("_T")
_C = TypeVar("_C")


@dataclass
class PatientRecord:
    now: datetime
    patient_id: str
    patient: PatientFact | None = None
    conditions: list[ConditionFact] = field(default_factory=list)
    observations: list[ObservationFact] = field(default_factory=list)
    medications: list[MedicationFact] = field(default_factory=list)
    procedures: list[GenericFact] = field(default_factory=list)
    allergies: list[GenericFact] = field(default_factory=list)
    encounters: list[GenericFact] = field(default_factory=list)
    devices: list[GenericFact] = field(default_factory=list)
    documents: list[GenericFact] = field(default_factory=list)
    consents: list[GenericFact] = field(default_factory=list)
    draft_orders: list[DraftOrder] = field(default_factory=list)
    unread_orders: list[UnreadOrder] = field(default_factory=list)
    #: Resources of interest dropped whole, by type (no content: what they were is unknown).
    unread: Counter[str] = field(default_factory=Counter)
    report: ReadReport = field(default_factory=ReadReport)
    # Rules ask the same value set of the same facts several times in one call (a dozen rules read
    # the ALS diagnosis, the LFT rules each read ALT), and a large chart repeats a few codes many
    # times over (50,000 results of ten tests): facts are grouped by their concepts once, each
    # group matched once per value set. Each cache entry keeps the objects it was computed for, so
    # a list that grew (tests build records by hand) or a value set built anew is never answered
    # from a stale entry.
    _groups: dict[tuple[int, int], tuple[Sequence[Any], _Groups, frozenset[tuple[str, str]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _matches: dict[tuple[int, int, int], tuple[Sequence[Any], ValueSet, list[Any]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    _dated: dict[tuple[int, int, int], tuple[Sequence[Any], ValueSet, list[Any]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _answered: dict[tuple[int, int], tuple[Sequence[Any], set[int]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _derived: dict[Any, tuple[tuple[Any, ...], Any, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def derived(self, compute: Callable[[PatientRecord, _C], _T], config: _C) -> _T:
        """`compute(self, config)`, once per record and config: for what several rules derive
        alike from the same facts (the breathing rules' reading of the interval's results). The
        answer is kept with the config it was computed for and the shape of the record (its lists,
        their lengths, the patient, the time: tests build records by hand and change them), so
        neither a changed record nor another config is ever answered from it. `compute` must be
        pure and its answer not mutated."""
        lists = (
            self.conditions,
            self.observations,
            self.medications,
            self.procedures,
            self.allergies,
            self.encounters,
            self.devices,
            self.documents,
            self.consents,
            self.draft_orders,
        )
        shape = (*map(id, lists), *map(len, lists), self.patient, self.now)
        hit = self._derived.get(compute)
        if hit is not None and hit[0] == shape and hit[1] is config:
            return hit[2]  # type: ignore[no-any-return]
        value = compute(self, config)
        self._derived[compute] = (shape, config, value)
        return value

    def _grouped_with_codes(self, facts: Sequence[Any]) -> tuple[_Groups, frozenset[tuple[str, str]]]:
        """(position, fact) by the fact's concepts (a generic fact has several: an allergy's code
        and its substances), and every code (its `key`) of those concepts (`ValueSet.match_groups`)."""
        key = (id(facts), len(facts))
        hit = self._groups.get(key)
        if hit is None or hit[0] is not facts:
            groups = _grouped_by_identity(facts)
            if groups is None:  # a generic fact among them: several concepts each
                groups = {}
                for position, fact in enumerate(facts):
                    concepts = fact.concepts if isinstance(fact, GenericFact) else (fact.concept,)
                    groups.setdefault(concepts, []).append((position, fact))
            codes = frozenset(code.key for group in groups for concept in group for code in concept.codes)
            hit = (facts, groups, codes)
            self._groups[key] = hit
        return hit[1], hit[2]

    def _matching(self, facts: Sequence[Any], valueset: ValueSet) -> list[tuple[Any, Match]]:
        """(fact, match) for the facts in the value set, in list order; memoised for this record."""
        if not facts:
            return []  # most of a chart's lists, for most value sets: nothing to remember
        key = (id(facts), id(valueset), len(facts))
        hit = self._matches.get(key)
        if hit is None or hit[0] is not facts or hit[1] is not valueset:
            matched = valueset.match_groups(*self._grouped_with_codes(facts))
            if not matched:
                found = []
            elif len(matched) == 1:  # the common case: one code in the set, its facts in list order
                members, match = matched[0]
                found = [(fact, match) for _, fact in members]
            else:
                # Each group is in list order: merged by position (unique, so a tuple's first
                # item decides its order, compared in C, without a key function per fact).
                ordered = sorted(
                    (position, group, fact)
                    for group, (members, _) in enumerate(matched)
                    for position, fact in members
                )
                found = [(fact, matched[group][1]) for _, group, fact in ordered]
            hit = (facts, valueset, found)
            self._matches[key] = hit
        return hit[2]

    # -- the patient ----------------------------------------------------------------------------
    @property
    def sex(self) -> str | None:
        """Administrative gender from the Patient resource ('male', 'female', 'other', 'unknown')."""
        return self.patient.gender if self.patient is not None else None

    # -- conditions -----------------------------------------------------------------------------
    def active_conditions(self, valueset: ValueSet) -> list[ConditionFact]:
        return [c for c, _ in self._matching(self.conditions, valueset) if c.is_active]

    def has_active_condition(self, valueset: ValueSet) -> bool:
        return bool(self.active_conditions(valueset))

    # -- observations ---------------------------------------------------------------------------
    def observations_in(self, valueset: ValueSet) -> list[ObservationFact]:
        """Results in the value set that can be placed in time, newest first.

        An observation without a (trustworthy) date cannot show that a test is up to date, so it is
        left out; `unreadable_observations` lists it for the card's evidence.
        """
        if not self.observations:
            return []
        key = (id(self.observations), id(valueset), len(self.observations))
        hit = self._dated.get(key)
        if hit is None or hit[0] is not self.observations or hit[1] is not valueset:
            found = [o for o, _ in self._matching(self.observations, valueset) if o.effective is not None]
            found.sort(key=_EFFECTIVE, reverse=True)
            hit = (self.observations, valueset, found)
            self._dated[key] = hit
        return list(hit[2])  # a copy: the caller may sort or trim it

    def observations_matching(self, valueset: ValueSet) -> list[ObservationFact]:
        """Results in the value set, dated or not, in the order they arrived: for findings whose
        presence alone counts (a plan, a referral). Matched once per concept, as `observations_in`,
        not once per result."""
        return [o for o, _ in self._matching(self.observations, valueset)]

    def observations_naming(self, valuesets: Sequence[ValueSet]) -> list[ObservationFact]:
        """The results that may name what one of `valuesets` holds (a gene), in the order they
        arrived: those whose code is in one, and those with an answer of their own (components, a
        coded or text value), whose answer may name it. What a rule looking for a gene must read,
        without looking at each of a large chart's plain results (matched once per concept)."""
        named = {id(o) for vs in valuesets for o, _ in self._matching(self.observations, vs)}
        key = (id(self.observations), len(self.observations))
        hit = self._answered.get(key)
        if hit is None or hit[0] is not self.observations:
            answered = {
                id(o)
                for o in self.observations
                if o.components or o.value_string or o.value_concept.codes or o.value_concept.text
            }
            hit = self._answered[key] = (self.observations, answered)
        wanted = named | hit[1]
        if not wanted:
            return []
        return [o for o in self.observations if id(o) in wanted]

    def latest_observation(self, valueset: ValueSet, *, with_value: bool = False) -> ObservationFact | None:
        for obs in self.observations_in(valueset):
            if not with_value or obs.value is not None:
                return obs
        return None

    def unreadable_observations(self, valueset: ValueSet) -> list[ObservationFact]:
        """Results in the value set whose date or value was sent but could not be read."""
        return [
            o
            for o, _ in self._matching(self.observations, valueset)
            if "effective" in o.unreadable or "value" in o.unreadable
        ]

    def unread_note(self, valueset: ValueSet | Sequence[ValueSet], what: str) -> str | None:
        """One evidence line when results a rule needed could not be read, else None."""
        valuesets = [valueset] if isinstance(valueset, ValueSet) else list(valueset)
        partly = list({id(o): o for vs in valuesets for o in self.unreadable_observations(vs)}.values())
        whole = self.unread.get("Observation", 0)
        if not partly and not whole:
            return None
        parts = []
        if partly:
            parts.append(f"{len(partly)} {what} result(s) had a date or value that could not be read")
        if whole:
            parts.append(f"{whole} Observation(s) could not be read at all")
        return f"{UNREAD_PREFIX} " + "; ".join(parts) + " (not counted as normal)."

    # -- medications ----------------------------------------------------------------------------
    def medication_requests(
        self, valueset: ValueSet, statuses: frozenset[str] = MEDICATION_CURRENT_STATUSES
    ) -> list[MedicationMatch]:
        found: list[MedicationMatch] = []
        for med, match in self._matching(self.medications, valueset):
            if med.status in statuses and med.intent in MEDICATION_ORDER_INTENTS:
                found.append(MedicationMatch(med, match))
        return found

    def active_medications(self, valueset: ValueSet) -> list[MedicationMatch]:
        return self.medication_requests(valueset, MEDICATION_CURRENT_STATUSES)

    # -- procedures, allergies, encounters, devices, documents, consents -----------------------
    def procedures_in(
        self, valueset: ValueSet | None = None, since: datetime | None = None
    ) -> list[GenericFact]:
        """Done (or ongoing) procedures, newest first; all of them when `valueset` is None."""
        return self._facts_in(self.procedures, valueset, since)

    def allergies_in(self, valueset: ValueSet) -> list[GenericFact]:
        """Current, not refuted allergies and intolerances whose code or reaction substance matches."""
        return self._facts_in(self.allergies, valueset, None)

    def encounters_in(
        self, valueset: ValueSet | None = None, since: datetime | None = None
    ) -> list[GenericFact]:
        return self._facts_in(self.encounters, valueset, since)

    def devices_in(self, valueset: ValueSet) -> list[GenericFact]:
        return self._facts_in(self.devices, valueset, None)

    def documents_in(self, valueset: ValueSet) -> list[GenericFact]:
        return self._facts_in(self.documents, valueset, None)

    def consents_in(self, valueset: ValueSet) -> list[GenericFact]:
        return self._facts_in(self.consents, valueset, None)

    def _facts_in(
        self, facts: Sequence[GenericFact], valueset: ValueSet | None, since: datetime | None
    ) -> list[GenericFact]:
        candidates = facts if valueset is None else [f for f, _ in self._matching(facts, valueset)]
        found = [f for f in candidates if since is None or (f.when is not None and f.when >= since)]
        return sorted(found, key=lambda f: f.when or datetime.min.replace(tzinfo=UTC), reverse=True)

    # -- draft orders ---------------------------------------------------------------------------
    @property
    def orders_to_check(self) -> list[DraftOrder]:
        """The orders a card should be about: on order-select the selected ones (the others were
        checked when they were selected), on order-sign all of them."""
        if self._any_selected:
            return [o for o in self.draft_orders if o.selected]
        return list(self.draft_orders)

    @property
    def unread_orders_to_check(self) -> list[UnreadOrder]:
        """Orders that could not be read, among those a card should be about (as above)."""
        if self._any_selected:
            return [o for o in self.unread_orders if o.selected]
        return list(self.unread_orders)

    @property
    def _any_selected(self) -> bool:
        return any(o.selected for o in self.draft_orders) or any(o.selected for o in self.unread_orders)

    def draft_orders_in(self, valueset: ValueSet) -> list[tuple[DraftOrder, Match]]:
        """Orders to check whose code (or medication) is in the value set."""
        found = []
        for order in self.orders_to_check:
            match = valueset.match(order.concept)
            if match is not None:
                found.append((order, match))
        return found


# --------------------------------------------------------------------------------------------
# What the rules read


@dataclass(frozen=True, slots=True)
class Interest:
    """Which resources the active rules can use: per type, value sets, or `None` for all."""

    by_type: Mapping[str, tuple[ValueSet, ...] | None]
    # Per type, every code of its value sets in one set, and the value sets that also match names:
    # asked of every resource read, one lookup per coding instead of one per value set.
    _codes: Mapping[str, frozenset[tuple[str, str]]] = field(init=False, repr=False, compare=False)
    _named: Mapping[str, tuple[ValueSet, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chosen = {rtype: vss for rtype, vss in self.by_type.items() if vss is not None}
        codes = {rtype: frozenset().union(*(vs.codes for vs in vss)) for rtype, vss in chosen.items()}
        named = {rtype: tuple(vs for vs in vss if vs.match_names) for rtype, vss in chosen.items()}
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_named", named)

    def wants_type(self, resource_type: str) -> bool:
        return resource_type in self.by_type

    def wants(self, resource_type: str, concepts: Sequence[Concept]) -> bool:
        """Whether any of the type's value sets matches any of `concepts` (`ValueSet.match`)."""
        if resource_type not in self.by_type:
            return False
        if self.by_type[resource_type] is None:
            return True
        codes = self._codes[resource_type]
        if any(code.key in codes for concept in concepts for code in concept.codes):
            return True
        return any(vs.match(c) for vs in self._named[resource_type] for c in concepts)

    @classmethod
    def merge(cls, interests: Iterable[Interest]) -> Interest:
        merged: dict[str, tuple[ValueSet, ...] | None] = {}
        for interest in interests:
            for rtype, valuesets in interest.by_type.items():
                if rtype in merged and merged[rtype] is None:
                    continue
                if valuesets is None:
                    merged[rtype] = None
                else:
                    existing = merged.get(rtype) or ()
                    merged[rtype] = existing + tuple(vs for vs in valuesets if vs not in existing)
        return cls(merged)
