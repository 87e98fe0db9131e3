"""Riluzole: liver monitoring.

Rilutek SmPC 4.4 (EMA, 2021 revision): "ALT should be measured every month during the first 3
months of treatment, every 3 months during the remainder of the first year, and periodically
thereafter." NICE TA20 3.3 makes "periodically" concrete for the UK: annually.
"""

from __future__ import annotations

from datetime import datetime

from cds_service import terminology
from cds_service.record import (
    MEDICATION_CURRENT_STATUSES,
    Interest,
    MedicationMatch,
    PatientRecord,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact

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
        last_text = "none on record"
        evidence.append("No dated ALT result in the data received.")
    else:
        last_text = latest.effective.date().isoformat()
        value = str(latest.value) if latest.value is not None else "no value"
        age = (record.now - latest.effective).days
        evidence.append(f"Latest ALT: {value} on {last_text} ({age} days ago).")
    evidence.append(f"Schedule at this stage: at least every {window} days.")
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

RULES: tuple[Rule, ...] = (LFT_DUE,)
