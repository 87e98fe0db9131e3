"""Organisation of care: multidisciplinary review and advance care planning (NICE NG42 1.5, 1.7).

NG42 1.5.2: the MND multidisciplinary team should "carry out regular, coordinated assessments at the
multidisciplinary team clinic (usually every 2 to 3 months)"; 1.5.6: tailor the frequency to the
person's symptoms and needs. NG42 1.7.1: offer the person the opportunity to discuss their
preferences and concerns about care at the end of life "at trigger points such as: at diagnosis, if
there is a significant change in respiratory function, or if interventions such as gastrostomy or
non-invasive ventilation are needed"; 1.7.3: advance care planning, including ADRT, DNACPR and
lasting power of attorney; 1.7.4: earlier if communication, cognition or capacity is expected to
worsen; 1.7.5: review any existing ADRT, DNACPR and LPA "when interventions such as gastrostomy and
non-invasive ventilation are planned".

So a plan on record is not the end of it: when a trigger point comes after the latest plan (a
gastrostomy, NIV started, or the respiratory results now meeting an NG42 criterion that began after
the plan was made), the card returns, asking to review the plan. UK documents count as plans: a
ReSPECT form, an advance care plan or end of life care plan document (NHS National Record Locator
record types), and a coded ADRT or DNACPR decision.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cds_service import terminology
from cds_service.record import GenericFact, Interest, ObservationFact, PatientRecord
from cds_service.rules import respiratory
from cds_service.rules.als import ALS_DIAGNOSIS
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import caveat, day
from cds_service.terminology import Code, ValueSet

MDT_ENCOUNTER = terminology.load("mdt-encounter")
ACP = terminology.load("advance-care-planning")
AD_DOCUMENT = terminology.load("advance-directive-document")
AD_OBSERVATION = terminology.load("advance-directive-observation")
AD_CONSENT = terminology.load("consent-advance-directive")
ANSWER_YES = terminology.load("answer-yes")
AD_DOCUMENT_UK = terminology.load("advance-care-document-uk")
ACP_UK = terminology.load("advance-care-planning-uk")
GASTROSTOMY_PROCEDURE = terminology.load("gastrostomy-procedure")
GASTROSTOMY_STATUS = terminology.load("gastrostomy-status")

NONE_ON_RECORD = "none in the data received"


# --------------------------------------------------------------------------------------------
# mdt-review-overdue


def site_encounter_codes(codes: Iterable[str]) -> ValueSet:
    """The site's own MDT clinic codes ('system|code') as a value set; malformed entries are ignored."""
    return _site_encounter_codes(tuple(codes))


@functools.lru_cache(maxsize=16)
def _site_encounter_codes(codes: tuple[str, ...]) -> ValueSet:
    # Built once per setting, not per call: a value set compiles its name patterns, and keeps
    # what it matched (ValueSet.match).
    keys = set()
    for entry in codes:
        system, sep, code = entry.partition("|")
        if sep and system.strip() and code.strip():
            keys.add(Code(terminology.normalise_system(system), code.strip()).key)
    return ValueSet(id="site-mdt-encounter-codes", title="Site MDT clinic codes", codes=frozenset(keys))


def _mdt_match(encounter: GenericFact, site: ValueSet) -> str | None:
    """How the encounter qualifies as an MDT clinic visit ('' for the standard code), or None."""
    found = encounter.match(MDT_ENCOUNTER)
    if found is not None:
        return caveat(found)
    found = encounter.match(site)
    if found is not None:
        return "; this site's MDT clinic code"
    return None


def mdt_review_overdue(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    interval = config.mdt_interval_days
    site = site_encounter_codes(config.mdt_encounter_codes)
    mdt = [
        (e, how)
        for e in record.encounters_in(None)
        if e.when is not None and e.when <= record.now and (how := _mdt_match(e, site)) is not None
    ]
    latest = mdt[0] if mdt else None  # encounters_in: newest first
    if latest is not None and latest[0].when is not None and (record.now - latest[0].when).days <= interval:
        return []

    evidence = []
    if latest is None or latest[0].when is None:
        last_text = NONE_ON_RECORD
        evidence.append(
            "No finished or ongoing multidisciplinary (MND) clinic encounter in the data received."
        )
    else:
        encounter, how = latest
        when = encounter.when
        assert when is not None
        last_text = when.date().isoformat()
        evidence.append(
            f"Latest multidisciplinary clinic encounter: {last_text} ({(record.now - when).days} days ago; "
            f"{encounter.concept.label}{how})."
        )
    others = [e for e in record.encounters_in(None) if e.when is not None and e.when <= record.now]
    if others:
        newest = others[0]
        assert newest.when is not None
        if latest is None or newest is not latest[0]:
            evidence.append(
                f"Most recent other encounter: {newest.when.date().isoformat()} ({newest.concept.label}); "
                "not a multidisciplinary team assessment, so it does not count."
            )
    return [
        Finding(
            rule_id="mdt-review-overdue",
            fields={"interval_days": str(interval), "last_mdt": last_text},
            evidence=tuple(evidence),
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


MDT_REVIEW_OVERDUE = Rule(
    id="mdt-review-overdue",
    title="MND: multidisciplinary team review due",
    hooks=frozenset({"patient-view"}),
    # Every encounter: the site's own MDT clinic codes (ALS_CDS_MDT_ENCOUNTER_CODES) are only known
    # at run time, so a static value set cannot pre-filter. The prefetch limits Encounters by date.
    reads=Interest({"Encounter": None}),
    evaluate=mdt_review_overdue,
    trigger=(
        "ALS/MND and no finished or ongoing multidisciplinary clinic encounter (SNOMED CT 312384001 or a "
        "site-configured code, in type, service type or class) in the last N days (default 92)."
    ),
    facts=(
        RuleFact(
            "MDT assessment interval",
            "ALS_CDS_MDT_INTERVAL_DAYS, default 92 days",
            "nice-ng42",
            "NG42 1.5.2 'usually every 2 to 3 months'; 92 days = the longest run of three calendar months. "
            "NG42 1.5.6: tailor the frequency to the person (configurable, 28-365 days).",
        ),
        RuleFact(
            "What counts as an MDT assessment",
            "Encounter type/service type/class SNOMED CT 312384001 or a site-configured 'system|code'",
            "nice-ng42",
            "NG42 1.5.2 (assessments at the MDT clinic) and 1.5.4 (core team). No verified code for an "
            "'MND clinic' encounter exists: UNVERIFIED, sites must add their clinic codes. Ordinary visits "
            "do not count.",
        ),
        RuleFact(
            "Carer needs at MDT assessments",
            "prompt to include carers' needs (carer's assessment, respite)",
            "nice-ng42",
            "NG42 1.2.9, 1.6.3 and 1.6.4.",
        ),
    ),
)


# --------------------------------------------------------------------------------------------
# advance-care-planning


def _positive(obs: ObservationFact) -> bool:
    """A 'yes' answer: valueBoolean true, or a coded yes (LOINC LA33-6, SNOMED CT 373066001)."""
    if obs.value_boolean is True:
        return True
    return ANSWER_YES.match(obs.value_concept) is not None


@dataclass(frozen=True)
class PlanRecord:
    """One record that advance care planning was done, with its date when known."""

    when: datetime | None
    line: str


def acp_evidence(record: PatientRecord) -> tuple[list[PlanRecord], list[str]]:
    """(what shows advance care planning is recorded, what was seen but does not count)."""
    found: list[PlanRecord] = []
    ignored: list[str] = []
    for proc in record.procedures_in(ACP):
        found.append(
            PlanRecord(
                proc.when, f"Advance care planning procedure on {day(proc.when)} ({proc.concept.label})."
            )
        )
    for doc in [*record.documents_in(AD_DOCUMENT), *record.documents_in(AD_DOCUMENT_UK)]:
        found.append(
            PlanRecord(
                doc.when, f"Advance care planning document dated {day(doc.when)} ({doc.concept.label})."
            )
        )
    for consent in [c for c in record.consents if c.match(AD_CONSENT) or c.match(AD_DOCUMENT)]:
        found.append(
            PlanRecord(
                consent.when,
                f"Active advance directive consent dated {day(consent.when)} ({consent.concept.label}).",
            )
        )
    for condition in [*record.active_conditions(ACP), *record.active_conditions(ACP_UK)]:
        when = condition.onset or condition.recorded
        found.append(PlanRecord(when, f"Recorded finding: {condition.concept.label} ({day(when)})."))
    # Every observation, dated or not: an undated plan still shows that a plan exists.
    plans = {id(o) for vs in (ACP, ACP_UK) for o in record.observations_matching(vs)}
    directives = {id(o) for o in record.observations_matching(AD_OBSERVATION)}
    # In arrival order, so every result is visited; when none is a plan or a directive (nearly
    # every chart), a large chart's results need not be.
    for obs in record.observations if plans or directives else ():
        if id(obs) in plans:
            found.append(
                PlanRecord(obs.effective, f"Recorded finding: {obs.concept.label} ({day(obs.effective)}).")
            )
        elif id(obs) in directives:
            if _positive(obs):
                found.append(PlanRecord(obs.effective, f"{obs.concept.label}: yes ({day(obs.effective)})."))
            else:
                ignored.append(
                    f"{obs.concept.label} on {day(obs.effective)} does not answer 'yes': not counted."
                )
    return found, ignored


@dataclass(frozen=True)
class TriggerPoint:
    """An NG42 1.7.1 trigger point on record: when, short words for the summary, a line of evidence."""

    when: datetime
    short: str
    line: str


def trigger_points(record: PatientRecord, config: RuleConfig) -> list[TriggerPoint]:
    """Dated NG42 1.7.1 / 1.7.5 trigger points: gastrostomy, NIV, a significant change in respiratory
    function (the current results meeting an NG42 criterion, from the first result that did). Newest first."""
    found: list[TriggerPoint] = []
    for proc in record.procedures_in(GASTROSTOMY_PROCEDURE):
        if proc.when is not None and proc.when <= record.now:
            found.append(
                TriggerPoint(
                    proc.when, "gastrostomy", f"Gastrostomy on {day(proc.when)} ({proc.concept.label})."
                )
            )
    for condition in record.active_conditions(GASTROSTOMY_STATUS):
        when = condition.onset or condition.recorded
        if when is not None and when <= record.now:
            found.append(TriggerPoint(when, "gastrostomy", f"{condition.concept.label} since {day(when)}."))
    for when, words in respiratory.niv_starts(record):
        found.append(TriggerPoint(when, "NIV", f"NIV: {words}."))
    decline = respiratory.respiratory_decline(record, config)
    if decline is not None:
        when, criteria = decline
        found.append(
            TriggerPoint(
                when,
                "respiratory decline",
                f"Significant change in respiratory function since {day(when)}: {criteria} "
                "(NICE NG42 1.14.11-1.14.15).",
            )
        )
    found.sort(key=lambda t: t.when, reverse=True)
    return found


def advance_care_planning(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    found, ignored = acp_evidence(record)
    bindings = {"patient_reference": f"Patient/{record.patient_id}"}
    if not found:
        evidence = [
            "No advance care plan, advance directive, ADRT, ReSPECT form or DNACPR decision in the data "
            "received.",
            *ignored,
        ]
        diagnoses = record.active_conditions(ALS_DIAGNOSIS)
        dates = [d for c in diagnoses if (d := c.onset or c.recorded) is not None]
        if dates:
            evidence.append(f"ALS/MND recorded since {min(dates).date().isoformat()}.")
        evidence.extend(t.line for t in trigger_points(record, config))
        return [
            Finding(
                rule_id="advance-care-planning",
                fields={"plan_date": NONE_ON_RECORD, "trigger": "none"},
                evidence=tuple(evidence),
                bindings=bindings,
            )
        ]
    dated = [p.when for p in found if p.when is not None]
    latest = max(dated) if dated else None
    # A trigger on the day of the plan counts as discussed (dates compared, not times).
    later = [t for t in trigger_points(record, config) if latest is None or t.when.date() > latest.date()]
    if not later:
        return []
    newest = later[0]
    plan_date = day(latest) if latest is not None else "date not recorded"
    newest_plan = max(found, key=lambda p: p.when.timestamp() if p.when is not None else float("-inf"))
    evidence = [
        f"Latest advance care planning on record: {newest_plan.line}",
        *(f"Since then: {t.line}" for t in later),
        "NICE NG42 1.7.1: offer a discussion at these trigger points; 1.7.5: review any ADRT, DNACPR and "
        "lasting power of attorney when gastrostomy or NIV is planned.",
    ]
    return [
        Finding(
            rule_id="advance-care-planning",
            fields={"plan_date": plan_date, "trigger": f"{newest.short} ({day(newest.when)})"},
            evidence=tuple(evidence),
            variant="review",
            bindings=bindings,
        )
    ]


_GASTROSTOMY_VALUESETS = (GASTROSTOMY_PROCEDURE, GASTROSTOMY_STATUS)

ADVANCE_CARE_PLANNING = Rule(
    id="advance-care-planning",
    title="MND: advance care planning not recorded, or older than a trigger point",
    hooks=frozenset({"patient-view"}),
    reads=Interest.merge(
        [
            Interest(
                {
                    "Procedure": (ACP, GASTROSTOMY_PROCEDURE),
                    "DocumentReference": (AD_DOCUMENT, AD_DOCUMENT_UK),
                    "Consent": (AD_CONSENT, AD_DOCUMENT),
                    "Condition": (ACP, ACP_UK, GASTROSTOMY_STATUS),
                    "Observation": (ACP, ACP_UK, AD_OBSERVATION),
                }
            ),
            # The respiratory trigger points: NIV and the results NG42 table 2 and 1.14.11-1.14.13 read.
            respiratory.NIV_REFERRAL.reads,
            respiratory.HYPERCAPNIA.reads,
        ]
    ),
    evaluate=advance_care_planning,
    trigger=(
        "ALS/MND and no advance care planning on record (no ACP procedure, advance directive, ReSPECT or "
        "advance care plan document or consent, ACP/ADRT/DNACPR finding, or DNR/POLST-type order observation "
        "answered yes), or the latest plan predates a trigger point: a gastrostomy, NIV, or the current "
        "respiratory results meeting an NG42 criterion (NICE NG42 1.7.1, 1.7.5)."
    ),
    facts=(
        RuleFact(
            "When to offer the discussion",
            "whenever no advance care planning is recorded",
            "nice-ng42",
            "NG42 1.7.1 (at diagnosis, significant change in respiratory function, gastrostomy or NIV "
            "needed), 1.7.2 (whenever the person wishes), 1.7.4 (earlier if cognition or communication is "
            "expected to worsen).",
        ),
        RuleFact(
            "Trigger points that bring the card back",
            "a gastrostomy (Procedure, or problem-list gastrostomy status), NIV (Procedure, or 'dependence "
            "on non-invasive ventilation'), or respiratory decline, dated after the latest plan",
            "nice-ng42",
            "NG42 1.7.1 trigger points and 1.7.5 (review ADRT, DNACPR and LPA when gastrostomy and NIV are "
            "planned). 'Planned' cannot be read (planned procedures are not in the chart this service "
            "reads), so the card returns once the intervention is recorded. A trigger on the day of the "
            "plan counts as discussed. A tube or ventilator recorded only as a Device has no date and is not "
            "used.",
        ),
        RuleFact(
            "Significant change in respiratory function",
            "the latest results of the respiratory interval meet an NG42 criterion (FVC or VC < 50 % "
            "predicted, or < 80 % with symptoms; SNIP < 40, or < 65 / 55 cmH2O with symptoms, or falling > "
            "10 cmH2O per 3 months; SpO2 <= 94 % / 92 %; PaCO2 > 6 kPa), dated from the first result of the "
            "interval that did",
            "nice-ng42",
            "NG42 1.7.1 names the trigger without a threshold; using the respiratory cards' own NG42 "
            "criteria (table 2, 1.14.11, 1.14.13) is a design choice. The thresholds and their sources: "
            "respiratory-niv-referral and respiratory-hypercapnia.",
        ),
        RuleFact(
            "Topics",
            "ADRT, DNACPR, lasting power of attorney; resuscitation, ventilation, nutrition; preferred place "
            "of care and death",
            "nice-ng42",
            "NG42 1.7.3; 1.7.5 (review ADRT, DNACPR and LPA when gastrostomy or NIV is planned).",
        ),
        RuleFact(
            "Validity of a recorded plan",
            "no fixed expiry; a plan older than a trigger point brings the card back as a review",
            "nice-ng42",
            "NG42 gives no validity interval for an advance care plan. An undated plan counts as older than "
            "any dated trigger point (the card says the plan's date is not recorded).",
        ),
        RuleFact(
            "Document and observation codes",
            "LOINC 42348-3, 81334-5, 86533-7, 93037-0; 81351-9, 81352-7; Consent.scope adr",
            "pacio-adi",
            "US-centric codes (PACIO ADI, C-CDA).",
        ),
        RuleFact(
            "UK documents and decisions",
            "ReSPECT form (SNOMED CT 1382601000000107), advance care plan (736366004), end of life care plan "
            "(736373009) as DocumentReference type; ADRT (816301000000100) and not for attempted CPR "
            "(450476008) as a Condition or Observation",
            "nhs-nrl",
            "Document types: NHS England National Record Locator record types (verified). ADRT and DNACPR "
            "findings: corroborated only (two public files; NHS SNOMED CT browser not checked). A Lasting "
            "Power of Attorney has no checked code and is not read; an ADRT sent as a Flag is not read.",
        ),
    ),
)

RULES: tuple[Rule, ...] = (MDT_REVIEW_OVERDUE, ADVANCE_CARE_PLANNING)
