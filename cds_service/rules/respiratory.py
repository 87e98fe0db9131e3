"""Breathing: respiratory assessment, NIV discussion, hypercapnia, sleep studies (NICE NG42 1.14, QS126).

NICE NG42 (wording checked in the NG42 PDF, NICE 2024 edition) asks for:

* respiratory function tests every 2 to 3 months (1.14.10; QS126 statement 2): SpO2, then FVC or VC
  and/or SNIP or MIP (1.14.8). An SpO2 alone is not that assessment; with severe bulbar impairment or
  severe cognitive problems SpO2 is measured and the other tests are not done if the interfaces are
  unsuitable (1.14.9), a clinician's judgement that no code records, so the card says so instead;
* a discussion of the respiratory impairment, the treatment options and possible referral to a
  respiratory ventilation service when any result of table 2 is obtained (1.14.15): FVC or VC below
  50 % predicted; SNIP or MIP below 40 cmH2O; FVC or VC below 80 % predicted plus any symptom or sign
  of respiratory impairment (table 1), particularly orthopnoea; SNIP or MIP below 65 cmH2O (men) or
  55 cmH2O (women) plus any symptom or sign; SNIP or MIP falling by more than 10 cmH2O per 3 months;
* a blood gas when SpO2 at rest on room air is less than or equal to 94 % (92 % with known lung
  disease) (1.14.11), and urgent referral to a respiratory ventilation service, to be seen within 1
  week, when PaCO2 is above 6 kPa (1.14.13);
* nocturnal oximetry and/or a limited sleep study when SpO2 is above those values but there are
  sleep-related respiratory symptoms (1.14.12), or PaCO2 is at most 6 kPa with any symptom or sign,
  particularly orthopnoea (1.14.14).

A person already using NIV is past the referral these cards ask for (1.12.3: "not already using
non-invasive ventilation"; their reviews follow the NIV care plan, 1.14.20): the referral card is
silent, and a high PaCO2 says so instead of asking for a new referral. A referral to a respiratory
physician recorded after the results is named on the card, which then does not ask for it again.

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
* A symptom counts as an active Condition, or as an Observation of the interval whose value does not
  say absent or no (value set answer-absent).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

import msgspec

from cds_service import terminology
from cds_service.record import (
    UNREAD_PREFIX,
    ConditionFact,
    GenericFact,
    Interest,
    ObservationFact,
    PatientRecord,
    Quantity,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import aside, caveat, day
from cds_service.terminology import SNOMED, Code, Concept, ValueSet, units

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
NIV_DEVICE = terminology.load("niv-device")
NIV_DEPENDENCE = terminology.load("niv-dependence")
RESPIRATORY_REFERRAL = terminology.load("respiratory-referral")
SYMPTOMS = terminology.load("respiratory-symptoms")
SLEEP_SYMPTOMS = terminology.load("sleep-related-respiratory-symptoms")
SLEEP_STUDY = terminology.load("sleep-study")
ANSWER_ABSENT = terminology.load("answer-absent")

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
#: NICE NG42 table 2: "FVC or VC less than 80% of predicted value plus any symptoms or signs of
#: respiratory impairment (see recommendation 1.14.7), particularly orthopnoea".
VC_PERCENT_WITH_SYMPTOMS_BELOW = Decimal(80)
#: NICE NG42 table 2: "SNIP or MIP less than 65 cmH2O for men or 55 cmH2O for women plus any symptoms
#: or signs of respiratory impairment".
SNIP_WITH_SYMPTOMS_BELOW_MEN = Decimal(65)
SNIP_WITH_SYMPTOMS_BELOW_WOMEN = Decimal(55)
#: NICE NG42 table 2: "Repeated regular tests show a rate of decrease of SNIP or MIP of more than
#: 10 cmH2O per 3 months".
SNIP_FALL_PER_3_MONTHS = Decimal(10)
#: "3 months" as days: the longest three calendar months, as for the assessment interval.
THREE_MONTHS_DAYS = 92
#: How far back an earlier SNIP is compared for the fall (design choice: two 3-month periods).
SNIP_FALL_LOOKBACK_DAYS = 184

#: Orthopnoea, the symptom NG42 table 2 and 1.14.14 single out (value set respiratory-symptoms).
ORTHOPNOEA = Code(SNOMED, "62744007").key

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


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One result, read in the unit its threshold is written in, with words saying how.

    The words are written when a card cites the reading (`text`), not for every reading: a chart
    can hold hundreds of results of one test, and the cards name one or two (writing them all was
    a twentieth of a call with a hundred results). A msgspec Struct, as `ObservationFact`."""

    test: str  # 'FVC', 'VC', 'SNIP', 'SpO2', 'PaCO2'
    value: Decimal  # in `unit`
    unit: str  # as shown to the clinician: '% predicted', 'cmH2O', '%', 'kPa'
    when: datetime
    observation: ObservationFact
    words: Callable[[], str]  # -> e.g. "FVC 45 % predicted on 2026-10-02 (LOINC 19872-1)"
    computed: bool = False  # % predicted computed from a volume and a predicted volume

    @property
    def text(self) -> str:
        return self.words()


# --------------------------------------------------------------------------------------------
# Reading results


def _num(value: Decimal, places: int = 1) -> str:
    """A computed number for humans, cut (not rounded) to `places` so it never crosses a threshold."""
    quantum = Decimal(1).scaleb(-places)
    text = f"{value.quantize(quantum, rounding=ROUND_DOWN):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _code_of(obs: ObservationFact, valueset: ValueSet) -> str:
    """'; named in free text, no code' for a result recognised by its name only, else ''."""
    return caveat(valueset.match(obs.concept))


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
            words = functools.partial(_percent_words, test, obs)
            readings.append(Reading(test.name, value, "% predicted", obs.effective, obs, words))
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
            words = functools.partial(_component_words, test, obs, quantity, when)
            readings.append(Reading(test.name, value, "% predicted", when, obs, words))
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
        words = functools.partial(_computed_words, test, obs, predicted_quantity, source, value, when)
        readings.append(Reading(test.name, value, "% predicted", when, obs, words, computed=True))
    # Newest first; at the same instant a reported % predicted wins over a computed one.
    readings.sort(key=lambda r: (r.when, not r.computed), reverse=True)
    return readings


def _percent_words(test: _Spirometry, obs: ObservationFact) -> str:
    how = aside(test.percent.match(obs.concept))
    return f"{test.name} {obs.value} predicted on {day(obs.effective)}{how}"


def _component_words(test: _Spirometry, obs: ObservationFact, quantity: Quantity, when: datetime) -> str:
    measured = f"{test.name} {obs.value}" if obs.value is not None else test.name
    return f"{measured} = {quantity} predicted on {day(when)} (component of the {test.name} result)"


def _computed_words(
    test: _Spirometry,
    obs: ObservationFact,
    predicted: Quantity | None,
    source: str,
    value: Decimal,
    when: datetime,
) -> str:
    return (
        f"{test.name} {obs.value} with predicted {predicted} ({source}) = {_num(value)} % "
        f"predicted on {day(when)} (computed)"
    )


def _simple_readings(
    record: PatientRecord, valueset: ValueSet, test: str, unit: str, shown_unit: str, places: int = 1
) -> list[Reading]:
    """Readable results of a one-number test, newest first; converted values shown beside reported ones."""
    readings = []
    for obs in record.observations_in(valueset):
        value = obs.value_in(unit)
        if value is None or obs.effective is None or obs.value is None:
            continue
        words = functools.partial(_simple_words, valueset, test, obs, value, shown_unit, places)
        readings.append(Reading(test, value, shown_unit, obs.effective, obs, words))
    return readings


def _simple_words(
    valueset: ValueSet, test: str, obs: ObservationFact, value: Decimal, shown_unit: str, places: int
) -> str:
    """'SpO2 93 % on 2026-10-02', with the value converted beside the reported one where they differ."""
    quantity = obs.value
    shown = str(quantity)
    if quantity is not None and value != quantity.value:
        shown = f"{shown} (= {_num(value, places)} {shown_unit})"
    return f"{test} {shown} on {day(obs.effective)}{aside(valueset.match(obs.concept))}"


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


def _in_window(readings: Iterable[Reading], record: PatientRecord, days: int) -> list[Reading]:
    return [r for r in readings if _recent(record, r.when, days)]


def _earliest(readings: Iterable[Reading], meets: Callable[[Reading], bool]) -> datetime | None:
    dates = [r.when for r in readings if meets(r)]
    return min(dates) if dates else None


# --------------------------------------------------------------------------------------------
# Symptoms of respiratory impairment (NG42 1.14.7, table 1)


@dataclass(frozen=True)
class Symptom:
    label: str
    when: datetime | None
    line: str
    concept: Concept

    @property
    def orthopnoea(self) -> bool:
        return any(code.key == ORTHOPNOEA for code in self.concept.codes)

    @property
    def sleep_related(self) -> bool:
        return SLEEP_SYMPTOMS.match(self.concept) is not None


def _absent(obs: ObservationFact) -> bool:
    """A symptom observation answered 'no' or 'absent' (valueBoolean false or a coded no)."""
    return obs.value_boolean is False or ANSWER_ABSENT.match(obs.value_concept) is not None


def symptoms(record: PatientRecord, days: int) -> list[Symptom]:
    """Symptoms of respiratory impairment: active problems, and observations of the last `days`."""
    found: list[Symptom] = []
    for condition in record.active_conditions(SYMPTOMS):
        when = condition.onset or condition.recorded
        found.append(
            Symptom(
                condition.concept.label,
                when,
                f"{condition.concept.label} (active problem since {day(when)}"
                f"{_code_in(condition, SYMPTOMS)})",
                condition.concept,
            )
        )
    for obs in record.observations_in(SYMPTOMS):  # newest first
        if not _recent(record, obs.effective, days) or _absent(obs):
            continue
        answer = f": {obs.value_concept.label}" if obs.value_concept.codes or obs.value_concept.text else ""
        found.append(
            Symptom(
                obs.concept.label,
                obs.effective,
                f"{obs.concept.label}{answer} (recorded on {day(obs.effective)}{_code_of(obs, SYMPTOMS)})",
                obs.concept,
            )
        )
    # Orthopnoea first: NG42 names it.
    found.sort(key=lambda s: not s.orthopnoea)
    return found


def _code_in(condition: ConditionFact, valueset: ValueSet) -> str:
    return caveat(valueset.match(condition.concept))


def _symptom_words(found: list[Symptom]) -> str:
    return "orthopnoea" if any(s.orthopnoea for s in found) else "symptoms"


# --------------------------------------------------------------------------------------------
# NIV in use, referrals, sleep studies


@dataclass(frozen=True)
class NivUse:
    """The person is using non-invasive ventilation now, and how the record says so."""

    since: datetime | None
    line: str


def niv_in_use(record: PatientRecord) -> NivUse | None:
    """NIV in progress (Procedure), an active NIV device, or an active 'dependence on NIV' problem."""
    for proc in record.procedures_in(NIV):
        if proc.status == "in-progress" and (proc.when is None or proc.when <= record.now):
            return NivUse(
                proc.when,
                f"Non-invasive ventilation in progress since {day(proc.when)} ({proc.concept.label}"
                f"{_generic_match(proc, NIV)}).",
            )
    for device in record.devices_in(NIV_DEVICE):
        return NivUse(
            device.when,
            f"Non-invasive ventilator in use: {device.concept.label} (active device"
            f"{_generic_match(device, NIV_DEVICE)}).",
        )
    for condition in record.active_conditions(NIV_DEPENDENCE):
        when = condition.onset or condition.recorded
        return NivUse(
            when,
            f"{condition.concept.label} (active problem since {day(when)}"
            f"{_code_in(condition, NIV_DEPENDENCE)}).",
        )
    return None


def niv_starts(record: PatientRecord) -> list[tuple[datetime, str]]:
    """Every dated record that NIV was started or used: (when, words), newest first."""
    found = []
    for proc in record.procedures_in(NIV):
        if proc.when is not None and proc.when <= record.now:
            found.append((proc.when, f"non-invasive ventilation ({proc.status}) on {day(proc.when)}"))
    for condition in record.active_conditions(NIV_DEPENDENCE):
        when = condition.onset or condition.recorded
        if when is not None and when <= record.now:
            found.append((when, f"{condition.concept.label} since {day(when)}"))
    found.sort(key=lambda item: item[0], reverse=True)
    return found


def _generic_match(fact: GenericFact, valueset: ValueSet) -> str:
    return caveat(fact.match(valueset))


def _referral_after(record: PatientRecord, since: datetime) -> GenericFact | None:
    """The latest referral to a respiratory physician made on or after `since` (same day counts)."""
    for proc in record.procedures_in(RESPIRATORY_REFERRAL):
        if proc.when is not None and since.date() <= proc.when.date() and proc.when <= record.now:
            return proc
    return None


def _referral_line(referral: GenericFact) -> str:
    return (
        f"{referral.concept.label} on {day(referral.when)}"
        f"{aside(referral.match(RESPIRATORY_REFERRAL))}, after these results: if it was to the "
        "respiratory ventilation service, that referral is done."
    )


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
    evidence = []
    if assessments:
        when, words = assessments[0]
        last = day(when)
        evidence.append(
            f"Latest respiratory function test: {words} ({(record.now - when).days} days ago; none in the "
            f"last {interval} days)."
        )
    else:
        last = "none in the data received"
        evidence.append("No FVC, VC, SNIP or respiratory function test in the data received.")
    spo2 = _latest_recent(spo2_readings(record), record, interval)
    if spo2 is not None:
        evidence.append(f"{spo2.text}: an SpO2 alone is not the 2- to 3-monthly test (NG42 1.14.8).")
    unreadable = _unreadable_count(record)
    if unreadable:
        evidence.append(
            f"{UNREAD_PREFIX} {unreadable} respiratory result(s) without a value or in a unit that cannot "
            "be read (not counted)."
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
# Respiratory impairment: NICE NG42 table 2 and 1.14.11


def _on_supplemental_oxygen(obs: ObservationFact) -> Quantity | None:
    for component in obs.components:
        quantity = component.value
        if quantity is not None and quantity.value > 0 and INHALED_O2_FLOW.match(component.concept):
            return quantity
    return None


@dataclass(frozen=True)
class Criterion:
    """One NG42 criterion that the latest results meet."""

    label: str  # short, for the summary: "FVC < 50 % predicted"
    lines: tuple[str, ...]  # evidence
    since: datetime  # the earliest result of the interval that meets it (the change began by then)
    with_symptoms: bool = False  # a table 2 criterion that needs symptoms or signs


@dataclass(frozen=True)
class Breathing:
    """What the latest results of the interval say, read once for all the breathing rules."""

    criteria: tuple[Criterion, ...]
    symptoms: tuple[Symptom, ...]
    spo2: Reading | None
    spo2_limit: Decimal
    lung_disease: ConditionFact | None
    paco2: Reading | None

    @property
    def spo2_low(self) -> bool:
        return self.spo2 is not None and self.spo2.value <= self.spo2_limit

    @property
    def hypercapnic(self) -> bool:
        return self.paco2 is not None and self.paco2.value > PACO2_ABOVE_KPA


def _symptom_lines(found: Iterable[Symptom]) -> tuple[str, ...]:
    return tuple(f"Symptom of respiratory impairment (NG42 table 1): {s.line}." for s in found)


def _spirometry_criteria(record: PatientRecord, interval: int, found: list[Symptom]) -> list[Criterion]:
    criteria = []
    for test in (FVC, VC):
        window = _in_window(percent_predicted_readings(record, test), record, interval)
        if not window:
            continue
        latest = window[0]
        if latest.value < VC_PERCENT_BELOW:
            since = _earliest(window, lambda r: r.value < VC_PERCENT_BELOW) or latest.when
            criteria.append(
                Criterion(
                    f"{test.name} < 50 % predicted",
                    (f"{latest.text}: below 50 % predicted (NICE NG42 table 2).",),
                    since,
                )
            )
        elif latest.value < VC_PERCENT_WITH_SYMPTOMS_BELOW and found:
            since = _earliest(window, lambda r: r.value < VC_PERCENT_WITH_SYMPTOMS_BELOW) or latest.when
            criteria.append(
                Criterion(
                    f"{test.name} < 80 % predicted with {_symptom_words(found)}",
                    (
                        f"{latest.text}: below 80 % predicted, with symptoms of respiratory impairment "
                        "(NICE NG42 table 2).",
                    ),
                    since,
                    with_symptoms=True,
                )
            )
    return criteria


def _snip_limit(record: PatientRecord) -> tuple[Decimal, str]:
    """Table 2's sex-specific SNIP cut-off with symptoms, and words saying which was used."""
    if record.sex == "female":
        return SNIP_WITH_SYMPTOMS_BELOW_WOMEN, "55 cmH2O (women)"
    if record.sex == "male":
        return SNIP_WITH_SYMPTOMS_BELOW_MEN, "65 cmH2O (men)"
    return SNIP_WITH_SYMPTOMS_BELOW_MEN, "65 cmH2O (the men's cut-off: sex not recorded as male or female)"


def _snip_fall(latest: Reading, readings: list[Reading]) -> tuple[Reading, Decimal] | None:
    """An earlier SNIP (a different day, at most 184 days before) from which the fall exceeds
    10 cmH2O per 3 months; the steepest such fall."""
    best: tuple[Reading, Decimal, Decimal] | None = None
    for earlier in readings:
        gap = (latest.when.date() - earlier.when.date()).days
        if gap < 1 or gap > SNIP_FALL_LOOKBACK_DAYS:
            continue
        fall = earlier.value - latest.value
        # Within 3 months any fall of more than 10 cmH2O; over a longer gap, more than 10 per 3 months.
        allowed = SNIP_FALL_PER_3_MONTHS * max(gap, THREE_MONTHS_DAYS) / THREE_MONTHS_DAYS
        if fall > allowed and (best is None or fall - allowed > best[2]):
            best = (earlier, fall, fall - allowed)
    return (best[0], best[1]) if best is not None else None


def _snip_criteria(record: PatientRecord, interval: int, found: list[Symptom]) -> list[Criterion]:
    readings = snip_readings(record)
    window = _in_window(readings, record, interval)
    if not window:
        return []
    latest = window[0]
    criteria = []
    if latest.value < SNIP_BELOW_CMH2O:
        since = _earliest(window, lambda r: r.value < SNIP_BELOW_CMH2O) or latest.when
        criteria.append(
            Criterion("SNIP < 40 cmH2O", (f"{latest.text}: below 40 cmH2O (NICE NG42 table 2).",), since)
        )
    else:
        limit, words = _snip_limit(record)
        if latest.value < limit and found:
            since = _earliest(window, lambda r: r.value < limit) or latest.when
            criteria.append(
                Criterion(
                    f"SNIP < {limit} cmH2O with {_symptom_words(found)}",
                    (
                        f"{latest.text}: below {words}, with symptoms of respiratory impairment "
                        "(NICE NG42 table 2).",
                    ),
                    since,
                    with_symptoms=True,
                )
            )
    fall = _snip_fall(latest, readings)
    if fall is not None:
        earlier, drop = fall
        gap = (latest.when.date() - earlier.when.date()).days
        criteria.append(
            Criterion(
                "SNIP falling > 10 cmH2O in 3 months",
                (
                    f"SNIP fell by {_num(drop)} cmH2O in {gap} days: {earlier.text} to {latest.text} (NICE "
                    "NG42 table 2: a fall of more than 10 cmH2O per 3 months).",
                ),
                earlier.when,
            )
        )
    return criteria


def breathing(record: PatientRecord, config: RuleConfig) -> Breathing:
    """The latest results of the interval against NG42 table 2, 1.14.11 and 1.14.13: read once a
    call for the rules that ask (NIV referral, hypercapnia, and advance care planning's trigger
    points), not once by each."""
    return record.derived(_breathing, config)


def _breathing(record: PatientRecord, config: RuleConfig) -> Breathing:
    interval = config.respiratory_interval_days
    found = symptoms(record, interval)
    criteria = [*_spirometry_criteria(record, interval, found), *_snip_criteria(record, interval, found)]

    lung = record.active_conditions(LUNG_DISEASE)
    limit = SPO2_AT_OR_BELOW_LUNG_DISEASE if lung else SPO2_AT_OR_BELOW
    spo2 = _latest_recent(spo2_readings(record), record, interval)
    if spo2 is not None and spo2.value <= limit:
        why = f"known lung disease: {lung[0].concept.label}" if lung else "no known lung disease on record"
        lines = [f"{spo2.text}: at or below {limit} % ({why}; NICE NG42 1.14.11)."]
        oxygen = _on_supplemental_oxygen(spo2.observation)
        if oxygen is not None:
            lines.append(
                f"That SpO2 was recorded with supplemental oxygen ({oxygen}); NICE NG42's cut-off is "
                "for room air, and a value this low on oxygen is not reassuring."
            )
        window = _in_window(spo2_readings(record), record, interval)
        since = _earliest(window, lambda r: r.value <= limit) or spo2.when
        criteria.append(Criterion(f"SpO2 ≤ {limit} %", tuple(lines), since))
    return Breathing(
        criteria=tuple(criteria),
        symptoms=tuple(found),
        spo2=spo2,
        spo2_limit=limit,
        lung_disease=lung[0] if lung else None,
        paco2=_latest_recent(paco2_readings(record), record, interval),
    )


def respiratory_decline(record: PatientRecord, config: RuleConfig) -> tuple[datetime, str] | None:
    """When the current respiratory impairment began to show in the interval's results, and which
    criteria it meets (an NG42 1.7.1 trigger point for advance care planning); None without one."""
    state = breathing(record, config)
    dates = [c.since for c in state.criteria]
    labels = [c.label for c in state.criteria]
    if state.hypercapnic and state.paco2 is not None:
        window = _in_window(paco2_readings(record), record, config.respiratory_interval_days)
        dates.append(_earliest(window, lambda r: r.value > PACO2_ABOVE_KPA) or state.paco2.when)
        labels.append("PaCO2 > 6 kPa")
    if not dates:
        return None
    return min(dates), ", ".join(labels)


# Summary text: at most this many characters of criteria, then "+N more".
_CRITERIA_CHARS = 75


def _criteria_text(labels: list[str]) -> str:
    """As many labels as fit in the summary, the rest counted ('+2 more'); the evidence lists all."""
    for shown in range(len(labels), 0, -1):
        rest = len(labels) - shown
        text = ", ".join(labels[:shown]) + (f" +{rest} more" if rest else "")
        if len(text) <= _CRITERIA_CHARS or shown == 1:
            return text
    return ""


# --------------------------------------------------------------------------------------------
# respiratory-niv-referral


def _niv_recorded_line(record: PatientRecord) -> str | None:
    """A past NIV episode (not in progress) on record: said, not acted on."""
    procedures = record.procedures_in(NIV)
    if not procedures:
        return None
    latest = procedures[0]
    when = f" on {day(latest.when)}" if latest.when is not None else ""
    return (
        f"Non-invasive ventilation recorded{when} ({latest.status}): not in progress, so not taken as "
        "NIV in use."
    )


def niv_referral(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    interval = config.respiratory_interval_days
    state = breathing(record, config)
    named = list(state.criteria)
    if not named:
        return []
    if niv_in_use(record) is not None:
        return []  # NG42 1.12.3: NIV is for people "not already using" it; the NIV care plan follows them
    evidence = [line for c in named for line in c.lines]
    if any(c.with_symptoms for c in named):
        evidence.extend(_symptom_lines(state.symptoms))
    blood_gas = state.spo2_low
    if (
        blood_gas
        and state.spo2 is not None
        and state.paco2 is not None
        and state.paco2.when >= state.spo2.when
    ):
        blood_gas = False  # NG42 1.14.11 is done: the blood gas was taken after the low SpO2
        evidence.append(f"Blood gas already taken after that SpO2: {state.paco2.text}.")
    evidence.append(f"Only results from the last {interval} days count; the latest of each test decides.")
    past_niv = _niv_recorded_line(record)
    if past_niv:
        evidence.append(past_niv)
    referral = _referral_after(record, min(c.since for c in named))
    if referral is not None:
        evidence.append(_referral_line(referral))
    variant = {
        (False, False): None,
        (True, False): "blood-gas",
        (False, True): "referred",
        (True, True): "referred-blood-gas",
    }[(blood_gas, referral is not None)]
    return [
        Finding(
            rule_id="respiratory-niv-referral",
            fields={
                "criteria": _criteria_text([c.label for c in named]),
                "interval_days": str(interval),
                "referral_date": day(referral.when) if referral is not None else "none on record",
            },
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
    variant = None
    referral_date = "none on record"
    niv = niv_in_use(record)
    if niv is not None:
        variant = "on-niv"
        evidence.append(niv.line)
    else:
        referral = _referral_after(record, latest.when)
        if referral is not None:
            variant = "referred"
            referral_date = day(referral.when)
            evidence.append(_referral_line(referral))
    return [
        Finding(
            rule_id="respiratory-hypercapnia",
            fields={
                "paco2": f"{_num(latest.value, 2)} kPa",
                "date": day(latest.when),
                "referral_date": referral_date,
            },
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


# --------------------------------------------------------------------------------------------
# respiratory-sleep-study


def sleep_study(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    interval = config.respiratory_interval_days
    state = breathing(record, config)
    if not state.symptoms or niv_in_use(record) is not None:
        return []
    if state.criteria or state.hypercapnic:
        return []  # the NIV-referral or hypercapnia card already asks for the ventilation service
    since = record.now - timedelta(days=interval)
    done = [
        p
        for p in record.procedures_in(SLEEP_STUDY, since=since)
        if p.when is not None and p.when <= record.now
    ]
    if done:
        return []
    sleep_related = [s for s in state.symptoms if s.sleep_related]
    evidence: list[str] = []
    variant = None
    if state.paco2 is not None:
        # NG42 1.14.14: PaCO2 at most 6 kPa with any symptom or sign, particularly orthopnoea.
        variant = "blood-gas"
        fired_by = state.paco2
        evidence.append(f"{state.paco2.text}: at most 6 kPa (NICE NG42 1.14.14).")
        evidence.extend(_symptom_lines(state.symptoms))
    elif state.spo2 is not None and sleep_related:
        # NG42 1.14.12: SpO2 above the 1.14.11 values with sleep-related respiratory symptoms.
        fired_by = state.spo2
        why = (
            f"known lung disease: {state.lung_disease.concept.label}"
            if state.lung_disease
            else "no known lung disease on record"
        )
        evidence.append(f"{state.spo2.text}: above {state.spo2_limit} % ({why}; NICE NG42 1.14.12).")
        evidence.extend(_symptom_lines(sleep_related))
    else:
        return []
    evidence.append(f"No sleep study or overnight oximetry on record in the last {interval} days.")
    referral = _referral_after(record, fired_by.when)
    if referral is not None:
        evidence.append(_referral_line(referral))
    return [
        Finding(
            rule_id="respiratory-sleep-study",
            fields={"spo2_limit": f"{state.spo2_limit}", "interval_days": str(interval)},
            evidence=tuple(evidence),
            variant=variant,
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
_NIV_IN_USE_FACT = RuleFact(
    "Already using NIV",
    "NIV Procedure in progress (SNOMED CT 428311008), an active bilevel ventilator Device (702173003, "
    "714700001), or an active 'dependence on non-invasive ventilation' problem (713655003, 429091008)",
    "nice-ng42",
    "NG42 1.12.3 (urgent introduction of NIV for people 'not already using non-invasive ventilation') and "
    "1.14.20 (the NIV care plan sets the tests and clinical reviews). A completed NIV procedure is a past "
    "episode, named on the card but not taken as NIV in use. Codes: value sets niv, niv-device, "
    "niv-dependence (each code's source there).",
)
_REFERRAL_FACT = RuleFact(
    "Referral already made",
    "a Procedure 'referral to respiratory physician' (SNOMED CT 306275005) or 'to chest physician' "
    "(306273003) dated on or after the results that fired the card",
    "nice-ng42",
    "No checked code names NG42's 'respiratory ventilation service', so the card names the referral and "
    "leaves out its own referral suggestion rather than staying silent (design choice). Referrals sent as "
    "ServiceRequest are not read by this service.",
)
_SYMPTOMS_FACT = RuleFact(
    "Symptoms of respiratory impairment",
    "breathlessness, orthopnoea, breathlessness at night, disturbed sleep, fatigue, confusion, poor "
    "appetite (SNOMED CT, value set respiratory-symptoms): an active problem, or an observation of the "
    "interval not answered absent or no",
    "nice-ng42",
    "NG42 1.14.7 table 1. Only these table 1 symptoms have a checked code; recurrent chest infections, "
    "non-refreshing sleep, nightmares, daytime sleepiness, poor concentration, hallucinations, morning "
    "headaches and the signs are not read (UNVERIFIED: no code found).",
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
                SYMPTOMS,
            ),
            "Condition": (LUNG_DISEASE, SYMPTOMS, NIV_DEPENDENCE),
            "Procedure": (NIV, RESPIRATORY_REFERRAL),
            "Device": (NIV_DEVICE,),
        }
    ),
    evaluate=niv_referral,
    trigger=(
        "Not already using NIV, and within the assessment interval the latest FVC or VC is < 50 % "
        "predicted (or < 80 % with symptoms), or the latest SNIP is < 40 cmH2O (or < 65 men / < 55 women "
        "with symptoms), or SNIP fell by more than 10 cmH2O per 3 months, or the latest SpO2 is <= 94 % "
        "(<= 92 % with known lung disease) (NICE NG42 1.14.11, 1.14.15, table 2)."
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
            "FVC or VC threshold with symptoms",
            "< 80 % of predicted plus any symptom of respiratory impairment, particularly orthopnoea",
            "nice-ng42",
            "NG42 table 2 ('FVC or VC less than 80% of predicted value plus any symptoms or signs of "
            "respiratory impairment (see recommendation 1.14.7), particularly orthopnoea').",
        ),
        RuleFact(
            "SNIP threshold",
            "< 40 cmH2O (kPa and mmHg converted)",
            "nice-ng42",
            "NG42 1.14.15 and table 2 ('SNIP or MIP less than 40 cmH2O'). 1 cmH2O = 0.0980665 kPa.",
        ),
        RuleFact(
            "SNIP threshold with symptoms",
            "< 65 cmH2O (men) or < 55 cmH2O (women) plus any symptom of respiratory impairment",
            "nice-ng42",
            "NG42 table 2. Sex from Patient.gender; when it is neither male nor female the men's 65 cmH2O is "
            "used (design choice: the card errs towards showing) and the card says so.",
        ),
        RuleFact(
            "SNIP falling",
            "a fall of more than 10 cmH2O per 3 months: from an earlier SNIP on a different day at most 184 "
            "days before the latest, more than 10 cmH2O within 92 days, or more than 10 x days / 92 over a "
            "longer gap",
            "nice-ng42",
            "NG42 table 2 ('Repeated regular tests show a rate of decrease of SNIP or MIP of more than 10 cm "
            "H2O per 3 months'). Reading 3 months as 92 days, the 184-day look-back, and not extrapolating a "
            "rate from gaps shorter than 3 months are design choices.",
        ),
        _SYMPTOMS_FACT,
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
        _NIV_IN_USE_FACT,
        _REFERRAL_FACT,
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
    reads=Interest(
        {
            "Observation": (PACO2,),
            "Condition": (NIV_DEPENDENCE,),
            "Procedure": (NIV, RESPIRATORY_REFERRAL),
            "Device": (NIV_DEVICE,),
        }
    ),
    evaluate=hypercapnia,
    trigger=(
        "The latest arterial or capillary pCO2 (LOINC 2019-8 / 2020-6) within the assessment interval is "
        "above 6 kPa (NICE NG42 1.14.13). Already on NIV: a warning to tell the ventilation service instead "
        "of a new referral; a referral to a respiratory physician after the result: a warning naming it."
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
        RuleFact(
            "Already using NIV",
            "warning instead of critical: tell the ventilation service that manages the NIV; no new referral",
            "nice-ng42",
            "NG42 1.14.13's urgent referral is for people not yet under a respiratory ventilation service; "
            "for people on NIV, 1.14.20 puts clinical reviews of physiological changes in the NIV care plan. "
            "The lower severity is a design choice. What counts as NIV in use: see respiratory-niv-referral.",
        ),
        _REFERRAL_FACT,
        _UNREADABLE_FACT,
    ),
)

SLEEP_STUDY_RULE = Rule(
    id="respiratory-sleep-study",
    title="Sleep-related respiratory symptoms: nocturnal oximetry or limited sleep study",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Observation": (SPO2, PACO2, SYMPTOMS),
            "Condition": (LUNG_DISEASE, SYMPTOMS, NIV_DEPENDENCE),
            "Procedure": (NIV, SLEEP_STUDY, RESPIRATORY_REFERRAL),
            "Device": (NIV_DEVICE,),
        }
    ),
    evaluate=sleep_study,
    trigger=(
        "Not on NIV, no table 2 / SpO2 / PaCO2 criterion of the NIV-referral or hypercapnia cards met, no "
        "sleep study in the interval, and either the latest SpO2 of the interval is above 94 % (92 % with "
        "lung disease) with a sleep-related respiratory symptom (NICE NG42 1.14.12), or the latest PaCO2 is "
        "at most 6 kPa with any symptom of respiratory impairment (1.14.14)."
    ),
    facts=(
        RuleFact(
            "SpO2 above the blood-gas thresholds with sleep-related symptoms",
            "consider referral to a respiratory ventilation service for continuous nocturnal oximetry "
            "and/or a limited sleep study",
            "nice-ng42",
            "NG42 1.14.12 ('greater than 94%, or 92% for those with lung disease, but they have "
            "sleep-related respiratory symptoms').",
        ),
        RuleFact(
            "Sleep-related respiratory symptoms",
            "disturbed sleep, breathlessness at night, orthopnoea (value set "
            "sleep-related-respiratory-symptoms)",
            "nice-ng42",
            "NG42 does not list which table 1 symptoms are sleep-related; this subset is a design choice. "
            "Non-refreshing sleep, nightmares, daytime sleepiness and morning headaches have no checked code "
            "(UNVERIFIED).",
        ),
        RuleFact(
            "PaCO2 at most 6 kPa with symptoms",
            "refer to a respiratory ventilation service for nocturnal oximetry and/or a limited sleep study",
            "nice-ng42",
            "NG42 1.14.14 ('less than or equal to 6 kPa but they have any symptoms or signs of respiratory "
            "impairment, particularly orthopnoea'): a warning, because NG42 says 'refer'.",
        ),
        RuleFact(
            "Sleep study done",
            "polysomnography (SNOMED CT 60554003) or a procedure named sleep study / overnight or nocturnal "
            "oximetry / respiratory polygraphy within the interval silences the card",
            "nice-ng42",
            "Value set sleep-study. Design choice: a study of the interval is taken as the answer to the "
            "symptoms.",
        ),
        RuleFact(
            "One referral card at a time",
            "silent while the NIV-referral or hypercapnia card's criteria are met, or NIV is in use",
            "nice-ng42",
            "Design choice: those cards already ask for the ventilation service (NG42 1.14.13, 1.14.15).",
        ),
        _SYMPTOMS_FACT,
        _REFERRAL_FACT,
        _INTERVAL_FACT,
        _UNREADABLE_FACT,
    ),
)

RULES: tuple[Rule, ...] = (ASSESSMENT_DUE, NIV_REFERRAL, HYPERCAPNIA, SLEEP_STUDY_RULE)
