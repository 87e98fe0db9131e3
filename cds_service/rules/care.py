"""Organisation of care: multidisciplinary review and advance care planning (NICE NG42 1.5, 1.7).

NG42 1.5.2: the MND multidisciplinary team should "carry out regular, coordinated assessments at the
multidisciplinary team clinic (usually every 2 to 3 months)"; 1.5.6: tailor the frequency to the
person's symptoms and needs. NG42 1.7.1-1.7.5: offer to discuss end-of-life care and advance care
planning (ADRT, DNACPR, lasting power of attorney) at diagnosis and at later trigger points; 1.7.4:
earlier if communication, cognition or capacity is expected to worsen.
"""

from __future__ import annotations

from collections.abc import Iterable

from cds_service import terminology
from cds_service.record import GenericFact, Interest, ObservationFact, PatientRecord
from cds_service.rules.als import ALS_DIAGNOSIS
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import day
from cds_service.terminology import Code, ValueSet

MDT_ENCOUNTER = terminology.load("mdt-encounter")
ACP = terminology.load("advance-care-planning")
AD_DOCUMENT = terminology.load("advance-directive-document")
AD_OBSERVATION = terminology.load("advance-directive-observation")
AD_CONSENT = terminology.load("consent-advance-directive")
ANSWER_YES = terminology.load("answer-yes")

NONE_ON_RECORD = "none in the data received"


# --------------------------------------------------------------------------------------------
# mdt-review-overdue


def site_encounter_codes(codes: Iterable[str]) -> ValueSet:
    """The site's own MDT clinic codes ('system|code') as a value set; malformed entries are ignored."""
    keys = set()
    for entry in codes:
        system, sep, code = entry.partition("|")
        if sep and system.strip() and code.strip():
            keys.add(Code(terminology.normalise_system(system), code.strip()).key)
    return ValueSet(id="site-mdt-encounter-codes", title="Site MDT clinic codes", codes=frozenset(keys))


def _mdt_match(encounter: GenericFact, site: ValueSet) -> str | None:
    """How the encounter qualifies as an MDT clinic visit, or None."""
    found = encounter.match(MDT_ENCOUNTER)
    if found is not None:
        return found.describe()
    found = encounter.match(site)
    if found is not None:
        return f"{found.describe()} (site-configured)"
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
            f"{encounter.concept.label}, matched by {how})."
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
    codes = ", ".join(sorted(code for _, code in MDT_ENCOUNTER.codes))
    counted = (
        f"SNOMED CT {codes} (multidisciplinary assessment) and {len(site.codes)} site-configured code(s)"
    )
    evidence.append(f"Counted as MDT clinic: {counted}. Interval: {interval} days.")
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


def acp_evidence(record: PatientRecord) -> tuple[list[str], list[str]]:
    """(what shows advance care planning is recorded, what was seen but does not count)."""
    found: list[str] = []
    ignored: list[str] = []
    for proc in record.procedures_in(ACP):
        found.append(f"Advance care planning procedure on {day(proc.when)} ({proc.concept.label}).")
    for doc in record.documents_in(AD_DOCUMENT):
        found.append(f"Advance directive document dated {day(doc.when)} ({doc.concept.label}).")
    for consent in [c for c in record.consents if c.match(AD_CONSENT) or c.match(AD_DOCUMENT)]:
        found.append(f"Active advance directive consent dated {day(consent.when)} ({consent.concept.label}).")
    for condition in record.active_conditions(ACP):
        found.append(
            f"Recorded finding: {condition.concept.label} ({day(condition.onset or condition.recorded)})."
        )
    # Every observation, dated or not: the question is whether a plan exists, not whether it is recent.
    for obs in record.observations:
        if ACP.match(obs.concept) is not None:
            found.append(f"Recorded finding: {obs.concept.label} ({day(obs.effective)}).")
        elif AD_OBSERVATION.match(obs.concept) is not None:
            if _positive(obs):
                found.append(f"{obs.concept.label}: yes ({day(obs.effective)}).")
            else:
                ignored.append(
                    f"{obs.concept.label} on {day(obs.effective)} does not answer 'yes': not counted."
                )
    return found, ignored


def advance_care_planning(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    found, ignored = acp_evidence(record)
    if found:
        return []
    evidence = [
        "No advance care planning in the data received: no ACP procedure (SNOMED CT 713603004), no advance "
        "directive document or consent, no 'has advance care plan', 'active advance directive' or 'not for "
        "resuscitation' finding, no DNR/POLST-type order observation answered yes.",
        *ignored,
    ]
    diagnoses = record.active_conditions(ALS_DIAGNOSIS)
    dates = [d for c in diagnoses if (d := c.onset or c.recorded) is not None]
    if dates:
        evidence.append(f"ALS/MND recorded since {min(dates).date().isoformat()}.")
    return [
        Finding(
            rule_id="advance-care-planning",
            fields={},
            evidence=tuple(evidence),
            bindings={"patient_reference": f"Patient/{record.patient_id}"},
        )
    ]


ADVANCE_CARE_PLANNING = Rule(
    id="advance-care-planning",
    title="MND: no advance care planning recorded",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Procedure": (ACP,),
            "DocumentReference": (AD_DOCUMENT,),
            "Consent": (AD_CONSENT, AD_DOCUMENT),
            "Condition": (ACP,),
            "Observation": (ACP, AD_OBSERVATION),
        }
    ),
    evaluate=advance_care_planning,
    trigger=(
        "ALS/MND and no advance care planning on record: no ACP procedure, advance directive document or "
        "consent, ACP finding, or DNR/POLST-type order observation answered yes."
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
            "Topics",
            "ADRT, DNACPR, lasting power of attorney; resuscitation, ventilation, nutrition; preferred place "
            "of care and death",
            "nice-ng42",
            "NG42 1.7.3; 1.7.5 (review ADRT, DNACPR and LPA when gastrostomy or NIV is planned).",
        ),
        RuleFact(
            "Validity of a recorded plan",
            "any recorded plan, however old, suppresses the card",
            "nice-ng42",
            "NG42 gives no validity interval for an advance care plan; review at the 1.7.5 trigger points is "
            "not implemented here (design choice).",
        ),
        RuleFact(
            "Document and observation codes",
            "LOINC 42348-3, 81334-5, 86533-7, 93037-0; 81351-9, 81352-7; Consent.scope adr",
            "pacio-adi",
            "US-centric codes: UK ADRT/LPA/ReSPECT documents have no code here and count only if coded so.",
        ),
    ),
)

RULES: tuple[Rule, ...] = (MDT_REVIEW_OVERDUE, ADVANCE_CARE_PLANNING)
