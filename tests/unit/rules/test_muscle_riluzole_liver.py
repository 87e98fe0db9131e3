"""Issue 10, finding 10: tizanidine and dantrolene are hepatotoxic, and so is riluzole.

Every card that names tizanidine or dantrolene as an option says so when riluzole is current, and
offers a baseline ALT where they are the suggested step; a draft order for either, for a patient on
riluzole (or with riluzole drafted too), gets its own card. Without current riluzole, nothing changes.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding, Rule
from cds_service.rules.muscle import (
    ANTISPASTIC_ORDER_RILUZOLE,
    CRAMPS_TREATMENT,
    QUININE_ORDER,
    RULES,
    SPASTICITY_TREATMENT,
)
from cds_service.settings import Settings
from tests.factories import PID, als, condition, days_ago, draft_orders, medication_request, rxnorm, snomed
from tests.support import patient_resources, record_from, service_interest

CATALOGUE = cards.load_catalogue(Settings().cards_dir)
NICE = RuleConfig(profile="nice")
US = RuleConfig(profile="us")

SPASTICITY = snomed("221360009", "Spasticity")
CRAMP = snomed("55300003", "Cramp")
RILUZOLE = rxnorm("199206", "riluzole 50 MG Oral Tablet")
TIZANIDINE = rxnorm("313412", "tizanidine 2 MG Oral Tablet")
DANTROLENE = rxnorm("856656", "dantrolene sodium 25 MG Oral Capsule")
BACLOFEN = rxnorm("197391", "baclofen 10 MG Oral Tablet")
GABAPENTIN = rxnorm("310431", "gabapentin 300 MG Oral Capsule")
QUININE = rxnorm("997010", "quinine sulfate 324 MG Oral Capsule")


def riluzole(status: str = "active") -> dict[str, Any]:
    return medication_request(RILUZOLE, status=status, authored=days_ago(400), rid=f"riluzole-{status}")


def run(rule: Rule, *resources: dict[str, Any], config: RuleConfig = NICE) -> list[Finding]:
    return evaluate([rule], record_from(resources, patient_id=PID), config)


def run_order(
    rule: Rule,
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
    return evaluate([rule], record, config)


def render(finding: Finding, profile: str = "nice") -> dict[str, Any]:
    definition = CATALOGUE[finding.rule_id]
    assert definition.placeholders() <= set(finding.fields)
    body = cards.render(finding, definition, profile).to_json()
    assert len(body["summary"]) < 140
    Card.model_validate(body)
    return body


def alt_draft(body: dict[str, Any]) -> dict[str, Any]:
    [suggestion] = body["suggestions"]
    [action] = suggestion["actions"]
    assert action["type"] == "create"
    return action["resource"]  # type: ignore[no-any-return]


# -- spasticity-treatment ------------------------------------------------------------------------


def test_untreated_spasticity_on_riluzole_says_tizanidine_and_dantrolene_are_hepatotoxic() -> None:
    [finding] = run(SPASTICITY_TREATMENT, als(), condition(SPASTICITY), riluzole())
    assert finding.variant == "riluzole"
    assert any(line.startswith("On riluzole") for line in finding.evidence)
    body = render(finding)
    assert "baclofen or gabapentin" in body["summary"]
    assert "aminotransferases at baseline and 1 month after the maximum dose" in body["detail"]
    assert "dantrolene boxed warning" in body["detail"]
    draft = alt_draft(body)
    assert draft["resourceType"] == "ServiceRequest" and draft["status"] == "draft"
    assert draft["code"]["coding"][0]["code"] == "1742-6"


@pytest.mark.parametrize("status", ["stopped", "completed", "cancelled", "draft"])
def test_riluzole_not_current_changes_nothing(status: str) -> None:
    [finding] = run(SPASTICITY_TREATMENT, als(), condition(SPASTICITY), riluzole(status))
    assert finding.variant is None
    assert "hepatotoxic" not in render(finding)["summary"]


def test_two_antispastics_including_tizanidine_on_riluzole_name_riluzole_in_the_evidence() -> None:
    resources = (
        als(),
        condition(SPASTICITY),
        riluzole(),
        medication_request(BACLOFEN),
        medication_request(TIZANIDINE),
    )
    [finding] = run(SPASTICITY_TREATMENT, *resources)
    assert finding.variant == "refer-specialist"
    assert any(line.startswith("On riluzole") for line in finding.evidence)
    resources = (
        als(),
        condition(SPASTICITY),
        riluzole(),
        medication_request(BACLOFEN),
        medication_request(GABAPENTIN),
    )
    [finding] = run(SPASTICITY_TREATMENT, *resources)
    assert not any(line.startswith("On riluzole") for line in finding.evidence)


# -- cramps-treatment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tried", "config", "variant", "offers_alt"),
    [
        ((), NICE, "riluzole", False),
        ((QUININE,), NICE, "nice-baclofen-riluzole", False),
        ((QUININE, BACLOFEN), NICE, "nice-third-line-riluzole", True),
        ((), US, "us-riluzole", False),
        ((BACLOFEN,), US, "us-third-line-riluzole", True),
    ],
)
def test_every_cramp_card_on_riluzole_warns_about_tizanidine_and_dantrolene(
    tried: tuple[dict[str, Any], ...], config: RuleConfig, variant: str, offers_alt: bool
) -> None:
    stopped = [medication_request(m, status="stopped", authored=days_ago(100)) for m in tried]
    [finding] = run(CRAMPS_TREATMENT, als(), condition(CRAMP), riluzole(), *stopped, config=config)
    assert finding.variant == variant
    body = render(finding, config.profile)
    assert "On riluzole:" in body["detail"]
    assert "other hepatotoxic drugs may add to its liver risk" in body["detail"]
    if offers_alt:
        assert "gabapentin" in body["summary"] and "hepatotoxic" in body["summary"]
        assert alt_draft(body)["code"]["coding"][0]["code"] == "1742-6"
    else:
        assert "suggestions" not in body


def test_cramps_without_riluzole_keep_their_card() -> None:
    [finding] = run(CRAMPS_TREATMENT, als(), condition(CRAMP))
    assert finding.variant is None
    assert "On riluzole" not in render(finding)["detail"]


# -- quinine-order -------------------------------------------------------------------------------


def test_the_us_quinine_card_names_riluzole_when_it_is_current() -> None:
    order = medication_request(QUININE, status="draft", rid="q")
    [finding] = run_order(QUININE_ORDER, als(), riluzole(), orders=[order], config=US)
    assert any(line.startswith("On riluzole") for line in finding.evidence)
    assert "Tizanidine and dantrolene can injure the liver" in render(finding, "us")["detail"]


# -- antispastic-order-riluzole ------------------------------------------------------------------


def test_ordering_tizanidine_on_riluzole_gets_a_liver_card_with_a_baseline_alt() -> None:
    order = medication_request(TIZANIDINE, status="draft", rid="t")
    [finding] = run_order(ANTISPASTIC_ORDER_RILUZOLE, als(), riluzole(), orders=[order])
    assert finding.variant is None
    body = render(finding)
    assert body["indicator"] == "info"
    assert "baseline and 1 month after the maximum dose" in body["detail"]
    assert alt_draft(body)["code"]["coding"][0]["code"] == "1742-6"
    assert body["suggestions"][0]["isRecommended"] is True


def test_ordering_dantrolene_on_riluzole_is_a_warning_quoting_the_boxed_warning() -> None:
    order = medication_request(DANTROLENE, status="draft", rid="d")
    [finding] = run_order(ANTISPASTIC_ORDER_RILUZOLE, als(), riluzole(), orders=[order])
    assert finding.variant == "dantrolene"
    body = render(finding)
    assert body["indicator"] == "warning"
    assert "45 days" in body["detail"] and "boxed warning" in body["detail"]


def test_riluzole_drafted_alongside_counts_even_when_not_selected() -> None:
    tizanidine = medication_request(TIZANIDINE, status="draft", rid="t")
    new_riluzole = medication_request(RILUZOLE, status="draft", rid="r")
    [finding] = run_order(
        ANTISPASTIC_ORDER_RILUZOLE,
        als(),
        orders=[tizanidine, new_riluzole],
        selections=("MedicationRequest/t",),
    )
    assert any("Riluzole is being ordered too" in line for line in finding.evidence)


@pytest.mark.parametrize(
    ("resources", "medication"),
    [
        ((als(),), TIZANIDINE),  # no riluzole
        ((als(), riluzole("stopped")), DANTROLENE),  # riluzole stopped
        ((als(), riluzole()), BACLOFEN),  # not hepatotoxic by label
        ((als(), riluzole()), GABAPENTIN),
        ((riluzole(),), TIZANIDINE),  # no MND: the gate
    ],
)
def test_no_liver_card_without_current_riluzole_or_for_other_antispastics(
    resources: tuple[dict[str, Any], ...], medication: dict[str, Any]
) -> None:
    order = medication_request(medication, status="draft", rid="o")
    assert run_order(ANTISPASTIC_ORDER_RILUZOLE, *resources, orders=[order]) == []


# -- fixtures ------------------------------------------------------------------------------------


def test_fixture_on_riluzole_gets_the_liver_warnings_on_every_muscle_card() -> None:
    fixture = "muscle-spasticity-cramps-on-riluzole-tizanidine-draft"
    record = record_from(patient_resources(fixture), patient_id=fixture)
    findings = evaluate([r for r in RULES if "patient-view" in r.hooks], record, NICE)
    assert {(f.rule_id, f.variant) for f in findings} == {
        ("cramps-treatment", "nice-third-line-riluzole"),
        ("spasticity-treatment", "riluzole"),
    }
    for finding in findings:
        render(finding)


def test_fixture_without_current_riluzole_gets_the_plain_spasticity_card() -> None:
    fixture = "muscle-tizanidine-draft-no-riluzole"
    record = record_from(patient_resources(fixture), patient_id=fixture)
    findings = evaluate([r for r in RULES if "patient-view" in r.hooks], record, NICE)
    assert {(f.rule_id, f.variant) for f in findings} == {("spasticity-treatment", None)}
