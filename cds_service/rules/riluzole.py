"""Riluzole: offer, liver and neutrophil safety, and order checks.

Rilutek SmPC 4.4 (EMA, 2021 revision): "ALT should be measured every month during the first 3
months of treatment, every 3 months during the remainder of the first year, and periodically
thereafter." NICE TA20 3.3 makes "periodically" concrete for the UK: annually.

The other rules follow the same label: SmPC 4.1 (not shown effective in the late stages of ALS),
SmPC 4.3 (contraindications: hepatic disease or baseline transaminases > 3 x ULN, pregnancy,
breast-feeding, hypersensitivity), SmPC 4.4 (discontinue at ALT 5 x ULN, and re-administration
after that "cannot be recommended"; a febrile illness prompts a white cell count; discontinue in
neutropenia), SmPC 4.2 (50 mg every 12 hours), the US prescribing information (discontinue if
there is evidence of liver dysfunction, e.g. elevated bilirubin), NICE TA20 (via NG42 1.5.12) and
AAN 2009 (Level A).

Results are read with their history and their dates: an ALT that reached 5 x ULN during any
course blocks a restart, a result from before the current course is not evidence about it, and a
result too old to be a baseline asks for new liver tests rather than counting as a contraindication.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from cds_service import terminology
from cds_service.record import (
    HIGH_FLAGS,
    MEDICATION_CURRENT_STATUSES,
    MEDICATION_HISTORY_STATUSES,
    DraftOrder,
    Interest,
    MedicationFact,
    MedicationMatch,
    ObservationFact,
    PatientRecord,
    Quantity,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import aside, caveat, clip, day, patient_reference
from cds_service.rules.fever import BODY_TEMPERATURE, FEVER, FEVER_CELSIUS, FEVER_WINDOW_DAYS, recent_fever
from cds_service.terminology import Match, units

RILUZOLE = terminology.load("riluzole")
ALT = terminology.load("alt")

#: "every month": the longest calendar month, so a result on the same day of the previous
#: month always counts as in time.
MONTHLY_DAYS = 31
#: "every 3 months": the longest run of three calendar months.
QUARTERLY_DAYS = 92

#: Requests whose dates tell when the current course of riluzole began. 'stopped' is left out:
#: after a stop, a restart begins a new course and the monthly checks again.
_COURSE_STATUSES = frozenset({"active", "on-hold", "completed"})
_STOPPED = frozenset({"stopped"})


def months_between(start: datetime, end: datetime) -> int:
    """Whole calendar months from start to end (0 during the first month)."""
    months = (end.year - start.year) * 12 + (end.month - start.month)
    if end.day < start.day:
        months -= 1
    return months


def _course_start(record: PatientRecord) -> datetime | None:
    """When the current course began: the earliest start among the current requests and the
    completed ones since the last stop (a stop ends a course, a restart begins a new one).

    None when no such request has a date: an unknown start is not "long-standing".
    """
    stops = [_end_of(m.fact) or m.fact.started for m in record.medication_requests(RILUZOLE, _STOPPED)]
    last_stop = max((s for s in stops if s is not None), default=None)
    starts = []
    for med in record.medication_requests(RILUZOLE, _COURSE_STATUSES):
        started = med.fact.started
        if started is None:
            continue
        if med.fact.status in MEDICATION_CURRENT_STATUSES or last_stop is None or started > last_stop:
            starts.append(started)
    return min(starts) if starts else None


@dataclass(frozen=True)
class _Schedule:
    """Where the current course is in the SmPC 4.4 ALT schedule, and whether ALT is due."""

    start: datetime | None
    window: int  # days allowed since the last ALT at this stage
    phase: str
    latest: ObservationFact | None  # the latest dated ALT, with or without a value

    def due(self, now: datetime) -> bool:
        latest = self.latest
        return latest is None or latest.effective is None or (now - latest.effective).days > self.window

    def lines(self, record: PatientRecord) -> list[str]:
        """Evidence: where the course is, the latest ALT and the interval that applies."""
        if self.start is None:
            lines = ["Start of riluzole not recorded: the monthly schedule of the first 3 months applies."]
        else:
            lines = [f"Riluzole course started {self.start.date().isoformat()} ({self.phase})."]
        latest = self.latest
        if latest is None or latest.effective is None:
            lines.append("No dated ALT result in the data received.")
        else:
            value = str(latest.value) if latest.value is not None else "no value"
            age = (record.now - latest.effective).days
            lines.append(f"Latest ALT: {value} on {latest.effective.date().isoformat()} ({age} days ago).")
        lines.append(f"Schedule at this stage: at least every {self.window} days.")
        return lines

    @property
    def last_alt(self) -> str:
        latest = self.latest
        if latest is None or latest.effective is None:
            return "none in the data received"
        return latest.effective.date().isoformat()


def _schedule(record: PatientRecord, config: RuleConfig) -> _Schedule:
    start = _course_start(record)
    if start is None:
        window, phase = MONTHLY_DAYS, "start date not recorded"
    else:
        months = max(months_between(start, record.now), 0)
        if months < 3:
            window, phase = MONTHLY_DAYS, f"month {months + 1} of treatment"
        elif months < 12:
            window, phase = QUARTERLY_DAYS, f"month {months + 1} of treatment"
        else:
            window, phase = config.riluzole_lft_interval_after_year1_days, "after the first year"
    return _Schedule(start, window, phase, record.latest_observation(ALT))


def lft_due(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = record.medication_requests(RILUZOLE, MEDICATION_CURRENT_STATUSES)
    if not current:
        return []
    schedule = _schedule(record, config)
    if not schedule.due(record.now):
        return []
    evidence = [_medication_line(current[0]), *schedule.lines(record)]
    unread = record.unread_note(ALT, "ALT")
    if unread is not None:
        evidence.append(unread)
    return [
        Finding(
            rule_id="riluzole-lft-due",
            fields={
                "window_days": str(schedule.window),
                "phase": schedule.phase,
                "last_alt": schedule.last_alt,
            },
            evidence=tuple(evidence),
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


def _medication_line(med: MedicationMatch) -> str:
    return f"On riluzole: {med.fact.concept.label} ({med.fact.status}{caveat(med.match)})."


LFT_DUE = Rule(
    id="riluzole-lft-due",
    title="Riluzole: ALT monitoring due",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (ALT,)}),
    evaluate=lft_due,
    trigger=(
        "Active riluzole and no ALT result inside the label's schedule: every month in the first "
        "3 months of the course, every 3 months to month 12, then every N days (default 365)."
    ),
    facts=(
        RuleFact(
            "ALT interval, months 1-3",
            f"{MONTHLY_DAYS} days",
            "rilutek-smpc",
            "SmPC 4.4 'every month during the first 3 months'; 31 days = the longest calendar month.",
        ),
        RuleFact(
            "ALT interval, months 4-12",
            f"{QUARTERLY_DAYS} days",
            "rilutek-smpc",
            "SmPC 4.4 'every 3 months during the remainder of the first year'; 92 days = the longest "
            "three calendar months.",
        ),
        RuleFact(
            "ALT interval after month 12",
            "ALS_CDS_RILUZOLE_LFT_INTERVAL_AFTER_YEAR1_DAYS, default 365 days",
            "nice-ta20",
            "SmPC 4.4 says 'periodically thereafter'; NICE TA20 3.3 says annually.",
        ),
        RuleFact(
            "Start of the course",
            "earliest start of the current requests and of the completed ones since the last stop; "
            "unknown -> monthly",
            "rilutek-smpc",
            "Design choice: a stop ends the course; an unrecorded start is treated as a new course.",
        ),
    ),
)

# ============================================================================================
# Shared pieces of the other riluzole rules

AST = terminology.load("ast")
BILIRUBIN = terminology.load("bilirubin")
NEUTROPHILS = terminology.load("neutrophils")
WHITE_CELLS = terminology.load("white-cell-count")
LIVER_DISEASE = terminology.load("liver-disease")
PREGNANCY = terminology.load("pregnancy")
PREGNANT_ANSWER = terminology.load("pregnant-answer")
PREGNANCY_STATUS = terminology.load("pregnancy-status")
BREASTFEEDING_STATUS = terminology.load("breastfeeding-status")
CURRENTLY_BREASTFEEDING = terminology.load("currently-breastfeeding")
LIVER_STOP_REASON = terminology.load("riluzole-stop-liver-reason")
TRACHEOSTOMY = terminology.load("tracheostomy")
INVASIVE_VENTILATION = terminology.load("invasive-ventilation")

#: SmPC 4.3: "baseline transaminases greater than 3 times the upper limit of normal" (strictly >).
CONTRAINDICATION_TIMES_ULN = Decimal(3)
#: SmPC 4.4: measure ALT more often when it rises; the catalogue's "raised" step is 3 x ULN (>=).
MONITOR_MORE_TIMES_ULN = Decimal(3)
#: SmPC 4.4: "discontinued if the ALT levels increase to 5 times the ULN" (reached: >=).
STOP_TIMES_ULN = Decimal(5)
#: How recent an ALT or AST must be to stand as the "baseline" of SmPC 4.3 for a course starting
#: now (design choice: the shortest interval of the SmPC 4.4 schedule). An older raised result asks
#: for new liver tests; it is not a contraindication by itself.
BASELINE_DAYS = MONTHLY_DAYS
#: A pregnancy recorded longer ago than the longest pregnancy (42 completed weeks = 294 days from
#: the last menstrual period, the definition of post-term) has ended.
PREGNANCY_CURRENT_DAYS = 294
#: A "currently breastfeeding" status older than this is not taken as current (design choice from
#: the WHO recommendation: breastfeeding up to 2 years of age or beyond).
BREASTFEEDING_CURRENT_DAYS = 730
#: SmPC 4.2: "100 mg (50 mg every 12 hours)".
DOSE_MG = Decimal(50)
DOSES_PER_DAY = Decimal(2)
#: The only liquid riluzole in RxNorm is 5 mg/mL (Tiglutik, Teglutik: SCD 2058147): 10 mL = 50 mg.
SUSPENSION_MG_PER_ML = Decimal(5)
SUSPENSION_DOSE_ML = DOSE_MG / SUSPENSION_MG_PER_ML

_TABLET_CODES = frozenset({"199206", "152915"})
_FILM_CODES = frozenset({"2265862", "2267572"})
_SUSPENSION_CODES = frozenset({"2058147", "2059266", "2675565"})
_SUSPENSION_WORDS = ("suspension", "tiglutik", "teglutik", "5 mg/ml", "5mg/ml", "liquid")
_FILM_WORDS = ("film", "exservan")
_COUNT_UNITS = {
    "tablet": frozenset({"tablet", "tablets", "tab", "tabs", "{tablet}", "{tablets}", "{tbl}"}),
    "film": frozenset({"film", "films", "{film}", "{films}"}),
}
#: Earlier courses: what a stop or a finished prescription looks like.
_ENDED_STATUSES = frozenset({"stopped", "completed"})
#: Requests whose statusReason may say why riluzole was stopped or held.
_REASONED_STATUSES = frozenset({"stopped", "completed", "on-hold"})
_RXNORM = terminology.RXNORM
_UCUM = units.UCUM_SYSTEM
_ORAL_ROUTE = {
    "coding": [{"system": terminology.SNOMED, "code": "26643006", "display": "Oral route"}],
}


def _current_riluzole(record: PatientRecord) -> list[MedicationMatch]:
    return record.medication_requests(RILUZOLE, MEDICATION_CURRENT_STATUSES)


def _number(value: Decimal, places: str = "0.01") -> str:
    """A value for a card: rounded *down* (a ratio shown never reaches a threshold it has not reached)."""
    return f"{value.quantize(Decimal(places), rounding=ROUND_DOWN).normalize():f}"


def _value_text(obs: ObservationFact, converted: Decimal, unit_label: str) -> str:
    """The value as the lab sent it, plus its conversion when the number changed ('1.2 ukat/L (= 72 U/L)')."""
    shown = str(obs.value) if obs.value is not None else "no value"
    if obs.value is not None and converted != obs.value.value:
        shown += f" (= {_number(converted)} {unit_label})"
    return shown


@dataclass(frozen=True)
class _Times:
    """A transaminase result against its upper limit of normal, and where that limit came from."""

    name: str
    obs: ObservationFact
    value: Decimal  # U/L
    uln: Decimal  # U/L
    uln_source: str
    #: The lab sent a range this service could not read (text only, or an unreadable upper limit),
    #: so `uln` is a stand-in: good enough to alert on, not to call a contraindication.
    lab_range_unread: bool = False

    @property
    def ratio(self) -> Decimal:
        return self.value / self.uln

    @property
    def when(self) -> datetime:
        assert self.obs.effective is not None  # results come from observations_in: dated
        return self.obs.effective

    def line(self) -> str:
        return (
            f"{self.name} {_value_text(self.obs, self.value, 'U/L')} on {day(self.obs.effective)}: "
            f"{_number(self.ratio)} × ULN {_number(self.uln)} U/L ({self.uln_source})."
        )


def _lab_uln(obs: ObservationFact) -> tuple[Decimal | None, str, bool]:
    """(the lab's upper reference limit in U/L or None, why, whether a range came but was unreadable)."""
    reference = obs.reference_range
    if reference is None or (reference.high is None and not reference.text):
        return None, "no reference range on the result", False
    if reference.high is None:
        text = (reference.text or "")[:40]
        return None, f"the lab's range came only as text ('{text}')", True
    high = obs.reference_high_in("U/L")
    if high is None or high <= 0:
        return None, f"the lab's upper limit ({reference.high}) could not be read", True
    return high, "ULN from the lab's reference range", False


def _alt_times(obs: ObservationFact, record: PatientRecord, config: RuleConfig) -> _Times | None:
    """ALT against the lab's ULN, else the configured ACG 2017 default for the patient's sex.

    None when the value's unit cannot be read: such a value is not evidence of anything. A bound
    ('>1000 U/L') counts as its number: the ALT is at least that high.
    """
    value = obs.at_least_in("U/L")
    if value is None:
        return None
    uln, why, unread = _lab_uln(obs)
    if uln is not None:
        return _Times("ALT", obs, value, uln, why)
    if record.sex == "male":
        uln, whose = Decimal(str(config.alt_uln_default_male)), "men"
    elif record.sex == "female":
        uln, whose = Decimal(str(config.alt_uln_default_female)), "women"
    else:
        uln = Decimal(str(config.alt_uln_default_female))
        whose = "women, the lower one, as sex is not recorded as male or female"
    return _Times("ALT", obs, value, uln, f"{why}; default ULN for {whose}, ACG 2017, Kwo et al.", unread)


def _ast_times(obs: ObservationFact) -> _Times | None:
    """AST against the lab's ULN only: the ACG 2017 healthy limits are defined for ALT, not AST."""
    value = obs.value_in("U/L")
    uln, why, _ = _lab_uln(obs)
    if value is None or uln is None:
        return None
    return _Times("AST", obs, value, uln, why)


def _latest_alt(
    record: PatientRecord, config: RuleConfig, since: datetime | None = None
) -> tuple[ObservationFact | None, _Times | None]:
    """The latest ALT with a value (taken on or after `since`, when given), and it against its ULN."""
    if since is None:
        latest = record.latest_observation(ALT, with_value=True)
    else:
        latest = _first_since(record.observations_in(ALT), since)
    return latest, (_alt_times(latest, record, config) if latest is not None else None)


def _first_since(results: Iterable[ObservationFact], since: datetime | None) -> ObservationFact | None:
    """The newest result with a value taken on or after `since` (any date when None)."""
    for obs in results:
        if obs.value is None:
            continue
        if since is None or (obs.effective is not None and obs.effective >= since):
            return obs
    return None


def _unreadable_line(name: str, obs: ObservationFact, why: str) -> str:
    return f"{name} {obs.value} on {day(obs.effective)}: {why}, so it is not assessed."


# --------------------------------------------------------------------------------------------
# The history: an ALT that reached 5 x ULN during a course, and stops for a liver reason


@dataclass(frozen=True)
class _AltStop:
    """An ALT at or above the SmPC 4.4 stop level, measured while a riluzole request ran."""

    times: _Times
    course: MedicationMatch

    def line(self) -> str:
        course = self.course.fact
        started = f"started {day(course.started)}" if course.started is not None else "start not recorded"
        end = _end_of(course)
        ended = f", ended {day(end)}" if end is not None else ""
        return (
            f"During riluzole ({course.status}, {started}{ended}): {self.times.line()} "
            f"That is at or above the 5 × ULN stop level."
        )


def _ran_at(med: MedicationFact, when: datetime) -> bool:
    """Whether the request covers `when`: on or after its start, and by the day of its end.

    A current request runs until now; a missing start or end is not taken to exclude the result
    (design choice: errs towards treating a raised ALT as one measured on riluzole).
    """
    if med.started is not None and when < med.started:
        return False
    end = None if med.status in MEDICATION_CURRENT_STATUSES else _end_of(med)
    return end is None or when.date() <= end.date()


def _alt_stops(record: PatientRecord, config: RuleConfig) -> list[_AltStop]:
    """Every ALT >= 5 x ULN measured during a riluzole course (ALT history, newest first)."""
    courses = record.medication_requests(RILUZOLE, MEDICATION_HISTORY_STATUSES)
    if not courses:
        return []
    found = []
    for obs in record.observations_in(ALT):
        if obs.value is None or obs.effective is None:
            continue
        # The course first: cheaper than setting the ALT against its ULN, needed only during one.
        course = next((c for c in courses if _ran_at(c.fact, obs.effective)), None)
        if course is None:
            continue
        times = _alt_times(obs, record, config)
        if times is not None and times.ratio >= STOP_TIMES_ULN:
            found.append(_AltStop(times, course))
    return found


def _liver_reason_stops(record: PatientRecord) -> list[tuple[MedicationMatch, Match]]:
    """Riluzole requests stopped, completed or held for a liver reason (their statusReason)."""
    found = []
    for med in record.medication_requests(RILUZOLE, _REASONED_STATUSES):
        reason = med.fact.status_reason
        match = LIVER_STOP_REASON.match(reason) if reason is not None else None
        if match is not None:
            found.append((med, match))
    return found


def _liver_reason_line(med: MedicationMatch, match: Match) -> str:
    fact = med.fact
    end = _end_of(fact)
    when = f" on {day(end)}" if end is not None else ""
    reason = fact.status_reason.label if fact.status_reason is not None else ""
    return (
        f"Riluzole {fact.status}{when} for a liver reason: '{clip(reason, 80)}'{aside(match)}; "
        "the ALT at that time is not in the data received."
    )


# --------------------------------------------------------------------------------------------
# Before a course: contraindications (SmPC 4.3), the baseline, and late-stage disease (SmPC 4.1)


def _hepatic_disease(record: PatientRecord) -> list[str]:
    lines = []
    for condition in record.active_conditions(LIVER_DISEASE):
        match = LIVER_DISEASE.match(condition.concept)
        since = condition.onset or condition.recorded
        when = f"since {day(since)}" if since is not None else "date not recorded"
        lines.append(f"Hepatic disease recorded: {condition.concept.label} ({when}{caveat(match)}).")
    return lines


@dataclass(frozen=True)
class _Baseline:
    """Transaminases above 3 x ULN before a course: which count as the SmPC 4.3 baseline."""

    contraindicated: tuple[_Times, ...]  # recent, against a limit that can be trusted
    uncertain: tuple[tuple[_Times, str], ...]  # too old, or against a stand-in limit: and why

    def uncertain_lines(self) -> list[str]:
        return [f"{times.line()} Not taken as the baseline: {why}." for times, why in self.uncertain]


def _baseline(record: PatientRecord, config: RuleConfig, stops: list[_AltStop]) -> _Baseline:
    """The latest ALT and AST against SmPC 4.3's "baseline transaminases > 3 x ULN".

    A result that is itself an on-treatment ALT stop (`stops`) is left to the rechallenge rule.
    """
    on_treatment = [stop.times.obs for stop in stops]
    _, alt = _latest_alt(record, config)
    latest_ast = record.latest_observation(AST, with_value=True)
    ast = _ast_times(latest_ast) if latest_ast is not None else None
    contraindicated: list[_Times] = []
    uncertain: list[tuple[_Times, str]] = []
    for times in (alt, ast):
        if times is None or times.ratio <= CONTRAINDICATION_TIMES_ULN:
            continue
        if any(times.obs is obs for obs in on_treatment):
            continue
        age = (record.now - times.when).days
        if times.lab_range_unread:
            uncertain.append(
                (times, "the lab's own upper limit could not be read, so the limit used is a stand-in")
            )
        elif age > BASELINE_DAYS:
            uncertain.append(
                (times, f"it is {age} days old (a baseline is at most {BASELINE_DAYS} days old)")
            )
        else:
            contraindicated.append(times)
    return _Baseline(tuple(contraindicated), tuple(uncertain))


def _liver_reasons(
    record: PatientRecord, config: RuleConfig, *, on_treatment: bool = False
) -> tuple[list[str], list[str]]:
    """Hepatic reasons not to give riluzole: (evidence lines, short reasons for the summary).

    Before treatment (SmPC 4.3): hepatic disease, or a recent ALT or AST > 3 x ULN. During treatment
    the 3 x ULN limit is no longer a contraindication (SmPC 4.4: measure more often, stop at 5 x ULN):
    a renewal is held back by hepatic disease, and by an ALT >= 5 x ULN that is not one measured on
    treatment (those are the rechallenge rule's).
    """
    lines = _hepatic_disease(record)
    short = ["hepatic disease recorded"] if lines else []
    stops = _alt_stops(record, config)
    if on_treatment:
        _, alt = _latest_alt(record, config)
        if alt is not None and alt.ratio >= STOP_TIMES_ULN and not any(alt.obs is s.times.obs for s in stops):
            lines.append(alt.line())
            short.append(f"ALT {_number(alt.ratio, '0.1')} × ULN")
        return lines, short
    for times in _baseline(record, config, stops).contraindicated:
        lines.append(times.line())
        short.append(f"{times.name} {_number(times.ratio, '0.1')} × ULN")
    return lines, short


def _other_contraindications(record: PatientRecord) -> tuple[list[str], list[str]]:
    """SmPC 4.3: pregnancy, breast-feeding, hypersensitivity to riluzole, as far as current.

    (evidence lines, short reasons). A pregnancy recorded more than 294 days ago, or a
    breastfeeding status more than 730 days old, is not current; an undated pregnancy is.
    """
    lines: list[str] = []
    short: list[str] = []
    for condition in record.active_conditions(PREGNANCY):
        when = condition.onset or condition.recorded
        if when is not None and (record.now - when).days > PREGNANCY_CURRENT_DAYS:
            continue
        since = f"since {day(when)}" if when is not None else "date not recorded"
        lines.append(f"Pregnancy recorded: {condition.concept.label} (active, {since}).")
    status = record.latest_observation(PREGNANCY_STATUS)
    if (
        status is not None
        and status.effective is not None
        and (record.now - status.effective).days <= PREGNANCY_CURRENT_DAYS
        and (PREGNANCY.match(status.value_concept) or PREGNANT_ANSWER.match(status.value_concept))
    ):
        lines.append(f"Pregnancy status on {day(status.effective)}: {status.value_concept.label}.")
    if lines:
        short.append("pregnancy")
    feeding = record.latest_observation(BREASTFEEDING_STATUS)
    if (
        feeding is not None
        and feeding.effective is not None
        and (record.now - feeding.effective).days <= BREASTFEEDING_CURRENT_DAYS
        and (
            CURRENTLY_BREASTFEEDING.match(feeding.value_concept) is not None or feeding.value_boolean is True
        )
    ):
        lines.append(f"Breastfeeding status on {day(feeding.effective)}: currently breastfeeding.")
        short.append("breast-feeding")
    allergies = record.allergies_in(RILUZOLE)
    for allergy in allergies:
        match = allergy.match(RILUZOLE)
        lines.append(f"Allergy or intolerance to riluzole recorded: {allergy.concept.label}{aside(match)}.")
    if allergies:
        short.append("riluzole allergy")
    return lines, short


_PREGNANCY_FACTS = (
    RuleFact(
        "A current pregnancy",
        f"a pregnancy condition or 'pregnant' status recorded in the last {PREGNANCY_CURRENT_DAYS} days; "
        "an undated active pregnancy condition counts",
        "pregnancy-duration",
        "294 days = 42 completed weeks from the last menstrual period, where post-term begins: a "
        "pregnancy recorded longer ago has ended.",
    ),
    RuleFact(
        "Current breast-feeding",
        f"a 'currently breastfeeding' status from the last {BREASTFEEDING_CURRENT_DAYS} days",
        "who-breastfeeding",
        "Design choice: WHO recommends breastfeeding up to 2 years of age or beyond; an older status is "
        "not taken as current.",
    ),
)


def _late_stage(record: PatientRecord) -> list[str]:
    """Tracheostomy or invasive ventilation now: the late stage of SmPC 4.1."""
    lines = []
    for procedure in record.procedures_in(TRACHEOSTOMY):
        lines.append(f"Tracheostomy: {procedure.concept.label} ({procedure.status}, {day(procedure.when)}).")
    for device in record.devices_in(TRACHEOSTOMY):
        lines.append(f"Tracheostomy tube in use: {device.concept.label}.")
    for condition in record.active_conditions(TRACHEOSTOMY):
        lines.append(f"Tracheostomy status recorded: {condition.concept.label} (active).")
    for procedure in record.procedures_in(INVASIVE_VENTILATION):
        if procedure.status == "in-progress":
            lines.append(
                f"Invasive ventilation in progress: {procedure.concept.label} (since {day(procedure.when)})."
            )
    return lines


def _earlier_courses(record: PatientRecord, config: RuleConfig) -> list[str]:
    """Evidence lines for riluzole courses that ended, and whether how they ended matters."""
    during = {id(stop.course.fact) for stop in _alt_stops(record, config)}
    liver = {id(med.fact) for med, _ in _liver_reason_stops(record)}
    lines = []
    for med in record.medication_requests(RILUZOLE, _ENDED_STATUSES):
        ended = _end_of(med.fact)
        started = med.fact.started
        verb = "stopped" if med.fact.status == "stopped" else "completed"
        when = f"on {day(ended)}" if ended is not None else "(date not recorded)"
        line = f"Riluzole was {verb} {when}"
        if started is not None:
            line += f"; that course started {day(started)}"
        reason = med.fact.status_reason
        if reason is not None:
            line += f"; reason recorded: {reason.label}"
        if id(med.fact) in during:
            line += ". ALT reached 5 × ULN during it: re-administration cannot be recommended (SmPC 4.4)."
        elif id(med.fact) in liver:
            line += ". It ended for a liver reason: check the ALT at that time."
        else:
            line += ". An earlier course is not a contraindication by itself: check why it ended."
        lines.append(line)
    return lines


def _end_of(med: MedicationFact) -> datetime | None:
    if med.validity_end is not None:
        return med.validity_end
    for dosage in med.dosages:
        if dosage.bounds_end is not None:
            return dosage.bounds_end
    return None


def _draft_line(order: DraftOrder, match: Match) -> str:
    return f"Riluzole ordered: {order.concept.label}{aside(match)}."


def _stop_binding(record: PatientRecord, reason: str) -> dict[str, Any]:
    """`stopped_order`: the current riluzole request as sent, set to stopped with the reason.

    Offered only when exactly one current request came with its id and JSON: with several, stopping
    one would leave the others, and the card says to stop riluzole without a one-click action.
    """
    current = _current_riluzole(record)
    if len(current) != 1:
        return {}
    fact = current[0].fact
    if fact.id is None or fact.resource is None:
        return {}
    stopped = copy.deepcopy(dict(fact.resource))
    stopped.pop("text", None)  # the narrative described the active order
    stopped["id"] = fact.id
    stopped["status"] = "stopped"
    stopped["statusReason"] = {"text": reason}
    return {"stopped_order": stopped}


# ============================================================================================
# riluzole-not-prescribed


def not_prescribed(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    if _current_riluzole(record):
        return []
    stops = _alt_stops(record, config)
    if stops or _liver_reason_stops(record):
        return []  # SmPC 4.4: no re-administration after ALT reached 5 x ULN (riluzole-rechallenge)
    if _late_stage(record):
        return []  # SmPC 4.1: not shown effective in the late stages of ALS
    if _hepatic_disease(record) or _other_contraindications(record)[0]:
        return []
    baseline = _baseline(record, config, stops)
    if baseline.contraindicated:
        return []
    earlier = _earlier_courses(record, config)
    evidence = ["No active or on-hold riluzole prescription in the data received.", *earlier]
    latest, alt = _latest_alt(record, config)
    if baseline.uncertain:
        evidence += baseline.uncertain_lines()
    elif latest is None:
        evidence.append("No ALT result on record: baseline liver tests are needed before the first dose.")
    elif alt is None:
        evidence.append(_unreadable_line("Latest ALT", latest, "its unit cannot be read"))
    else:
        evidence.append(f"Latest {alt.line()}")
    if baseline.uncertain:
        variant: str | None = "baseline"
    else:
        variant = "us" if config.profile == "us" else None
    return [
        Finding(
            rule_id="riluzole-not-prescribed",
            fields={"history": "an earlier course ended" if earlier else "none on record"},
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


NOT_PRESCRIBED = Rule(
    id="riluzole-not-prescribed",
    title="Riluzole: not prescribed",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "MedicationRequest": (RILUZOLE,),
            "Observation": (ALT, AST, PREGNANCY_STATUS, BREASTFEEDING_STATUS),
            "Condition": (LIVER_DISEASE, PREGNANCY, TRACHEOSTOMY),
            "AllergyIntolerance": (RILUZOLE,),
            "Procedure": (TRACHEOSTOMY, INVASIVE_VENTILATION),
            "Device": (TRACHEOSTOMY,),
        }
    ),
    evaluate=not_prescribed,
    # NICE TA20 recommends riluzole for the ALS form of MND; the SmPC limits it to ALS.
    scope="als",
    trigger=(
        "ALS with no active or on-hold riluzole, no recorded contraindication (hepatic disease, ALT or AST "
        "> 3 x ULN in the last 31 days, current pregnancy or breast-feeding, riluzole allergy), no ALT of "
        "5 x ULN or more during an earlier course and no stop for a liver reason, and no tracheostomy or "
        "invasive ventilation. A raised ALT or AST that is older, or judged against a stand-in limit, "
        "asks for liver tests instead of proposing riluzole."
    ),
    facts=(
        RuleFact(
            "Recommendation",
            "riluzole for the ALS form of MND, initiated by a specialist",
            "nice-ta20",
            "NG42 1.5.12 points to TA20; TA20 3.1: SPC limits use to ALS and to specialist initiation.",
        ),
        RuleFact("US recommendation (profile 'us')", "riluzole should be offered (Level A)", "aan-2009"),
        RuleFact(
            "Suggested regimen", "50 mg every 12 hours (100 mg/day)", "rilutek-smpc", "SmPC 4.2; TA20 3.4."
        ),
        RuleFact(
            "Contraindications that silence the card",
            "hepatic disease; baseline ALT or AST > 3 x ULN; pregnancy; breast-feeding; hypersensitivity",
            "rilutek-smpc",
            "SmPC 4.3. AST is judged only against the lab's own ULN (no configured default for AST).",
        ),
        RuleFact(
            "Baseline",
            f"an ALT or AST from the last {BASELINE_DAYS} days, against the lab's ULN or (no range sent) "
            "the ACG default; an older one, or one whose range came only as text, asks for liver tests",
            "rilutek-smpc",
            "SmPC 4.3 limits *baseline* transaminases and gives no age for a baseline: "
            f"{BASELINE_DAYS} days (the monthly interval of SmPC 4.4) is a design choice.",
        ),
        RuleFact(
            "ALT ULN when the result has no reference range",
            "ALS_CDS_ALT_ULN_DEFAULT_MALE (33 U/L) / _FEMALE (25 U/L); unknown sex -> the female value",
            "acg-2017",
            "ACG 2017: healthy ALT up to 33 IU/L in men, 25 IU/L in women. Unknown sex: the lower value.",
        ),
        RuleFact(
            "An earlier course",
            "silent after an ALT >= 5 x ULN measured during any course, or a stop for a liver reason; "
            "another stop or a completed course is not a contraindication (the card says when it ended)",
            "rilutek-smpc",
            "SmPC 4.4: 'Readministration of riluzole to patients in this situation cannot be "
            "recommended'. A liver stop reason without the ALT in the data: design choice (silent; the "
            "order hooks ask to check it).",
        ),
        RuleFact(
            "Late-stage disease",
            "silent with a tracheostomy (procedure, tube or status) or invasive ventilation in progress",
            "rilutek-smpc",
            "SmPC 4.1: 'Riluzole has not been shown to be effective in the late stages of ALS'; its "
            "trials counted survival as alive, not intubated for mechanical ventilation and "
            "tracheotomy-free. Tracheostomy ventilation as the marker of the late stage is a design choice.",
        ),
        *_PREGNANCY_FACTS,
    ),
)


# ============================================================================================
# riluzole-alt-raised

#: Bilirubin pairs with an ALT of the same calendar day (site time zone): the same draw, or that
#: day's tests. Design choice: the labels give no window, and a bilirubin from another day says
#: nothing about the liver on the day of this ALT.
PAIRING = "the same calendar day"


@dataclass(frozen=True)
class _Bilirubin:
    line: str
    raised: bool


def _bilirubin(record: PatientRecord, alt: _Times) -> _Bilirubin | None:
    """The bilirubin of the ALT's day (the closest in time), judged against the lab's own limit."""
    same_day = [
        obs
        for obs in record.observations_in(BILIRUBIN)
        if obs.value is not None and obs.effective is not None and obs.effective.date() == alt.when.date()
    ]
    if not same_day:
        other = record.latest_observation(BILIRUBIN, with_value=True)
        if other is None:
            return None
        return _Bilirubin(
            f"Bilirubin {other.value} on {day(other.effective)}: not from the day of this ALT, so not "
            "paired with it (not assessed).",
            False,
        )
    paired = min(same_day, key=lambda obs: abs((obs.effective - alt.when).total_seconds()))  # type: ignore[operator]
    value = paired.value_in("umol/L")
    if value is None:
        return _Bilirubin(_unreadable_line("Bilirubin", paired, "its unit cannot be read"), False)
    high = paired.reference_high_in("umol/L")
    if high is None or high <= 0:
        why = "it has no readable reference range (no default ULN is configured for bilirubin)"
        return _Bilirubin(_unreadable_line("Bilirubin", paired, why), False)
    raised = value > high
    word = "above" if raised else "within"
    limit = paired.reference_range.high if paired.reference_range is not None else None
    return _Bilirubin(
        f"Bilirubin {paired.value} on {day(paired.effective)} (same day as the ALT): {word} the lab's "
        f"upper limit {limit}.",
        raised,
    )


def _since_start_lines(start: datetime | None) -> list[str]:
    """Said only when the start is unknown: then a result of any date was read, and may predate it."""
    if start is None:
        return [
            "Start of the riluzole course not recorded: results of any date are read, and may predate it."
        ]
    return []


def alt_raised(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = _current_riluzole(record)
    if not current:
        return []
    start = _course_start(record)
    latest, alt = _latest_alt(record, config, since=start)
    if alt is None:
        # No value that can be set against the ULN. The lab's own flag still says "high": an ALT
        # flagged HH on riluzole is not left unsaid because its value came as text or without a unit.
        return _flagged_alt(record, current[0], start) or _earlier_stop(record, config, current[0], None)
    assert latest is not None
    bilirubin = _bilirubin(record, alt)
    if alt.ratio >= STOP_TIMES_ULN:
        variant, indicator = "stop", "critical"
        reason = (
            f"ALT {_number(alt.ratio, '0.1')} × ULN on {day(latest.effective)}: SmPC 4.4, stop at 5 × ULN"
        )
    elif bilirubin is not None and bilirubin.raised and alt.ratio > 1:
        variant, indicator = "liver-dysfunction", "critical"
        reason = f"Raised ALT and bilirubin on {day(latest.effective)}: liver dysfunction (US PI 5.1)"
    else:
        earlier = _earlier_stop(record, config, current[0], alt)
        if earlier or alt.ratio < MONITOR_MORE_TIMES_ULN:
            return earlier
        variant, indicator, reason = None, "warning", ""
    bindings: dict[str, Any] = {"patient_reference": patient_reference(record)}
    if variant is not None:
        bindings |= _stop_binding(record, reason)
        if "stopped_order" not in bindings:
            variant += "-no-reference"
    evidence = [_medication_line(current[0]), alt.line()]
    if bilirubin is not None:
        evidence.append(bilirubin.line)
    evidence += _since_start_lines(start)
    return [
        Finding(
            rule_id="riluzole-alt-raised",
            fields={
                "times_uln": _number(alt.ratio, "0.1"),
                "alt_date": day(latest.effective),
            },
            evidence=tuple(evidence),
            variant=variant,
            indicator=indicator,  # type: ignore[arg-type]
            bindings=bindings,
        )
    ]


def _earlier_stop(
    record: PatientRecord, config: RuleConfig, current: MedicationMatch, latest: _Times | None
) -> list[Finding]:
    """Riluzole is current although an earlier ALT on riluzole reached 5 x ULN (SmPC 4.4): after a
    restart, or a course that went on. The latest ALT itself is judged above."""
    stops = [s for s in _alt_stops(record, config) if latest is None or s.times.obs is not latest.obs]
    if not stops:
        return []
    worst = max(stops, key=lambda s: s.times.ratio)
    reason = (
        f"ALT reached {_number(worst.times.ratio, '0.1')} × ULN on {day(worst.times.when)} during riluzole: "
        "SmPC 4.4, re-administration cannot be recommended"
    )
    bindings: dict[str, Any] = {
        "patient_reference": patient_reference(record),
        **_stop_binding(record, reason),
    }
    evidence = [_medication_line(current), *(s.line() for s in stops)]
    if latest is not None:
        evidence.append(f"Latest {latest.line()}")
    return [
        Finding(
            rule_id="riluzole-alt-raised",
            fields={"times_uln": _number(worst.times.ratio, "0.1"), "alt_date": day(worst.times.when)},
            evidence=tuple(evidence),
            variant="earlier" if "stopped_order" in bindings else "earlier-no-reference",
            indicator="warning",
            bindings=bindings,
        )
    ]


def _flagged_alt(record: PatientRecord, current: MedicationMatch, start: datetime | None) -> list[Finding]:
    latest = record.latest_observation(ALT)
    if latest is None or not latest.flagged_high:
        return []
    if start is not None and latest.effective is not None and latest.effective < start:
        return []
    flags = ", ".join(sorted(latest.flags & HIGH_FLAGS))
    shown = latest.value_string or (str(latest.value) if latest.value is not None else "no value")
    evidence = (
        _medication_line(current),
        f"ALT on {day(latest.effective)}: '{shown[:40]}', flagged {flags} by the lab; the value cannot be "
        "set against the upper limit of normal (no number in a known unit).",
        *_since_start_lines(start),
    )
    return [
        Finding(
            rule_id="riluzole-alt-raised",
            fields={"times_uln": "unknown", "alt_date": day(latest.effective), "flag": flags},
            evidence=evidence,
            variant="flagged",
            indicator="critical" if latest.flagged_critical else "warning",
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


ALT_RAISED = Rule(
    id="riluzole-alt-raised",
    title="Riluzole: ALT raised",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (ALT, BILIRUBIN)}),
    evaluate=alt_raised,
    trigger=(
        "Active riluzole and the latest ALT since the course started is >= 5 x ULN (critical: stop), or "
        "above ULN with a bilirubin of the same day above the lab's ULN (critical: liver dysfunction); "
        "else an earlier ALT on riluzole reached 5 x ULN (warning: riluzole is current again), or the "
        "latest is >= 3 x ULN (warning: measure ALT more often). The stop cards offer the stop itself."
    ),
    facts=(
        RuleFact("Stop threshold", "ALT >= 5 x ULN; no rechallenge", "rilutek-smpc", "SmPC 4.4."),
        RuleFact(
            "Current again after ALT reached 5 x ULN on riluzole",
            "warning, with the stop offered (not recommended): a specialist may have decided to restart",
            "rilutek-smpc",
            "SmPC 4.4: 'Readministration of riluzole to patients in this situation cannot be "
            "recommended'. Warning rather than critical: a design choice, the restart is already made.",
        ),
        RuleFact(
            "Closer monitoring",
            "ALT >= 3 x ULN: measure ALT more often",
            "rilutek-smpc",
            "SmPC 4.4 says 'more frequently in patients who develop elevated ALT levels'; the 3 x ULN "
            "step is the catalogue's (it matches the SmPC 4.3 baseline limit), not a label number.",
        ),
        RuleFact(
            "Liver dysfunction",
            "bilirubin above the lab's ULN with ALT above ULN: discontinue",
            "us-pi",
            "US PI 5.1: 'Discontinue if there is evidence of liver dysfunction (e.g., elevated bilirubin)'. "
            "Bilirubin is judged only against the lab's range (no default ULN).",
        ),
        RuleFact(
            "Results that count",
            "ALT taken on or after the start of the current course (unknown start: any date); bilirubin "
            f"from {PAIRING} as that ALT",
            "rilutek-smpc",
            "A result from before the course says nothing of riluzole's effect. The same-day pairing of "
            "bilirubin with ALT is a design choice: the labels give no window.",
        ),
        RuleFact(
            "ALT ULN when the result has no reference range",
            "33 U/L men / 25 U/L women (configurable); unknown sex -> 25",
            "acg-2017",
        ),
        RuleFact(
            "Units",
            "U/L, [IU]/L, ukat/L (1 ukat/L = 60 U/L); unreadable unit -> no card",
            "rilutek-smpc",
            "Unit handling is the service's (units.convert), not a label fact.",
        ),
    ),
)


# ============================================================================================
# riluzole-fever-check-wbc


def fever_check_wbc(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = _current_riluzole(record)
    if not current:
        return []
    fever = recent_fever(record)
    if fever is None:
        return []
    onset = fever.onset
    window_start = record.now - timedelta(days=FEVER_WINDOW_DAYS)
    since = onset if onset is not None else window_start
    counts = [
        obs
        for valueset in (WHITE_CELLS, NEUTROPHILS)
        for obs in record.observations_in(valueset)
        if obs.effective is not None and obs.effective >= since and obs.value_in("10*9/L") is not None
    ]
    if counts:
        return []
    evidence = [_medication_line(current[0])]
    for reading in fever.readings:
        obs, celsius = reading.observation, reading.celsius
        evidence.append(
            f"Body temperature {_value_text(obs, celsius, '°C')} on {day(obs.effective)} "
            f"(>= {FEVER_CELSIUS} °C = {_number(FEVER_CELSIUS * 9 / 5 + 32, '0.1')} °F)."
        )
    for condition in fever.conditions:
        when = condition.onset or condition.recorded
        evidence.append(f"Fever recorded: {condition.concept.label} (active, since {day(when)}).")
    if onset is not None:
        evidence.append(f"No white cell or neutrophil count with a readable value since {day(onset)}.")
    else:
        evidence.append(
            f"The fever has no date: no white cell or neutrophil count in the last {FEVER_WINDOW_DAYS} days."
        )
    return [
        Finding(
            rule_id="riluzole-fever-check-wbc",
            fields={"fever_since": day(onset) if onset is not None else "date not recorded"},
            evidence=tuple(evidence),
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


FEVER_CHECK_WBC = Rule(
    id="riluzole-fever-check-wbc",
    title="Riluzole: fever - check white cell count",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "MedicationRequest": (RILUZOLE,),
            "Observation": (BODY_TEMPERATURE, WHITE_CELLS, NEUTROPHILS),
            "Condition": (FEVER,),
        }
    ),
    evaluate=fever_check_wbc,
    trigger=(
        "Active riluzole, a temperature >= 38.0 °C in the last 7 days or an active fever condition, and "
        "no white cell or neutrophil count since the fever began."
    ),
    facts=(
        RuleFact(
            "Febrile illness on riluzole",
            "check the white cell count; stop riluzole if neutropenic",
            "rilutek-smpc",
            "SmPC 4.4: 'The report of a febrile illness should prompt physicians to check white blood cell "
            "counts and to discontinue riluzole in case of neutropenia'.",
        ),
        RuleFact(
            "Fever threshold",
            f"body temperature >= {FEVER_CELSIUS} °C (100.4 °F)",
            "fever-threshold",
            "UNVERIFIED as a riluzole number: the label says 'febrile illness' without a temperature. "
            "38.0 °C is a design choice (a common clinical fever cut-off; errs towards checking).",
        ),
        RuleFact(
            "Recent-fever window",
            f"{FEVER_WINDOW_DAYS} days",
            "fever-threshold",
            "UNVERIFIED design choice: a temperature older than a week is no longer a current illness.",
        ),
        RuleFact("Order suggested", "CBC panel, LOINC 58410-2", "loinc-cbc"),
    ),
)


# ============================================================================================
# riluzole-neutropenia


def neutropenia(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = _current_riluzole(record)
    if not current:
        return []
    start = _course_start(record)
    latest = _first_since(record.observations_in(NEUTROPHILS), start)
    if latest is None:
        return []
    value = latest.value_in("10*9/L")
    if value is None:
        return []  # a count in a unit that cannot be read is not evidence of anything
    low = latest.reference_low_in("10*9/L")
    if low is not None and low > 0:
        limit, source = low, "lower limit of the lab's reference range"
    else:
        limit = Decimal(str(config.neutrophil_lower_limit))
        source = "no readable reference range: configured lower limit (ALS_CDS_NEUTROPHIL_LOWER_LIMIT)"
    if value >= limit:
        return []
    reason = f"Neutrophils {_number(value)} × 10⁹/L on {day(latest.effective)}: neutropenia (SmPC 4.4)"
    bindings: dict[str, Any] = {
        "patient_reference": patient_reference(record),
        **_stop_binding(record, reason),
    }
    return [
        Finding(
            rule_id="riluzole-neutropenia",
            fields={"count": _number(value), "limit": _number(limit), "count_date": day(latest.effective)},
            evidence=(
                _medication_line(current[0]),
                f"Neutrophils {_value_text(latest, value, '× 10⁹/L')} on {day(latest.effective)}: below "
                f"{_number(limit)} × 10⁹/L ({source}).",
                *_since_start_lines(start),
            ),
            variant=None if "stopped_order" in bindings else "no-reference",
            bindings=bindings,
        )
    ]


NEUTROPENIA = Rule(
    id="riluzole-neutropenia",
    title="Riluzole: neutropenia",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (NEUTROPHILS,)}),
    evaluate=neutropenia,
    trigger=(
        "Active riluzole and the latest neutrophil count since the course started is below the lab's "
        "lower reference limit (else below the configured limit, default 1.5 x 10^9/L). The card offers "
        "the stop itself."
    ),
    facts=(
        RuleFact("Neutropenia on riluzole", "discontinue riluzole", "rilutek-smpc", "SmPC 4.4."),
        RuleFact(
            "Counts that count",
            "taken on or after the start of the current course (unknown start: any date)",
            "rilutek-smpc",
            "A count from before riluzole says nothing of its effect: design reading of SmPC 4.4.",
        ),
        RuleFact(
            "Lower limit when the result has no reference range",
            "ALS_CDS_NEUTROPHIL_LOWER_LIMIT, default 1.5 x 10^9/L",
            "neutropenia-definition",
            "Mild neutropenia starts below 1.5 x 10^9/L (1500/uL) in ASCO/IDSA 2018; the label gives no "
            "number for 'neutropenia' (US PI mentions severe neutropenia, ANC < 500/mm3).",
        ),
        RuleFact(
            "Units",
            "10*9/L, 10*3/uL, /uL, /mm3; unreadable unit -> no card",
            "rilutek-smpc",
            "Unit handling is the service's (units.convert), not a label fact.",
        ),
    ),
)


# ============================================================================================
# riluzole-rechallenge


def rechallenge(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    """A riluzole order after ALT reached 5 x ULN on riluzole (or after a stop for a liver reason)."""
    orders = record.draft_orders_in(RILUZOLE)
    if not orders:
        return []
    stops = _alt_stops(record, config)
    if stops:
        worst = max(stops, key=lambda s: s.times.ratio)
        variant: str | None = None
        evidence_tail = [s.line() for s in stops]
        fields = {"times_uln": _number(worst.times.ratio, "0.1"), "alt_date": day(worst.times.when)}
    else:
        reasons = _liver_reason_stops(record)
        if not reasons:
            return []
        variant = "reason"
        evidence_tail = [_liver_reason_line(med, match) for med, match in reasons]
        fields = {"times_uln": "unknown", "alt_date": "date not recorded"}
    stop: dict[str, Any] = {}
    if _current_riluzole(record):
        situation = "Riluzole is current: this order continues it."
        if variant is None:
            # The current course follows an ALT of 5 x ULN on riluzole: it must stop as well as the
            # renewal (SmPC 4.4), and the critical card offers that stop.
            stop = _stop_binding(record, f"ALT {fields['times_uln']} × ULN on {fields['alt_date']}: SmPC 4.4")
    else:
        situation = "No current riluzole: this order starts it again."
    findings = []
    for order, match in orders:
        this = variant
        if this is None:
            this = ("stop" if order.reference else "stop-no-reference") if stop else None
            if this is None and not order.reference:
                this = "no-reference"
        bindings: dict[str, Any] = {"draft_reference": order.reference} if order.reference else {}
        findings.append(
            Finding(
                rule_id="riluzole-rechallenge",
                fields=fields,
                evidence=(_draft_line(order, match), situation, *evidence_tail),
                variant=this,
                bindings=bindings | stop,
            )
        )
    return findings


RECHALLENGE = Rule(
    id="riluzole-rechallenge",
    title="Riluzole order after ALT reached 5 × ULN",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (ALT,)}),
    evaluate=rechallenge,
    trigger=(
        "A riluzole order (a restart or a renewal) when an ALT of 5 x ULN or more was measured during a "
        "riluzole course, read from the ALT history against each request's dates (critical: remove the "
        "order); or, with no such ALT in the data, after a stop whose reason names the liver (warning: "
        "check the ALT at that stop). A current course after such an ALT: riluzole-alt-raised."
    ),
    facts=(
        RuleFact(
            "No rechallenge",
            "ALT >= 5 x ULN during treatment: do not give riluzole again",
            "rilutek-smpc",
            "SmPC 4.4: 'There is no experience with dose reduction or rechallenge in patients who have "
            "developed an increase of ALT to 5 times ULN. Readministration of riluzole to patients in "
            "this situation cannot be recommended.'",
        ),
        RuleFact(
            "During treatment",
            "on or after a request's start and by the day of its end (validity period or dosage bounds); "
            "a current request runs until now; a missing date does not exclude the result",
            "rilutek-smpc",
            "Design choice: errs towards counting a raised ALT as one measured on riluzole; the card "
            "shows the dates.",
        ),
        RuleFact(
            "Severity",
            "critical (remove the order); a liver stop reason without the ALT in the data: warning",
            "rilutek-smpc",
            "'Cannot be recommended' is in SmPC 4.4 (warnings), not 4.3: critical at the order, where the "
            "decision is made, as for the stop itself (riluzole-alt-raised). Design choice.",
        ),
        RuleFact(
            "Liver stop reasons",
            "statusReason coded as raised ALT or bilirubin, hepatitis, jaundice, or naming the liver, ALT, "
            "transaminases or LFTs",
            "rilutek-smpc",
            "Value set riluzole-stop-liver-reason (codes from DICOM CID 12325).",
        ),
    ),
)


# ============================================================================================
# riluzole-order-contraindication


def order_contraindication(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = record.draft_orders_in(RILUZOLE)
    if not orders:
        return []
    lines, short = _other_contraindications(record)
    if not lines:
        return []
    findings = []
    for order, match in orders:
        reference = order.reference
        findings.append(
            Finding(
                rule_id="riluzole-order-contraindication",
                fields={"reason": ", ".join(short)},
                evidence=(_draft_line(order, match), *lines),
                variant=None if reference else "no-reference",
                bindings={"draft_reference": reference} if reference else {},
            )
        )
    return findings


ORDER_CONTRAINDICATION = Rule(
    id="riluzole-order-contraindication",
    title="Riluzole order: pregnancy, breast-feeding or hypersensitivity",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest(
        {
            "Condition": (PREGNANCY,),
            "Observation": (PREGNANCY_STATUS, BREASTFEEDING_STATUS),
            "AllergyIntolerance": (RILUZOLE,),
        }
    ),
    evaluate=order_contraindication,
    trigger=(
        "A riluzole order (starting or renewing) while a current pregnancy (condition or status in the "
        "last 294 days), current breast-feeding (status in the last 730 days) or a riluzole allergy is "
        "recorded."
    ),
    facts=(
        RuleFact(
            "Contraindications",
            "pregnancy, breast-feeding, hypersensitivity to riluzole",
            "rilutek-smpc",
            "SmPC 4.3: 'Patients who are pregnant or breast-feeding'; hypersensitivity to the active "
            "substance or an excipient.",
        ),
        *_PREGNANCY_FACTS,
    ),
)


# ============================================================================================
# riluzole-order-liver


def order_liver(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = record.draft_orders_in(RILUZOLE)
    if not orders:
        return []
    current = _current_riluzole(record)
    lines, short = _liver_reasons(record, config, on_treatment=bool(current))
    if not lines:
        return []
    if current:
        basis = "SmPC 4.4: stop at 5 × ULN" if any(r.startswith("ALT") for r in short) else "SmPC 4.3"
        context = (
            "Riluzole is already active (a renewal): judged by hepatic disease and the on-treatment stop "
            "rule (ALT >= 5 × ULN, SmPC 4.4), not by the 3 × ULN baseline limit."
        )
    else:
        basis = "SmPC 4.3 contraindication"
        context = "No active riluzole: this order starts a course, so the SmPC 4.3 baseline limits apply."
    # A renewal while ALT is at 5 x ULN: the current course must stop too (SmPC 4.4), so the card
    # offers that stop, not only the removal of the renewal (a critical "stop" card offers the stop).
    stop = (
        _stop_binding(record, f"ALT at or above 5 × ULN ({', '.join(short)}): SmPC 4.4")
        if current and basis.startswith("SmPC 4.4")
        else {}
    )
    findings = []
    for order, match in orders:
        reference = order.reference
        bindings: dict[str, Any] = {"draft_reference": reference} if reference else {}
        bindings |= stop
        variant = None if reference else "no-reference"
        if stop:
            variant = "stop" if reference else "stop-no-reference"
        findings.append(
            Finding(
                rule_id="riluzole-order-liver",
                fields={"reason": ", ".join(short), "basis": basis},
                evidence=(_draft_line(order, match), context, *lines),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


ORDER_LIVER = Rule(
    id="riluzole-order-liver",
    title="Riluzole order: hepatic contraindication",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest(
        {"Condition": (LIVER_DISEASE,), "MedicationRequest": (RILUZOLE,), "Observation": (ALT, AST)}
    ),
    evaluate=order_liver,
    trigger=(
        "Riluzole ordered while hepatic disease is recorded, or, when starting, an ALT or AST of the last "
        "31 days is > 3 x ULN (against the lab's ULN, or the ACG default when no range was sent), or, "
        "when renewing, the latest ALT is >= 5 x ULN and was not measured on riluzole (that is "
        "riluzole-rechallenge's)."
    ),
    facts=(
        RuleFact(
            "Contraindication (starting)",
            "hepatic disease or baseline transaminases > 3 x ULN",
            "rilutek-smpc",
            "SmPC 4.3. ALT without a lab range uses the ACG 2017 default; AST only with the lab's range.",
        ),
        RuleFact(
            "Baseline",
            f"a result from the last {BASELINE_DAYS} days whose ULN is the lab's or, with no range sent, the "
            "ACG default; older or text-only ranges go to riluzole-order-monitoring (repeat the tests)",
            "rilutek-smpc",
            f"SmPC 4.3 gives no age for a baseline: {BASELINE_DAYS} days is a design choice.",
        ),
        RuleFact(
            "Renewal of an active course",
            "hepatic disease, or ALT >= 5 x ULN (stop, no rechallenge)",
            "rilutek-smpc",
            "SmPC 4.4. 'Baseline' in 4.3 means before treatment; during treatment ALT 3-5 x ULN calls for "
            "closer monitoring (riluzole-alt-raised), not removal of the order. Design reading of the label.",
        ),
        RuleFact("ALT ULN when the result has no reference range", "33 U/L men / 25 U/L women", "acg-2017"),
    ),
)


# ============================================================================================
# riluzole-order-dose


def _form(order: DraftOrder) -> str | None:
    """'tablet', 'film', 'suspension' from the product code or name; None for the ingredient only."""
    codes = {c.code for c in order.concept.codes if c.system == _RXNORM}
    if codes & _SUSPENSION_CODES:
        return "suspension"
    if codes & _FILM_CODES:
        return "film"
    if codes & _TABLET_CODES:
        return "tablet"
    names = " ".join(order.concept.names()).lower()
    if any(word in names for word in _SUSPENSION_WORDS):
        return "suspension"
    if any(word in names for word in _FILM_WORDS):
        return "film"
    if "tablet" in names or "tab " in f"{names} ":
        return "tablet"
    return None


def _dose_mg(dose: Quantity, form: str | None) -> Decimal | None:
    """The dose in mg, from a mass, a volume of the 5 mg/mL suspension, or a count of 50 mg units."""
    unit = (dose.code or dose.unit or "").strip()
    if unit.lower() == "mg":
        return dose.value
    grams = units.convert(dose, "g")
    if grams is not None:
        return grams * 1000
    millilitres = units.convert(dose, "mL")
    if millilitres is not None:
        return millilitres * SUSPENSION_MG_PER_ML if form in ("suspension", None) else None
    for counted, spellings in _COUNT_UNITS.items():
        if unit.lower() in spellings and form == counted:
            return dose.value * DOSE_MG
    return None


def _timing_text(per_day: Decimal | None, interval: Decimal | None) -> str:
    if interval is not None and interval == interval.to_integral_value():
        return f"every {_number(interval)} hours"
    if per_day is not None:
        return f"{_number(per_day)} times a day"
    return "(no timing)"


def _standard_dosage(first: dict[str, Any], suspension: bool) -> dict[str, Any]:
    kept = {
        k: v
        for k, v in first.items()
        if k
        not in {
            "text",
            "timing",
            "doseAndRate",
            "maxDosePerPeriod",
            "maxDosePerAdministration",
            "asNeededBoolean",
            "asNeededCodeableConcept",
        }
    }
    if suspension:
        dose = {"value": int(SUSPENSION_DOSE_ML), "unit": "mL", "system": _UCUM, "code": "mL"}
        text = f"{int(SUSPENSION_DOSE_ML)} mL ({int(DOSE_MG)} mg) every 12 hours"
    else:
        dose = {"value": int(DOSE_MG), "unit": "mg", "system": _UCUM, "code": "mg"}
        text = f"{int(DOSE_MG)} mg every 12 hours"
    return {
        **kept,
        "text": text,
        "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
        "route": kept.get("route", _ORAL_ROUTE),
        "doseAndRate": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/dose-rate-type", "code": "ordered"}
                    ]
                },
                "doseQuantity": dose,
            }
        ],
    }


def order_dose(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    findings = []
    for order, match in record.draft_orders_in(RILUZOLE):
        if order.resource_type != "MedicationRequest":
            continue
        form = _form(order)
        dosage = order.medication.dosage if order.medication is not None else None
        dose = dosage.dose if dosage is not None else None
        per_day = dosage.per_day if dosage is not None else None
        mg = _dose_mg(dose, form) if dose is not None else None
        evidence = [_draft_line(order, match)]
        if dose is None or per_day is None or mg is None:
            state = "unstated"
            written = "not stated in a form the record can read"
            text = dosage.text if dosage is not None and dosage.text else None
            parts = [
                "dose: " + (str(dose) if dose is not None else "missing"),
                "timing: " + ("missing" if per_day is None else _timing_text(per_day, dosage.interval_hours)),  # type: ignore[union-attr]
            ]
            if dose is not None and mg is None:
                parts[0] += " (unit not readable as a riluzole dose)"
            evidence.append("Structured dosage: " + "; ".join(parts) + ".")
            if text:
                evidence.append(f"Dosage text: '{text[:120]}'.")
        elif mg == DOSE_MG and per_day == DOSES_PER_DAY:
            continue
        else:
            state = "wrong"
            written = f"{dose} {_timing_text(per_day, dosage.interval_hours)}"[:60]  # type: ignore[union-attr]
            evidence.append(
                f"Ordered: {written} = {_number(mg)} mg per dose, {_number(mg * per_day)} mg a day."
            )
        suspension = form == "suspension" or (
            form is None and dose is not None and units.convert(dose, "mL") is not None
        )
        standard = (
            f"{int(SUSPENSION_DOSE_ML)} mL (50 mg) every 12 hours" if suspension else "50 mg every 12 hours"
        )
        evidence.append(f"Licensed dose: {standard} (100 mg a day).")
        bindings: dict[str, Any] = {}
        if order.id:
            updated = copy.deepcopy(dict(order.resource))
            updated["id"] = order.id
            instructions = updated.get("dosageInstruction") or [{}]
            updated["dosageInstruction"] = [_standard_dosage(instructions[0], suspension)]
            bindings["updated_order"] = updated
        variant = {"wrong": None, "unstated": "unstated"}[state]
        if not order.id:
            variant = "unstated-no-reference" if state == "unstated" else "no-reference"
        findings.append(
            Finding(
                rule_id="riluzole-order-dose",
                fields={"written": written, "standard": standard},
                evidence=tuple(evidence),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


ORDER_DOSE = Rule(
    id="riluzole-order-dose",
    title="Riluzole order: dose",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({}),
    evaluate=order_dose,
    trigger=(
        "A riluzole order whose structured dose is not 50 mg (oral suspension 5 mg/mL: 10 mL) every 12 "
        "hours (warning), or whose dose or timing cannot be read (info: state the dose)."
    ),
    facts=(
        RuleFact(
            "Licensed dose",
            "50 mg every 12 hours (100 mg/day); higher doses add no benefit",
            "rilutek-smpc",
            "SmPC 4.2; TA20 3.4 '100 mg per day (50 mg twice per day)'.",
        ),
        RuleFact(
            "Oral suspension",
            "5 mg/mL: 10 mL = 50 mg, twice a day",
            "tiglutik",
            "Tiglutik HCP information: 10 mL twice a day = the 50 mg of a tablet. Teglutik is also 5 mg/mL.",
        ),
        RuleFact(
            "Unreadable dose",
            "no structured dose or timing -> info card asking to state the dose, never assumed right",
            "rilutek-smpc",
            "Design choice: order-select drafts are often incomplete, so this is info, not a warning.",
        ),
    ),
)


# ============================================================================================
# riluzole-order-monitoring


def order_monitoring(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = record.draft_orders_in(RILUZOLE)
    if not orders:
        return []
    order, match = orders[0]
    current = _current_riluzole(record)
    if current:
        return _renewal_monitoring(record, config, order, match, current[0])
    # The order being written is not repeated (the clinician is writing it); only how it was
    # recognised, when that was by its name alone.
    evidence = [
        f"This order starts a course{aside(match)}: no active or on-hold riluzole prescription.",
        *_earlier_courses(record, config),
    ]
    baseline = _baseline(record, config, _alt_stops(record, config))
    latest, alt = _latest_alt(record, config)
    variant: str | None = None
    if baseline.uncertain:
        variant = "baseline"
        evidence += baseline.uncertain_lines()
    elif latest is None:
        evidence.append("No ALT result on record: a baseline is needed before the first dose.")
    elif alt is None:
        evidence.append(_unreadable_line("Latest ALT", latest, "its unit cannot be read"))
    else:
        evidence.append(f"Latest {alt.line()}")
    return [
        Finding(
            rule_id="riluzole-order-monitoring",
            fields={
                "last_alt": day(latest.effective) if latest is not None else "none in the data received",
                "window_days": str(MONTHLY_DAYS),
            },
            evidence=tuple(evidence),
            variant=variant,
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


def _renewal_monitoring(
    record: PatientRecord, config: RuleConfig, order: DraftOrder, match: Match, current: MedicationMatch
) -> list[Finding]:
    """A renewal while the ALT of the current course is overdue (the riluzole-lft-due schedule)."""
    schedule = _schedule(record, config)
    if not schedule.due(record.now):
        return []
    evidence = [
        f"This order{aside(match)} renews the current prescription: {current.fact.concept.label} "
        f"({current.fact.status}{caveat(current.match)}).",
        *schedule.lines(record),
    ]
    return [
        Finding(
            rule_id="riluzole-order-monitoring",
            fields={"last_alt": schedule.last_alt, "window_days": str(schedule.window)},
            evidence=tuple(evidence),
            variant="renewal-overdue",
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


ORDER_MONITORING = Rule(
    id="riluzole-order-monitoring",
    title="Riluzole order: baseline LFTs and monitoring",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (ALT, AST)}),
    evaluate=order_monitoring,
    trigger=(
        "A riluzole order while no riluzole is active or on hold (a course is starting: info, or a warning "
        "when the last ALT or AST above 3 x ULN is too old to be the baseline or was judged against a "
        "stand-in limit); or a renewal while the current course's ALT is overdue on the riluzole-lft-due "
        "schedule (warning)."
    ),
    facts=(
        RuleFact(
            "Baseline and schedule",
            "ALT before treatment; monthly for 3 months, 3-monthly to month 12, then periodically",
            "rilutek-smpc",
            "SmPC 4.4.",
        ),
        RuleFact("Schedule after year 1 (UK)", "annually", "nice-ta20", "TA20 3.3."),
        RuleFact(
            "Renewal",
            "the riluzole-lft-due schedule of the current course; overdue -> warning with an LFT order",
            "rilutek-smpc",
            "SmPC 4.4: monitoring continues for as long as riluzole is given; a renewal is the moment to "
            "catch a missed test.",
        ),
        RuleFact(
            "A raised result that is not the baseline",
            f"ALT or AST > 3 x ULN older than {BASELINE_DAYS} days, or whose lab range came only as text: "
            "repeat the liver tests before the first dose (warning), not a contraindication",
            "rilutek-smpc",
            f"SmPC 4.3 limits *baseline* transaminases; {BASELINE_DAYS} days is a design choice.",
        ),
        RuleFact(
            "Order suggested", "hepatic function panel, LOINC 24325-3 (as riluzole-lft-due)", "rilutek-smpc"
        ),
    ),
)


RULES: tuple[Rule, ...] = (
    LFT_DUE,
    NOT_PRESCRIBED,
    ALT_RAISED,
    FEVER_CHECK_WBC,
    NEUTROPENIA,
    ORDER_LIVER,
    ORDER_DOSE,
    ORDER_MONITORING,
    RECHALLENGE,
    ORDER_CONTRAINDICATION,
)
