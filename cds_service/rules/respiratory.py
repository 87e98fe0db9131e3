"""Breathing: respiratory assessment, non-invasive ventilation, hypercapnia (NICE NG42 1.14, QS126).

NICE NG42 asks for respiratory function tests every 2 to 3 months (1.14.10; QS126 statement 2):
SpO2, then FVC or VC and/or SNIP or MIP (1.14.8). An SpO2 alone is not that assessment; with severe
bulbar impairment or severe cognitive problems SpO2 is measured and the other tests are not done if
the interfaces are unsuitable (1.14.9), a clinician's judgement that no code records, so the card
says so instead of staying silent. NG42 also asks for a discussion of NIV and possible referral when
FVC or VC falls below 50 % predicted or SNIP below 40 cmH2O (1.14.15, table 2), a blood gas when SpO2
at rest on room air is less than or equal to 94 % (92 % with known lung disease) (1.14.11), and
urgent referral to a respiratory ventilation service, to be seen within 1 week, when PaCO2 is above
6 kPa (1.14.13).

What counts as a result here:

* A result counts only with a date, at or before `record.now`, and with a value whose unit
  `units.convert` can read in the dimension of the test (FVC in litres, % predicted in %, SNIP in
  cmH2O, SpO2 in %, PaCO2 in kPa). Anything else is treated as if it were not there: it neither
  shows that the test was done nor fires a threshold card.
* Thresholds use only results inside the assessment interval (`respiratory_interval_days`,
  default 92): an older result is itself overdue for repetition, so it no longer describes the
  patient; the assessment-due card covers that case. Within the interval the latest readable
  result of each test decides.
* An FVC (or VC) volume in litres is not a percentage. % predicted comes from a % predicted result
  (LOINC 19872-1 / 98088-8, or a component so coded), or is computed from the volume and a predicted
  volume (LOINC 19869-7 / 19865-5) reported in the same Observation or on the same day.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from cds_service import terminology
from cds_service.record import Interest, ObservationFact, PatientRecord, Quantity
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import day
from cds_service.terminology import ValueSet, units

FVC_VOLUME = terminology.load("fvc-volume")
FVC_PREDICTED = terminology.load("fvc-predicted")
FVC_PERCENT = terminology.load("fvc-percent-predicted")
VC_VOLUME = terminology.load("vc-volume")
VC_PREDICTED = terminology.load("vc-predicted")
VC_PERCENT = terminology.load("vc-percent-predicted")
SNIP = terminology.load("snip")
SPO2 = terminology.load("spo2")
PACO2 = terminology.load("paco2")
INHALED_O2_FLOW = terminology.load("inhaled-oxygen-flow")
RESPIRATORY_FUNCTION = terminology.load("respiratory-function-procedure")
LUNG_DISEASE = terminology.load("lung-disease")
NIV = terminology.load("niv")

#: NICE NG42 1.14.15 / table 2: "FVC or VC less than 50% of predicted value".
VC_PERCENT_BELOW = Decimal(50)
#: NICE NG42 1.14.15 / table 2: "SNIP or MIP less than 40 cmH2O".
SNIP_BELOW_CMH2O = Decimal(40)
#: NICE NG42 1.14.11: SpO2 "less than or equal to 94%" at rest on room air without known lung disease ...
SPO2_AT_OR_BELOW = Decimal(94)
#: ... and "less than or equal to 92%" with known lung disease.
SPO2_AT_OR_BELOW_LUNG_DISEASE = Decimal(92)
#: NICE NG42 1.14.13: PaCO2 "greater than 6 kPa" -> urgent referral, seen within 1 week.
PACO2_ABOVE_KPA = Decimal(6)

_PERCENT = "%"
_LITRES = "L"
_CMH2O = "cm[H2O]"
_KPA = "kPa"


@dataclass(frozen=True)
class _Spirometry:
    """One vital-capacity test: its volume, predicted volume and % predicted codes."""

    name: str  # 'FVC' or 'VC'
    volume: ValueSet
    predicted: ValueSet
    percent: ValueSet


FVC = _Spirometry("FVC", FVC_VOLUME, FVC_PREDICTED, FVC_PERCENT)
VC = _Spirometry("VC", VC_VOLUME, VC_PREDICTED, VC_PERCENT)


@dataclass(frozen=True)
class Reading:
    """One result, read in the unit its threshold is written in, with words saying how."""

    test: str  # 'FVC', 'VC', 'SNIP', 'SpO2', 'PaCO2'
    value: Decimal  # in `unit`
    unit: str  # as shown to the clinician: '% predicted', 'cmH2O', '%', 'kPa'
    when: datetime
    text: str  # e.g. "FVC 45 % predicted on 2026-10-02 (LOINC 19872-1)"
    observation: ObservationFact


# --------------------------------------------------------------------------------------------
# Reading results


def _num(value: Decimal, places: int = 1) -> str:
    """A computed number for humans, cut (not rounded) to `places` so it never crosses a threshold."""
    quantum = Decimal(1).scaleb(-places)
    text = f"{value.quantize(quantum, rounding=ROUND_DOWN):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _code_of(obs: ObservationFact, valueset: ValueSet) -> str:
    match = valueset.match(obs.concept)
    return match.describe() if match is not None else "a recognised code"


def _component(obs: ObservationFact, valueset: ValueSet, unit: str) -> tuple[Quantity, Decimal] | None:
    for component in obs.components:
        quantity = component.value
        if quantity is not None and quantity.exact and valueset.match(component.concept) is not None:
            value = units.convert(quantity, unit)
            if value is not None:
                return quantity, value
    return None


def percent_predicted_readings(record: PatientRecord, test: _Spirometry) -> list[Reading]:
    """Every FVC (or VC) % predicted the record can tell, newest first.

    A volume counts only with a predicted volume from the same Observation or the same day.
    """
    readings: list[Reading] = []
    for obs in record.observations_in(test.percent):
        value = obs.value_in(_PERCENT)
        if value is not None and obs.effective is not None:
            text = (
                f"{test.name} {obs.value} predicted on {day(obs.effective)} ({_code_of(obs, test.percent)})"
            )
            readings.append(Reading(test.name, value, "% predicted", obs.effective, text, obs))
    predicted_by_day: dict[str, list[ObservationFact]] = {}
    for obs in record.observations_in(test.predicted):
        if obs.effective is not None and obs.value_in(_LITRES) is not None:
            predicted_by_day.setdefault(day(obs.effective), []).append(obs)
    for obs in record.observations_in(test.volume):
        if obs.effective is None:
            continue
        when = obs.effective
        in_component = _component(obs, test.percent, _PERCENT)
        if in_component is not None:
            quantity, value = in_component
            measured = f"{test.name} {obs.value}" if obs.value is not None else test.name
            text = f"{measured} = {quantity} predicted on {day(when)} (component of the {test.name} result)"
            readings.append(Reading(test.name, value, "% predicted", when, text, obs))
            continue
        volume = obs.value_in(_LITRES)
        if volume is None:
            continue
        predicted_component = _component(obs, test.predicted, _LITRES)
        if predicted_component is not None:
            predicted_quantity, predicted = predicted_component
            source = "in the same result"
        else:
            same_day = predicted_by_day.get(day(when), [])
            if not same_day:
                continue  # a volume without its predicted value says nothing about % predicted
            nearest = min(same_day, key=lambda p: abs(((p.effective or when) - when).total_seconds()))
            predicted_quantity = nearest.value  # type: ignore[assignment]
            predicted = nearest.value_in(_LITRES)  # type: ignore[assignment]
            source = "reported the same day"
        if predicted is None or predicted <= 0:
            continue
        value = volume * 100 / predicted
        text = (
            f"{test.name} {obs.value} with predicted {predicted_quantity} ({source}) = {_num(value)} % "
            f"predicted on {day(when)} (computed)"
        )
        readings.append(Reading(test.name, value, "% predicted", when, text, obs))
    # Newest first; at the same instant a reported % predicted wins over a computed one.
    readings.sort(key=lambda r: (r.when, "computed" not in r.text), reverse=True)
    return readings


def _simple_readings(
    record: PatientRecord, valueset: ValueSet, test: str, unit: str, shown_unit: str, places: int = 1
) -> list[Reading]:
    """Readable results of a one-number test, newest first; converted values shown beside reported ones."""
    readings = []
    for obs in record.observations_in(valueset):
        value = obs.value_in(unit)
        if value is None or obs.effective is None or obs.value is None:
            continue
        shown = str(obs.value)
        if units.convert(obs.value, unit) != obs.value.value:
            shown = f"{shown} (= {_num(value, places)} {shown_unit})"
        text = f"{test} {shown} on {day(obs.effective)} ({_code_of(obs, valueset)})"
        readings.append(Reading(test, value, shown_unit, obs.effective, text, obs))
    return readings


def snip_readings(record: PatientRecord) -> list[Reading]:
    return _simple_readings(record, SNIP, "SNIP", _CMH2O, "cmH2O")


def spo2_readings(record: PatientRecord) -> list[Reading]:
    return _simple_readings(record, SPO2, "SpO2", _PERCENT, "%")


def paco2_readings(record: PatientRecord) -> list[Reading]:
    return _simple_readings(record, PACO2, "PaCO2", _KPA, "kPa", places=2)


def _recent(record: PatientRecord, when: datetime | None, days: int) -> bool:
    return when is not None and when <= record.now and (record.now - when).days <= days


def _latest_recent(readings: Iterable[Reading], record: PatientRecord, days: int) -> Reading | None:
    for reading in readings:  # newest first
        if _recent(record, reading.when, days):
            return reading
    return None


# --------------------------------------------------------------------------------------------
# respiratory-assessment-due


def _assessments(record: PatientRecord) -> list[tuple[datetime, str]]:
    """Every dated, readable respiratory function test (FVC, VC, SNIP; not SpO2), newest first."""
    found: list[tuple[datetime, str]] = []
    for test in (FVC, VC):
        for obs in record.observations_in(test.volume):
            # A predicted volume alone is a reference value, not a measurement.
            readable = (
                obs.value_in(_LITRES) is not None or _component(obs, test.percent, _PERCENT) is not None
            )
            if readable and obs.effective is not None:
                found.append((obs.effective, f"{test.name} {obs.value or 'result'} on {day(obs.effective)}"))
        for obs in record.observations_in(test.percent):
            if obs.value_in(_PERCENT) is not None and obs.effective is not None:
                found.append((obs.effective, f"{test.name} {obs.value} predicted on {day(obs.effective)}"))
    for reading in snip_readings(record):
        found.append((reading.when, f"{reading.test} {reading.observation.value} on {day(reading.when)}"))
    for procedure in record.procedures_in(RESPIRATORY_FUNCTION):
        if procedure.when is not None and procedure.when <= record.now:
            found.append((procedure.when, f"respiratory function test (procedure) on {day(procedure.when)}"))
    found.sort(key=lambda item: item[0], reverse=True)
    return found


def _unreadable_count(record: PatientRecord) -> int:
    """Results of the assessment tests that were received but could not be read (unit, value)."""
    count = 0
    for vs, unit in ((FVC_PERCENT, _PERCENT), (VC_PERCENT, _PERCENT), (SNIP, _CMH2O)):
        count += sum(1 for obs in record.observations_in(vs) if obs.value_in(unit) is None)
    for vs in (FVC_VOLUME, VC_VOLUME):
        count += sum(
            1 for obs in record.observations_in(vs) if obs.value_in(_LITRES) is None and not obs.components
        )
    return count


def assessment_due(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    interval = config.respiratory_interval_days
    assessments = _assessments(record)
    if assessments and _recent(record, assessments[0][0], interval):
        return []
    evidence = [
        f"No FVC, VC or SNIP result and no respiratory function test in the last {interval} days "
        "(NICE NG42 1.14.10: every 2 to 3 months)."
    ]
    spo2 = _latest_recent(spo2_readings(record), record, interval)
    if spo2 is not None:
        evidence.append(
            f"{spo2.text}: an SpO2 alone is not the 2- to 3-monthly test; NG42 1.14.8 asks for FVC or VC "
            "and/or SNIP or MIP as well."
        )
    if assessments:
        when, words = assessments[0]
        last = day(when)
        evidence.append(
            f"Latest respiratory function test on record: {words} ({(record.now - when).days} days ago)."
        )
    else:
        last = "none in the data received"
        evidence.append("No dated FVC, VC or SNIP result in the data received.")
    unreadable = _unreadable_count(record)
    if unreadable:
        evidence.append(
            f"{unreadable} respiratory result(s) without a value or with a unit that could not be read were "
            "not counted."
        )
    undated = record.unread_note((FVC_PERCENT, VC_PERCENT, FVC_VOLUME, VC_VOLUME, SNIP), "respiratory")
    if undated is not None:
        evidence.append(undated)
    return [
        Finding(
            rule_id="respiratory-assessment-due",
            fields={"interval_days": str(interval), "last_assessment": last},
            evidence=tuple(evidence),
            variant="spo2-only" if spo2 is not None else None,
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


# --------------------------------------------------------------------------------------------
# respiratory-niv-referral


def _on_supplemental_oxygen(obs: ObservationFact) -> Quantity | None:
    for component in obs.components:
        quantity = component.value
        if quantity is not None and quantity.value > 0 and INHALED_O2_FLOW.match(component.concept):
            return quantity
    return None


def _niv_line(record: PatientRecord) -> str | None:
    procedures = record.procedures_in(NIV)
    if not procedures:
        return None
    latest = procedures[0]
    when = (
        f" since {day(latest.when)}"
        if latest.when is not None and latest.status == "in-progress"
        else (f" on {day(latest.when)}" if latest.when is not None else "")
    )
    state = "in progress" if latest.status == "in-progress" else "recorded"
    return (
        f"Non-invasive ventilation {state}{when}: the respiratory ventilation service may already be "
        "reviewing these results."
    )


def niv_referral(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    interval = config.respiratory_interval_days
    fired: list[str] = []
    evidence: list[str] = []

    for test in (FVC, VC):
        latest = _latest_recent(percent_predicted_readings(record, test), record, interval)
        if latest is not None and latest.value < VC_PERCENT_BELOW:
            fired.append(f"{test.name} < 50 % predicted")
            evidence.append(f"{latest.text}: below 50 % predicted (NICE NG42 table 2).")

    snip = _latest_recent(snip_readings(record), record, interval)
    if snip is not None and snip.value < SNIP_BELOW_CMH2O:
        fired.append("SNIP < 40 cmH2O")
        evidence.append(f"{snip.text}: below 40 cmH2O (NICE NG42 table 2).")

    spo2 = _latest_recent(spo2_readings(record), record, interval)
    spo2_fired = False
    if spo2 is not None:
        lung = record.active_conditions(LUNG_DISEASE)
        limit = SPO2_AT_OR_BELOW_LUNG_DISEASE if lung else SPO2_AT_OR_BELOW
        if spo2.value <= limit:
            spo2_fired = True
            fired.append(f"SpO2 ≤ {limit} %")
            why = (
                f"known lung disease: {lung[0].concept.label}" if lung else "no known lung disease on record"
            )
            evidence.append(f"{spo2.text}: at or below {limit} % ({why}; NICE NG42 1.14.11).")
            oxygen = _on_supplemental_oxygen(spo2.observation)
            if oxygen is not None:
                evidence.append(
                    f"That SpO2 was recorded with supplemental oxygen ({oxygen}); NICE NG42's cut-off is "
                    "for room air, and a value this low on oxygen is not reassuring."
                )

    if not fired:
        return []
    variant = "blood-gas" if spo2_fired else None
    if spo2_fired and spo2 is not None:
        gas = _latest_recent(paco2_readings(record), record, interval)
        if gas is not None and gas.when >= spo2.when:
            variant = None  # NG42 1.14.11 is done: the blood gas was taken after the low SpO2
            evidence.append(f"Blood gas already taken after that SpO2: {gas.text}.")
    evidence.append(f"Only results from the last {interval} days count; the latest of each test decides.")
    niv = _niv_line(record)
    if niv:
        evidence.append(niv)
    return [
        Finding(
            rule_id="respiratory-niv-referral",
            fields={"criteria": ", ".join(fired), "interval_days": str(interval)},
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


# --------------------------------------------------------------------------------------------
# respiratory-hypercapnia


def hypercapnia(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    interval = config.respiratory_interval_days
    latest = _latest_recent(paco2_readings(record), record, interval)
    if latest is None or latest.value <= PACO2_ABOVE_KPA:
        return []
    age = (record.now - latest.when).days
    evidence = [
        f"{latest.text}: above 6 kPa (NICE NG42 1.14.13).",
        f"The result is {age} days old; blood gases count for {interval} days and the latest one decides.",
    ]
    return [
        Finding(
            rule_id="respiratory-hypercapnia",
            fields={"paco2": f"{_num(latest.value, 2)} kPa", "date": day(latest.when)},
            evidence=tuple(evidence),
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


# --------------------------------------------------------------------------------------------
# The rules

_INTERVAL_FACT = RuleFact(
    "Respiratory assessment interval",
    "ALS_CDS_RESPIRATORY_INTERVAL_DAYS, default 92 days",
    "nice-ng42",
    "NG42 1.14.10 'every 2 to 3 months' (QS126 statement 2 the same); 92 days = the longest three calendar "
    "months.",
)
_STALE_FACT = RuleFact(
    "How recent a result must be to count",
    "within the respiratory assessment interval (default 92 days); latest readable result of each test "
    "decides",
    "nice-ng42",
    "Design choice: a result older than one NG42 1.14.10 interval is itself overdue for repetition and no "
    "longer describes the patient (the assessment-due card fires instead).",
)
_UNREADABLE_FACT = RuleFact(
    "Unreadable results",
    "a result without a date, without a value, or whose unit cannot be converted is ignored",
    "nice-ng42",
    "House rule: missing or unreadable data is never evidence of anything; for the assessment-due rule it "
    "counts as missing.",
)

ASSESSMENT_DUE = Rule(
    id="respiratory-assessment-due",
    title="Respiratory function assessment due",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Observation": (FVC_VOLUME, FVC_PERCENT, VC_VOLUME, VC_PERCENT, SNIP, SPO2),
            "Procedure": (RESPIRATORY_FUNCTION,),
        }
    ),
    evaluate=assessment_due,
    trigger=(
        "No readable FVC, VC or SNIP result and no respiratory function test (SNOMED 23426006) in the "
        "last N days (default 92; NICE NG42 1.14.8, 1.14.10, QS126 statement 2). A recent SpO2 alone does "
        "not count: the card then says so and names NG42 1.14.9."
    ),
    facts=(
        _INTERVAL_FACT,
        RuleFact(
            "Tests that count as an assessment",
            "FVC or VC (volume or % predicted), SNIP, or a respiratory function measurement procedure; not "
            "SpO2 alone",
            "nice-ng42",
            "NG42 1.14.8: SpO2, 'then one or both of' FVC or VC, and SNIP and/or MIP; 1.14.10: 'the "
            "respiratory function tests every 2 to 3 months'. MIP is not read (no verified code). SNIP has "
            "no verified LOINC: only a site-mapped local code counts (value set snip).",
        ),
        RuleFact(
            "Severe bulbar impairment or severe cognitive problems",
            "SpO2 only, if the interfaces are not suitable for FVC, VC, SNIP or MIP",
            "nice-ng42",
            "NG42 1.14.9; with frontotemporal dementia, decisions on tests follow the person's needs "
            "(1.14.16). Whether the interfaces suit the person is a clinician's judgement that no code "
            "records: the card fires with the SpO2 named and offers that override reason instead of staying "
            "silent.",
        ),
        RuleFact(
            "Frequency at diagnosis and after",
            "at diagnosis and every 2 to 3 months",
            "nice-qs126",
            "QS126 statement 2 structure/process measures.",
        ),
        _UNREADABLE_FACT,
    ),
)

NIV_REFERRAL = Rule(
    id="respiratory-niv-referral",
    title="Respiratory impairment: discuss NIV and referral",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Observation": (
                FVC_VOLUME,
                FVC_PREDICTED,
                FVC_PERCENT,
                VC_VOLUME,
                VC_PREDICTED,
                VC_PERCENT,
                SNIP,
                SPO2,
                PACO2,
            ),
            "Condition": (LUNG_DISEASE,),
            "Procedure": (NIV,),
        }
    ),
    evaluate=niv_referral,
    trigger=(
        "Within the assessment interval, the latest FVC or VC is < 50 % predicted, or the latest SNIP is < "
        "40 cmH2O, or the latest SpO2 is <= 94 % (<= 92 % with known lung disease) (NICE NG42 1.14.11, "
        "1.14.15, table 2)."
    ),
    facts=(
        RuleFact(
            "FVC or VC threshold",
            "< 50 % of predicted",
            "nice-ng42",
            "NG42 1.14.15 and table 2. A volume in litres is converted to % predicted only with a predicted "
            "volume (LOINC 19869-7 / 19865-5) from the same result or the same day; otherwise it is not "
            "used.",
        ),
        RuleFact(
            "SNIP threshold",
            "< 40 cmH2O (kPa and mmHg converted)",
            "nice-ng42",
            "NG42 1.14.15 and table 2 ('SNIP or MIP less than 40 cmH2O'). 1 cmH2O = 0.0980665 kPa.",
        ),
        RuleFact(
            "SpO2 threshold, no known lung disease",
            "<= 94 % at rest on room air",
            "nice-ng42",
            "NG42 1.14.11 says 'less than or equal to'. The rule request and the CG105 one-page summary say "
            "'<'; NG42 is followed. An SpO2 recorded with supplemental oxygen still counts (noted on the "
            "card): design choice, because a low value on oxygen is not reassuring.",
        ),
        RuleFact(
            "SpO2 threshold, known lung disease",
            "<= 92 % at rest on room air",
            "nice-ng42",
            "NG42 1.14.11. Lung disease = active condition in value set lung-disease (COPD, asthma, "
            "bronchiectasis, chronic bronchitis, cystic fibrosis, interstitial lung disease, asbestosis).",
        ),
        RuleFact(
            "Blood gas when SpO2 is low",
            "arterial or capillary blood gas",
            "nice-ng42",
            "NG42 1.14.11. The blood-gas suggestion is left out when a readable blood gas (value set paco2) "
            "was taken at or after the low SpO2 within the interval.",
        ),
        RuleFact(
            "NIV and survival",
            "NIV should be considered to lengthen survival (Level B)",
            "aan-2009",
            "AAN practice parameter 2009 (Miller et al.); card text only.",
        ),
        RuleFact(
            "Older criteria sets (context only)",
            "CG105 one-page summary: same thresholds, written with '<'",
            "cg105-summary",
            "Corroborates the FVC, SNIP and PaCO2 cut-offs; its '<' for SpO2 is superseded by NG42's '<='.",
        ),
        _INTERVAL_FACT,
        _STALE_FACT,
        _UNREADABLE_FACT,
    ),
)

HYPERCAPNIA = Rule(
    id="respiratory-hypercapnia",
    title="Hypercapnia: urgent referral to a respiratory ventilation service",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"Observation": (PACO2,)}),
    evaluate=hypercapnia,
    trigger=(
        "The latest arterial or capillary pCO2 (LOINC 2019-8 / 2020-6) within the assessment interval is "
        "above 6 kPa (NICE NG42 1.14.13)."
    ),
    facts=(
        RuleFact(
            "PaCO2 threshold",
            "> 6 kPa (45.0 mmHg); compared in kPa after conversion",
            "nice-ng42",
            "NG42 1.14.13. 6 kPa = 45.004 mmHg (1 mmHg = 0.133322387415 kPa), so 45 mmHg (5.9995 kPa) does "
            "not fire and 46 mmHg does.",
        ),
        RuleFact(
            "Urgency",
            "urgent referral to a respiratory ventilation service, to be seen within 1 week",
            "nice-ng42",
            "NG42 1.14.13.",
        ),
        RuleFact(
            "Specimens",
            "arterial (2019-8) or capillary (2020-6) blood gas; venous and transcutaneous CO2 not read",
            "nice-ng42",
            "NG42 1.14.11 names an arterial or capillary blood gas.",
        ),
        RuleFact(
            "How recent the blood gas must be",
            "within the respiratory assessment interval (default 92 days); the latest readable result "
            "decides",
            "nice-ng42",
            "Design choice: a high PaCO2 is not 'resolved' by time passing, so the card stays until a newer "
            "blood gas is <= 6 kPa or the result is older than one NG42 1.14.10 interval (then it is stale "
            "and the assessment-due card applies). The card states the result's age.",
        ),
        _UNREADABLE_FACT,
    ),
)

RULES: tuple[Rule, ...] = (ASSESSMENT_DUE, NIV_REFERRAL, HYPERCAPNIA)
