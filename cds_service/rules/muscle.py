"""Muscle problems: cramps, spasticity and quinine (NICE NG42 1.8.1-1.8.4; FDA and MHRA quinine safety).

NICE NG42 (2016, updated 2019):
* 1.8.2 cramps: quinine first line; if not effective, not tolerated or contraindicated, baclofen; then
  tizanidine, dantrolene or gabapentin;
* 1.8.3 stiffness, spasticity, increased tone: baclofen, tizanidine, dantrolene or gabapentin; if not
  effective, not tolerated or contraindicated, referral to a specialist service for severe spasticity.

Quinine differs by jurisdiction. MHRA (UK): not routine for nocturnal leg cramps, stop after a 4-week
trial without benefit, dose-dependent QT prolongation, raised phenobarbital/carbamazepine levels.
FDA (US): Qualaquin is approved only for malaria and "should not be used for night time leg cramps"
(serious haematological reactions). `RuleConfig.profile` chooses the card text ('nice' or 'us').

Tizanidine and dantrolene can injure the liver (tizanidine label: check aminotransferases at baseline
and 1 month after the maximum dose; dantrolene boxed warning: hepatitis, liver function studies at
baseline and during treatment, higher risk with other drugs), and the riluzole label warns that other
hepatotoxic drugs may add to its own liver risk. So when riluzole is current, every card that names
them says so and offers a baseline liver test, and a draft order for either gets its own card
(`antispastic-order-riluzole`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cds_service import terminology
from cds_service.record import (
    MEDICATION_CURRENT_STATUSES,
    MEDICATION_HISTORY_STATUSES,
    Interest,
    MedicationMatch,
    PatientRecord,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import aside, condition_line, medication_line, order_line
from cds_service.terminology import ValueSet

CRAMP = terminology.load("cramp")
SPASTICITY = terminology.load("spasticity")
QUININE = terminology.load("quinine")
BACLOFEN = terminology.load("antispastic-baclofen")
TIZANIDINE = terminology.load("antispastic-tizanidine")
DANTROLENE = terminology.load("antispastic-dantrolene")
GABAPENTIN = terminology.load("antispastic-gabapentin")
RILUZOLE = terminology.load("riluzole")

#: The antispastics whose labels warn of liver injury (tizanidine; dantrolene, boxed warning).
HEPATOTOXIC_ANTISPASTICS: Mapping[str, ValueSet] = {"tizanidine": TIZANIDINE, "dantrolene": DANTROLENE}

#: NG42 1.8.3, by ingredient (counted per ingredient, not per request).
ANTISPASTICS: Mapping[str, ValueSet] = {
    "baclofen": BACLOFEN,
    "tizanidine": TIZANIDINE,
    "dantrolene": DANTROLENE,
    "gabapentin": GABAPENTIN,
}
#: NG42 1.8.2: quinine, then baclofen, then tizanidine, dantrolene or gabapentin.
CRAMP_TREATMENTS: Mapping[str, ValueSet] = {"quinine": QUININE, **ANTISPASTICS}

#: Distinct antispastics at once that stand for "these treatments are not enough" (NG42 1.8.3).
SPECIALIST_REFERRAL_AT = 2

#: Longest drug name a summary quotes: card summaries must stay under 140 characters.
SUMMARY_NAME_LIMIT = 40


def short(label: str, limit: int = SUMMARY_NAME_LIMIT) -> str:
    return label if len(label) <= limit else label[: limit - 1].rstrip() + "\u2026"


def requests_by_drug(
    record: PatientRecord, drugs: Mapping[str, ValueSet], statuses: frozenset[str]
) -> list[tuple[str, MedicationMatch]]:
    """(ingredient, request) for every request of these drugs in these statuses."""
    return [(name, med) for name, vs in drugs.items() for med in record.medication_requests(vs, statuses)]


def _labels(items: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(items))


def current_riluzole(record: PatientRecord) -> list[MedicationMatch]:
    """Riluzole the patient is on now (active or on hold)."""
    return record.medication_requests(RILUZOLE, MEDICATION_CURRENT_STATUSES)


def _riluzole_line(riluzole: list[MedicationMatch]) -> str:
    return medication_line(
        riluzole[0], "On riluzole (its label: other hepatotoxic drugs may add to its liver risk)"
    )


def _with_riluzole(variant: str | None) -> str:
    """The card variant that adds the hepatotoxicity advice for a patient on riluzole."""
    return f"{variant}-riluzole" if variant else "riluzole"


#: Why cards that name tizanidine or dantrolene say more when riluzole is current (issue 10, finding 10).
_HEPATOTOXICITY_FACTS = (
    RuleFact(
        "Riluzole with other hepatotoxic drugs",
        "other hepatotoxic drugs may increase the risk of hepatotoxicity",
        "riluzole-label",
        "Riluzole is current: active or on-hold request.",
    ),
    RuleFact(
        "Tizanidine: liver injury",
        "aminotransferases at baseline and 1 month after the maximum dose is reached",
        "tizanidine-label",
    ),
    RuleFact(
        "Dantrolene: hepatotoxicity (boxed warning)",
        "liver function studies at baseline and at appropriate intervals; stop if abnormal; higher risk "
        "in females, over 35 and with other drugs; stop if no benefit after 45 days",
        "dantrolene-label",
    ),
    RuleFact(
        "With riluzole, which antispastic first",
        "baclofen or gabapentin before tizanidine or dantrolene",
        "nice-ng42",
        "Design choice: NG42 1.8.3 lists baclofen, tizanidine, dantrolene and gabapentin in no order (1.8.2 "
        "puts the last three after baclofen for cramps); the two with label liver warnings come last while "
        "riluzole, itself hepatotoxic, is taken.",
    ),
)


# --------------------------------------------------------------------------------------------
# cramps-treatment


def cramps_treatment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    cramps = record.active_conditions(CRAMP)
    if not cramps:
        return []
    if requests_by_drug(record, CRAMP_TREATMENTS, MEDICATION_CURRENT_STATUSES):
        return []  # on a cramp treatment already: NG42 1.8.4 review happens at the MDT assessment
    # Nothing current, so these are completed or stopped courses: tried.
    tried = requests_by_drug(record, CRAMP_TREATMENTS, MEDICATION_HISTORY_STATUSES)
    tried_drugs = {name for name, _ in tried}
    if config.profile == "us":
        variant: str | None = "us-third-line" if "baclofen" in tried_drugs else "us"
    elif "quinine" not in tried_drugs:
        variant = None
    elif "baclofen" not in tried_drugs:
        variant = "nice-baclofen"
    else:
        variant = "nice-third-line"

    evidence = [condition_line(cramps[0], CRAMP, "Cramps recorded")]
    evidence.append("No current quinine, baclofen, tizanidine, dantrolene or gabapentin on record.")
    evidence += [medication_line(med, "Tried before") for _, med in tried]
    riluzole = current_riluzole(record)
    if riluzole:
        # Every cramp card names tizanidine and dantrolene among the options: say what they do
        # to the liver of a patient on riluzole.
        variant = _with_riluzole(variant)
        evidence.append(_riluzole_line(riluzole))
    return [
        Finding(
            rule_id="cramps-treatment",
            fields={
                "symptom": cramps[0].concept.label,
                "tried": _labels(med.fact.concept.label for _, med in tried) or "none on record",
            },
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


CRAMPS_TREATMENT = Rule(
    id="cramps-treatment",
    title="Muscle cramps: treatment ladder (NICE NG42 1.8.2; FDA quinine warning for the US)",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Condition": (CRAMP,),
            "MedicationRequest": (QUININE, BACLOFEN, TIZANIDINE, DANTROLENE, GABAPENTIN, RILUZOLE),
        }
    ),
    evaluate=cramps_treatment,
    trigger=(
        "Active muscle cramps and no current quinine, baclofen, tizanidine, dantrolene or gabapentin; "
        "suggests the next step of the NG42 ladder after what was tried (profile 'us': baclofen first, "
        "no quinine); on riluzole, says that tizanidine and dantrolene are hepatotoxic and offers a "
        "baseline ALT."
    ),
    facts=(
        RuleFact(
            "Cramp treatment ladder (UK)",
            "quinine first line; then baclofen; then tizanidine, dantrolene or gabapentin",
            "nice-ng42",
            "NG42 1.8.2 (off-label use in Feb 2016). Each step when the previous one is not effective, not "
            "tolerated or contraindicated. Design choice: a completed or stopped request counts as tried.",
        ),
        RuleFact(
            "Quinine trial length",
            "4 weeks; stop if no benefit",
            "mhra-quinine-2010",
            "MHRA Drug Safety Update June 2010 (nocturnal leg cramps).",
        ),
        RuleFact(
            "Quinine cautions",
            "dose-dependent QT prolongation; raises phenobarbital and carbamazepine levels",
            "mhra-quinine-2017",
        ),
        RuleFact(
            "Quinine in the US",
            "not for leg cramps: approved only for uncomplicated P. falciparum malaria",
            "fda-qualaquin-2010",
            "Profile 'us' starts at baclofen; the further options are NG42's (no US guideline checked).",
        ),
        *_HEPATOTOXICITY_FACTS,
    ),
)


# --------------------------------------------------------------------------------------------
# spasticity-treatment


def spasticity_treatment(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    spasticity = record.active_conditions(SPASTICITY)
    if not spasticity:
        return []
    current = requests_by_drug(record, ANTISPASTICS, MEDICATION_CURRENT_STATUSES)
    drugs = sorted({name for name, _ in current})
    if 0 < len(drugs) < SPECIALIST_REFERRAL_AT:
        return []
    evidence = [condition_line(spasticity[0], SPASTICITY, "Spasticity recorded")]
    riluzole = current_riluzole(record)
    if current:
        variant: str | None = "refer-specialist"
        evidence += [medication_line(med, "Current antispastic") for _, med in current]
        evidence.append(f"{len(drugs)} different antispastics at once ({', '.join(drugs)}).")
        if riluzole and set(drugs) & set(HEPATOTOXIC_ANTISPASTICS):
            evidence.append(_riluzole_line(riluzole))
    else:
        variant = None
        evidence.append("No current baclofen, tizanidine, dantrolene or gabapentin on record.")
        past = requests_by_drug(record, ANTISPASTICS, MEDICATION_HISTORY_STATUSES)
        evidence += [medication_line(med, "Tried before") for _, med in past]
        if riluzole:
            # The card names tizanidine and dantrolene: on riluzole, say what they do to the liver.
            variant = _with_riluzole(variant)
            evidence.append(_riluzole_line(riluzole))
    return [
        Finding(
            rule_id="spasticity-treatment",
            fields={
                "symptom": spasticity[0].concept.label,
                "antispastics": _labels(med.fact.concept.label for _, med in current) or "none",
            },
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


SPASTICITY_TREATMENT = Rule(
    id="spasticity-treatment",
    title="Spasticity: antispastic treatment, then specialist services (NICE NG42 1.8.3)",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Condition": (SPASTICITY,),
            "MedicationRequest": (BACLOFEN, TIZANIDINE, DANTROLENE, GABAPENTIN, RILUZOLE),
        }
    ),
    evaluate=spasticity_treatment,
    trigger=(
        "Active spasticity with no current baclofen, tizanidine, dantrolene or gabapentin (suggests "
        "one; on riluzole, baclofen or gabapentin first, with the liver warnings of tizanidine and "
        "dantrolene and a baseline ALT), or with two or more of them at once (suggests a specialist "
        "spasticity service)."
    ),
    facts=(
        RuleFact(
            "Spasticity treatment",
            "baclofen, tizanidine, dantrolene or gabapentin",
            "nice-ng42",
            "NG42 1.8.3 (off-label use of dantrolene in Feb 2016).",
        ),
        RuleFact(
            "Specialist referral",
            f"{SPECIALIST_REFERRAL_AT} or more different antispastics at once",
            "nice-ng42",
            "NG42 1.8.3 refers to a specialist service for severe spasticity when these treatments are "
            "not effective, not tolerated or contraindicated; it gives no number. Design choice: needing "
            "two different antispastics at once stands for 'not effective alone'.",
        ),
        *_HEPATOTOXICITY_FACTS,
    ),
)


# --------------------------------------------------------------------------------------------
# antispastic-order-riluzole


def antispastic_order_riluzole(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    riluzole = current_riluzole(record)
    # Riluzole ordered alongside counts whether or not it is among the selected orders.
    drafted = [(order, match) for order in record.draft_orders if (match := RILUZOLE.match(order.concept))]
    if not riluzole and not drafted:
        return []
    findings = []
    for name, valueset in HEPATOTOXIC_ANTISPASTICS.items():
        for order, match in record.draft_orders_in(valueset):
            evidence = [order_line(order, match)]
            if riluzole:
                evidence.append(_riluzole_line(riluzole))
            else:
                riluzole_order, riluzole_match = drafted[0]
                evidence.append(
                    order_line(riluzole_order, riluzole_match) + " Riluzole is being ordered too."
                )
            findings.append(
                Finding(
                    rule_id="antispastic-order-riluzole",
                    fields={"drug": order.concept.label, "drug_short": short(order.concept.label)},
                    evidence=tuple(evidence),
                    variant="dantrolene" if name == "dantrolene" else None,
                    bindings={"patient_reference": f"Patient/{record.patient_id}"},
                )
            )
    return findings


ANTISPASTIC_ORDER_RILUZOLE = Rule(
    id="antispastic-order-riluzole",
    title="Tizanidine or dantrolene ordered for a patient on riluzole: liver monitoring",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,)}),
    evaluate=antispastic_order_riluzole,
    trigger=(
        "A draft tizanidine or dantrolene order (one card per order) for a patient on riluzole, or with "
        "riluzole among the drafts: both antispastics are hepatotoxic; offers a baseline ALT (tizanidine: "
        "information; dantrolene, boxed warning: warning)."
    ),
    facts=_HEPATOTOXICITY_FACTS,
)


# --------------------------------------------------------------------------------------------
# quinine-order


def quinine_order(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = record.draft_orders_in(QUININE)
    if not orders:
        return []
    cramps = record.active_conditions(CRAMP)
    findings = []
    for order, match in orders:
        evidence = [f"Order being written: {order.concept.label}{aside(match)}."]
        if cramps:
            evidence.append(condition_line(cramps[0], CRAMP, "Cramps recorded"))
        riluzole = current_riluzole(record)
        if riluzole and config.profile == "us":
            evidence.append(_riluzole_line(riluzole))  # the US card names tizanidine and dantrolene
        variant: str | None = None
        bindings = {"patient_reference": f"Patient/{record.patient_id}"}
        if config.profile == "us":
            variant = "us" if order.reference is not None else "us-no-reference"
        if order.reference is not None:
            bindings["draft_reference"] = order.reference
        findings.append(
            Finding(
                rule_id="quinine-order",
                fields={"drug": order.concept.label, "drug_short": short(order.concept.label)},
                evidence=tuple(evidence),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


QUININE_ORDER = Rule(
    id="quinine-order",
    title="Quinine ordered: MHRA cautions (UK) or FDA warning against use for cramps (US)",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({"Condition": (CRAMP,), "MedicationRequest": (RILUZOLE,)}),
    evaluate=quinine_order,
    trigger=(
        "A draft quinine order (one card per order): profile 'nice' an information card with the MHRA "
        "cautions, profile 'us' a warning that quinine is not for leg cramps."
    ),
    facts=(
        RuleFact(
            "Quinine trial length (UK)",
            "4 weeks; stop if no benefit",
            "mhra-quinine-2010",
            "MHRA Drug Safety Update June 2010.",
        ),
        RuleFact(
            "Licensed dose for nocturnal leg cramps (UK)",
            "quinine sulphate 200-300 mg at night (bisulphate 300 mg); state the salt",
            "mhra-quinine-2010",
        ),
        RuleFact(
            "Thrombocytopenia (UK)",
            "patients to stop and report unexplained bruising, bleeding or petechiae",
            "mhra-quinine-2010",
        ),
        RuleFact(
            "QT and interactions (UK)",
            "dose-dependent QT prolongation (caution with QT risk factors or AV block); phenobarbital and "
            "carbamazepine levels may rise",
            "mhra-quinine-2017",
        ),
        RuleFact(
            "Quinine for cramps (US)",
            "Qualaquin is approved only for uncomplicated P. falciparum malaria and should not be used for "
            "night-time leg cramps (serious and life-threatening haematological reactions)",
            "fda-qualaquin-2010",
        ),
        RuleFact(
            "Quinine first line for cramps in MND (UK)",
            "quinine first line, baclofen second",
            "nice-ng42",
            "NG42 1.8.2.",
        ),
        *_HEPATOTOXICITY_FACTS,
    ),
)


RULES: tuple[Rule, ...] = (CRAMPS_TREATMENT, SPASTICITY_TREATMENT, QUININE_ORDER, ANTISPASTIC_ORDER_RILUZOLE)
