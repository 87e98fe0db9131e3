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
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

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
from cds_service.rules.evidence import condition_line, medication_line, patient_reference
from cds_service.terminology import Concept, Match, ValueSet

SIALORRHOEA = terminology.load("sialorrhoea")
COGNITIVE_IMPAIRMENT = terminology.load("cognitive-impairment")
CNS_ANTIMUSCARINICS = terminology.load("cns-antimuscarinics")
GLYCOPYRRONIUM = terminology.load("glycopyrronium")
BOTULINUM_TOXIN = terminology.load("botulinum-toxin")
BOTULINUM_INJECTION = terminology.load("botulinum-toxin-injection")
THICK_SALIVA = terminology.load("thick-saliva")
CARBOCISTEINE = terminology.load("carbocisteine")

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


def _reason_is_saliva(fact: MedicationFact | None) -> bool:
    """Whether the request's reasonCode names drooling / excess salivation (a coded reason only)."""
    if fact is None:
        return False
    return any(SIALORRHOEA.match(concept) is not None for concept in fact.reasons)


def sialorrhoea_treatment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    drooling = record.active_conditions(SIALORRHOEA)
    if not drooling:
        return []
    botulinum = record.medication_requests(BOTULINUM_TOXIN, MEDICATION_HISTORY_STATUSES)
    injections: list[GenericFact] = record.procedures_in(BOTULINUM_INJECTION)
    if botulinum or injections:
        return []  # the specialist botulinum toxin pathway (NG42 1.8.14) is already under way

    tried = medications_in(record, ANTIMUSCARINICS, MEDICATION_HISTORY_STATUSES)
    cognition = record.active_conditions(COGNITIVE_IMPAIRMENT)
    evidence = [condition_line(drooling[0], SIALORRHOEA, "Saliva problem recorded")]
    evidence.append("No botulinum toxin order or injection on record.")
    evidence += [medication_line(m, "Antimuscarinic tried") for m in tried]

    variant: str | None
    if cognition:
        # With impaired cognition the first-line treatment is glycopyrrolate (1.8.13): botulinum
        # toxin comes after glycopyrrolate, not after a centrally acting antimuscarinic.
        evidence.append(condition_line(cognition[0], COGNITIVE_IMPAIRMENT, "Cognition"))
        if any(m.match.valueset == GLYCOPYRRONIUM.id for m in tried):
            variant = "refer-botulinum"
        elif medications_in(record, (CNS_ANTIMUSCARINICS,), MEDICATION_CURRENT_STATUSES):
            return []  # antimuscarinic-cognitive-impairment offers the switch to glycopyrronium
        else:
            variant = "cognitive-impairment"
            evidence.append("No glycopyrronium (current or past) on record.")
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
            },
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": patient_reference(record)},
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
    ),
)


# --------------------------------------------------------------------------------------------
# antimuscarinic-cognitive-impairment (patient-view) and antimuscarinic-order-cognitive-impairment


def antimuscarinic_cognitive_impairment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    cognition = record.active_conditions(COGNITIVE_IMPAIRMENT)
    if not cognition:
        return []
    current = medications_in(record, (CNS_ANTIMUSCARINICS,), MEDICATION_CURRENT_STATUSES)
    drooling = record.active_conditions(SIALORRHOEA)
    findings = []
    for med in current:
        for_saliva = bool(drooling) or _reason_is_saliva(med.fact)
        evidence = [
            medication_line(med, "Centrally acting antimuscarinic"),
            condition_line(cognition[0], COGNITIVE_IMPAIRMENT, "Cognition"),
            _indication_line(drooling, for_saliva),
        ]
        reference = f"MedicationRequest/{med.fact.id}" if med.fact.id else None
        findings.append(
            Finding(
                rule_id="antimuscarinic-cognitive-impairment",
                fields=_swap_fields(med.fact.concept.label, cognition[0]),
                evidence=tuple(evidence),
                variant=_swap_variant(reference, for_saliva),
                bindings=_swap_bindings(record, reference),
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
        for_saliva = bool(drooling) or _reason_is_saliva(order.medication)
        evidence = [
            f"Order being written: {order.concept.label} (matched by {match.describe()}).",
            condition_line(cognition[0], COGNITIVE_IMPAIRMENT, "Cognition"),
            _indication_line(drooling, for_saliva),
        ]
        findings.append(
            Finding(
                rule_id="antimuscarinic-order-cognitive-impairment",
                fields=_swap_fields(order.concept.label, cognition[0]),
                evidence=tuple(evidence),
                variant=_swap_variant(order.reference, for_saliva),
                bindings=_swap_bindings(record, order.reference, key="draft_reference"),
            )
        )
    return findings


def _swap_fields(drug: str, cognition: ConditionFact) -> dict[str, str]:
    return {"drug": drug, "drug_short": short(drug), "cognition": cognition.concept.label}


def _indication_line(drooling: list[ConditionFact], for_saliva: bool) -> str:
    if drooling:
        return condition_line(drooling[0], SIALORRHOEA, "Saliva problem recorded")
    if for_saliva:
        return "The order's coded reason is drooling / excess salivation."
    return "No drooling or excess salivation recorded and no coded reason on the order: indication unknown."


def _swap_variant(reference: str | None, for_saliva: bool) -> str | None:
    if reference is None:
        return "no-reference"  # nothing the EHR could delete: the card keeps only the new draft
    return None if for_saliva else "indication-not-recorded"


def _swap_bindings(
    record: PatientRecord, reference: str | None, *, key: str = "medication_reference"
) -> dict[str, str]:
    bindings = {"patient_reference": patient_reference(record)}
    if reference is not None:
        bindings[key] = reference
    return bindings


_SWAP_FACTS = (
    RuleFact(
        "Antimuscarinic with impaired cognition",
        "glycopyrrolate first line (fewer central nervous system side effects)",
        "nice-ng42",
        "NG42 1.8.13. Centrally acting: hyoscine hydrobromide (scopolamine), amitriptyline, atropine, "
        "trihexyphenidyl, benzatropine; hyoscine butylbromide never counts.",
    ),
    RuleFact(
        "Glycopyrronium starting dose in the draft order",
        "oral solution 200 micrograms every 8 hours, titrated to response up to 1 mg every 8 hours",
        "scottish-palliative-care",
        "Scottish Palliative Care Guidelines, sialorrhoea (off-label); may go via an enteral tube. The "
        "draft stays a draft: the prescriber confirms the dose.",
    ),
    RuleFact(
        "Glycopyrronium first line with cognitive impairment (independent corroboration)",
        "glycopyrronium first line in patients with cognitive impairment",
        "scottish-palliative-care",
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
        "benzatropine request and active impaired cognition, dementia or FTD (one card per request)."
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
        "benzatropine for a patient with active impaired cognition, dementia or FTD (one card per order)."
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
