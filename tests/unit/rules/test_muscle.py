"""Muscle rules (NICE NG42 1.8.2-1.8.3; MHRA and FDA on quinine): cramps ladder, spasticity, quinine
orders, for the 'nice' and the 'us' profile: when they fire, when not, and the cards they make."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding, Rule
from cds_service.rules.muscle import (
    CRAMPS_TREATMENT,
    QUININE_ORDER,
    RULES,
    SPASTICITY_TREATMENT,
    SPECIALIST_REFERRAL_AT,
)
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    PID,
    als,
    coding,
    concept,
    condition,
    days_ago,
    draft_orders,
    medication_request,
    rxnorm,
    snomed,
)
from tests.support import patient_resources, record_from, service_interest

CATALOGUE = cards.load_catalogue(Settings().cards_dir)
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288"
NICE = RuleConfig(profile="nice")
US = RuleConfig(profile="us")

CRAMP = snomed("55300003", "Cramp")
SPASTICITY = snomed("221360009", "Spasticity")
QUININE = rxnorm("997010", "quinine sulfate 324 MG Oral Capsule")
BACLOFEN = rxnorm("197391", "baclofen 10 MG Oral Tablet")
TIZANIDINE = rxnorm("313412", "tizanidine 2 MG Oral Tablet")
DANTROLENE = rxnorm("856656", "dantrolene sodium 25 MG Oral Capsule")
GABAPENTIN = rxnorm("310431", "gabapentin 300 MG Oral Capsule")


def named(text: str) -> dict[str, Any]:
    """A medication known only by its name, as UK records send it (local code, no RxNorm)."""
    return concept(coding(LOCAL, "12345", text), text=text)


def cramps(**kwargs: Any) -> dict[str, Any]:
    return condition(CRAMP, onset=days_ago(40), **kwargs)


def spasticity(**kwargs: Any) -> dict[str, Any]:
    return condition(SPASTICITY, onset=days_ago(200), **kwargs)


def run(rule: Rule, *resources: dict[str, Any], config: RuleConfig = NICE) -> list[Finding]:
    return evaluate([rule], record_from(resources, patient_id=PID), config)


def run_order(
    *resources: dict[str, Any],
    orders: list[dict[str, Any]],
    selections: tuple[str, ...] = (),
    config: RuleConfig = NICE,
) -> list[Finding]:
    record = record_from(
        resources,
        patient_id=PID,
        interest=service_interest("als-order-select"),
        draft_orders=draft_orders(*orders),
        selections=selections,
    )
    return evaluate([QUININE_ORDER], record, config)


def no_empty_values(value: Any, path: str = "$") -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in no_empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in no_empty_values(v, f"{path}[{i}]")]
    return []


def render(finding: Finding) -> dict[str, Any]:
    definition = CATALOGUE[finding.rule_id]
    assert definition.placeholders() <= set(finding.fields)
    body = cards.render(finding, definition).to_json()
    assert no_empty_values(body) == []
    assert len(body["summary"]) < 140
    Card.model_validate(body)
    return body


def test_module_lists_its_four_rules_with_the_right_hooks() -> None:
    assert {rule.id: rule.hooks for rule in RULES} == {
        "cramps-treatment": frozenset({"patient-view"}),
        "spasticity-treatment": frozenset({"patient-view"}),
        "quinine-order": frozenset({"order-select", "order-sign"}),
        "antispastic-order-riluzole": frozenset({"order-select", "order-sign"}),
    }


# -- cramps-treatment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        CRAMP,
        concept(coding(ICD10CM, "R25.2", "Cramp and spasm")),
        concept(coding(ICD10CM, "R252")),
        concept(coding(ICD10, "R25.2")),
    ],
)
def test_untreated_cramps_get_quinine_first_line_under_nice(code: dict[str, Any]) -> None:
    [finding] = run(CRAMPS_TREATMENT, als(), condition(code))
    assert finding.variant is None
    assert finding.fields["tried"] == "none on record"
    body = render(finding)
    assert body["indicator"] == "info"
    assert "quinine first line" in body["summary"]
    assert "4-week trial" in body["detail"] and "QT prolongation" in body["detail"]


def test_untreated_cramps_under_the_us_profile_start_with_baclofen_and_warn_off_quinine() -> None:
    [finding] = run(CRAMPS_TREATMENT, als(), cramps(), config=US)
    assert finding.variant == "us"
    body = render(finding)
    assert "baclofen" in body["summary"] and "not for cramps" in body["summary"]
    assert "should not be used for night-time leg cramps" in body["detail"]


@pytest.mark.parametrize(
    "medication",
    [
        QUININE,
        rxnorm("9071", "quinine"),
        named("Quinine bisulfate 300 mg tablets"),
        BACLOFEN,
        named("Lioresal 10 mg tablets"),
        TIZANIDINE,
        named("Zanaflex 4 mg"),
        DANTROLENE,
        GABAPENTIN,
        named("Neurontin 100 mg capsules"),
    ],
)
@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_no_cramp_card_while_a_cramp_treatment_is_current(medication: dict[str, Any], status: str) -> None:
    request = medication_request(medication, status=status)
    assert run(CRAMPS_TREATMENT, als(), cramps(), request) == []
    assert run(CRAMPS_TREATMENT, als(), cramps(), request, config=US) == []


@pytest.mark.parametrize(
    ("tried", "nice_variant", "us_variant"),
    [
        ([], None, "us"),
        ([QUININE], "nice-baclofen", "us"),
        ([named("Quinine sulfate 200 mg tablets")], "nice-baclofen", "us"),
        ([BACLOFEN], None, "us-third-line"),  # NICE still starts with quinine if it was never tried
        ([QUININE, BACLOFEN], "nice-third-line", "us-third-line"),
        (
            [QUININE, named("Baclofen 5 mg/5 mL oral solution"), GABAPENTIN],
            "nice-third-line",
            "us-third-line",
        ),
    ],
)
def test_cramp_card_moves_down_the_ladder_after_what_was_tried(
    tried: list[dict[str, Any]], nice_variant: str | None, us_variant: str
) -> None:
    past = [medication_request(m, status="stopped", authored=days_ago(200)) for m in tried]
    [nice] = run(CRAMPS_TREATMENT, als(), cramps(), *past)
    [us] = run(CRAMPS_TREATMENT, als(), cramps(), *past, config=US)
    assert (nice.variant, us.variant) == (nice_variant, us_variant)
    assert sum("Tried before" in line for line in nice.evidence) == len(tried)
    render(nice)
    render(us)


@pytest.mark.parametrize("status", ["completed", "stopped"])
def test_completed_and_stopped_quinine_count_as_tried(status: str) -> None:
    [finding] = run(CRAMPS_TREATMENT, als(), cramps(), medication_request(QUININE, status=status))
    assert finding.variant == "nice-baclofen"
    assert finding.fields["tried"] == "quinine sulfate 324 MG Oral Capsule"


@pytest.mark.parametrize("status", ["draft", "cancelled", "entered-in-error"])
def test_quinine_that_was_never_given_does_not_count_as_tried(status: str) -> None:
    [finding] = run(CRAMPS_TREATMENT, als(), cramps(), medication_request(QUININE, status=status))
    assert finding.variant is None


@pytest.mark.parametrize(
    "resource",
    [
        cramps(clinical="resolved"),
        cramps(clinical="inactive"),
        cramps(verification="refuted"),
        cramps(verification="entered-in-error"),
        condition(concept(text="Cramps at night")),  # text only: never a diagnosis
        condition(snomed("51197009", "Stomach cramps")),  # a child concept is not in the value set
    ],
)
def test_no_cramp_card_without_an_active_coded_cramp(resource: dict[str, Any]) -> None:
    assert run(CRAMPS_TREATMENT, als(), resource) == []


def test_no_cramp_card_without_als() -> None:
    assert run(CRAMPS_TREATMENT, cramps()) == []


# -- spasticity-treatment ----------------------------------------------------------------------


def test_untreated_spasticity_suggests_an_antispastic() -> None:
    [finding] = run(SPASTICITY_TREATMENT, als(), spasticity())
    assert finding.variant is None
    assert "No current baclofen" in " ".join(finding.evidence)
    body = render(finding)
    assert "NICE NG42 1.8.3" in body["summary"]


@pytest.mark.parametrize(
    ("current", "variant"),
    [
        ([], None),
        ([BACLOFEN], "no card"),
        ([named("Dantrium 25 mg capsules")], "no card"),
        ([BACLOFEN, rxnorm("250976", "baclofen 1 MG/ML Oral Solution")], "no card"),  # one drug, two requests
        ([BACLOFEN, TIZANIDINE], "refer-specialist"),
        ([BACLOFEN, TIZANIDINE, GABAPENTIN], "refer-specialist"),
        ([named("Lioresal 10 mg"), named("Gabapentin 300 mg")], "refer-specialist"),
    ],
)
def test_spasticity_card_depends_on_the_number_of_different_current_antispastics(
    current: list[dict[str, Any]], variant: str | None
) -> None:
    findings = run(SPASTICITY_TREATMENT, als(), spasticity(), *(medication_request(m) for m in current))
    if variant == "no card":
        assert findings == []
        return
    [finding] = findings
    assert finding.variant == variant
    render(finding)


def test_the_referral_threshold_is_two_different_antispastics() -> None:
    assert SPECIALIST_REFERRAL_AT == 2
    one = run(SPASTICITY_TREATMENT, als(), spasticity(), medication_request(BACLOFEN))
    two = run(
        SPASTICITY_TREATMENT,
        als(),
        spasticity(),
        medication_request(BACLOFEN),
        medication_request(DANTROLENE),
    )
    assert one == [] and [f.variant for f in two] == ["refer-specialist"]


def test_referral_card_names_the_antispastics_and_drafts_a_referral() -> None:
    [finding] = run(
        SPASTICITY_TREATMENT,
        als(),
        spasticity(),
        medication_request(BACLOFEN),
        medication_request(TIZANIDINE),
    )
    assert "2 different antispastics at once (baclofen, tizanidine)." in finding.evidence
    body = render(finding)
    resource = body["suggestions"][0]["actions"][0]["resource"]
    assert resource["resourceType"] == "ServiceRequest" and resource["status"] == "draft"
    assert resource["subject"] == {"reference": f"Patient/{PID}"}


def test_stopped_antispastics_are_not_current_but_are_listed_as_tried() -> None:
    past = medication_request(BACLOFEN, status="stopped", authored=days_ago(300))
    [finding] = run(SPASTICITY_TREATMENT, als(), spasticity(), past)
    assert finding.variant is None
    assert any(line.startswith("Tried before: baclofen") for line in finding.evidence)


@pytest.mark.parametrize(
    "resource",
    [
        spasticity(clinical="resolved"),
        spasticity(verification="refuted"),
        condition(concept(text="Spastic legs")),
    ],
)
def test_no_spasticity_card_without_active_coded_spasticity(resource: dict[str, Any]) -> None:
    assert run(SPASTICITY_TREATMENT, als(), resource) == []


def test_no_spasticity_card_without_als() -> None:
    assert run(SPASTICITY_TREATMENT, spasticity()) == []


# -- quinine-order -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "medication",
    [
        QUININE,
        rxnorm("997012", "quinine sulfate 324 MG Oral Capsule [Qualaquin]"),
        named("Quinine sulfate 200mg tablets"),
    ],
)
def test_quinine_order_under_nice_gets_the_mhra_cautions(medication: dict[str, Any]) -> None:
    order = medication_request(medication, status="draft", rid="q1")
    [finding] = run_order(als(), cramps(), orders=[order])
    assert finding.variant is None
    assert any(line.startswith("Cramps recorded") for line in finding.evidence)
    body = render(finding)
    assert body["indicator"] == "info"
    assert "suggestions" not in body
    for words in (
        "4-week trial",
        "QT prolongation",
        "phenobarbital and carbamazepine",
        "200-300 mg at night",
    ):
        assert words in body["detail"]


def test_quinine_order_under_the_us_profile_is_a_warning_with_removal() -> None:
    order = medication_request(QUININE, status="draft", rid="q1")
    [finding] = run_order(als(), orders=[order], selections=("MedicationRequest/q1",), config=US)
    assert finding.variant == "us"
    body = render(finding)
    assert body["indicator"] == "warning"
    assert "only for malaria" in body["summary"]
    [action] = body["suggestions"][0]["actions"]
    assert action["type"] == "delete" and action["resourceId"] == "MedicationRequest/q1"


def test_us_quinine_draft_without_an_id_still_warns_without_removal() -> None:
    order = medication_request(QUININE, status="draft")
    del order["id"]
    [finding] = run_order(als(), orders=[order], config=US)
    assert finding.variant == "us-no-reference"
    body = render(finding)
    assert body["indicator"] == "warning" and "suggestions" not in body


@pytest.mark.parametrize(
    "medication",
    [named("Quinidine sulfate 200 mg tablets"), named("Quinapril 10 mg tablets"), BACLOFEN, GABAPENTIN],
)
def test_orders_that_are_not_quinine_get_no_quinine_card(medication: dict[str, Any]) -> None:
    order = medication_request(medication, status="draft", rid="d")
    assert run_order(als(), cramps(), orders=[order]) == []
    assert run_order(als(), cramps(), orders=[order], config=US) == []


def test_quinine_order_select_looks_only_at_the_selected_orders() -> None:
    quinine = medication_request(QUININE, status="draft", rid="q")
    other = medication_request(BACLOFEN, status="draft", rid="b")
    assert run_order(als(), orders=[quinine, other], selections=("MedicationRequest/b",)) == []
    assert len(run_order(als(), orders=[quinine, other], selections=("MedicationRequest/q",))) == 1


def test_quinine_order_for_a_patient_without_als_gets_no_card() -> None:
    order = medication_request(QUININE, status="draft", rid="q")
    assert run_order(cramps(), orders=[order]) == []


def test_each_quinine_draft_gets_its_own_card() -> None:
    orders = [medication_request(QUININE, status="draft", rid=r) for r in ("q1", "q2")]
    findings = run_order(als(), orders=orders, config=US)
    assert sorted(f.bindings["draft_reference"] for f in findings) == [
        "MedicationRequest/q1",
        "MedicationRequest/q2",
    ]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # On riluzole: the card adds the liver warnings of tizanidine and dantrolene.
        ("muscle-cramps-untreated", {("cramps-treatment", "riluzole")}),
        ("muscle-spasticity-two-antispastics-quinine-draft", {("spasticity-treatment", "refer-specialist")}),
        (
            "muscle-quinine-stopped-spasticity-untreated",
            {("cramps-treatment", "nice-baclofen"), ("spasticity-treatment", None)},
        ),
        ("muscle-spasticity-on-baclofen", set()),
        ("als-riluzole-lft-overdue", set()),
    ],
)
def test_fixture_patients_get_the_muscle_cards_their_data_call_for(fixture: str, expected: set[Any]) -> None:
    record = record_from(patient_resources(fixture), patient_id=fixture)
    findings = evaluate(RULES, record, NICE)
    assert {(f.rule_id, f.variant) for f in findings} == expected
    for finding in findings:
        render(finding)
