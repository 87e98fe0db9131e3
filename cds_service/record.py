"""The patient record that rules read: one typed view of whatever FHIR data arrived.

Resources come from prefetch, from the EHR's FHIR server, or from the draft orders of the hook
context. This module turns them into facts the rules can trust:

* Only what some rule can use is model-parsed. A large chart carries thousands of Observations; a
  cheap look at the raw JSON (`code.coding`) decides first whether any value set cares.
* Each resource is validated with the fhir.resources R4B models (which read R4 payloads). A
  resource that fails is skipped and counted by type, never taking the request down; the count,
  not the content, is reported, because content is patient data.
* Statuses are applied once, here: entered-in-error and refuted conditions are gone, a condition is
  active unless its clinical status says otherwise, an observation counts only once it has a
  result, a medication is current while active or on hold.
* Dates are normalised to aware UTC instants. A partial date ('2026-10') becomes the start of its
  period: for "is a test due" questions that errs towards "due", never towards "recent".

`now` is carried by the record, so rules never read a clock.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from cds_service.terminology import Concept, Match, ValueSet, units

log = logging.getLogger(__name__)

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
_CONDITION_INACTIVE = frozenset({"inactive", "remission", "resolved"})
_CONDITION_EXCLUDED_VERIFICATION = frozenset({"entered-in-error", "refuted"})

#: Resource types that may appear among draft orders (R4). DSTU2/STU3 types are not read.
DRAFT_ORDER_TYPES = frozenset(
    {"MedicationRequest", "ServiceRequest", "NutritionOrder", "DeviceRequest", "VisionPrescription"}
)


# --------------------------------------------------------------------------------------------
# Small value types


def to_instant(value: object) -> datetime | None:
    """A FHIR date, dateTime or instant (parsed or raw) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        parts = value.split("-")
        try:
            if len(parts) == 1 and len(value) == 4:
                return datetime(int(value), 1, 1, tzinfo=UTC)
            if len(parts) == 2:
                return datetime(int(parts[0]), int(parts[1]), 1, tzinfo=UTC)
            return to_instant(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Quantity:
    value: Decimal
    unit: str | None = None  # what a human reads ('U/L')
    code: str | None = None  # the UCUM code when `system` is UCUM
    system: str | None = None

    @classmethod
    def from_model(cls, q: Any) -> Quantity | None:
        if q is None or q.value is None:
            return None
        return cls(Decimal(str(q.value)), q.unit, q.code, q.system)

    def __str__(self) -> str:
        unit = self.unit or self.code or ""
        return f"{self.value.normalize():f} {unit}".strip()


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    low: Quantity | None = None
    high: Quantity | None = None
    text: str | None = None


# --------------------------------------------------------------------------------------------
# Facts


@dataclass(frozen=True)
class ConditionFact:
    id: str | None
    concept: Concept
    clinical_status: str | None
    verification_status: str | None
    onset: datetime | None
    recorded: datetime | None
    resource: Resource

    @property
    def is_active(self) -> bool:
        # A missing clinical status is not "resolved": without an abatement, treat it as active.
        if self.clinical_status is not None:
            return self.clinical_status not in _CONDITION_INACTIVE
        return getattr(self.resource, "abatementDateTime", None) is None and not any(
            getattr(self.resource, name, None) is not None
            for name in ("abatementAge", "abatementPeriod", "abatementRange", "abatementString")
        )


@dataclass(frozen=True)
class ObservationFact:
    id: str | None
    concept: Concept
    status: str
    effective: datetime | None
    value: Quantity | None
    reference_range: ReferenceRange | None
    resource: Resource
    value_concept: Concept = field(default_factory=Concept)
    components: tuple[tuple[Concept, Quantity | None, Concept], ...] = ()

    def value_in(self, unit: str) -> Decimal | None:
        """The value converted to `unit`; None when there is none or it cannot be converted."""
        return units.convert(self.value, unit)

    def reference_high_in(self, unit: str) -> Decimal | None:
        return units.convert(self.reference_range.high, unit) if self.reference_range else None

    def reference_low_in(self, unit: str) -> Decimal | None:
        return units.convert(self.reference_range.low, unit) if self.reference_range else None


@dataclass(frozen=True)
class MedicationFact:
    """A MedicationRequest, with its medication resolved to a concept (reference or inline)."""

    id: str | None
    concept: Concept
    status: str
    intent: str
    authored_on: datetime | None
    resource: Resource

    @property
    def dosage(self) -> Dosage | None:
        return _dosage(self.resource)

    @property
    def started(self) -> datetime | None:
        """When therapy started: the validity start of the first supply, else the authoring date."""
        dispense = getattr(self.resource, "dispenseRequest", None)
        period = getattr(dispense, "validityPeriod", None) if dispense else None
        start = to_instant(getattr(period, "start", None)) if period else None
        return start or self.authored_on


@dataclass(frozen=True)
class MedicationMatch:
    fact: MedicationFact
    match: Match


@dataclass(frozen=True)
class DraftOrder:
    """One order in `context.draftOrders`, selected or not (order-select `selections`)."""

    resource_type: str
    id: str | None
    concept: Concept
    selected: bool
    resource: Resource
    medication: MedicationFact | None = None

    @property
    def reference(self) -> str | None:
        return f"{self.resource_type}/{self.id}" if self.id else None


@dataclass(frozen=True)
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
    resource: Resource

    @property
    def concept(self) -> Concept:
        return self.concepts[0] if self.concepts else Concept()

    def match(self, valueset: ValueSet) -> Match | None:
        for concept in self.concepts:
            found = valueset.match(concept)
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class Dosage:
    """The first dosage instruction of a medication order, as far as it is structured."""

    dose: Quantity | None  # the 'ordered' dose when several doseAndRate entries are given
    frequency: int | None  # timing.repeat.frequency ...
    period: Decimal | None  # ... per `period` `period_unit`
    period_unit: str | None  # UCUM: s, min, h, d, wk, mo, a
    route: Concept
    text: str | None

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


@dataclass
class IngestReport:
    """What happened to the resources that arrived: counts only, never content (no PHI)."""

    parsed: Counter[str] = field(default_factory=Counter)
    not_relevant: Counter[str] = field(default_factory=Counter)
    skipped_invalid: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    other_patient: Counter[str] = field(default_factory=Counter)
    unsupported_draft_types: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: dict(counter)
            for name, counter in (
                ("parsed", self.parsed),
                ("not_relevant", self.not_relevant),
                ("skipped_invalid", self.skipped_invalid),
                ("repaired", self.repaired),
                ("other_patient", self.other_patient),
                ("unsupported_draft_types", self.unsupported_draft_types),
            )
            if counter
        }


# --------------------------------------------------------------------------------------------
# The record


@dataclass
class PatientRecord:
    now: datetime
    patient_id: str
    patient: Resource | None = None
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
    report: IngestReport = field(default_factory=IngestReport)

    # -- the patient ----------------------------------------------------------------------------
    @property
    def sex(self) -> str | None:
        """Administrative gender from the Patient resource ('male', 'female', 'other', 'unknown')."""
        return getattr(self.patient, "gender", None) if self.patient is not None else None

    # -- conditions -----------------------------------------------------------------------------
    def active_conditions(self, valueset: ValueSet) -> list[ConditionFact]:
        return [c for c in self.conditions if c.is_active and valueset.match(c.concept)]

    def has_active_condition(self, valueset: ValueSet) -> bool:
        return bool(self.active_conditions(valueset))

    # -- observations ---------------------------------------------------------------------------
    def observations_in(self, valueset: ValueSet) -> list[ObservationFact]:
        """Results in the value set that can be placed in time, newest first.

        An observation without a date cannot show that a test is up to date, so it is left out.
        """
        found = [
            o
            for o in self.observations
            if o.effective is not None and o.effective <= self.now and valueset.match(o.concept)
        ]
        return sorted(found, key=lambda o: o.effective or self.now, reverse=True)

    def latest_observation(self, valueset: ValueSet, *, with_value: bool = False) -> ObservationFact | None:
        for obs in self.observations_in(valueset):
            if not with_value or obs.value is not None:
                return obs
        return None

    # -- medications ----------------------------------------------------------------------------
    def medication_requests(
        self, valueset: ValueSet, statuses: frozenset[str] = MEDICATION_CURRENT_STATUSES
    ) -> list[MedicationMatch]:
        found: list[MedicationMatch] = []
        for med in self.medications:
            if med.status in statuses and med.intent in MEDICATION_ORDER_INTENTS:
                match = valueset.match(med.concept)
                if match is not None:
                    found.append(MedicationMatch(med, match))
        return found

    def active_medications(self, valueset: ValueSet) -> list[MedicationMatch]:
        return self.medication_requests(valueset, MEDICATION_CURRENT_STATUSES)

    # -- procedures, allergies, encounters, devices, documents, consents -----------------------
    def procedures_in(
        self, valueset: ValueSet | None = None, since: datetime | None = None
    ) -> list[GenericFact]:
        """Done (or ongoing) procedures, newest first; all of them when `valueset` is None."""
        return _facts_in(self.procedures, valueset, since)

    def allergies_in(self, valueset: ValueSet) -> list[GenericFact]:
        """Current, not refuted allergies and intolerances whose code or reaction substance matches."""
        return _facts_in(self.allergies, valueset, None)

    def encounters_in(
        self, valueset: ValueSet | None = None, since: datetime | None = None
    ) -> list[GenericFact]:
        return _facts_in(self.encounters, valueset, since)

    def devices_in(self, valueset: ValueSet) -> list[GenericFact]:
        return _facts_in(self.devices, valueset, None)

    def documents_in(self, valueset: ValueSet) -> list[GenericFact]:
        return _facts_in(self.documents, valueset, None)

    def consents_in(self, valueset: ValueSet) -> list[GenericFact]:
        return _facts_in(self.consents, valueset, None)

    # -- draft orders ---------------------------------------------------------------------------
    @property
    def orders_to_check(self) -> list[DraftOrder]:
        """The orders a card should be about: on order-select the selected ones (the others were
        checked when they were selected), on order-sign all of them."""
        selected = [o for o in self.draft_orders if o.selected]
        return selected or self.draft_orders

    def draft_orders_in(self, valueset: ValueSet) -> list[tuple[DraftOrder, Match]]:
        """Orders to check whose code (or medication) is in the value set."""
        found = []
        for order in self.orders_to_check:
            match = valueset.match(order.concept)
            if match is not None:
                found.append((order, match))
        return found


def _facts_in(
    facts: Sequence[GenericFact], valueset: ValueSet | None, since: datetime | None
) -> list[GenericFact]:
    found = [
        f
        for f in facts
        if (valueset is None or f.match(valueset) is not None)
        and (since is None or (f.when is not None and f.when >= since))
    ]
    return sorted(found, key=lambda f: f.when or datetime.min.replace(tzinfo=UTC), reverse=True)


# --------------------------------------------------------------------------------------------
# Building the record


@dataclass(frozen=True)
class Interest:
    """Which resources the active rules can use: per type, value sets, or `None` for all."""

    by_type: Mapping[str, tuple[ValueSet, ...] | None]

    def wants_type(self, resource_type: str) -> bool:
        return resource_type in self.by_type

    def wants(self, resource_type: str, concepts: Sequence[Concept]) -> bool:
        if resource_type not in self.by_type:
            return False
        valuesets = self.by_type[resource_type]
        return valuesets is None or any(vs.match(c) for vs in valuesets for c in concepts)

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


def build_record(
    *,
    patient_id: str,
    now: datetime,
    resources: Iterable[Mapping[str, Any]],
    interest: Interest,
    draft_orders: Mapping[str, Any] | None = None,
    selections: Sequence[str] = (),
) -> PatientRecord:
    """Turn raw FHIR JSON into a PatientRecord.

    `resources` may repeat a resource (two prefetch keys can overlap); it is kept once.
    """
    record = PatientRecord(now=now, patient_id=patient_id)
    report = record.report
    unique = _dedupe(
        r for r in resources if isinstance(r, Mapping) and isinstance(r.get("resourceType"), str)
    )
    medications_by_ref = _index_medications(unique, draft_orders)

    for raw in unique:
        rtype = raw["resourceType"]
        if rtype in ("Medication", "OperationOutcome"):
            continue  # Medications are read through the requests that reference them
        if rtype == "Patient":
            if raw.get("id") not in (None, patient_id):
                report.other_patient[rtype] += 1
                continue
            record.patient = _parse(raw, report)
            continue
        if not interest.wants_type(rtype):
            report.not_relevant[rtype] += 1
            continue
        if _names_other_patient(raw, patient_id):
            report.other_patient[rtype] += 1
            continue
        concepts = _concepts(raw, medications_by_ref)
        if not interest.wants(rtype, concepts):
            report.not_relevant[rtype] += 1
            continue
        model = _parse(raw, report)
        if model is None:
            continue
        _add_fact(record, rtype, model, concepts, _raw_id(raw))

    if draft_orders:
        record.draft_orders = _draft_orders(draft_orders, selections, medications_by_ref, report)
    return record


def resources_from_bundle(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The resources of a Bundle's entries (search results, transactions, collections alike).

    Entries that only report the outcome of a search (`search.mode = outcome`, as Epic sends for
    "no results") are not data.
    """
    found = []
    for entry in _list(bundle.get("entry")):
        if not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue
        search = entry.get("search")
        if isinstance(search, Mapping) and search.get("mode") == "outcome":
            continue
        found.append(resource)
    return found


def _list(value: object) -> list[Any]:
    """A JSON array element as a list; anything else (a number, an object, null) as no items."""
    return value if isinstance(value, list) else []


def _dedupe(resources: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for raw in resources:
        rid = raw.get("id")
        if isinstance(rid, str):
            key = (raw["resourceType"], rid)
            if key in seen:
                continue
            seen.add(key)
        unique.append(raw)
    return unique


def _reference_id(reference: object, resource_type: str) -> str | None:
    """The id in 'Patient/123', 'https://ehr/fhir/Patient/123' or 'Patient/123/_history/2'."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == resource_type:
            return parts[i + 1] or None
    return None


def _names_other_patient(raw: Mapping[str, Any], patient_id: str) -> bool:
    """True only when the resource clearly belongs to another patient (urn:uuid refs are kept)."""
    for element in ("subject", "patient"):
        ref = raw.get(element)
        if isinstance(ref, Mapping):
            other = _reference_id(ref.get("reference"), "Patient")
            if other is not None and other != patient_id:
                return True
    return False


def _index_medications(
    resources: Iterable[Mapping[str, Any]], draft_orders: Mapping[str, Any] | None
) -> dict[str, Concept]:
    """Medication resources by every way a request may point at them (id, type/id, fullUrl)."""
    index: dict[str, Concept] = {}
    candidates: list[tuple[Mapping[str, Any], str | None]] = [(r, None) for r in resources]
    if draft_orders:
        for entry in _list(draft_orders.get("entry")):
            if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping):
                candidates.append((entry["resource"], entry.get("fullUrl")))
    for raw, full_url in candidates:
        if raw.get("resourceType") != "Medication":
            continue
        concept = Concept.from_json(raw.get("code"))
        if isinstance(raw.get("id"), str):
            index[f"Medication/{raw['id']}"] = concept
        if isinstance(full_url, str):
            index[full_url] = concept
    return index


def _medication_concept(raw: Mapping[str, Any], medications: Mapping[str, Concept]) -> Concept:
    if isinstance(raw.get("medicationCodeableConcept"), Mapping):
        return Concept.from_json(raw["medicationCodeableConcept"])
    ref = raw.get("medicationReference")
    if not isinstance(ref, Mapping):
        return Concept()
    target = ref.get("reference")
    if isinstance(target, str):
        if target.startswith("#"):
            for contained in _list(raw.get("contained")):
                if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                    return Concept.from_json(contained.get("code"))
        else:
            med_id = _reference_id(target, "Medication")
            for key in (target, f"Medication/{med_id}" if med_id else None):
                if key and key in medications:
                    return medications[key]
    display = ref.get("display")
    return Concept(text=display) if isinstance(display, str) else Concept()


#: Where each resource type says what it is about. Lists are read whole.
_CONCEPT_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Observation": ("code",),
    "Condition": ("code",),
    "Procedure": ("code",),
    "AllergyIntolerance": ("code",),
    "ServiceRequest": ("code", "category"),
    "DeviceRequest": ("codeCodeableConcept",),
    "Encounter": ("type", "serviceType"),
    "Device": ("type",),
    "DocumentReference": ("type", "category"),
    "Consent": ("scope", "category"),
}


def _concepts(raw: Mapping[str, Any], medications: Mapping[str, Concept]) -> tuple[Concept, ...]:
    rtype = raw["resourceType"]
    if rtype == "MedicationRequest":
        return (_medication_concept(raw, medications),)
    found: list[Concept] = []
    for element in _CONCEPT_ELEMENTS.get(rtype, ()):
        value = raw.get(element)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Mapping):
                found.append(Concept.from_json(item))
    if rtype == "AllergyIntolerance":
        for reaction in _list(raw.get("reaction")):
            if isinstance(reaction, Mapping) and isinstance(reaction.get("substance"), Mapping):
                found.append(Concept.from_json(reaction["substance"]))
    if rtype == "Encounter" and isinstance(raw.get("class"), Mapping):
        found.append(Concept.from_json({"coding": [raw["class"]]}))  # class is a bare Coding
    return tuple(found) or (Concept(),)


def _parse(raw: Mapping[str, Any], report: IngestReport) -> Resource | None:
    """Validate with the R4B model; repair what is harmless to drop, else skip and count."""
    rtype = raw["resourceType"]
    try:
        model_class = get_fhir_model_class(rtype)
    except (KeyError, ValueError):  # fhir.resources raises ValueError for a name it does not know
        report.skipped_invalid[rtype] += 1
        return None
    try:
        model = model_class.model_validate(raw)
    except ValidationError as exc:
        repaired = _repair(raw, exc)
        if repaired is None:
            _note_skip(rtype, exc, report)
            return None
        try:
            model = model_class.model_validate(repaired)
        except ValidationError as again:
            _note_skip(rtype, again, report)
            return None
        report.repaired[rtype] += 1
    report.parsed[rtype] += 1
    return model


def _repair(raw: Mapping[str, Any], exc: ValidationError) -> dict[str, Any] | None:
    """Drop what real EHRs send that strict R4B models refuse but no rule needs.

    Unknown elements (newer FHIR versions, vendor habits) and ids outside the FHIR pattern (Epic
    ids longer than 64 characters, underscores) are dropped. Anything else is a real defect.
    """
    try:
        fixed: dict[str, Any] = copy.deepcopy(dict(raw))
    except RecursionError:  # nested too deep to copy: skipped like any other defect
        return None
    for error in exc.errors(include_input=False, include_url=False):
        loc = error["loc"]
        if error["type"] == "extra_forbidden" or loc == ("id",):
            _delete_path(fixed, loc)
        else:
            return None
    return fixed


def _delete_path(doc: Any, loc: tuple[Any, ...]) -> None:
    for step in loc[:-1]:
        try:
            doc = doc[step]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(doc, dict):
        doc.pop(loc[-1], None)


def _note_skip(rtype: str, exc: ValidationError, report: IngestReport) -> None:
    report.skipped_invalid[rtype] += 1
    # Locations and error types only: the input values are patient data.
    where = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors(include_input=False)})[:5]
    log.info("skipped invalid %s resource", rtype, extra={"resource_type": rtype, "invalid_at": where})


def _raw_id(raw: Mapping[str, Any]) -> str | None:
    """The id as the EHR sent it: kept even when the model had to drop it (Epic's long ids)."""
    rid = raw.get("id")
    return rid if isinstance(rid, str) else None


#: Per type: statuses that mean the thing happened / holds now, and where its date is.
_GENERIC_KEEP: dict[str, frozenset[str | None]] = {
    "Procedure": frozenset({"completed", "in-progress"}),
    "Encounter": frozenset({"finished", "in-progress", "arrived", "triaged", "onleave"}),
    "Device": frozenset({"active", None}),
    "DocumentReference": frozenset({"current", None}),
    "Consent": frozenset({"active"}),
}
_ALLERGY_EXCLUDED_CLINICAL = frozenset({"inactive", "resolved"})


def _add_fact(
    record: PatientRecord, rtype: str, model: Any, concepts: tuple[Concept, ...], rid: str | None
) -> None:
    concept = concepts[0]
    if rtype == "Condition":
        verification = _first_code(model.verificationStatus)
        if verification in _CONDITION_EXCLUDED_VERIFICATION:
            return
        record.conditions.append(
            ConditionFact(
                id=rid,
                concept=concept,
                clinical_status=_first_code(model.clinicalStatus),
                verification_status=verification,
                onset=to_instant(getattr(model, "onsetDateTime", None)),
                recorded=to_instant(model.recordedDate),
                resource=model,
            )
        )
    elif rtype == "Observation":
        if model.status not in OBSERVATION_RESULT_STATUSES:
            return
        ranges = model.referenceRange or []
        reference_range = (
            ReferenceRange(
                Quantity.from_model(ranges[0].low), Quantity.from_model(ranges[0].high), ranges[0].text
            )
            if ranges
            else None
        )
        record.observations.append(
            ObservationFact(
                id=rid,
                concept=concept,
                status=model.status,
                effective=_observation_time(model),
                value=Quantity.from_model(model.valueQuantity),
                reference_range=reference_range,
                resource=model,
                value_concept=_concept_of(model.valueCodeableConcept),
                components=tuple(
                    (
                        _concept_of(c.code),
                        Quantity.from_model(c.valueQuantity),
                        _concept_of(c.valueCodeableConcept),
                    )
                    for c in model.component or ()
                ),
            )
        )
    elif rtype == "MedicationRequest":
        record.medications.append(_medication_fact(model, concept, rid))
    elif rtype == "AllergyIntolerance":
        if _first_code(model.verificationStatus) in _CONDITION_EXCLUDED_VERIFICATION:
            return
        clinical = _first_code(model.clinicalStatus)
        if clinical in _ALLERGY_EXCLUDED_CLINICAL:
            return
        record.allergies.append(GenericFact(rid, concepts, clinical, _generic_time(model), model))
    elif rtype in _GENERIC_KEEP:
        status = getattr(model, "status", None)
        if status not in _GENERIC_KEEP[rtype]:
            return
        if rtype == "DocumentReference" and getattr(model, "docStatus", None) == "entered-in-error":
            return
        target = {
            "Procedure": record.procedures,
            "Encounter": record.encounters,
            "Device": record.devices,
            "DocumentReference": record.documents,
            "Consent": record.consents,
        }[rtype]
        target.append(GenericFact(rid, concepts, status, _generic_time(model), model))


def _medication_fact(model: Any, concept: Concept, rid: str | None) -> MedicationFact:
    return MedicationFact(
        id=rid,
        concept=concept,
        status=model.status,
        intent=model.intent,
        authored_on=to_instant(model.authoredOn),
        resource=model,
    )


def _concept_of(model: Any) -> Concept:
    """A parsed CodeableConcept as a Concept (the same view `Concept.from_json` gives of raw JSON)."""
    return (
        Concept.from_json(model.model_dump(mode="json", exclude_none=True))
        if model is not None
        else Concept()
    )


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


def _dosage(model: Any) -> Dosage | None:
    instructions = getattr(model, "dosageInstruction", None) or []
    if not instructions:
        return None
    first = instructions[0]
    dose = None
    rates = first.doseAndRate or []
    ordered = [r for r in rates if r.type and any(c.code == "ordered" for c in r.type.coding or [])]
    for rate in ordered + [r for r in rates if r not in ordered]:
        if rate.doseQuantity is not None:
            dose = Quantity.from_model(rate.doseQuantity)
            break
    frequency = period = period_unit = None
    timing = first.timing
    repeat = timing.repeat if timing is not None else None
    if repeat is not None and repeat.frequency is not None and repeat.period is not None:
        frequency, period, period_unit = repeat.frequency, Decimal(str(repeat.period)), repeat.periodUnit
    elif timing is not None and timing.code is not None:
        for coding in timing.code.coding or []:
            if coding.code and coding.code.upper() in _GTS_PER_DAY:
                frequency, period, period_unit = _GTS_PER_DAY[coding.code.upper()], Decimal(1), "d"
                break
    return Dosage(dose, frequency, period, period_unit, _concept_of(first.route), first.text)


def _first_code(concept: Any) -> str | None:
    if concept is None or not concept.coding:
        return None
    return concept.coding[0].code


def _observation_time(model: Any) -> datetime | None:
    if model.effectiveDateTime is not None:
        return to_instant(model.effectiveDateTime)
    if model.effectiveInstant is not None:
        return to_instant(model.effectiveInstant)
    if model.effectivePeriod is not None:
        return to_instant(model.effectivePeriod.start) or to_instant(model.effectivePeriod.end)
    return None  # `issued` is when it was reported, not when it was measured


def _generic_time(model: Any) -> datetime | None:
    for name in ("performedDateTime", "recordedDate", "onsetDateTime", "date", "dateTime"):
        value = getattr(model, name, None)
        if value is not None:
            return to_instant(value)
    for name in ("performedPeriod", "period"):
        period = getattr(model, name, None)
        if period is not None:
            return to_instant(period.start) or to_instant(period.end)
    return None


def _draft_orders(
    bundle: Mapping[str, Any],
    selections: Sequence[str],
    medications: Mapping[str, Concept],
    report: IngestReport,
) -> list[DraftOrder]:
    selected_refs = set(selections)
    orders: list[DraftOrder] = []
    for raw in (e.get("resource") for e in _list(bundle.get("entry")) if isinstance(e, Mapping)):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("resourceType"), str):
            continue
        rtype = raw["resourceType"]
        if rtype in ("Medication", "OperationOutcome"):
            continue
        if rtype not in DRAFT_ORDER_TYPES:
            # DSTU2 MedicationOrder / STU3 ProcedureRequest: this service reads R4 only.
            report.unsupported_draft_types[rtype] += 1
            continue
        concept = _concepts(raw, medications)[0]
        model = _parse(raw, report)
        if model is None:
            continue
        rid = _raw_id(raw)
        orders.append(
            DraftOrder(
                resource_type=rtype,
                id=rid,
                concept=concept,
                selected=rid is not None and f"{rtype}/{rid}" in selected_refs,
                resource=model,
                medication=_medication_fact(model, concept, rid) if rtype == "MedicationRequest" else None,
            )
        )
    orders.sort(key=lambda o: not o.selected)  # stable: selected first, EHR order kept
    return orders
