"""Riluzole: offer, liver and neutrophil safety, and order checks.

Rilutek SmPC 4.4 (EMA, 2021 revision): "ALT should be measured every month during the first 3
months of treatment, every 3 months during the remainder of the first year, and periodically
thereafter." NICE TA20 3.3 makes "periodically" concrete for the UK: annually.

The other rules follow the same label: SmPC 4.3 (contraindications: hepatic disease or baseline
transaminases > 3 x ULN, pregnancy, breast-feeding, hypersensitivity), SmPC 4.4 (discontinue at
ALT 5 x ULN; a febrile illness prompts a white cell count; discontinue in neutropenia), SmPC 4.2
(50 mg every 12 hours), the US prescribing information (discontinue if there is evidence of liver
dysfunction, e.g. elevated bilirubin), NICE TA20 (via NG42 1.5.12) and AAN 2009 (Level A).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from cds_service import terminology
from cds_service.record import (
    HIGH_FLAGS,
    MEDICATION_CURRENT_STATUSES,
    DraftOrder,
    Interest,
    MedicationFact,
    MedicationMatch,
    ObservationFact,
    PatientRecord,
    Quantity,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import day, patient_reference
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


def months_between(start: datetime, end: datetime) -> int:
    """Whole calendar months from start to end (0 during the first month)."""
    months = (end.year - start.year) * 12 + (end.month - start.month)
    if end.day < start.day:
        months -= 1
    return months


def lft_due(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = record.medication_requests(RILUZOLE, MEDICATION_CURRENT_STATUSES)
    if not current:
        return []
    course = record.medication_requests(RILUZOLE, _COURSE_STATUSES)
    starts = [m.fact.started for m in course if m.fact.started is not None]
    start = min(starts) if starts else None

    if start is None:
        # Unknown start is not "long-standing": apply the strictest part of the schedule.
        window, phase = MONTHLY_DAYS, "start date not recorded"
    else:
        months = max(months_between(start, record.now), 0)
        if months < 3:
            window, phase = MONTHLY_DAYS, f"month {months + 1} of treatment"
        elif months < 12:
            window, phase = QUARTERLY_DAYS, f"month {months + 1} of treatment"
        else:
            window, phase = config.riluzole_lft_interval_after_year1_days, "after the first year"

    latest = record.latest_observation(ALT)
    if latest is not None and latest.effective is not None and (record.now - latest.effective).days <= window:
        return []

    evidence = [_medication_line(current[0])]
    if start is None:
        evidence.append("Start of riluzole not recorded: the monthly schedule of the first 3 months applies.")
    else:
        evidence.append(f"Riluzole course started {start.date().isoformat()} ({phase}).")
    if latest is None or latest.effective is None:
        last_text = "none in the data received"
        evidence.append("No dated ALT result in the data received.")
    else:
        last_text = latest.effective.date().isoformat()
        value = str(latest.value) if latest.value is not None else "no value"
        age = (record.now - latest.effective).days
        evidence.append(f"Latest ALT: {value} on {last_text} ({age} days ago).")
    evidence.append(f"Schedule at this stage: at least every {window} days.")
    unread = record.unread_note(ALT, "ALT")
    if unread is not None:
        evidence.append(unread)
    return [
        Finding(
            rule_id="riluzole-lft-due",
            fields={
                "window_days": str(window),
                "phase": phase,
                "last_alt": last_text,
            },
            evidence=tuple(evidence),
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


def _medication_line(med: MedicationMatch) -> str:
    how = med.match.describe()
    return f"On riluzole: {med.fact.concept.label} ({med.fact.status}; matched by {how})."


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
            "earliest start of an active, on-hold or completed riluzole request; unknown -> monthly",
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
PREGNANCY_STATUS = terminology.load("pregnancy-status")
BREASTFEEDING_STATUS = terminology.load("breastfeeding-status")
CURRENTLY_BREASTFEEDING = terminology.load("currently-breastfeeding")

#: SmPC 4.3: "baseline transaminases greater than 3 times the upper limit of normal" (strictly >).
CONTRAINDICATION_TIMES_ULN = Decimal(3)
#: SmPC 4.4: measure ALT more often when it rises; the catalogue's "raised" step is 3 x ULN (>=).
MONITOR_MORE_TIMES_ULN = Decimal(3)
#: SmPC 4.4: "discontinued if the ALT levels increase to 5 times the ULN" (reached: >=).
STOP_TIMES_ULN = Decimal(5)
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

    @property
    def ratio(self) -> Decimal:
        return self.value / self.uln

    def line(self) -> str:
        return (
            f"{self.name} {_value_text(self.obs, self.value, 'U/L')} on {day(self.obs.effective)}: "
            f"{_number(self.ratio)} × ULN {_number(self.uln)} U/L ({self.uln_source})."
        )


def _lab_uln(obs: ObservationFact) -> tuple[Decimal | None, str]:
    """The lab's upper reference limit in U/L, or None and why it cannot be used."""
    if obs.reference_range is None or obs.reference_range.high is None:
        return None, "no reference range on the result"
    high = obs.reference_high_in("U/L")
    if high is None or high <= 0:
        return None, f"the lab's upper limit ({obs.reference_range.high}) could not be read"
    return high, "ULN from the lab's reference range"


def _alt_times(obs: ObservationFact, record: PatientRecord, config: RuleConfig) -> _Times | None:
    """ALT against the lab's ULN, else the configured ACG 2017 default for the patient's sex.

    None when the value's unit cannot be read: such a value is not evidence of anything. A bound
    ('>1000 U/L') counts as its number: the ALT is at least that high.
    """
    value = obs.at_least_in("U/L")
    if value is None:
        return None
    uln, why = _lab_uln(obs)
    if uln is not None:
        return _Times("ALT", obs, value, uln, why)
    if record.sex == "male":
        uln, whose = Decimal(str(config.alt_uln_default_male)), "men"
    elif record.sex == "female":
        uln, whose = Decimal(str(config.alt_uln_default_female)), "women"
    else:
        uln = Decimal(str(config.alt_uln_default_female))
        whose = "women, the lower one, as sex is not recorded as male or female"
    return _Times("ALT", obs, value, uln, f"{why}; default ULN for {whose}, ACG 2017, Kwo et al.")


def _ast_times(obs: ObservationFact) -> _Times | None:
    """AST against the lab's ULN only: the ACG 2017 healthy limits are defined for ALT, not AST."""
    value = obs.value_in("U/L")
    uln, why = _lab_uln(obs)
    if value is None or uln is None:
        return None
    return _Times("AST", obs, value, uln, why)


def _latest_alt(record: PatientRecord, config: RuleConfig) -> tuple[ObservationFact | None, _Times | None]:
    latest = record.latest_observation(ALT, with_value=True)
    return latest, (_alt_times(latest, record, config) if latest is not None else None)


def _unreadable_line(name: str, obs: ObservationFact, why: str) -> str:
    return f"{name} {obs.value} on {day(obs.effective)}: {why}, so it is not assessed."


def _liver_reasons(
    record: PatientRecord, config: RuleConfig, *, on_treatment: bool = False
) -> tuple[list[str], list[str]]:
    """Hepatic reasons not to give riluzole: (evidence lines, short reasons for the summary).

    Before treatment (SmPC 4.3): hepatic disease, or ALT or AST > 3 x ULN. During treatment the
    3 x ULN limit is no longer a contraindication (SmPC 4.4: measure more often, stop at 5 x ULN),
    so a renewal is held back by hepatic disease or by ALT >= 5 x ULN.
    """
    lines: list[str] = []
    short: list[str] = []
    for condition in record.active_conditions(LIVER_DISEASE):
        match = LIVER_DISEASE.match(condition.concept)
        how = match.describe() if match else "a liver-disease code"
        since = condition.onset or condition.recorded
        when = f", since {day(since)}" if since is not None else ""
        lines.append(f"Hepatic disease recorded: {condition.concept.label} ({how}{when}).")
        if "hepatic disease recorded" not in short:
            short.append("hepatic disease recorded")
    _, alt = _latest_alt(record, config)
    if on_treatment:
        if alt is not None and alt.ratio >= STOP_TIMES_ULN:
            lines.append(alt.line())
            short.append(f"ALT {_number(alt.ratio, '0.1')} × ULN")
        return lines, short
    if alt is not None and alt.ratio > CONTRAINDICATION_TIMES_ULN:
        lines.append(alt.line())
        short.append(f"ALT {_number(alt.ratio, '0.1')} × ULN")
    latest_ast = record.latest_observation(AST, with_value=True)
    ast = _ast_times(latest_ast) if latest_ast is not None else None
    if ast is not None and ast.ratio > CONTRAINDICATION_TIMES_ULN:
        lines.append(ast.line())
        short.append(f"AST {_number(ast.ratio, '0.1')} × ULN")
    return lines, short


def _other_contraindications(record: PatientRecord) -> list[str]:
    """SmPC 4.3: pregnancy, breast-feeding, hypersensitivity to riluzole."""
    lines: list[str] = []
    for condition in record.active_conditions(PREGNANCY):
        lines.append(f"Pregnancy recorded: {condition.concept.label} (active).")
    status = record.latest_observation(PREGNANCY_STATUS)
    if status is not None and PREGNANCY.match(status.value_concept) is not None:
        lines.append(f"Pregnancy status on {day(status.effective)}: {status.value_concept.label}.")
    feeding = record.latest_observation(BREASTFEEDING_STATUS)
    if feeding is not None and (
        CURRENTLY_BREASTFEEDING.match(feeding.value_concept) is not None or feeding.value_boolean is True
    ):
        lines.append(f"Breastfeeding status on {day(feeding.effective)}: currently breastfeeding.")
    for allergy in record.allergies_in(RILUZOLE):
        match = allergy.match(RILUZOLE)
        how = match.describe() if match else "riluzole"
        lines.append(
            f"Allergy or intolerance to riluzole recorded: {allergy.concept.label} (matched by {how})."
        )
    return lines


def _earlier_courses(record: PatientRecord) -> list[str]:
    """Evidence lines for riluzole courses that ended: not a contraindication by themselves."""
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
        lines.append(line + ". An earlier course is not a contraindication by itself: check why it ended.")
    return lines


def _end_of(med: MedicationFact) -> datetime | None:
    if med.validity_end is not None:
        return med.validity_end
    for dosage in med.dosages:
        if dosage.bounds_end is not None:
            return dosage.bounds_end
    return None


def _draft_line(order: DraftOrder, match: Match) -> str:
    return f"Riluzole ordered: {order.concept.label} (matched by {match.describe()})."


# ============================================================================================
# riluzole-not-prescribed


def not_prescribed(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    if _current_riluzole(record):
        return []
    liver, _ = _liver_reasons(record, config)
    if liver or _other_contraindications(record):
        return []
    earlier = _earlier_courses(record)
    evidence = ["No active or on-hold riluzole prescription in the data received.", *earlier]
    latest, alt = _latest_alt(record, config)
    if latest is None:
        evidence.append("No ALT result on record: baseline liver tests are needed before the first dose.")
    elif alt is None:
        evidence.append(_unreadable_line("Latest ALT", latest, "its unit cannot be read"))
    else:
        evidence.append(f"Latest {alt.line()}")
    return [
        Finding(
            rule_id="riluzole-not-prescribed",
            fields={"history": "an earlier course ended" if earlier else "none on record"},
            evidence=tuple(evidence),
            variant="us" if config.profile == "us" else None,
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
            "Condition": (LIVER_DISEASE, PREGNANCY),
            "AllergyIntolerance": (RILUZOLE,),
        }
    ),
    evaluate=not_prescribed,
    trigger=(
        "ALS with no active or on-hold riluzole and no recorded contraindication (hepatic disease, latest "
        "ALT or AST > 3 x ULN, pregnancy, breast-feeding, riluzole allergy)."
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
            "hepatic disease; ALT or AST > 3 x ULN; pregnancy; breast-feeding; hypersensitivity",
            "rilutek-smpc",
            "SmPC 4.3. AST is judged only against the lab's own ULN (no configured default for AST).",
        ),
        RuleFact(
            "ALT ULN when the result has no reference range",
            "ALS_CDS_ALT_ULN_DEFAULT_MALE (33 U/L) / _FEMALE (25 U/L); unknown sex -> the female value",
            "acg-2017",
            "ACG 2017: healthy ALT up to 33 IU/L in men, 25 IU/L in women. Unknown sex: the lower value.",
        ),
        RuleFact(
            "An earlier course",
            "a stopped or completed prescription is not a contraindication; the card says when it ended",
            "rilutek-smpc",
            "Design choice. SmPC 4.4: no re-administration after ALT reached 5 x ULN (clinician's check).",
        ),
    ),
)


# ============================================================================================
# riluzole-alt-raised


@dataclass(frozen=True)
class _Bilirubin:
    line: str
    raised: bool


def _bilirubin(record: PatientRecord) -> _Bilirubin | None:
    latest = record.latest_observation(BILIRUBIN, with_value=True)
    if latest is None:
        return None
    value = latest.value_in("umol/L")
    if value is None:
        return _Bilirubin(_unreadable_line("Bilirubin", latest, "its unit cannot be read"), False)
    high = latest.reference_high_in("umol/L")
    if high is None or high <= 0:
        why = "it has no readable reference range (no default ULN is configured for bilirubin)"
        return _Bilirubin(_unreadable_line("Bilirubin", latest, why), False)
    raised = value > high
    word = "above" if raised else "within"
    limit = latest.reference_range.high if latest.reference_range is not None else None
    return _Bilirubin(
        f"Bilirubin {latest.value} on {day(latest.effective)}: {word} the lab's upper limit {limit}.",
        raised,
    )


def alt_raised(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = _current_riluzole(record)
    if not current:
        return []
    latest, alt = _latest_alt(record, config)
    if alt is None:
        # No value that can be set against the ULN. The lab's own flag still says "high": an ALT
        # flagged HH on riluzole is not left unsaid because its value came as text or without a unit.
        return _flagged_alt(record, current[0])
    assert latest is not None
    bilirubin = _bilirubin(record)
    if alt.ratio >= STOP_TIMES_ULN:
        variant, indicator = "stop", "critical"
    elif bilirubin is not None and bilirubin.raised and alt.ratio > 1:
        variant, indicator = "liver-dysfunction", "critical"
    elif alt.ratio >= MONITOR_MORE_TIMES_ULN:
        variant, indicator = None, "warning"
    else:
        return []
    evidence = [_medication_line(current[0]), alt.line()]
    if bilirubin is not None:
        evidence.append(bilirubin.line)
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
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


def _flagged_alt(record: PatientRecord, current: MedicationMatch) -> list[Finding]:
    latest = record.latest_observation(ALT)
    if latest is None or not latest.flagged_high:
        return []
    flags = ", ".join(sorted(latest.flags & HIGH_FLAGS))
    shown = latest.value_string or (str(latest.value) if latest.value is not None else "no value")
    evidence = (
        _medication_line(current),
        f"ALT on {day(latest.effective)}: '{shown[:40]}', flagged {flags} by the lab; the value cannot be "
        "set against the upper limit of normal (no number in a known unit).",
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
        "Active riluzole and the latest ALT is >= 5 x ULN (critical: stop), or above ULN with bilirubin "
        "above the lab's ULN (critical: liver dysfunction), or >= 3 x ULN (warning: measure ALT more often)."
    ),
    facts=(
        RuleFact("Stop threshold", "ALT >= 5 x ULN; no rechallenge", "rilutek-smpc", "SmPC 4.4."),
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
    latest = record.latest_observation(NEUTROPHILS, with_value=True)
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
    return [
        Finding(
            rule_id="riluzole-neutropenia",
            fields={"count": _number(value), "limit": _number(limit), "count_date": day(latest.effective)},
            evidence=(
                _medication_line(current[0]),
                f"Neutrophils {_value_text(latest, value, '× 10⁹/L')} on {day(latest.effective)}: below "
                f"{_number(limit)} × 10⁹/L ({source}).",
            ),
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


NEUTROPENIA = Rule(
    id="riluzole-neutropenia",
    title="Riluzole: neutropenia",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (NEUTROPHILS,)}),
    evaluate=neutropenia,
    trigger=(
        "Active riluzole and the latest neutrophil count is below the lab's lower reference limit "
        "(else below the configured limit, default 1.5 x 10^9/L)."
    ),
    facts=(
        RuleFact("Neutropenia on riluzole", "discontinue riluzole", "rilutek-smpc", "SmPC 4.4."),
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
    findings = []
    for order, match in orders:
        reference = order.reference
        findings.append(
            Finding(
                rule_id="riluzole-order-liver",
                fields={"reason": ", ".join(short), "basis": basis},
                evidence=(_draft_line(order, match), context, *lines),
                variant=None if reference else "no-reference",
                bindings={"draft_reference": reference} if reference else {},
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
        "Riluzole ordered while hepatic disease is recorded, or, when starting, the latest ALT or AST is "
        "> 3 x ULN, or, when renewing an active course, the latest ALT is >= 5 x ULN."
    ),
    facts=(
        RuleFact(
            "Contraindication (starting)",
            "hepatic disease or baseline transaminases > 3 x ULN",
            "rilutek-smpc",
            "SmPC 4.3. ALT without a lab range uses the ACG 2017 default; AST only with the lab's range.",
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
    if not orders or _current_riluzole(record):
        return []
    order, match = orders[0]
    evidence = [
        _draft_line(order, match),
        "No active or on-hold riluzole prescription: this order starts a course.",
        *_earlier_courses(record),
    ]
    latest, alt = _latest_alt(record, config)
    if latest is None:
        evidence.append("No ALT result on record: a baseline is needed before the first dose.")
    elif alt is None:
        evidence.append(_unreadable_line("Latest ALT", latest, "its unit cannot be read"))
    else:
        evidence.append(f"Latest {alt.line()}")
    return [
        Finding(
            rule_id="riluzole-order-monitoring",
            fields={"last_alt": day(latest.effective) if latest is not None else "none in the data received"},
            evidence=tuple(evidence),
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


ORDER_MONITORING = Rule(
    id="riluzole-order-monitoring",
    title="Riluzole order: baseline LFTs and monitoring",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({"MedicationRequest": (RILUZOLE,), "Observation": (ALT,)}),
    evaluate=order_monitoring,
    trigger="A riluzole order while no riluzole is active or on hold (a course is starting).",
    facts=(
        RuleFact(
            "Baseline and schedule",
            "ALT before treatment; monthly for 3 months, 3-monthly to month 12, then periodically",
            "rilutek-smpc",
            "SmPC 4.4.",
        ),
        RuleFact("Schedule after year 1 (UK)", "annually", "nice-ta20", "TA20 3.3."),
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
)
