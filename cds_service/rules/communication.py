"""Communication: speech and language therapy and AAC when bulbar involvement is recorded (NICE NG42 1.11).

NICE NG42 (checked word for word in the full PDF, © NICE 2024 edition):

* 1.11.1: when assessing speech and communication needs at MDT assessments and other appointments,
  discuss face-to-face and remote communication (telephone, email, internet, social media); "Ensure
  that the assessment and review is carried out by a speech and language therapist without delay."
* 1.11.2: "Provide AAC equipment that meets the needs of the person without delay", low-level (alphabet,
  word or picture boards) and high-level (PC or tablet-based voice output communication aids); review
  communication needs during MDT assessments.
* 1.11.3: liaise with, or refer to, a specialised NHS AAC hub if complex high-technology AAC (e.g. eye
  gaze access) is needed or likely to be needed. 1.11.5: regular, ongoing monitoring as MND progresses.
* 1.4.1: "Speech and swallowing problems (bulbar presentation)".

Scope: every form of MND (the default). The card fires when bulbar involvement is on the problem list
(dysphagia, dysarthria, progressive bulbar or pseudobulbar palsy, or a problem whose text names bulbar
onset or dysfunction; active and not merely suspected, as the gate reads a diagnosis) and nothing on
record shows speech and language therapy or AAC: no SLT assessment, therapy or referral (Procedure, or
a coded referral Observation), no SLT encounter, no SLT consult note, no communication aid (Device).

No look-back: NG42 1.11 says "without delay" and "regular, ongoing monitoring" but gives no interval, so
anything of the kind on record, of any date, silences the card. What is not seen: referrals held only as
orders (ServiceRequest is not read), and encounters older than the Encounter prefetch window.
"""

from __future__ import annotations

from cds_service import terminology
from cds_service.record import ConditionFact, GenericFact, Interest, ObservationFact, PatientRecord
from cds_service.rules import als
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import aside, day, patient_reference
from cds_service.terminology import ValueSet

DYSPHAGIA = terminology.load("dysphagia")
BULBAR = terminology.load("bulbar-involvement")
SLT_AAC = terminology.load("slt-aac")

#: At most this many bulbar problems are named on the card (the rest are counted).
_SHOWN = 2


def bulbar_problems(record: PatientRecord) -> list[tuple[ConditionFact, ValueSet]]:
    """Active, not merely suspected, bulbar problems: dysphagia first, then the others."""
    found: list[tuple[ConditionFact, ValueSet]] = []
    seen: set[int] = set()
    for valueset in (DYSPHAGIA, BULBAR):
        for condition in als.diagnoses(record, valueset):
            if id(condition) not in seen:
                seen.add(id(condition))
                found.append((condition, valueset))
    return found


def slt_or_aac_on_record(record: PatientRecord) -> list[GenericFact | ObservationFact]:
    """Anything showing SLT involvement or AAC: procedures, encounters, devices, notes, referral findings."""
    found: list[GenericFact | ObservationFact] = [
        *record.procedures_in(SLT_AAC),
        *record.encounters_in(SLT_AAC),
        *record.devices_in(SLT_AAC),
        *record.documents_in(SLT_AAC),
    ]
    # Every observation, dated or not: an undated referral still shows SLT is involved.
    found += record.observations_matching(SLT_AAC)
    return found


def _problem_line(condition: ConditionFact, valueset: ValueSet) -> str:
    match = valueset.match(condition.concept)
    when = condition.onset or condition.recorded
    since = f" since {day(when)}" if when is not None else ""
    return f"{condition.concept.label} on the problem list{since}{aside(match)}."


def communication_slt_aac(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    problems = bulbar_problems(record)
    if not problems or slt_or_aac_on_record(record):
        return []
    lines = [_problem_line(condition, valueset) for condition, valueset in problems[:_SHOWN]]
    if len(problems) > _SHOWN:
        lines[-1] = lines[-1][:-1] + f"; and {len(problems) - _SHOWN} more bulbar problem(s)."
    lines.append(
        "No speech and language therapy assessment, therapy or referral, SLT consult note, AAC assessment or "
        "communication aid in the data received."
    )
    return [
        Finding(
            rule_id="communication-slt-aac",
            fields={},
            evidence=tuple(lines),
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


COMMUNICATION_SLT_AAC = Rule(
    id="communication-slt-aac",
    title="MND with bulbar involvement: speech and language therapy and AAC assessment",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Condition": (DYSPHAGIA, BULBAR),
            "Procedure": (SLT_AAC,),
            "Encounter": (SLT_AAC,),
            "Device": (SLT_AAC,),
            "DocumentReference": (SLT_AAC,),
            "Observation": (SLT_AAC,),
        }
    ),
    evaluate=communication_slt_aac,
    trigger=(
        "MND with bulbar involvement on the problem list (dysphagia, dysarthria, progressive bulbar or "
        "pseudobulbar palsy, or bulbar onset/dysfunction in the text) and no speech and language therapy "
        "assessment, therapy, referral, encounter or consult note, and no AAC assessment or communication "
        "aid, on record at any date."
    ),
    facts=(
        RuleFact(
            "SLT assessment",
            "assessment and review of speech and communication by a speech and language therapist without "
            "delay",
            "nice-ng42",
            "NG42 1.11.1 (face-to-face and remote communication: telephone, email, internet, social media).",
        ),
        RuleFact(
            "AAC equipment",
            "provide AAC without delay: low-tech (alphabet, word or picture boards) and high-tech (voice "
            "output communication aids); specialised NHS AAC hub for complex equipment such as eye gaze "
            "access",
            "nice-ng42",
            "NG42 1.11.2-1.11.3; review at MDT assessments (1.11.2, 1.11.5).",
        ),
        RuleFact(
            "Bulbar involvement",
            "dysphagia (dysphagia value set); dysarthria (SNOMED CT 8011004, ICD-10-CM R47.1); progressive "
            "bulbar palsy (SNOMED CT 54304004, ICD-10-CM G12.22); progressive pseudobulbar palsy (SNOMED CT "
            "249892007); 'bulbar onset / dysfunction / weakness', 'dysarthria', 'bulbar palsy' in a "
            "problem's text",
            "bulbar-codes",
            "NG42 1.4.1 calls speech and swallowing problems the bulbar presentation. Problems are read as "
            "the gate reads a diagnosis: active, and not provisional, differential or unconfirmed. Name "
            "matching because no code for bulbar onset or bulbar dysfunction was found.",
        ),
        RuleFact(
            "What counts as SLT or AAC on record",
            "SNOMED CT 410161005 Speech therapy assessment, 5154007 Speech therapy, 308452008 / 306360000 / "
            "306361001 referral to (community / hospital) speech and language therapist, as a Procedure, "
            "Observation or Encounter type; LOINC 83984-5, 68846-5, 34845-8 speech-language pathology "
            "consult notes; a Device, procedure or encounter named speech therapy, AAC or communication aid",
            "slt-codes",
            "No code for an AAC assessment or a communication aid was found: matched by name. Referrals held "
            "only as ServiceRequests are not read by this service.",
        ),
        RuleFact(
            "Look-back",
            "none: SLT or AAC on record at any date silences the card",
            "nice-ng42",
            "NG42 1.11.1-1.11.5 give no interval ('without delay', 'regular, ongoing monitoring'), so no "
            "period is set; regular review is left to the MDT (mdt-review-overdue).",
        ),
        RuleFact(
            "Suggested referral code",
            "SNOMED CT 308452008 Referral to speech and language therapist",
            "slt-codes",
        ),
    ),
)

RULES: tuple[Rule, ...] = (COMMUNICATION_SLT_AAC,)
