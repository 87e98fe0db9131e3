"""Physiotherapy, exercise and massage orders (NICE NG42 1.8.5-1.8.6, 1.13; exercise and massage literature).

Massage: no ALS-specific guideline on massage contraindications was found. The list used here
(deep vein thrombosis, pressure injury, fever, osteoporosis, recent surgery, active infection) comes
from generic massage-therapy sources of low authority that agree with one another (evidence
reference R13). It is a list for massage, so it is applied as such:

* a massage order gets the full card (precautions, or defer the order);
* a general physiotherapy order is not a massage order: its card only asks for the precautions
  if the programme includes massage or soft-tissue work, and offers no deferral;
* respiratory physiotherapy and cough augmentation (chest physiotherapy, airway clearance, breath
  stacking, cough assist) are never screened as massage: NICE NG42 1.13.1-1.13.4 offers cough
  augmentation to people who cannot cough effectively and a mechanical cough assist device "during
  a respiratory tract infection", so an infection is a reason for them, not against them. They
  get no exercise card either.

Exercise: NG42 1.8.5 (range of movement, contractures) and 1.8.6 (resistance, active-assisted or
passive programme suited to the person's function) give the programme type but no intensity. The
intensity advice follows Majmudar et al. 2015 (NeuroRehabilitation, Table 1) and the ACSM 2010
recommendations; Dal Bello-Haas 2018 is cited as a review, its specific numbers are UNVERIFIED
and are not stated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from cds_service import terminology
from cds_service.record import DraftOrder, Interest, PatientRecord
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import caveat, day, order_line
from cds_service.rules.fever import BODY_TEMPERATURE, FEVER, FEVER_CELSIUS, FEVER_WINDOW_DAYS, recent_fever
from cds_service.terminology import Concept, Match

PHYSIOTHERAPY = terminology.load("physiotherapy")
EXERCISE = terminology.load("exercise-therapy")
MASSAGE = terminology.load("massage")
RESPIRATORY_PHYSIOTHERAPY = terminology.load("respiratory-physiotherapy")
DVT = terminology.load("dvt")
PRESSURE_INJURY = terminology.load("pressure-injury")
OSTEOPOROSIS = terminology.load("osteoporosis")
ACTIVE_INFECTION = terminology.load("active-infection")
SURGICAL = terminology.load("surgical-procedure")

#: "Recent surgery": 6 weeks (design choice; the sources give no period).
SURGERY_LOOKBACK_DAYS = 42


@dataclass(frozen=True)
class Contraindication:
    label: str  # short, for the summary ("DVT")
    line: str  # evidence line, with its date


def _condition_items(record: PatientRecord) -> list[Contraindication]:
    found = []
    for valueset, label, name in (
        (DVT, "DVT", "Deep vein thrombosis"),
        (PRESSURE_INJURY, "pressure injury", "Pressure injury"),
        (OSTEOPOROSIS, "osteoporosis", "Osteoporosis"),
        (ACTIVE_INFECTION, "infection", "Active infection"),
        (FEVER, "fever", "Fever"),
    ):
        for condition in record.active_conditions(valueset):
            match = valueset.match(condition.concept)
            how = caveat(match)
            since = day(condition.onset or condition.recorded)
            found.append(
                Contraindication(label, f"{name}: {condition.concept.label} (active, since {since}{how}).")
            )
    return found


def _temperature_items(record: PatientRecord) -> list[Contraindication]:
    """The newest measured fever (fever conditions are listed with the other conditions)."""
    fever = recent_fever(record)
    if fever is None or not fever.readings:
        return []
    newest = fever.readings[0]
    shown = str(newest.observation.value)
    celsius = f"{newest.celsius.quantize(Decimal('0.1'))} °C"
    # The conversion only when the lab's unit was not Celsius already.
    converted = "" if shown == celsius else f"{celsius}, "
    return [
        Contraindication(
            "fever",
            f"Fever: temperature {shown} on {day(newest.observation.effective)} "
            f"({converted}at or above {FEVER_CELSIUS} °C).",
        )
    ]


def _surgical_category(categories: tuple[Concept, ...]) -> Match | None:
    """Procedure.category (one CodeableConcept in R4, a list in later versions) in the surgical set."""
    for concept in categories:
        found = SURGICAL.match(concept)
        if found is not None:
            return found
    return None


def _surgery_items(record: PatientRecord) -> list[Contraindication]:
    since = record.now - timedelta(days=SURGERY_LOOKBACK_DAYS)
    found = []
    for proc in record.procedures_in(None, since=since):
        if proc.status != "completed" or proc.when is None or proc.when > record.now:
            continue
        by_code = proc.match(SURGICAL)
        by_category = None if by_code else _surgical_category(proc.categories)
        if by_code is None and by_category is None:
            continue
        days = (record.now - proc.when).days
        found.append(
            Contraindication(
                "recent surgery",
                f"Recent surgery: {proc.concept.label} on {day(proc.when)} ({days} days ago"
                f"{caveat(by_code or by_category)}).",
            )
        )
    return found


def contraindications(record: PatientRecord) -> list[Contraindication]:
    return [
        *_condition_items(record),
        *_temperature_items(record),
        *_surgery_items(record),
    ]


def respiratory_physiotherapy(order: DraftOrder) -> Match | None:
    """The order is for respiratory physiotherapy or cough augmentation (by its code, or a category)."""
    for concept in (order.concept, *order.categories):
        found = RESPIRATORY_PHYSIOTHERAPY.match(concept)
        if found is not None:
            return found
    return None


def _orders(record: PatientRecord, *valuesets: terminology.ValueSet) -> list[tuple[DraftOrder, Match]]:
    """ServiceRequests to check in any of the value sets, each once (the first value set that
    matches); respiratory physiotherapy and cough augmentation orders are never among them."""
    seen: set[int] = set()
    found = []
    for valueset in valuesets:
        for order, match in record.draft_orders_in(valueset):
            if order.resource_type != "ServiceRequest" or id(order) in seen:
                continue
            seen.add(id(order))
            if respiratory_physiotherapy(order) is None:
                found.append((order, match))
    return found


def _as_json(order: DraftOrder) -> dict[str, Any]:
    """The draft order as JSON, for an update suggestion (the card file adds its note)."""
    return copy.deepcopy(dict(order.resource))


def _order_kind(match: Match, order: DraftOrder) -> str:
    if match.valueset == MASSAGE.id:
        return "Massage"
    if EXERCISE.match(order.concept) is not None and PHYSIOTHERAPY.match(order.concept) is None:
        return "Exercise programme"
    return "Physiotherapy"


# --------------------------------------------------------------------------------------------
# massage-order-contraindications


def massage_order_contraindications(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = _orders(record, MASSAGE, PHYSIOTHERAPY)
    if not orders:
        return []
    found = contraindications(record)
    if not found:
        return []
    labels = list(dict.fromkeys(item.label for item in found))
    findings = []
    for order, match in orders:
        bindings: dict[str, Any] = {"patient_reference": f"Patient/{record.patient_id}"}
        if order.reference is not None:
            bindings["draft_reference"] = order.reference
        bindings["updated_order"] = _as_json(order)
        kind = _order_kind(match, order)
        # A physiotherapy order is not a massage order: precautions if it includes massage, no deferral.
        variant = None if kind == "Massage" else "physiotherapy"
        if order.reference is None:
            variant = "no-draft-id" if variant is None else "physiotherapy-no-draft-id"
        findings.append(
            Finding(
                rule_id="massage-order-contraindications",
                fields={"order_kind": kind, "findings": ", ".join(labels)},
                evidence=(order_line(order, match), *(item.line for item in found)),
                bindings=bindings,
                variant=variant,
            )
        )
    return findings


MASSAGE_ORDER_CONTRAINDICATIONS = Rule(
    id="massage-order-contraindications",
    title="Massage or physiotherapy ordered with a contraindication to massage",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest(
        {
            "Condition": (DVT, PRESSURE_INJURY, OSTEOPOROSIS, ACTIVE_INFECTION, FEVER),
            "Observation": (BODY_TEMPERATURE,),
            # Every procedure: surgery is recognised by Procedure.category, which the raw pre-filter
            # (Procedure.code only) cannot see.
            "Procedure": None,
        }
    ),
    evaluate=massage_order_contraindications,
    trigger=(
        "A massage ServiceRequest (or a physiotherapy one: precautions only, no deferral) is ordered while "
        "the patient has active DVT, a pressure injury, fever (>= 38.0 °C in 7 days or an active fever "
        "condition), osteoporosis, surgery in the last 42 days, or an active infection. Respiratory "
        "physiotherapy and cough augmentation orders are never screened as massage."
    ),
    facts=(
        RuleFact(
            "Orders screened",
            "massage orders (full card, may be deferred); general physiotherapy orders (precautions if the "
            "programme includes massage, never deferred); not respiratory physiotherapy or cough "
            "augmentation (value set respiratory-physiotherapy, matched by name: no checked code)",
            "nice-ng42",
            "NG42 1.13.1-1.13.4: cough augmentation for people who cannot cough effectively, and 'consider a "
            "mechanical cough assist device if assisted breath stacking is not effective, and/or during a "
            "respiratory tract infection'. The contraindication list is for massage, not for physiotherapy "
            "in general (design choice on how the massage sources apply to a physiotherapy order).",
        ),
        RuleFact(
            "Contraindications to massage",
            "DVT, pressure injury, fever, osteoporosis, recent surgery, active infection",
            "massage-sources",
            "Generic massage-therapy sources (low authority) that agree; no ALS-specific guideline was "
            "found.",
        ),
        RuleFact(
            "Fever threshold",
            f"temperature >= {FEVER_CELSIUS} °C",
            "massage-sources",
            "Sources: 'fever (100.4 °F / 38.0 °C) strictly contraindicated'. Temperatures in other units are "
            "converted; an unreadable unit is ignored.",
        ),
        RuleFact(
            "Fever look-back",
            f"{FEVER_WINDOW_DAYS} days",
            "massage-sources",
            "UNVERIFIED design choice: the sources give no period. Active fever conditions count at any age.",
        ),
        RuleFact(
            "Recent surgery",
            f"completed Procedure in the last {SURGERY_LOOKBACK_DAYS} days (6 weeks) with category or code "
            "SNOMED CT 387713003 Surgical procedure",
            "massage-sources",
            "UNVERIFIED design choice: the sources say 'recent surgery' without a period. Surgery coded "
            "only by a specific procedure code without the surgical category is not recognised.",
        ),
        RuleFact(
            "Precautions offered",
            "gentle techniques only, no deep-tissue massage, avoid affected areas, no aggressive stretching",
            "massage-sources",
            "Deep-tissue massage contraindicated in osteoporosis (sources). 'No aggressive stretching' as an "
            "ALS-specific rule is UNVERIFIED (draft rule text).",
        ),
    ),
)


# --------------------------------------------------------------------------------------------
# exercise-prescription-als


def exercise_prescription_als(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    findings = []
    for order, match in _orders(record, PHYSIOTHERAPY, EXERCISE):
        bindings: dict[str, Any] = {"patient_reference": f"Patient/{record.patient_id}"}
        if order.reference is not None:
            bindings["updated_order"] = _as_json(order)
        findings.append(
            Finding(
                rule_id="exercise-prescription-als",
                fields={"order_kind": _order_kind(match, order)},
                evidence=(order_line(order, match),),
                bindings=bindings,
                variant=None if order.reference is not None else "no-draft-id",
            )
        )
    return findings


EXERCISE_PRESCRIPTION_ALS = Rule(
    id="exercise-prescription-als",
    title="Exercise prescription in ALS",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({}),
    evaluate=exercise_prescription_als,
    trigger=(
        "A physiotherapy or exercise programme ServiceRequest is ordered for a patient with ALS/MND (not "
        "respiratory physiotherapy or cough augmentation, which is not an exercise programme)."
    ),
    facts=(
        RuleFact(
            "Programme aims and type",
            "range of movement and stretching to prevent contractures; resistance, active-assisted or "
            "passive programme suited to function",
            "nice-ng42",
            "NG42 1.8.5 and 1.8.6; NG42 gives no intensity.",
        ),
        RuleFact(
            "Resistance exercise",
            "only muscles with antigravity strength; low-to-moderate loads; avoid high-resistance and "
            "eccentric exercise",
            "majmudar-2015",
            "Majmudar et al. 2015 Table 1. Reading 'antigravity' as MRC grade >= 3 is standard but "
            "UNVERIFIED; the card does not state an MRC grade.",
        ),
        RuleFact(
            "Aerobic exercise",
            "submaximal: the person can talk comfortably (talk test); stop short of exhaustion",
            "majmudar-2015",
            "Majmudar et al. 2015 Table 1; ACSM 2010 (low-moderate intensity).",
        ),
        RuleFact(
            "Too much exercise",
            "fatigue lasting long after a session",
            "acsm-2010",
            "No duration is stated: the 30-minute and 1-hour figures in circulation are UNVERIFIED "
            "(consumer source / Dal Bello-Haas 2018 not obtained).",
        ),
        RuleFact(
            "Dal Bello-Haas 2018 parameters",
            "not used",
            "dal-bello-haas-2018",
            "UNVERIFIED: full text not obtained; its specific numbers (MRC >= 3, 50-65 % heart-rate reserve, "
            "recovery > 1 h) are not stated as fact.",
        ),
    ),
)

RULES: tuple[Rule, ...] = (MASSAGE_ORDER_CONTRAINDICATIONS, EXERCISE_PRESCRIPTION_ALS)
