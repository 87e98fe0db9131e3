"""Nutrition rules: weight loss (ProGas 5 % / 10 %) and dysphagia without gastrostomy (NICE NG42 1.10).

Every test goes through `evaluate`, so the ALS gate is exercised. These rules read no medications,
so the medication cases of the house checklist do not apply; they do not differ between the 'nice'
and 'us' profiles (tested once).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.rules.nutrition import DYSPHAGIA_DISCUSSION, WEIGHT_LOSS, dysphagia_discussion, weight_loss
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    SNOMED,
    als,
    coding,
    concept,
    condition,
    days_ago,
    device,
    loinc,
    observation,
    patient,
    procedure,
    snomed,
)
from tests.support import FIXTURES, patient_resources, record_from

PID = "p1"
CATALOG = cards.load_catalogue(Settings().cards_dir)


def run(rule: Any, *resources: dict[str, Any], config: RuleConfig | None = None) -> list[Finding]:
    record = record_from([patient("female"), *resources], patient_id=PID)
    return evaluate([rule], record, config or RuleConfig())


def weight(days: float, value: float, unit: str = "kg", **kw: Any) -> dict[str, Any]:
    return observation(loinc("29463-7", "Body weight"), days_ago(days), value, unit, **kw)


def dysphagia(*codings: dict[str, str], **kw: Any) -> dict[str, Any]:
    codes = codings or (coding(SNOMED, "40739000", "Dysphagia"),)
    return condition(concept(*codes, text="Dysphagia"), **kw)


def gastrostomy(status: str = "completed") -> dict[str, Any]:
    return procedure(snomed("54956002", "Gastrostomy"), days_ago(60), status=status)


def tube(status: str = "active") -> dict[str, Any]:
    return device(snomed("470571004", "Gastrostomy tube"), status=status)


def gastrostomy_status() -> dict[str, Any]:
    return condition(concept(coding(ICD10CM, "Z93.1", "Gastrostomy status")))


# -- weight-loss-nutrition --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latest", "expected"),
    [
        (95.1, None),  # 4.9 %
        (95.0, ("info", None, "5")),  # 5.0 %
        (90.1, ("info", None, "9.9")),  # 9.9 %
        (90.0, ("warning", "marked", "10")),  # 10.0 %
        (80.0, ("warning", "marked", "20")),
    ],
)
def test_weight_loss_boundaries_at_5_and_10_percent(
    latest: float, expected: tuple[str, Any, str] | None
) -> None:
    findings = run(WEIGHT_LOSS, als(), weight(200, 100.0), weight(100, 98.0), weight(5, latest))
    if expected is None:
        assert findings == []
        return
    [finding] = findings
    assert (finding.indicator, finding.variant, finding.fields["loss_percent"]) == expected


def test_weight_in_pounds_is_converted_and_shown_both_ways() -> None:
    [finding] = run(WEIGHT_LOSS, als(), weight(300, 200, "[lb_av]"), weight(5, 180, "[lb_av]"))
    assert finding.fields["loss_percent"] == "10" and finding.variant == "marked"
    assert finding.fields["peak_kg"] == "90.7" and finding.fields["latest_kg"] == "81.6"
    assert "Latest weight 180 lb (81.6 kg)" in finding.evidence[0]


def test_weight_in_grams_is_converted() -> None:
    assert run(WEIGHT_LOSS, als(), weight(100, 70000, "g"), weight(5, 66000, "g"))


def test_mixed_units_compare_in_kg() -> None:
    [finding] = run(WEIGHT_LOSS, als(), weight(100, 176.36, "[lb_av]"), weight(5, 75.0))
    assert finding.fields["peak_kg"] == "79.9"  # 176.36 lb = 79.9955 kg: cut, not rounded up
    assert finding.fields["loss_percent"] == "6.2"


@pytest.mark.parametrize("unit", ["st", "stone", ""])
def test_weight_in_an_unreadable_unit_is_not_evidence(unit: str) -> None:
    # 11 "st" would look like a 85 % loss if read as kg: it must be ignored, not compared.
    findings = run(WEIGHT_LOSS, als(), weight(100, 72.0), weight(5, 11, unit, ucum=unit or None))
    assert findings == []


def test_an_unreadable_latest_weight_falls_back_to_the_latest_readable_one() -> None:
    [finding] = run(WEIGHT_LOSS, als(), weight(200, 80.0), weight(30, 72.0), weight(2, 11, "st"))
    assert finding.fields["latest_date"] == days_ago(30).date().isoformat()
    assert any("unreadable unit were not used" in line for line in finding.evidence)


def test_the_reference_is_the_highest_weight_not_the_first() -> None:
    [finding] = run(WEIGHT_LOSS, als(), weight(300, 70.0), weight(150, 80.0), weight(5, 75.0))
    assert finding.fields["peak_kg"] == "80" and finding.fields["loss_percent"] == "6.2"


def test_weights_older_than_12_months_are_not_the_reference() -> None:
    assert run(WEIGHT_LOSS, als(), weight(366, 100.0), weight(5, 80.0)) == []
    assert run(WEIGHT_LOSS, als(), weight(365, 100.0), weight(5, 80.0))


def test_weight_gain_or_a_single_weight_fires_nothing() -> None:
    assert run(WEIGHT_LOSS, als(), weight(100, 70.0), weight(5, 75.0)) == []
    assert run(WEIGHT_LOSS, als(), weight(5, 60.0)) == []


def test_a_loss_earlier_in_the_year_that_was_regained_does_not_fire() -> None:
    assert run(WEIGHT_LOSS, als(), weight(200, 80.0), weight(100, 70.0), weight(5, 79.0)) == []


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_weights_without_a_result_status_are_ignored(status: str) -> None:
    assert run(WEIGHT_LOSS, als(), weight(100, 80.0), weight(5, 70.0, status=status)) == []


def test_undated_weight_is_ignored() -> None:
    undated = weight(5, 70.0)
    undated.pop("effectiveDateTime")
    assert run(WEIGHT_LOSS, als(), weight(100, 80.0), undated) == []


def test_body_weight_measured_code_counts() -> None:
    measured = observation(loinc("3141-9"), days_ago(5), 70.0, "kg")
    assert run(WEIGHT_LOSS, als(), weight(100, 80.0), measured)


@pytest.mark.parametrize(("loss_to", "indicator"), [(75.0, "info"), (70.0, "warning")])
def test_with_a_gastrostomy_the_card_is_about_feeding_review(loss_to: float, indicator: str) -> None:
    [finding] = run(WEIGHT_LOSS, als(), tube(), weight(100, 80.0), weight(5, loss_to))
    assert finding.variant == "tube-fed" and finding.indicator == indicator
    assert any("Gastrostomy tube recorded as a device" in line for line in finding.evidence)


def test_evidence_names_both_weights_with_dates_and_the_loss() -> None:
    [finding] = run(WEIGHT_LOSS, als(), weight(120, 72.0), weight(10, 68.1))
    assert finding.evidence[0] == f"Latest weight 68.1 kg on {days_ago(10).date().isoformat()}."
    assert (
        finding.evidence[1]
        == f"Highest weight in the preceding 12 months: 72 kg on {days_ago(120).date().isoformat()}."
    )
    assert finding.evidence[2].startswith("Loss 3.9 kg = 5.4 %")


def test_zero_or_negative_weights_are_ignored_and_never_raise() -> None:
    """`evaluate` hides a crash as 'no card'; call the rule function directly to prove there is none."""
    record = record_from(
        [patient(), als(), weight(100, 0.0), weight(50, -4.0), weight(5, 60.0)], patient_id=PID
    )
    assert weight_loss(record, RuleConfig()) == []
    record = record_from([patient(), als(), weight(100, 80.0), weight(5, 0.0)], patient_id=PID)
    assert weight_loss(record, RuleConfig()) == []
    assert dysphagia_discussion(record, RuleConfig()) == []


# -- dysphagia-gastrostomy-discussion ---------------------------------------------------------


@pytest.mark.parametrize(
    "codings",
    [
        (coding(SNOMED, "40739000"),),
        (coding(ICD10CM, "R13.12"),),
        (coding(ICD10CM, "R1310"),),
        (coding("urn:oid:1.2.3", "LOCAL-9"), coding(ICD10CM, "R13.19")),
        (coding("urn:oid:2.16.840.1.113883.6.96", "40739000"),),
    ],
    ids=["snomed", "icd10cm-dotted", "icd10cm-undotted", "second-coding", "snomed-oid"],
)
def test_dysphagia_without_gastrostomy_fires(codings: tuple[dict[str, str], ...]) -> None:
    [finding] = run(DYSPHAGIA_DISCUSSION, als(), dysphagia(*codings))
    assert finding.fields == {"dysphagia": "Dysphagia"}
    assert "No gastrostomy procedure" in finding.evidence[1]


def test_dysphagia_named_only_in_text_is_not_a_diagnosis() -> None:
    text_only = condition(concept(coding("urn:oid:1.2.3", "LOCAL-9"), text="Dysphagia"))
    assert run(DYSPHAGIA_DISCUSSION, als(), text_only) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clinical": "resolved"},
        {"clinical": "inactive"},
        {"verification": "refuted"},
        {"verification": "entered-in-error"},
    ],
)
def test_resolved_or_refuted_dysphagia_does_not_fire(kwargs: dict[str, str]) -> None:
    assert run(DYSPHAGIA_DISCUSSION, als(), dysphagia(**kwargs)) == []


@pytest.mark.parametrize(
    "record_of_tube",
    [gastrostomy(), gastrostomy("in-progress"), tube(), gastrostomy_status()],
    ids=["procedure", "procedure-in-progress", "device", "z93.1"],
)
def test_no_card_when_a_gastrostomy_is_on_record(record_of_tube: dict[str, Any]) -> None:
    assert run(DYSPHAGIA_DISCUSSION, als(), dysphagia(), record_of_tube) == []


@pytest.mark.parametrize(
    "not_a_tube",
    [gastrostomy("not-done"), gastrostomy("entered-in-error"), tube("inactive"), tube("entered-in-error")],
    ids=["not-done", "procedure-error", "device-inactive", "device-error"],
)
def test_a_gastrostomy_not_done_or_removed_does_not_silence_the_card(not_a_tube: dict[str, Any]) -> None:
    assert run(DYSPHAGIA_DISCUSSION, als(), dysphagia(), not_a_tube)


# -- the ALS gate and profiles ----------------------------------------------------------------


@pytest.mark.parametrize(
    "condition_kwargs",
    [{"verification": "refuted"}, {"verification": "entered-in-error"}, {"clinical": "resolved"}],
)
def test_no_nutrition_card_without_an_active_als_diagnosis(condition_kwargs: dict[str, str]) -> None:
    resources = (als(**condition_kwargs), dysphagia(), weight(100, 80.0), weight(5, 60.0))
    assert run(WEIGHT_LOSS, *resources) == []
    assert run(DYSPHAGIA_DISCUSSION, *resources) == []


def test_icd10_coded_als_passes_the_gate() -> None:
    als_icd = condition(concept(coding(ICD10CM, "G12.21")), rid="als")
    assert run(DYSPHAGIA_DISCUSSION, als_icd, dysphagia())


def test_profile_does_not_change_the_nutrition_rules() -> None:
    resources = (als(), dysphagia(), weight(100, 80.0), weight(5, 70.0))
    for rule in (WEIGHT_LOSS, DYSPHAGIA_DISCUSSION):
        assert run(rule, *resources, config=RuleConfig(profile="us")) == run(rule, *resources)


# -- cards ------------------------------------------------------------------------------------


def no_empty_values(value: Any) -> bool:
    if value is None or value in ("", [], {}):
        return False
    if isinstance(value, dict):
        return all(no_empty_values(v) for v in value.values())
    if isinstance(value, list):
        return all(no_empty_values(v) for v in value)
    return True


def render(finding: Finding) -> dict[str, Any]:
    definition = CATALOG[finding.rule_id]
    assert definition.placeholders() <= set(finding.fields)
    body = cards.render(finding, definition).to_json()
    Card.model_validate(body)
    assert len(body["summary"]) < 140, body["summary"]
    assert no_empty_values(body), json.dumps(body, indent=1)
    return body


def test_weight_cards_render_in_every_variant() -> None:
    cases = {
        None: (weight(100, 80.0), weight(5, 75.0)),
        "marked": (weight(100, 80.0), weight(5, 70.0)),
        "tube-fed": (tube(), weight(100, 80.0), weight(5, 70.0)),
    }
    for variant, resources in cases.items():
        [finding] = run(WEIGHT_LOSS, als(), *resources)
        assert finding.variant == variant
        body = render(finding)
        assert body["indicator"] == finding.indicator
        resource = body["suggestions"][0]["actions"][0]["resource"]
        assert resource["status"] == "draft" and resource["subject"] == {"reference": f"Patient/{PID}"}
    assert "Discuss gastrostomy now" in render(run(WEIGHT_LOSS, als(), *cases["marked"])[0])["detail"]


def test_dysphagia_card_renders_with_slt_and_dietitian_suggestions() -> None:
    [finding] = run(DYSPHAGIA_DISCUSSION, als(), dysphagia())
    body = render(finding)
    assert body["indicator"] == "info"
    codes = [s["actions"][0]["resource"]["code"]["coding"][0]["code"] for s in body["suggestions"]]
    assert codes == ["410161005", "103699006"]


def test_longest_summaries_stay_under_140_characters() -> None:
    weight_fields = {
        "loss_percent": "99.9",
        "latest_kg": "999.9",
        "latest_date": "2026-11-22",
        "peak_kg": "999.9",
        "peak_date": "2026-11-22",
    }
    worst = {
        "weight-loss-nutrition": weight_fields,
        "dysphagia-gastrostomy-discussion": {"dysphagia": "x" * 200},
    }
    for rule_id, fields in worst.items():
        for variant in (None, *CATALOG[rule_id].variants):
            finding = Finding(
                rule_id, fields, (), variant=variant, bindings={"patient_reference": "Patient/x"}
            )
            assert len(cards.render(finding, CATALOG[rule_id]).summary) < 140, (rule_id, variant)


# -- fixtures ---------------------------------------------------------------------------------


def test_fixture_patients_get_exactly_the_expected_nutrition_cards() -> None:
    expected = json.loads((FIXTURES / "expected" / "nutrition.json").read_text())
    assert {
        "nutrition-weight-loss-5",
        "nutrition-weight-loss-dysphagia",
        "nutrition-gastrostomy-in-place",
    } <= set(expected)
    for name, hooks in expected.items():
        record = record_from(patient_resources(name), patient_id=name)
        found = [f.rule_id for f in evaluate([WEIGHT_LOSS, DYSPHAGIA_DISCUSSION], record, RuleConfig())]
        assert found == hooks["patient-view"], name
        assert hooks["order-select"] == hooks["order-sign"] == []


def test_fixture_in_pounds_with_dysphagia_and_a_deferred_gastrostomy() -> None:
    name = "nutrition-weight-loss-dysphagia"
    record = record_from(patient_resources(name), patient_id=name)
    weight_card, dysphagia_card = evaluate([WEIGHT_LOSS, DYSPHAGIA_DISCUSSION], record, RuleConfig())
    assert weight_card.variant == "marked" and weight_card.fields["loss_percent"] == "12"
    assert "160 lb (72.5 kg)" in weight_card.evidence[0]
    render(weight_card)
    render(dysphagia_card)
