"""Nutrition: weight loss, dysphagia and gastrostomy (NICE NG42 1.10, ProGas, AAN 2009).

NICE NG42 asks for weight and swallowing to be assessed at diagnosis and at MDT assessments
(1.10.1, 1.10.4) and for gastrostomy to be discussed at an early stage and at regular intervals
(1.10.6), explaining the benefits of early placement and the risks of late gastrostomy (1.10.7). NG42
gives no number. The 5 % / 10 % weight-loss thresholds come from ProGas (Lancet Neurol 2015): patients
benefited most when gastrostomy came before 10 % weight loss, and the investigators recommend enteral
feeding as early as possible at 5 % weight loss. AAN 2009: PEG should be considered to stabilise
weight and prolong survival (Level B).

Weight here: body-weight results (LOINC 29463-7, 3141-9) with a date at or before `record.now`
inside the last 365 days, read in kg by `units.convert` (kg, g, [lb_av], [oz_av]). A weight whose
unit cannot be read is ignored (as if absent). The latest weight is compared with the highest
weight taken before it in that window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from cds_service import terminology
from cds_service.record import Interest, ObservationFact, PatientRecord
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import aside, caveat, day

BODY_WEIGHT = terminology.load("body-weight")
DYSPHAGIA = terminology.load("dysphagia")
GASTROSTOMY_PROCEDURE = terminology.load("gastrostomy-procedure")
GASTROSTOMY_DEVICE = terminology.load("gastrostomy-device")
GASTROSTOMY_STATUS = terminology.load("gastrostomy-status")

#: ProGas: enteral feeding "as early as possible at 5 % weight loss".
LOSS_DIETITIAN_PERCENT = Decimal(5)
#: ProGas: best outcomes when gastrostomy came before 10 % weight loss.
LOSS_GASTROSTOMY_PERCENT = Decimal(10)
#: "the preceding 12 months": the look-back for the reference (highest) weight.
WEIGHT_WINDOW_DAYS = 365

_KG = "kg"


def _num(value: Decimal) -> str:
    """One decimal, cut (not rounded) so a shown value never crosses a threshold it did not reach."""
    text = f"{value.quantize(Decimal('0.1'), rounding=ROUND_DOWN):f}"
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Weight:
    kg: Decimal
    when: datetime
    observation: ObservationFact

    @property
    def shown(self) -> str:
        reported = str(self.observation.value)
        if self.observation.value is not None and self.observation.value.value == self.kg:
            return reported
        return f"{reported} ({_num(self.kg)} kg)"


def weights(record: PatientRecord) -> list[Weight]:
    """Readable, dated weights of the last 365 days, newest first."""
    since = record.now - timedelta(days=WEIGHT_WINDOW_DAYS)
    found = []
    for obs in record.observations_in(BODY_WEIGHT):
        kg = obs.value_in(_KG)
        if kg is None or obs.effective is None or obs.effective < since or kg <= 0:
            continue
        found.append(Weight(kg, obs.effective, obs))
    return found


def gastrostomy_on_record(record: PatientRecord) -> str | None:
    """Words describing a gastrostomy on record (procedure, tube, problem-list status), or None."""
    for procedure in record.procedures_in(GASTROSTOMY_PROCEDURE):
        match = procedure.match(GASTROSTOMY_PROCEDURE)
        when = f" on {day(procedure.when)}" if procedure.when is not None else ""
        return f"Gastrostomy procedure {procedure.concept.label}{when} ({procedure.status}{caveat(match)})."
    for device in record.devices_in(GASTROSTOMY_DEVICE):
        match = device.match(GASTROSTOMY_DEVICE)
        return f"Gastrostomy tube recorded as a device: {device.concept.label}{aside(match)}."
    for condition in record.active_conditions(GASTROSTOMY_STATUS):
        match = GASTROSTOMY_STATUS.match(condition.concept)
        return f"Gastrostomy status on the problem list: {condition.concept.label}{aside(match)}."
    return None


# --------------------------------------------------------------------------------------------
# weight-loss-nutrition


def weight_loss(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    readings = weights(record)
    if len(readings) < 2:
        return []
    latest = readings[0]
    earlier = [w for w in readings[1:] if w.when < latest.when]
    if not earlier:
        return []
    peak = max(earlier, key=lambda w: (w.kg, w.when))
    if peak.kg <= latest.kg:
        return []
    loss = (peak.kg - latest.kg) * 100 / peak.kg
    if loss < LOSS_DIETITIAN_PERCENT:
        return []
    marked = loss >= LOSS_GASTROSTOMY_PERCENT
    tube = gastrostomy_on_record(record)
    evidence = [
        f"Latest weight {latest.shown} on {day(latest.when)}.",
        f"Highest weight in the preceding 12 months: {peak.shown} on {day(peak.when)}.",
        f"Loss {_num(peak.kg - latest.kg)} kg = {_num(loss)} % "
        f"({'at or above 10' if marked else 'at or above 5'} %; thresholds from ProGas, NICE NG42 gives no "
        "number).",
    ]
    ignored = sum(
        1
        for obs in record.observations_in(BODY_WEIGHT)
        if obs.value_in(_KG) is None and obs.effective is not None and obs.effective >= peak.when
    )
    if ignored:
        evidence.append(f"{ignored} weight result(s) with no value or an unreadable unit were not used.")
    if tube:
        evidence.append(tube)
    if tube:
        variant: str | None = "tube-fed"
    elif marked:
        variant = "marked"
    else:
        variant = None
    return [
        Finding(
            rule_id="weight-loss-nutrition",
            fields={
                "loss_percent": _num(loss),
                "latest_kg": _num(latest.kg),
                "latest_date": day(latest.when),
                "peak_kg": _num(peak.kg),
                "peak_date": day(peak.when),
            },
            evidence=tuple(evidence),
            variant=variant,
            indicator="warning" if marked else "info",
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


# --------------------------------------------------------------------------------------------
# dysphagia-gastrostomy-discussion


def dysphagia_discussion(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    conditions = record.active_conditions(DYSPHAGIA)
    if not conditions or gastrostomy_on_record(record) is not None:
        return []
    dysphagia = conditions[0]
    match = DYSPHAGIA.match(dysphagia.concept)
    since = dysphagia.onset or dysphagia.recorded
    since_text = f", since {day(since)}" if since is not None else ""
    evidence = [
        f"Active dysphagia: {dysphagia.concept.label}{since_text}{aside(match)}.",
        "No gastrostomy procedure, gastrostomy tube or gastrostomy status on record.",
    ]
    return [
        Finding(
            rule_id="dysphagia-gastrostomy-discussion",
            fields={"dysphagia": dysphagia.concept.label},
            evidence=tuple(evidence),
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


# --------------------------------------------------------------------------------------------
# The rules

_GASTROSTOMY_READS = {
    "Procedure": (GASTROSTOMY_PROCEDURE,),
    "Device": (GASTROSTOMY_DEVICE,),
}

WEIGHT_LOSS = Rule(
    id="weight-loss-nutrition",
    title="Weight loss: dietitian review and early gastrostomy discussion",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"Observation": (BODY_WEIGHT,), "Condition": (GASTROSTOMY_STATUS,), **_GASTROSTOMY_READS}),
    evaluate=weight_loss,
    trigger=(
        "The latest weight of the last 12 months is at least 5 % (info: dietitian) or 10 % (warning: "
        "discuss gastrostomy early) below the highest earlier weight of those 12 months (ProGas; NICE NG42 "
        "1.10.6-1.10.7)."
    ),
    facts=(
        RuleFact(
            "Dietitian threshold",
            ">= 5 % below the highest weight of the preceding 12 months",
            "progas-2015",
            "ProGas investigators: enteral feeding 'as early as possible at 5 % weight loss from "
            "diagnosis'. NG42 gives no number (1.10.6-1.10.7 say 'at an early stage').",
        ),
        RuleFact(
            "Gastrostomy threshold",
            ">= 10 % below the highest weight of the preceding 12 months",
            "progas-2015",
            "ProGas: patients who had lost < 10 % before gastrostomy survived longer; the card therefore "
            "warns at 10 % that gastrostomy should be discussed now.",
        ),
        RuleFact(
            "Reference weight",
            "highest readable weight taken before the latest one, within the last 365 days",
            "progas-2015",
            "Design choice: ProGas measured loss from the weight at diagnosis, which is often years old and "
            "outside the 12-month observation prefetch; the rule request asked for the 12-month high "
            "instead.",
        ),
        RuleFact(
            "Gastrostomy discussion",
            "discuss at an early stage and at regular intervals; explain the risks of late gastrostomy",
            "nice-ng42",
            "NG42 1.10.6-1.10.7 (no numeric threshold in NG42).",
        ),
        RuleFact(
            "Gastrostomy before FVC < 50 % predicted",
            "procedural risk is higher once FVC is below 50 % predicted (card text only, not a trigger)",
            "progas-2015",
            "ProGas, as recorded in the project evidence document (R9); the rule does not read FVC.",
        ),
        RuleFact(
            "PEG to stabilise weight",
            "PEG should be considered to stabilise weight and prolong survival (Level B)",
            "aan-2009",
            "AAN practice parameter 2009 (Miller et al.).",
        ),
        RuleFact(
            "Units",
            "kg, g, [lb_av], [oz_av] converted to kg; other units ignored",
            "nice-ng42",
            "House rule: a weight whose unit cannot be converted is not evidence of anything.",
        ),
    ),
)

DYSPHAGIA_DISCUSSION = Rule(
    id="dysphagia-gastrostomy-discussion",
    title="Dysphagia without gastrostomy: swallowing assessment and gastrostomy discussion",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"Condition": (DYSPHAGIA, GASTROSTOMY_STATUS), **_GASTROSTOMY_READS}),
    evaluate=dysphagia_discussion,
    trigger=(
        "An active dysphagia condition (SNOMED CT 40739000, ICD-10-CM R13.1x) and no gastrostomy procedure, "
        "gastrostomy tube or gastrostomy status (Z93.1) on record (NICE NG42 1.10.4, 1.10.6-1.10.8)."
    ),
    facts=(
        RuleFact(
            "Swallowing assessment",
            "clinical swallowing assessment if swallowing problems are suspected",
            "nice-ng42",
            "NG42 1.10.4.",
        ),
        RuleFact(
            "Gastrostomy discussion",
            "discuss at an early stage; explain benefits of early placement and risks of late gastrostomy; "
            "no unnecessary delay once referred",
            "nice-ng42",
            "NG42 1.10.6-1.10.8.",
        ),
        RuleFact(
            "PEG or RIG: safety",
            "no significant difference in 30-day mortality between PEG, RIG and per-oral image-guided "
            "gastrostomy",
            "progas-2015",
            "ProGas abstract (12/330 deaths within 30 days; PEG 3 %, RIG 3 %, PIG 7 %).",
        ),
        RuleFact(
            "PEG or RIG: choice",
            "PEG, or RIG if the person is frail or has respiratory compromise",
            "method-choice",
            "UNVERIFIED: wording of the rule request; not found in NG42 or in the ProGas abstract, and the "
            "ProGas full text could not be read. The card leaves the choice to the gastrostomy team.",
        ),
        RuleFact(
            "What counts as a gastrostomy",
            "Procedure 54956002 (or PEG 312341002, UNVERIFIED), Device 470571004, or condition Z93.1",
            "nice-ng42",
            "PEG/RIG-specific SNOMED CT codes could not be verified; a PEG coded only with another code "
            "would not be recognised and the card would show.",
        ),
    ),
)

RULES: tuple[Rule, ...] = (WEIGHT_LOSS, DYSPHAGIA_DISCUSSION)
