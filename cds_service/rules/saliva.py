"""Saliva: sialorrhoea, antimuscarinics with impaired cognition, thick saliva (NICE NG42 1.8.10-1.8.15).

NICE NG42 (2016, updated 2019):
* 1.8.12 consider a trial of an antimuscarinic as first-line treatment for sialorrhoea;
* 1.8.13 consider glycopyrrolate first line when the person has cognitive impairment, "because it has
  fewer central nervous system side effects";
* 1.8.14 if first-line treatment is not effective, not tolerated or contraindicated, consider referral
  to a specialist service for botulinum toxin A (NICE TA605: Xeomin);
* 1.8.15 thick, tenacious saliva: review medicines (especially sialorrhoea treatments); consider
  humidification, nebulisers and carbocisteine.

"Centrally acting antimuscarinic" means hyoscine hydrobromide (scopolamine), amitriptyline, atropine,
trihexyphenidyl and benzatropine. Hyoscine *butylbromide* does not cross the blood-brain barrier much
and never counts: the value set excludes its names, and so do the rules below, even when a request
also carries a code (see `_exclusion`).

An antimuscarinic is a saliva treatment only when nothing says otherwise: a request whose coded
reason (`reasonCode`, or a `reasonReference` to a Condition) is something other than drooling
(amitriptyline for depression, trihexyphenidyl for parkinsonism) is neither "an antimuscarinic
tried for saliva" nor a treatment to swap (see `indication`). A current order is never deleted: the
switch card offers to stop it (an update to status `stopped` with a reason), and for the drugs whose
labels ask for gradual withdrawal (amitriptyline, trihexyphenidyl; benzatropine by analogy) it offers
no stop at all, only the advice to withdraw gradually. Deleting is for draft orders only.

The glycopyrronium draft follows the guideline profile (`RuleConfig.profile`), because oral
glycopyrronium products are not interchangeable microgram for microgram: 'nice' drafts glycopyrronium
bromide 1 mg/5 mL oral solution by name (no dm+d code could be verified), never Sialanar (320
micrograms/mL glycopyrronium = 400 micrograms/mL glycopyrronium bromide); 'us' drafts glycopyrrolate
1 mg/5 mL oral solution (RxNorm 999961). Both name the salt, the strength and the route.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from cds_service import terminology
from cds_service.record import (
    MEDICATION_CURRENT_STATUSES,
    MEDICATION_HISTORY_STATUSES,
    ConditionFact,
    DraftOrder,
    GenericFact,
    Interest,
    MedicationFact,
    MedicationMatch,
    PatientRecord,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import aside, condition_line, medication_line, patient_reference
from cds_service.terminology import Concept, Match, ValueSet

SIALORRHOEA = terminology.load("sialorrhoea")
COGNITIVE_IMPAIRMENT = terminology.load("cognitive-impairment")
CNS_ANTIMUSCARINICS = terminology.load("cns-antimuscarinics")
GLYCOPYRRONIUM = terminology.load("glycopyrronium")
BOTULINUM_TOXIN = terminology.load("botulinum-toxin")
BOTULINUM_INJECTION = terminology.load("botulinum-toxin-injection")
THICK_SALIVA = terminology.load("thick-saliva")
CARBOCISTEINE = terminology.load("carbocisteine")
#: Antimuscarinics whose labels ask for gradual withdrawal rather than an abrupt stop.
GRADUAL_WITHDRAWAL = terminology.load("antimuscarinic-gradual-withdrawal")

#: Every antimuscarinic that counts as a sialorrhoea treatment (NG42 1.8.12 names no drug).
ANTIMUSCARINICS: tuple[ValueSet, ...] = (CNS_ANTIMUSCARINICS, GLYCOPYRRONIUM)


# --------------------------------------------------------------------------------------------
# Shared helpers


@cache
def _exclusion_pattern(valueset: ValueSet) -> re.Pattern[str] | None:
    words = [w for w in valueset.exclude_names if w]
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def _exclusion(concepts: Iterable[Concept], valueset: ValueSet) -> str | None:
    """The excluded name (e.g. 'butylbromide', 'inhaler') found in any name of these concepts.

    `ValueSet.match` applies exclusions only to name matching; a request may carry an ingredient
    code and say "Bevespi inhaler" or "hyoscine butylbromide" in its text. Such requests are not
    what the value set stands for, whatever code they carry.
    """
    pattern = _exclusion_pattern(valueset)
    if pattern is None:
        return None
    for concept in concepts:
        for name in concept.names():
            found = pattern.search(name)
            if found:
                return found.group(0)
    return None


def _fact_concepts(fact: MedicationFact) -> list[Concept]:
    dosage = fact.dosage
    return [fact.concept] + ([dosage.route] if dosage is not None else [])


def medications_in(
    record: PatientRecord, valuesets: Iterable[ValueSet], statuses: frozenset[str]
) -> list[MedicationMatch]:
    """Requests in any of the value sets, minus those whose names a value set excludes; each once."""
    found: list[MedicationMatch] = []
    seen: set[int] = set()
    for valueset in valuesets:
        for med in record.medication_requests(valueset, statuses):
            if id(med.fact) in seen or _exclusion(_fact_concepts(med.fact), valueset):
                continue
            seen.add(id(med.fact))
            found.append(med)
    return found


def _draft_orders_in(record: PatientRecord, valueset: ValueSet) -> list[tuple[DraftOrder, Match]]:
    found = []
    for order, match in record.draft_orders_in(valueset):
        concepts = [order.concept]
        if order.medication is not None and order.medication.dosage is not None:
            concepts.append(order.medication.dosage.route)
        if not _exclusion(concepts, valueset):
            found.append((order, match))
    return found


#: Longest drug name the summaries quote: card summaries must stay under 140 characters.
SUMMARY_NAME_LIMIT = 40


def short(label: str, limit: int = SUMMARY_NAME_LIMIT) -> str:
    return label if len(label) <= limit else label[: limit - 1].rstrip() + "…"


def _labels(items: Iterable[str]) -> str:
    unique = list(dict.fromkeys(items))
    return ", ".join(unique)


# --------------------------------------------------------------------------------------------
# What a request is for: its coded reason (reasonCode, reasonReference)


@dataclass(frozen=True)
class Indication:
    """What an antimuscarinic request says it is for.

    'saliva': a coded reason, or a referenced Condition, is drooling / excess salivation.
    'other': the reason is coded (or references a Condition) and it is not drooling: not a saliva
    treatment, whatever else is on the chart.
    'unknown': a reason was given, but only as text or as a reference that cannot be resolved.
    'none': no reason at all.
    """

    kind: Literal["saliva", "other", "unknown", "none"]
    what: str = ""  # the reason as the record names it, for the card's evidence


def _condition_id(reference: str) -> str | None:
    """'Condition/123' (or '.../Condition/123', '.../Condition/123/_history/2') → '123'."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Condition" and parts[-1]:
        return parts[-1]
    return None


def indication(record: PatientRecord, fact: MedicationFact | None) -> Indication:
    """The request's coded reason, checked against the drooling value set (conditions by code only).

    A reference to a Condition the record holds is read through that Condition's code. The record
    holds every readable Condition of the drooling value set (the conditions prefetch asks for every
    clinical status), so a reference to any other Condition is a reason other than drooling, unless
    some Condition could not be read at all: then the reason is unknown.
    """
    if fact is None or (not fact.reasons and not fact.reason_references):
        return Indication("none")
    others: list[str] = []
    unknown: list[str] = []
    for concept in fact.reasons:
        if SIALORRHOEA.match(concept) is not None:
            return Indication("saliva", concept.label)
        (others if concept.codes else unknown).append(concept.label)
    conditions = {c.id: c for c in record.conditions if c.id}
    for reference in fact.reason_references:
        target = _condition_id(reference)
        condition = conditions.get(target) if target else None
        if condition is not None:
            if SIALORRHOEA.match(condition.concept) is not None:
                return Indication("saliva", condition.concept.label)
            others.append(condition.concept.label)
        elif target is not None and not record.unread.get("Condition"):
            # Its id is machine text: said in words (the EHR shows the order's reason anyway).
            others.append("a condition that is not a recorded drooling diagnosis")
        else:
            unknown.append("a referenced condition that could not be looked up")
    if others:
        return Indication("other", "; ".join(dict.fromkeys(others)))
    return Indication("unknown", "; ".join(dict.fromkeys(unknown)))


def _not_for_saliva_line(med: MedicationMatch, why: Indication) -> str:
    return (
        f"Not counted as a saliva treatment: {med.fact.concept.label} ({med.fact.status}), prescribed for "
        f"{why.what}; its antimuscarinic effects add to any other antimuscarinic."
    )


def _saliva_candidates(
    record: PatientRecord, valuesets: Iterable[ValueSet], statuses: frozenset[str]
) -> tuple[list[MedicationMatch], list[tuple[MedicationMatch, Indication]]]:
    """Antimuscarinic requests that may be for saliva, and those coded for another reason."""
    candidates: list[MedicationMatch] = []
    other: list[tuple[MedicationMatch, Indication]] = []
    for med in medications_in(record, valuesets, statuses):
        why = indication(record, med.fact)
        if why.kind == "other":
            other.append((med, why))
        else:
            candidates.append(med)
    return candidates, other


# --------------------------------------------------------------------------------------------
# The glycopyrronium draft, per guideline profile


@dataclass(frozen=True)
class GlycopyrroniumProduct:
    """The oral solution a card drafts: product, salt, strength, dose and route, for one profile."""

    medication: dict[str, Any]  # medicationCodeableConcept
    product: str  # for card text: salt and strength
    dose: str  # for card text: dose, volume, route and frequency
    dose_text: str  # dosageInstruction.text


_ORAL_ROUTE = {"coding": [{"system": terminology.SNOMED, "code": "26643006", "display": "Oral route"}]}
_UCUM = "http://unitsofmeasure.org"

#: Scottish Palliative Care Guidelines (sialorrhoea): glycopyrronium bromide, oral dose (as oral
#: solution) 200 micrograms every 8 hours, titrated to 1 mg every 8 hours; the dose is of the
#: bromide salt. In the US, glycopyrrolate is the name of the same salt (USAN), so the number is the
#: same; RxNorm 999961 is glycopyrrolate 0.2 MG/ML (1 mg/5 mL) Oral Solution.
GLYCOPYRRONIUM_DRAFTS: dict[str, GlycopyrroniumProduct] = {
    "nice": GlycopyrroniumProduct(
        medication={"text": "Glycopyrronium bromide 1 mg/5 mL oral solution"},
        product="glycopyrronium bromide 1 mg/5 mL oral solution",
        dose="200 micrograms of glycopyrronium bromide (1 mL) by mouth every 8 hours",
        dose_text=(
            "200 micrograms of glycopyrronium bromide (1 mL of the 1 mg/5 mL oral solution) by mouth every "
            "8 hours; titrate to response and tolerability up to 1 mg every 8 hours (Scottish Palliative "
            "Care Guidelines, off-label). May be given via an enteral feeding tube. Not Sialanar (320 "
            "micrograms/mL glycopyrronium = 400 micrograms/mL glycopyrronium bromide): oral glycopyrronium "
            "products are not interchangeable microgram for microgram."
        ),
    ),
    "us": GlycopyrroniumProduct(
        medication={
            "coding": [
                {
                    "system": terminology.RXNORM,
                    "code": "999961",
                    "display": "glycopyrrolate 0.2 MG/ML Oral Solution",
                }
            ],
            "text": "Glycopyrrolate (glycopyrronium bromide) 1 mg/5 mL oral solution",
        },
        product="glycopyrrolate (glycopyrronium bromide) 1 mg/5 mL oral solution",
        dose="200 micrograms of glycopyrrolate (1 mL) by mouth every 8 hours",
        dose_text=(
            "200 micrograms of glycopyrrolate (1 mL of the 1 mg/5 mL oral solution) by mouth every 8 hours; "
            "titrate to response and tolerability up to 1 mg every 8 hours (Scottish Palliative Care "
            "Guidelines; off-label in adults: the oral solution's label is for ages 3 to 16). May be given "
            "via an enteral feeding tube."
        ),
    ),
}

#: Why the draft is ordered, as the draft's reasonCode says it.
_DRAFT_REASON = "Sialorrhoea in MND with impaired cognition: glycopyrrolate first line (NICE NG42 1.8.13)"
#: Why the current antimuscarinic is stopped, as the stop's statusReason says it.
_STOP_REASON = (
    "Switched to glycopyrronium: centrally acting antimuscarinic with impaired cognition (NICE NG42 1.8.13)"
)


def glycopyrronium_draft(record: PatientRecord, config: RuleConfig) -> dict[str, Any]:
    """The draft MedicationRequest for the profile: product with salt and strength, dose, route."""
    product = GLYCOPYRRONIUM_DRAFTS[config.profile]
    return {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": patient_reference(record)},
        "medicationCodeableConcept": product.medication,
        "reasonCode": [{"text": _DRAFT_REASON}],
        "dosageInstruction": [
            {
                "text": product.dose_text,
                "timing": {"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}},
                "route": _ORAL_ROUTE,
                "doseAndRate": [
                    {"doseQuantity": {"value": 200, "unit": "microgram", "system": _UCUM, "code": "ug"}}
                ],
            }
        ],
    }


def glycopyrronium_fields(config: RuleConfig) -> dict[str, str]:
    product = GLYCOPYRRONIUM_DRAFTS[config.profile]
    return {"glycopyrronium_product": product.product, "glycopyrronium_dose": product.dose}


def _concept_json(concept: Concept) -> dict[str, Any]:
    found: dict[str, Any] = {}
    codings = [
        {k: v for k, v in (("system", c.system), ("code", c.code), ("display", c.display)) if v}
        for c in concept.codes
    ]
    if codings:
        found["coding"] = codings
    found["text"] = concept.label
    return found


def _stop_order(record: PatientRecord, fact: MedicationFact) -> dict[str, Any]:
    """The current order, stopped with a reason.

    An update replaces the whole order in the EHR, so the order goes back as the EHR sent it (its
    dosage included), with only its status and statusReason changed. Only a fact built without
    its JSON (in tests) falls back to the fields the service read.
    """
    if fact.resource is not None:
        stopped = copy.deepcopy(dict(fact.resource))
        stopped.pop("text", None)  # the narrative described the active order
        stopped["id"] = fact.id
        stopped["status"] = "stopped"
        stopped["statusReason"] = {"text": _STOP_REASON}
        return stopped
    return {
        "resourceType": "MedicationRequest",
        "id": fact.id,
        "status": "stopped",
        "statusReason": {"text": _STOP_REASON},
        "intent": fact.intent if fact.intent in _INTENTS else "order",
        "subject": {"reference": patient_reference(record)},
        "medicationCodeableConcept": _concept_json(fact.concept),
    }


_INTENTS = frozenset(
    {
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)


#: The facts behind every glycopyrronium draft (sialorrhoea-treatment and both switch cards).
_DRAFT_FACTS = (
    RuleFact(
        "Glycopyrronium starting dose in the draft order",
        "glycopyrronium bromide (oral solution) 200 micrograms every 8 hours, titrated to response and "
        "tolerability up to 1 mg every 8 hours, by mouth or via an enteral feeding tube",
        "scottish-palliative-care",
        "Scottish Palliative Care Guidelines, sialorrhoea (off-label): the dose is of the bromide salt. The "
        "draft stays a draft: the prescriber confirms the dose.",
    ),
    RuleFact(
        "Draft product, profile 'nice'",
        "glycopyrronium bromide 1 mg/5 mL oral solution (200 micrograms = 1 mL), route oral (SNOMED CT "
        "26643006); never Sialanar",
        "sialanar-smpc",
        "Sialanar is 320 micrograms/mL glycopyrronium = 400 micrograms/mL glycopyrronium bromide (SmPC 2), "
        "and oral glycopyrronium products are not interchangeable microgram for microgram. UNVERIFIED: no "
        "dm+d code for the 1 mg/5 mL solution could be checked, so the draft names the product in text only "
        "and carries no code (never a US RxNorm code under this profile).",
    ),
    RuleFact(
        "Draft product, profile 'us'",
        "glycopyrrolate 1 mg/5 mL (0.2 mg/mL) oral solution, RxNorm 999961, route oral (SNOMED CT 26643006)",
        "fda-glycopyrrolate-oral-solution",
        "Glycopyrrolate is the US name of glycopyrronium bromide, so the guideline dose is the same number "
        "of the same salt. The oral solution's label is for chronic severe drooling at ages 3 to 16 "
        "(weight-based): adult use is off-label.",
    ),
)


def sialorrhoea_treatment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    drooling = record.active_conditions(SIALORRHOEA)
    if not drooling:
        return []
    botulinum = record.medication_requests(BOTULINUM_TOXIN, MEDICATION_HISTORY_STATUSES)
    injections: list[GenericFact] = record.procedures_in(BOTULINUM_INJECTION)
    if botulinum or injections:
        return []  # the specialist botulinum toxin pathway (NG42 1.8.14) is already under way

    # An antimuscarinic prescribed for another coded reason (amitriptyline for depression) was not
    # a trial for saliva: it neither counts as tried nor stands for the switch card.
    tried, not_for_saliva = _saliva_candidates(record, ANTIMUSCARINICS, MEDICATION_HISTORY_STATUSES)
    cognition = record.active_conditions(COGNITIVE_IMPAIRMENT)
    evidence = [condition_line(drooling[0], SIALORRHOEA, "Saliva problem recorded")]
    evidence.append("No botulinum toxin order or injection on record.")
    evidence += [medication_line(m, "Antimuscarinic tried") for m in tried]
    evidence += [
        _not_for_saliva_line(m, why)
        for m, why in not_for_saliva
        if m.fact.status in MEDICATION_CURRENT_STATUSES
    ]

    variant: str | None
    bindings: dict[str, Any] = {"patient_reference": patient_reference(record)}
    if cognition:
        # With impaired cognition the first-line treatment is glycopyrrolate (1.8.13): botulinum
        # toxin comes after glycopyrrolate, not after a centrally acting antimuscarinic.
        evidence.append(condition_line(cognition[0], COGNITIVE_IMPAIRMENT, "Cognition"))
        if any(m.match.valueset == GLYCOPYRRONIUM.id for m in tried):
            variant = "refer-botulinum"
        elif any(
            m.fact.status in MEDICATION_CURRENT_STATUSES and m.match.valueset == CNS_ANTIMUSCARINICS.id
            for m in tried
        ):
            return []  # antimuscarinic-cognitive-impairment offers the switch to glycopyrronium
        else:
            variant = "cognitive-impairment"
            evidence.append("No glycopyrronium (current or past) on record.")
            bindings["glycopyrronium_draft"] = glycopyrronium_draft(record, config)
    else:
        evidence.append("No impaired cognition, dementia or FTD recorded.")
        if tried:
            variant = "refer-botulinum"
        else:
            variant = None
            evidence.append("No antimuscarinic (current or past) on record.")
    return [
        Finding(
            rule_id="sialorrhoea-treatment",
            fields={
                "symptom": drooling[0].concept.label,
                "antimuscarinics": _labels(m.fact.concept.label for m in tried) or "none on record",
                "cognition": cognition[0].concept.label if cognition else "none recorded",
                **glycopyrronium_fields(config),
            },
            evidence=tuple(evidence),
            variant=variant,
            bindings=bindings,
        )
    ]


SIALORRHOEA_TREATMENT = Rule(
    id="sialorrhoea-treatment",
    title="Sialorrhoea: antimuscarinic first, then botulinum toxin A",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Condition": (SIALORRHOEA, COGNITIVE_IMPAIRMENT),
            "MedicationRequest": (CNS_ANTIMUSCARINICS, GLYCOPYRRONIUM, BOTULINUM_TOXIN),
            "Procedure": (BOTULINUM_INJECTION,),
        }
    ),
    evaluate=sialorrhoea_treatment,
    trigger=(
        "Active drooling / excess salivation and no botulinum toxin on record: with no antimuscarinic "
        "tried, suggests one; with impaired cognition and no glycopyrronium tried, glycopyrrolate "
        "(silent while a centrally acting antimuscarinic is current: the switch card covers it); after "
        "an antimuscarinic (with impaired cognition: glycopyrronium), referral for botulinum toxin A."
    ),
    facts=(
        RuleFact(
            "First-line treatment",
            "a trial of an antimuscarinic medicine",
            "nice-ng42",
            "NG42 1.8.12 (off-label use).",
        ),
        RuleFact(
            "First line with cognitive impairment",
            "glycopyrrolate (fewer central nervous system side effects)",
            "nice-ng42",
            "NG42 1.8.13. Design choice: with impaired cognition only glycopyrronium counts as the "
            "first-line treatment tried before botulinum toxin.",
        ),
        RuleFact(
            "After first-line treatment",
            "referral to a specialist service for botulinum toxin A",
            "nice-ng42",
            "NG42 1.8.14: when first-line treatment is not effective, not tolerated or contraindicated. "
            "Design choice: any antimuscarinic request (active, on hold, completed or stopped) counts as "
            "tried; the card cannot know whether it worked and says so.",
        ),
        RuleFact(
            "Botulinum toxin A product",
            "Xeomin (incobotulinumtoxinA) for chronic sialorrhoea of neurological cause in adults",
            "nice-ta605",
        ),
        RuleFact(
            "Botulinum toxin already given or ordered",
            "any botulinum toxin request or injection procedure on record: no card",
            "nice-ng42",
            "Design choice: the specialist pathway of NG42 1.8.14 is already under way; the injection "
            "site is not recorded in the procedure code.",
        ),
        RuleFact(
            "Antimuscarinic prescribed for another reason",
            "not counted as tried for saliva (its coded reason is not drooling)",
            "nice-ng42",
            "Design choice: amitriptyline for depression was not a trial of NG42 1.8.12; the card lists it "
            "because its antimuscarinic effects add to any new one.",
        ),
        *_DRAFT_FACTS,
    ),
)


# --------------------------------------------------------------------------------------------
# antimuscarinic-cognitive-impairment (patient-view) and antimuscarinic-order-cognitive-impairment


def antimuscarinic_cognitive_impairment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    cognition = record.active_conditions(COGNITIVE_IMPAIRMENT)
    if not cognition:
        return []
    drooling = record.active_conditions(SIALORRHOEA)
    findings = []
    for med in medications_in(record, (CNS_ANTIMUSCARINICS,), MEDICATION_CURRENT_STATUSES):
        why = indication(record, med.fact)
        if why.kind == "other":
            continue  # prescribed for something else: not a drooling treatment to swap
        for_saliva = why.kind == "saliva" or (why.kind == "none" and bool(drooling))
        gradual = GRADUAL_WITHDRAWAL.match(med.fact.concept) is not None
        reference = f"MedicationRequest/{med.fact.id}" if med.fact.id else None
        evidence = [
            medication_line(med, "Centrally acting antimuscarinic"),
            condition_line(cognition[0], COGNITIVE_IMPAIRMENT, "Cognition"),
            _indication_line(drooling, why, for_saliva),
        ]
        bindings = _swap_bindings(record, config)
        if reference is None:
            variant: str | None = "no-reference"
        else:
            variant = _swap_variant(for_saliva, gradual)
            if not gradual:
                bindings["stop_order"] = _stop_order(record, med.fact)
        findings.append(
            Finding(
                rule_id="antimuscarinic-cognitive-impairment",
                fields=_swap_fields(med.fact.concept.label, cognition[0], config),
                evidence=tuple(evidence),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


def antimuscarinic_order_cognitive_impairment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    cognition = record.active_conditions(COGNITIVE_IMPAIRMENT)
    if not cognition:
        return []
    drooling = record.active_conditions(SIALORRHOEA)
    findings = []
    for order, match in _draft_orders_in(record, CNS_ANTIMUSCARINICS):
        why = indication(record, order.medication)
        if why.kind == "other":
            continue  # ordered for something else: not a drooling treatment to replace
        for_saliva = why.kind == "saliva" or (why.kind == "none" and bool(drooling))
        evidence = [
            f"Order being written: {order.concept.label}{aside(match)}.",
            condition_line(cognition[0], COGNITIVE_IMPAIRMENT, "Cognition"),
            _indication_line(drooling, why, for_saliva),
        ]
        bindings = _swap_bindings(record, config)
        if order.reference is None:
            variant: str | None = "no-reference"  # nothing the EHR could delete
        else:
            # A draft is not yet a treatment: removing it is safe (no stop, no withdrawal).
            variant = None if for_saliva else "indication-not-recorded"
            bindings["draft_reference"] = order.reference
        findings.append(
            Finding(
                rule_id="antimuscarinic-order-cognitive-impairment",
                fields=_swap_fields(order.concept.label, cognition[0], config),
                evidence=tuple(evidence),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


def _swap_fields(drug: str, cognition: ConditionFact, config: RuleConfig) -> dict[str, str]:
    return {
        "drug": drug,
        "drug_short": short(drug),
        "cognition": cognition.concept.label,
        **glycopyrronium_fields(config),
    }


def _indication_line(drooling: list[ConditionFact], why: Indication, for_saliva: bool) -> str:
    if why.kind == "saliva":
        return f"The order's coded reason is drooling / excess salivation ({why.what})."
    if why.kind == "unknown":
        return f"The order's reason could not be read as a code ({why.what}): indication unknown."
    if drooling:
        return condition_line(drooling[0], SIALORRHOEA, "Saliva problem recorded (the order gives no reason)")
    return "No drooling or excess salivation recorded and no reason on the order: indication unknown."


def _swap_variant(for_saliva: bool, gradual: bool) -> str | None:
    """The card for a current order: stop it, or (labels asking for it) withdraw it gradually."""
    if for_saliva:
        return "withdraw-gradually" if gradual else None
    return "indication-not-recorded-withdraw-gradually" if gradual else "indication-not-recorded"


def _swap_bindings(record: PatientRecord, config: RuleConfig) -> dict[str, Any]:
    return {
        "patient_reference": patient_reference(record),
        "glycopyrronium_draft": glycopyrronium_draft(record, config),
    }


_SWAP_FACTS = (
    RuleFact(
        "Antimuscarinic with impaired cognition",
        "glycopyrrolate first line (fewer central nervous system side effects)",
        "nice-ng42",
        "NG42 1.8.13. Centrally acting: hyoscine hydrobromide (scopolamine), amitriptyline, atropine, "
        "trihexyphenidyl, benzatropine; hyoscine butylbromide never counts.",
    ),
    RuleFact(
        "Glycopyrronium first line with cognitive impairment (independent corroboration)",
        "glycopyrronium first line in patients with cognitive impairment",
        "scottish-palliative-care",
    ),
    *_DRAFT_FACTS,
    RuleFact(
        "Prescribed for another reason",
        "a request whose coded reason (reasonCode or reasonReference) is not drooling gets no switch card",
        "nice-ng42",
        "Design choice: NG42 1.8.13 is about sialorrhoea treatment; amitriptyline for depression or "
        "trihexyphenidyl for parkinsonism is not a drooling treatment to swap. A reason given only as text, "
        "or a reference that cannot be resolved, leaves the indication unknown (the hedged card).",
    ),
    RuleFact(
        "A current treatment is stopped, never deleted",
        "update to status 'stopped' with a statusReason; deleting is offered only for a draft order",
        "nice-ng42",
        "Design choice: deleting an active order erases the record that it was ever given.",
    ),
    RuleFact(
        "Amitriptyline: withdraw gradually",
        "no stop action; the card advises gradual withdrawal",
        "amitriptyline-label",
        "Label: abrupt cessation after prolonged administration may produce nausea, headache and malaise. No "
        "taper schedule is given by the service.",
    ),
    RuleFact(
        "Trihexyphenidyl (and benzatropine): withdraw gradually",
        "no stop action; the card advises gradual withdrawal",
        "trihexyphenidyl-smpc",
        "SmPC 4.2: antimuscarinic treatment of parkinsonism should never be terminated suddenly. UNVERIFIED "
        "for benzatropine: no benzatropine label statement was checked; included by analogy (same use).",
    ),
)

ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT = Rule(
    id="antimuscarinic-cognitive-impairment",
    title="Centrally acting antimuscarinic with impaired cognition: consider glycopyrronium",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Condition": (COGNITIVE_IMPAIRMENT, SIALORRHOEA),
            "MedicationRequest": (CNS_ANTIMUSCARINICS,),
        }
    ),
    evaluate=antimuscarinic_cognitive_impairment,
    trigger=(
        "An active or on-hold hyoscine hydrobromide, amitriptyline, atropine, trihexyphenidyl or "
        "benzatropine request and active impaired cognition, dementia or FTD (one card per request), "
        "unless the request's coded reason is something other than drooling; offers to stop it (or, for "
        "amitriptyline, trihexyphenidyl and benzatropine, to withdraw it gradually) and a glycopyrronium "
        "draft for the guideline profile."
    ),
    facts=_SWAP_FACTS,
)

ANTIMUSCARINIC_ORDER_COGNITIVE_IMPAIRMENT = Rule(
    id="antimuscarinic-order-cognitive-impairment",
    title="Ordering a centrally acting antimuscarinic with impaired cognition: consider glycopyrronium",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({"Condition": (COGNITIVE_IMPAIRMENT, SIALORRHOEA)}),
    evaluate=antimuscarinic_order_cognitive_impairment,
    trigger=(
        "A draft order for hyoscine hydrobromide, amitriptyline, atropine, trihexyphenidyl or "
        "benzatropine for a patient with active impaired cognition, dementia or FTD (one card per order), "
        "unless its coded reason is something other than drooling; offers to replace the draft with a "
        "glycopyrronium draft for the guideline profile."
    ),
    facts=_SWAP_FACTS,
)


# --------------------------------------------------------------------------------------------
# thick-saliva


def thick_saliva(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    thick = record.active_conditions(THICK_SALIVA)
    if not thick:
        return []
    drying = medications_in(record, ANTIMUSCARINICS, MEDICATION_CURRENT_STATUSES)
    mucolytic = record.active_medications(CARBOCISTEINE)
    evidence = [condition_line(thick[0], THICK_SALIVA, "Thick saliva recorded")]
    evidence += [medication_line(m, "Current antimuscarinic (can thicken secretions)") for m in drying]
    if not drying:
        evidence.append("No current antimuscarinic on record.")
    evidence += [medication_line(m, "Already on") for m in mucolytic]
    return [
        Finding(
            rule_id="thick-saliva",
            fields={
                "symptom": thick[0].concept.label,
                "antimuscarinics": _labels(m.fact.concept.label for m in drying) or "none on record",
            },
            evidence=tuple(evidence),
            variant="on-carbocisteine" if mucolytic else None,
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


THICK_SALIVA_RULE = Rule(
    id="thick-saliva",
    title="Thick, tenacious saliva: review medicines, humidification, nebulisers, carbocisteine",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Condition": (THICK_SALIVA,),
            "MedicationRequest": (CNS_ANTIMUSCARINICS, GLYCOPYRRONIUM, CARBOCISTEINE),
        }
    ),
    evaluate=thick_saliva,
    trigger="Active thick / tenacious saliva recorded (coded; no verified standard code exists yet).",
    facts=(
        RuleFact(
            "Thick, tenacious saliva",
            "review all medicines (especially sialorrhoea treatments); consider humidification, "
            "nebulisers and carbocisteine",
            "nice-ng42",
            "NG42 1.8.15.",
        ),
        RuleFact(
            "Thick-saliva code",
            "local placeholder only",
            "nice-ng42",
            "UNVERIFIED: no SNOMED CT code for thick/tenacious saliva was found in any checked source; the "
            "value set holds a local placeholder a site must map. Conditions are never matched by text.",
        ),
        RuleFact(
            "Antisialogogues thicken secretions",
            "sialorrhoea medicines may worsen dry mouth and thicken secretions",
            "scottish-palliative-care",
        ),
    ),
)


RULES: tuple[Rule, ...] = (
    SIALORRHOEA_TREATMENT,
    ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT,
    THICK_SALIVA_RULE,
    ANTIMUSCARINIC_ORDER_COGNITIVE_IMPAIRMENT,
)
