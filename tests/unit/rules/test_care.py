"""mdt-review-overdue and advance-care-planning (NICE NG42 1.5.2, 1.7): when they fire and when not."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cds_service import cards
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.rules.care import (
    ADVANCE_CARE_PLANNING,
    MDT_REVIEW_OVERDUE,
    RULES,
    site_encounter_codes,
)
from cds_service.settings import Settings
from cds_service.terminology import Concept
from tests.factories import (
    ICD10CM,
    LOINC,
    PID,
    SNOMED,
    als,
    coding,
    concept,
    condition,
    consent,
    device,
    document,
    encounter,
    loinc,
    observation,
    patient,
    procedure,
    snomed,
)
from tests.support import NOW, patient_resources, record_from

CATALOGUE = cards.load_catalogue(Settings().cards_dir)
MDT = concept(coding(SNOMED, "312384001", "Multidisciplinary assessment"))
GP_VISIT = concept(coding("urn:oid:1.2.3.4", "GP-ROUTINE", "GP routine appointment"))
LOCAL_MND_CLINIC = concept(coding("urn:oid:1.2.3.4", "MND-CLINIC", "MND clinic"))
ADR_SCOPE = concept(
    coding("http://terminology.hl7.org/CodeSystem/consentscope", "adr", "Advanced Care Directive")
)
PRIVACY_SCOPE = concept(coding("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"))
DNR_ORDER = loinc("81351-9", "DNR order is in place [Reported]")
YES_LOINC = concept(coding(LOINC, "LA33-6", "Yes"))
NO_LOINC = concept(coding(LOINC, "LA32-8", "No"))


def days_ago(days: float) -> Any:
    return NOW - timedelta(days=days)


def mdt_visit(days: float, **kwargs: Any) -> dict[str, Any]:
    return encounter([MDT], days_ago(days), **kwargs)


def run_mdt(*resources: dict[str, Any], config: RuleConfig | None = None) -> list[Finding]:
    record = record_from([patient(), *resources], patient_id=PID)
    return evaluate([MDT_REVIEW_OVERDUE], record, config or RuleConfig())


def run_acp(*resources: dict[str, Any]) -> list[Finding]:
    record = record_from([patient(), *resources], patient_id=PID)
    return evaluate([ADVANCE_CARE_PLANNING], record, RuleConfig())


def render(finding: Finding) -> dict[str, Any]:
    return cards.render(finding, CATALOGUE[finding.rule_id]).to_json()


def empty_values(value: Any, path: str = "$") -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_values(v, f"{path}[{i}]")]
    return []


# -- mdt-review-overdue: the interval --------------------------------------------------------------


@pytest.mark.parametrize(("days", "fires"), [(30, False), (91, False), (92, False), (93, True), (200, True)])
def test_mdt_review_is_due_only_after_92_days_without_an_mdt_clinic_visit(days: int, fires: bool) -> None:
    assert bool(run_mdt(als(), mdt_visit(days))) is fires


def test_mdt_interval_is_configurable_for_tailored_review_frequency() -> None:
    resources = (als(), mdt_visit(70))
    assert run_mdt(*resources) == []
    assert run_mdt(*resources, config=RuleConfig(mdt_interval_days=60))
    assert run_mdt(als(), mdt_visit(150), config=RuleConfig(mdt_interval_days=180)) == []


def test_no_encounter_at_all_fires_and_says_none_on_record() -> None:
    [finding] = run_mdt(als())
    assert finding.fields == {"interval_days": "92", "last_mdt": "none in the data received"}
    assert "No finished or ongoing multidisciplinary" in finding.evidence[0]
    assert finding.bindings["patient_reference"] == f"Patient/{PID}"


def test_evidence_names_the_last_mdt_visit_with_its_date_and_age() -> None:
    [finding] = run_mdt(als(), mdt_visit(120))
    expected_date = days_ago(120).date().isoformat()
    assert finding.fields["last_mdt"] == expected_date
    assert f"{expected_date} (120 days ago" in finding.evidence[0]
    assert "code" not in finding.evidence[0]  # a code is machine text: not on the card


# -- mdt-review-overdue: what counts as an MDT visit ---------------------------------------------


def test_an_ordinary_gp_visit_does_not_count_as_an_mdt_review() -> None:
    [finding] = run_mdt(als(), encounter([GP_VISIT], days_ago(5)), mdt_visit(150))
    assert any("does not count" in line and "GP routine appointment" in line for line in finding.evidence)


@pytest.mark.parametrize("status", ["cancelled", "planned", "entered-in-error"])
def test_cancelled_planned_or_erroneous_mdt_encounters_do_not_count(status: str) -> None:
    assert run_mdt(als(), mdt_visit(10, status=status))


def test_an_ongoing_mdt_clinic_encounter_counts() -> None:
    assert run_mdt(als(), mdt_visit(0, status="in-progress")) == []


def test_mdt_code_in_the_service_type_counts() -> None:
    visit = encounter([GP_VISIT], days_ago(10), service_type=MDT)
    assert run_mdt(als(), visit) == []


def test_future_dated_encounter_does_not_count_as_a_past_review() -> None:
    assert run_mdt(als(), encounter([MDT], NOW + timedelta(days=3)))


def test_site_configured_encounter_type_counts_only_when_configured() -> None:
    visit = encounter([LOCAL_MND_CLINIC], days_ago(10))
    assert run_mdt(als(), visit)
    config = RuleConfig(mdt_encounter_codes=("urn:oid:1.2.3.4|MND-CLINIC",))
    assert run_mdt(als(), visit, config=config) == []


def test_site_configured_code_matches_the_encounter_class_too() -> None:
    visit = encounter([GP_VISIT], days_ago(10), encounter_class="MNDMDT")
    config = RuleConfig(mdt_encounter_codes=("http://terminology.hl7.org/CodeSystem/v3-ActCode|MNDMDT",))
    assert run_mdt(als(), visit, config=config) == []


def test_site_configured_snomed_code_given_as_an_oid_matches_the_uri_form() -> None:
    visit = encounter([concept(coding(SNOMED, "999000123", "Local MND clinic"))], days_ago(10))
    config = RuleConfig(mdt_encounter_codes=("urn:oid:2.16.840.1.113883.6.96|999000123",))
    assert run_mdt(als(), visit, config=config) == []


def test_malformed_site_codes_are_ignored() -> None:
    valueset = site_encounter_codes(["no-separator", "|missing-system", "urn:x|", " urn:x | A1 "])
    assert valueset.codes == {("urn:x", "A1")}
    assert valueset.match(Concept.from_json({"text": "MND clinic"})) is None  # never by name


def test_mdt_code_text_alone_is_not_matched_by_name() -> None:
    visit = encounter([concept(text="Multidisciplinary assessment")], days_ago(10))
    assert run_mdt(als(), visit)


# -- advance-care-planning -----------------------------------------------------------------------


def test_no_advance_care_planning_on_record_fires() -> None:
    [finding] = run_acp(als(onset=days_ago(300)))
    assert finding.evidence[0].startswith("No advance care plan, advance directive, ADRT")
    assert finding.evidence[0].endswith("in the data received.")
    assert f"ALS/MND recorded since {days_ago(300).date().isoformat()}" in finding.evidence[-1]


def test_an_old_acp_procedure_still_counts_no_validity_interval() -> None:
    acp = procedure(snomed("713603004", "Advance care planning"), days_ago(2000))
    assert run_acp(als(), acp) == []


@pytest.mark.parametrize("status", ["not-done", "entered-in-error", "preparation"])
def test_acp_procedure_not_done_does_not_count(status: str) -> None:
    acp = procedure(snomed("713603004"), days_ago(30), status=status)
    assert run_acp(als(), acp)


@pytest.mark.parametrize("code", ["42348-3", "81334-5", "86533-7", "93037-0"])
def test_advance_directive_document_type_counts(code: str) -> None:
    assert run_acp(als(), document(loinc(code), days_ago(400))) == []


def test_advance_directive_document_category_counts() -> None:
    doc = document(concept(coding("urn:oid:1.2.3", "ADRT-FORM"), text="ADRT"), days_ago(400))
    doc["category"] = [loinc("42348-3")]
    assert run_acp(als(), doc) == []


def test_superseded_or_erroneous_documents_do_not_count() -> None:
    assert run_acp(als(), document(loinc("81334-5"), days_ago(40), status="entered-in-error"))
    assert run_acp(als(), document(loinc("81334-5"), days_ago(40), status="superseded"))
    wrong = document(loinc("81334-5"), days_ago(40))
    wrong["docStatus"] = "entered-in-error"
    assert run_acp(als(), wrong)


def test_active_consent_with_scope_adr_counts() -> None:
    assert run_acp(als(), consent(ADR_SCOPE, [loinc("59284-0")], days_ago(100))) == []


def test_active_consent_with_advance_directive_category_counts() -> None:
    assert run_acp(als(), consent(PRIVACY_SCOPE, [loinc("42348-3")], days_ago(100))) == []


@pytest.mark.parametrize("status", ["inactive", "rejected", "draft", "entered-in-error"])
def test_a_consent_that_is_not_active_does_not_count(status: str) -> None:
    assert run_acp(als(), consent(ADR_SCOPE, [], days_ago(100), status=status))


def test_a_privacy_consent_does_not_count() -> None:
    assert run_acp(als(), consent(PRIVACY_SCOPE, [loinc("59284-0")], days_ago(100)))


@pytest.mark.parametrize("code", ["714748000", "425392003", "304253006"])
def test_acp_findings_as_active_conditions_count(code: str) -> None:
    assert run_acp(als(), condition(snomed(code))) == []


@pytest.mark.parametrize(
    ("clinical", "verification"),
    [("resolved", "confirmed"), ("active", "refuted"), ("active", "entered-in-error")],
)
def test_resolved_refuted_or_erroneous_acp_findings_do_not_count(clinical: str, verification: str) -> None:
    assert run_acp(als(), condition(snomed("304253006"), clinical=clinical, verification=verification))


def test_acp_finding_recorded_as_an_observation_code_counts() -> None:
    assert run_acp(als(), observation(snomed("714748000"), days_ago(50))) == []


def test_acp_finding_known_only_by_text_is_not_matched() -> None:
    assert run_acp(als(), condition(concept(coding("urn:oid:1.2.3", "X1"), text="Has advance care plan")))


@pytest.mark.parametrize(
    "value",
    [
        {"valueBoolean": True},
        {"valueCodeableConcept": YES_LOINC},
        {"valueCodeableConcept": snomed("373066001")},
    ],
)
def test_dnr_order_observation_answered_yes_counts(value: dict[str, Any]) -> None:
    obs = observation(DNR_ORDER, days_ago(20))
    obs.update(value)
    assert run_acp(als(), obs) == []


@pytest.mark.parametrize("value", [{"valueBoolean": False}, {"valueCodeableConcept": NO_LOINC}, {}])
def test_dnr_order_observation_not_answered_yes_does_not_count_and_is_shown(value: dict[str, Any]) -> None:
    obs = observation(DNR_ORDER, days_ago(20))
    obs.update(value)
    [finding] = run_acp(als(), obs)
    assert any("does not answer 'yes'" in line for line in finding.evidence)


def test_polst_type_order_observation_answered_yes_counts() -> None:
    obs = observation(loinc("81352-7"), days_ago(20))
    obs["valueBoolean"] = True
    assert run_acp(als(), obs) == []


def test_undated_dnr_order_answered_yes_still_shows_a_plan_exists() -> None:
    obs = observation(DNR_ORDER, None)
    obs["valueBoolean"] = True
    assert run_acp(als(), obs) == []


def test_cancelled_dnr_observation_does_not_count() -> None:
    obs = observation(DNR_ORDER, days_ago(20), status="cancelled")
    obs["valueBoolean"] = True
    assert run_acp(als(), obs)


# -- plans older than a trigger point, and UK documents (finding 14 of the safety review) --------

ACP_PROCEDURE = snomed("713603004", "Advance care planning")
GASTROSTOMY = snomed("54956002", "Gastrostomy")
GASTROSTOMY_STATUS = concept(coding(ICD10CM, "Z93.1", "Gastrostomy status"))
NIV = snomed("428311008", "Noninvasive ventilation")
NIV_DEPENDENT = snomed("713655003", "Dependence on non-invasive ventilation")
RESPECT = snomed(
    "1382601000000107", "ReSPECT (Recommended Summary Plan for Emergency Care and Treatment) form"
)
UK_ACP_DOCUMENT = snomed("736366004", "Advance care plan")
EOL_PLAN = snomed("736373009", "End of life care plan")
ADRT = snomed("816301000000100", "Has advance decision to refuse treatment (Mental Capacity Act 2005)")
DNACPR = snomed("450476008", "Not for attempted cardiopulmonary resuscitation")
ADRT_RETRACTED = snomed("962601000000103", "Advance decision to refuse treatment retracted")


def fvc_percent(days: float, value: float) -> dict[str, Any]:
    return observation(loinc("19872-1", "FVC measured/predicted"), days_ago(days), value, "%")


def acp_done(days: float | None) -> dict[str, Any]:
    return procedure(ACP_PROCEDURE, days_ago(days) if days is not None else None)


@pytest.mark.parametrize(
    ("trigger", "short"),
    [
        (procedure(GASTROSTOMY, days_ago(100)), "gastrostomy"),
        (condition(GASTROSTOMY_STATUS, onset=days_ago(100)), "gastrostomy"),
        (procedure(NIV, days_ago(100), status="in-progress"), "NIV"),
        (procedure(NIV, days_ago(100)), "NIV"),
        (condition(NIV_DEPENDENT, onset=days_ago(100)), "NIV"),
    ],
    ids=["gastrostomy", "gastrostomy-status", "niv-in-progress", "niv-completed", "niv-dependence"],
)
def test_a_plan_older_than_a_trigger_point_brings_the_card_back_as_a_review(
    trigger: dict[str, Any], short: str
) -> None:
    [finding] = run_acp(als(), acp_done(400), trigger)
    assert finding.variant == "review"
    assert finding.fields == {
        "plan_date": days_ago(400).date().isoformat(),
        "trigger": f"{short} ({days_ago(100).date().isoformat()})",
    }
    assert finding.evidence[0].startswith("Latest advance care planning on record: Advance care planning")
    assert any(line.startswith("Since then:") for line in finding.evidence)
    body = render(finding)
    assert empty_values(body) == [] and len(body["summary"]) < 140
    assert body["summary"].startswith(
        f"Offer to review the advance care plan ({days_ago(400).date().isoformat()}): {short}"
    )
    assert "1.7.5" in body["detail"] and "ADRT" in body["detail"] and "DNACPR" in body["detail"]
    assert body["suggestions"][0]["actions"][0]["resource"]["code"]["text"] == "Advance care planning review"


@pytest.mark.parametrize("plan_days", [99, 100])
def test_a_plan_made_on_or_after_the_trigger_point_keeps_the_card_silent(plan_days: int) -> None:
    assert run_acp(als(), acp_done(plan_days), procedure(GASTROSTOMY, days_ago(100))) == []


def test_the_latest_of_several_plans_counts() -> None:
    trigger = procedure(GASTROSTOMY, days_ago(100))
    assert run_acp(als(), acp_done(400), acp_done(50), trigger) == []


def test_the_newest_trigger_is_named_and_every_later_one_listed() -> None:
    [finding] = run_acp(
        als(),
        acp_done(400),
        procedure(GASTROSTOMY, days_ago(200)),
        procedure(NIV, days_ago(60), status="in-progress"),
        procedure(GASTROSTOMY, days_ago(500)),  # before the plan: not listed
    )
    assert finding.fields["trigger"] == f"NIV ({days_ago(60).date().isoformat()})"
    assert sum(line.startswith("Since then:") for line in finding.evidence) == 2


def test_respiratory_decline_after_the_plan_is_a_trigger_point() -> None:
    [finding] = run_acp(als(), acp_done(400), fvc_percent(40, 47), fvc_percent(10, 45))
    assert finding.variant == "review"
    assert finding.fields["trigger"] == f"respiratory decline ({days_ago(40).date().isoformat()})"
    assert any("FVC < 50 % predicted" in line for line in finding.evidence)


def test_respiratory_decline_known_before_the_plan_does_not_bring_it_back() -> None:
    assert run_acp(als(), acp_done(20), fvc_percent(40, 47), fvc_percent(10, 45)) == []


def test_normal_or_stale_respiratory_results_are_no_trigger() -> None:
    assert run_acp(als(), acp_done(400), fvc_percent(10, 85)) == []
    assert run_acp(als(), acp_done(400), fvc_percent(200, 40)) == []


def test_an_undated_plan_counts_as_older_than_a_dated_trigger() -> None:
    dnr = observation(DNR_ORDER, None)
    dnr["valueBoolean"] = True
    [finding] = run_acp(als(), dnr, procedure(GASTROSTOMY, days_ago(30)))
    assert finding.fields["plan_date"] == "date not recorded"
    assert len(render(finding)["summary"]) < 140


def test_undated_or_future_triggers_and_undated_devices_do_not_bring_the_card_back() -> None:
    assert run_acp(als(), acp_done(400), procedure(GASTROSTOMY, None)) == []
    assert run_acp(als(), acp_done(400), procedure(GASTROSTOMY, days_ago(-10))) == []
    assert run_acp(als(), acp_done(400), device(snomed("470571004", "Gastrostomy tube"))) == []


def test_not_done_interventions_are_no_trigger() -> None:
    assert run_acp(als(), acp_done(400), procedure(GASTROSTOMY, days_ago(30), status="not-done")) == []


def test_no_plan_at_all_lists_the_trigger_points_on_the_plain_card() -> None:
    [finding] = run_acp(als(), procedure(GASTROSTOMY, days_ago(30)))
    assert finding.variant is None
    assert any(line.startswith("Gastrostomy on") for line in finding.evidence)


@pytest.mark.parametrize(
    "plan",
    [
        document(RESPECT, days_ago(20)),
        document(UK_ACP_DOCUMENT, days_ago(20)),
        document(EOL_PLAN, days_ago(20)),
        condition(ADRT, onset=days_ago(20)),
        condition(DNACPR, onset=days_ago(20)),
        observation(ADRT, days_ago(20)),
    ],
    ids=["respect", "uk-acp-document", "eol-care-plan", "adrt-problem", "dnacpr-problem", "adrt-observation"],
)
def test_uk_documents_and_decisions_count_as_advance_care_planning(plan: dict[str, Any]) -> None:
    assert run_acp(als(), plan) == []
    # ... with their date: a later gastrostomy brings the card back as a review.
    [finding] = run_acp(als(), plan, procedure(GASTROSTOMY, days_ago(5)))
    assert finding.variant == "review"


def test_a_respect_form_in_the_document_category_counts() -> None:
    doc = document(concept(coding("urn:oid:1.2.3", "FORM-9"), text="Scanned form"), days_ago(20))
    doc["category"] = [RESPECT]
    assert run_acp(als(), doc) == []


def test_a_retracted_adrt_is_not_a_plan() -> None:
    assert run_acp(als(), condition(ADRT_RETRACTED, onset=days_ago(20)))


def test_odd_inputs_never_raise_inside_the_acp_rule() -> None:
    """`evaluate` hides a crash as 'no card'; call the rule directly to prove there is none."""
    from cds_service.rules.care import advance_care_planning

    odd = [
        acp_done(None),
        procedure(GASTROSTOMY, None, status="in-progress"),
        condition(GASTROSTOMY_STATUS, clinical=None),
        condition(NIV_DEPENDENT),
        document(RESPECT, days_ago(-3)),
        observation(ADRT, None),
        observation(loinc("19872-1"), days_ago(3)),
        fvc_percent(3, 0),
    ]
    record = record_from([patient(), als(), *odd], patient_id=PID)
    advance_care_planning(record, RuleConfig())


def test_review_card_summary_stays_under_140_characters_at_the_longest() -> None:
    finding = Finding(
        "advance-care-planning",
        {"plan_date": "date not recorded", "trigger": "respiratory decline (2026-11-22)"},
        (),
        variant="review",
        bindings={"patient_reference": "Patient/x"},
    )
    assert len(render(finding)["summary"]) < 140


# -- the ALS gate and the diagnosis codings ------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_no_card_for_a_patient_without_als(rule: Any) -> None:
    other = condition(concept(coding(SNOMED, "24700007", "Multiple sclerosis"), coding(ICD10CM, "G35")))
    record = record_from([patient(), other], patient_id=PID)
    assert evaluate([rule], record, RuleConfig()) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
@pytest.mark.parametrize(
    ("clinical", "verification"),
    [("active", "refuted"), ("active", "entered-in-error"), ("resolved", "confirmed")],
)
def test_no_card_when_als_is_refuted_erroneous_or_resolved(
    rule: Any, clinical: str, verification: str
) -> None:
    record = record_from([patient(), als(clinical=clinical, verification=verification)], patient_id=PID)
    assert evaluate([rule], record, RuleConfig()) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
@pytest.mark.parametrize(
    "code",
    [
        concept(coding(SNOMED, "86044005")),
        concept(coding(SNOMED, "37340000")),
        concept(coding(ICD10CM, "G12.21")),
        concept(coding(ICD10CM, "G1221")),
    ],
)
def test_als_coded_in_snomed_or_icd10_gets_the_card(rule: Any, code: dict[str, Any]) -> None:
    record = record_from([patient(), condition(code)], patient_id=PID)
    assert len(evaluate([rule], record, RuleConfig())) == 1


def test_rules_run_on_patient_view_only() -> None:
    assert all(rule.hooks == frozenset({"patient-view"}) for rule in RULES)


# -- cards -------------------------------------------------------------------------------------


def test_mdt_card_renders_with_a_draft_mdt_request_and_the_evidence() -> None:
    [finding] = run_mdt(als(), mdt_visit(130))
    body = render(finding)
    assert empty_values(body) == []
    assert len(body["summary"]) < 140 and "92 days" in body["summary"]
    assert body["indicator"] == "info"
    assert "130 days ago" in body["detail"] and "carer" in body["detail"]
    resource = body["suggestions"][0]["actions"][0]["resource"]
    assert resource["status"] == "draft" and resource["subject"] == {"reference": f"Patient/{PID}"}
    assert resource["code"]["coding"][0]["code"] == "312384001"


def test_mdt_card_summary_stays_under_140_characters_at_the_longest() -> None:
    finding = Finding(
        "mdt-review-overdue",
        {"interval_days": "365", "last_mdt": "none in the data received"},
        (),
        bindings={"patient_reference": "Patient/x"},
    )
    assert len(render(finding)["summary"]) < 140


def test_acp_card_renders_with_a_draft_acp_request() -> None:
    [finding] = run_acp(als(onset=days_ago(30)))
    body = render(finding)
    assert empty_values(body) == []
    assert len(body["summary"]) < 140
    assert (
        "ADRT" in body["detail"]
        and "DNACPR" in body["detail"]
        and "Lasting Power of Attorney" in body["detail"]
    )
    resource = body["suggestions"][0]["actions"][0]["resource"]
    assert resource["code"]["coding"][0]["code"] == "713603004" and resource["status"] == "draft"


# -- fixture patients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("care-mdt-overdue-no-acp", ["advance-care-planning", "mdt-review-overdue"]),
        ("care-mdt-recent-acp-documented", []),
        ("care-acp-not-valid", ["advance-care-planning"]),
        ("care-acp-predates-gastrostomy", ["advance-care-planning"]),
        ("care-respect-after-niv", []),
        ("als-riluzole-lft-overdue", ["advance-care-planning", "mdt-review-overdue"]),
        ("no-als-on-riluzole", []),
    ],
)
def test_fixture_patients_get_the_care_cards_their_data_call_for(name: str, expected: list[str]) -> None:
    record = record_from(patient_resources(name), patient_id=name)
    assert sorted(f.rule_id for f in evaluate(RULES, record, RuleConfig())) == expected


def test_overdue_fixture_names_the_last_real_mdt_visit_not_the_cancelled_one() -> None:
    name = "care-mdt-overdue-no-acp"
    record = record_from(patient_resources(name), patient_id=name)
    [finding] = evaluate([MDT_REVIEW_OVERDUE], record, RuleConfig())
    assert finding.fields["last_mdt"] == "2026-07-14"
