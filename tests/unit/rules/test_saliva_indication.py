"""Issue 10, findings 6 and 8: what an antimuscarinic is for, how a current one is stopped, and which
glycopyrronium product the cards draft under each guideline profile.

6. An antimuscarinic prescribed for another coded reason (amitriptyline for depression) is not a
   drooling treatment: no switch card, and it does not count as "tried for saliva". A current order is
   stopped (update, status 'stopped', statusReason), never deleted; drugs whose labels ask for gradual
   withdrawal get no stop action at all. Deleting is for drafts only.
8. The glycopyrronium draft names salt, strength and route, per profile: UK glycopyrronium bromide
   1 mg/5 mL by name (never Sialanar, never a US code), US glycopyrrolate RxNorm 999961.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding, Rule
from cds_service.rules.saliva import (
    ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT,
    ANTIMUSCARINIC_ORDER_COGNITIVE_IMPAIRMENT,
    RULES,
    SIALORRHOEA_TREATMENT,
    indication,
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
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288"

DROOLING = snomed("53827007", "Excessive salivation")
DEPRESSION = snomed("35489007", "Depressive disorder")
PARKINSONISM = snomed("32798002", "Parkinsonism")
DEMENTIA_F03911 = concept(
    coding(ICD10CM, "F03.911", "Unspecified dementia, unspecified severity, with agitation")
)
AMITRIPTYLINE = rxnorm("856783", "amitriptyline hydrochloride 10 MG Oral Tablet")
HYOSCINE_PATCH = rxnorm("226552", "72 HR scopolamine 0.0139 MG/HR Transdermal System")
TRIHEXYPHENIDYL = rxnorm("905269", "trihexyphenidyl hydrochloride 2 MG Oral Tablet")
ATROPINE_DROPS = concept(
    coding(LOCAL, "555", "Atropine 1% eye drops"), text="Atropine 1% eye drops, under the tongue"
)
NICE = RuleConfig(profile="nice")
US = RuleConfig(profile="us")


def dementia() -> dict[str, Any]:
    return condition(DEMENTIA_F03911, onset=days_ago(300), rid="dementia")


def drooling() -> dict[str, Any]:
    return condition(DROOLING, onset=days_ago(60), rid="drool")


def with_reason(
    request: dict[str, Any], *, codes: list[dict[str, Any]] | None = None, refs: list[str] | None = None
) -> dict[str, Any]:
    if codes is not None:
        request["reasonCode"] = codes
    if refs is not None:
        request["reasonReference"] = [{"reference": r} for r in refs]
    return request


def run(rule: Rule, *resources: dict[str, Any], config: RuleConfig = NICE) -> list[Finding]:
    return evaluate([rule], record_from(resources, patient_id=PID), config)


def run_order(
    *resources: dict[str, Any], orders: list[dict[str, Any]], config: RuleConfig = NICE
) -> list[Finding]:
    record = record_from(
        resources,
        patient_id=PID,
        interest=service_interest("als-order-sign"),
        draft_orders=draft_orders(*orders),
    )
    return evaluate([ANTIMUSCARINIC_ORDER_COGNITIVE_IMPAIRMENT], record, config)


def render(finding: Finding, profile: str = "nice") -> dict[str, Any]:
    definition = CATALOGUE[finding.rule_id]
    assert definition.placeholders() <= set(finding.fields)
    body = cards.render(finding, definition, profile).to_json()
    assert len(body["summary"]) < 140
    Card.model_validate(body)
    return body


def actions(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for s in body.get("suggestions", []) for a in s["actions"]]


# -- finding 6: the request's coded reason -------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        {"codes": [DEPRESSION]},
        {"refs": ["Condition/depression"]},  # a condition the record does not hold: not drooling
        {"codes": [concept(text="Low mood"), DEPRESSION]},
    ],
)
def test_amitriptyline_for_depression_is_not_a_drooling_treatment_to_swap(reason: dict[str, Any]) -> None:
    request = with_reason(medication_request(AMITRIPTYLINE, rid="ami"), **reason)
    assert run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), request) == []


def test_trihexyphenidyl_for_parkinsonism_referenced_as_a_condition_is_not_swapped() -> None:
    parkinsonism = condition(PARKINSONISM, rid="pd")
    request = with_reason(medication_request(TRIHEXYPHENIDYL), refs=["Condition/pd"])
    assert (
        run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), parkinsonism, request) == []
    )


@pytest.mark.parametrize(
    "reason",
    [{"codes": [DROOLING]}, {"refs": ["Condition/drool"]}, {"codes": [DEPRESSION, DROOLING]}],
)
def test_a_drooling_reason_by_code_or_reference_is_a_saliva_treatment(reason: dict[str, Any]) -> None:
    request = with_reason(medication_request(HYOSCINE_PATCH, rid="h"), **reason)
    # No drooling on the problem list needed when the order itself says so (by code) ...
    resources = (
        (als(), dementia(), request) if "codes" in reason else (als(), dementia(), drooling(), request)
    )
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, *resources)
    assert finding.variant is None
    assert any("coded reason is drooling" in line for line in finding.evidence)


def test_a_reason_given_only_as_text_leaves_the_indication_unknown() -> None:
    request = with_reason(medication_request(HYOSCINE_PATCH), codes=[concept(text="for drooling")])
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), request)
    assert finding.variant == "indication-not-recorded"
    assert any("could not be read as a code (for drooling)" in line for line in finding.evidence)


def test_an_unresolvable_reference_is_unknown_when_some_condition_could_not_be_read() -> None:
    request = with_reason(medication_request(HYOSCINE_PATCH), refs=["Condition/elsewhere"])
    record = record_from((als(), dementia(), request), patient_id=PID)
    assert indication(record, record.medications[0]).kind == "other"
    record.unread["Condition"] += 1
    assert indication(record, record.medications[0]).kind == "unknown"
    fullurl = with_reason(
        medication_request(HYOSCINE_PATCH), refs=["urn:uuid:8c1f0c5e-0000-4000-8000-000000000001"]
    )
    record = record_from((als(), dementia(), fullurl), patient_id=PID)
    assert indication(record, record.medications[0]).kind == "unknown"


def test_a_request_without_a_reason_has_indication_none() -> None:
    record = record_from((als(), medication_request(HYOSCINE_PATCH)), patient_id=PID)
    assert indication(record, record.medications[0]).kind == "none"


def test_an_antimuscarinic_for_another_reason_does_not_count_as_tried_for_saliva() -> None:
    request = with_reason(medication_request(AMITRIPTYLINE, rid="ami"), codes=[DEPRESSION])
    # Without impaired cognition: still "no antimuscarinic tried" (not "refer for botulinum toxin").
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), request)
    assert finding.variant is None
    assert any(
        line.startswith("Not counted as a saliva treatment: amitriptyline") for line in finding.evidence
    )
    # With impaired cognition: glycopyrrolate first line is still offered (no switch card stands for it).
    [finding] = run(SIALORRHOEA_TREATMENT, als(), dementia(), drooling(), request)
    assert finding.variant == "cognitive-impairment"
    assert "glycopyrronium_draft" in finding.bindings


def test_a_stopped_antimuscarinic_for_another_reason_is_not_listed() -> None:
    request = with_reason(medication_request(AMITRIPTYLINE, status="stopped"), codes=[DEPRESSION])
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), request)
    assert finding.variant is None
    assert not any("Not counted" in line for line in finding.evidence)


def test_a_draft_ordered_for_another_reason_gets_no_order_card() -> None:
    order = with_reason(medication_request(AMITRIPTYLINE, status="draft", rid="d"), codes=[DEPRESSION])
    assert run_order(als(), dementia(), drooling(), orders=[order]) == []


# -- finding 6: stop, never delete, a current treatment ------------------------------------------


def test_a_current_order_is_stopped_with_a_reason_not_deleted() -> None:
    request = with_reason(medication_request(HYOSCINE_PATCH, rid="h-1"), codes=[DROOLING])
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), request)
    body = render(finding)
    stop, create = actions(body)
    assert stop["type"] == "update"
    # An update replaces the whole order in the EHR: the order goes back as it was sent (its
    # reason and dosage kept), with only its status and statusReason changed.
    expected = {
        **request,
        "status": "stopped",
        "statusReason": {
            "text": "Switched to glycopyrronium: centrally acting antimuscarinic with impaired cognition "
            "(NICE NG42 1.8.13)"
        },
    }
    expected.pop("text", None)
    assert stop["resource"] == expected
    assert create["type"] == "create"


@pytest.mark.parametrize(
    "medication", [AMITRIPTYLINE, TRIHEXYPHENIDYL, concept(coding(LOCAL, "9", "Benzatropine 1 mg tablets"))]
)
def test_drugs_whose_labels_ask_for_gradual_withdrawal_get_no_stop_action(medication: dict[str, Any]) -> None:
    request = with_reason(medication_request(medication), codes=[DROOLING])
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), request)
    assert finding.variant == "withdraw-gradually"
    body = render(finding)
    assert [a["type"] for a in actions(body)] == ["create"]
    assert "Withdraw" in body["detail"] and "gradually, not abruptly" in body["detail"]


def test_hyoscine_and_atropine_are_stopped_directly() -> None:
    for medication in (HYOSCINE_PATCH, ATROPINE_DROPS):
        request = with_reason(medication_request(medication), codes=[DROOLING])
        [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), request)
        assert [a["type"] for a in actions(render(finding))] == ["update", "create"]


def test_no_card_of_the_saliva_rules_deletes_anything_but_a_draft() -> None:
    for definition in (CATALOGUE[r.id] for r in RULES):
        suggestion_sets = [definition.suggestions] + [
            v.suggestions for v in definition.variants.values() if v.suggestions is not None
        ]
        for suggestions in suggestion_sets:
            for suggestion in suggestions:
                for action in suggestion.actions:
                    if action.type == "delete":
                        assert action.resourceId == "$draft_reference", definition.rule_id


# -- finding 8: the glycopyrronium draft per profile ---------------------------------------------


def _draft(finding: Finding, profile: str) -> dict[str, Any]:
    [create] = [a for a in actions(render(finding, profile)) if a["type"] == "create"]
    return create["resource"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("rule", "resources"),
    [
        (SIALORRHOEA_TREATMENT, lambda: (als(), dementia(), drooling())),
        (
            ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT,
            lambda: (als(), dementia(), drooling(), medication_request(HYOSCINE_PATCH)),
        ),
    ],
)
def test_the_uk_draft_names_salt_strength_and_route_and_carries_no_us_code(
    rule: Rule, resources: Any
) -> None:
    [finding] = run(rule, *resources(), config=NICE)
    draft = _draft(finding, "nice")
    assert draft["medicationCodeableConcept"] == {"text": "Glycopyrronium bromide 1 mg/5 mL oral solution"}
    [dosage] = draft["dosageInstruction"]
    assert dosage["route"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral route"}]
    }
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 200
    assert dosage["doseAndRate"][0]["doseQuantity"]["code"] == "ug"
    assert dosage["timing"] == {"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}}
    assert (
        "200 micrograms of glycopyrronium bromide (1 mL of the 1 mg/5 mL oral solution) by mouth"
        in dosage["text"]
    )
    assert (
        "Not Sialanar (320 micrograms/mL glycopyrronium = 400 micrograms/mL glycopyrronium bromide)"
        in dosage["text"]
    )
    assert finding.fields["glycopyrronium_product"] == "glycopyrronium bromide 1 mg/5 mL oral solution"


@pytest.mark.parametrize(
    ("rule", "resources"),
    [
        (SIALORRHOEA_TREATMENT, lambda: (als(), dementia(), drooling())),
        (
            ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT,
            lambda: (als(), dementia(), drooling(), medication_request(HYOSCINE_PATCH)),
        ),
    ],
)
def test_the_us_draft_is_glycopyrrolate_rxnorm_999961_by_mouth(rule: Rule, resources: Any) -> None:
    [finding] = run(rule, *resources(), config=US)
    draft = _draft(finding, "us")
    assert draft["medicationCodeableConcept"]["coding"] == [
        {
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "999961",
            "display": "glycopyrrolate 0.2 MG/ML Oral Solution",
        }
    ]
    assert "glycopyrronium bromide" in draft["medicationCodeableConcept"]["text"]
    [dosage] = draft["dosageInstruction"]
    assert dosage["route"]["coding"][0]["code"] == "26643006"
    assert "200 micrograms of glycopyrrolate (1 mL of the 1 mg/5 mL oral solution)" in dosage["text"]
    assert "Sialanar" not in dosage["text"]


def test_the_order_card_drafts_the_profile_product_too() -> None:
    order = medication_request(AMITRIPTYLINE, status="draft", rid="d")
    [finding] = run_order(als(), dementia(), drooling(), orders=[order], config=US)
    assert _draft(finding, "us")["medicationCodeableConcept"]["coding"][0]["code"] == "999961"
    [finding] = run_order(als(), dementia(), drooling(), orders=[order], config=NICE)
    assert "coding" not in _draft(finding, "nice")["medicationCodeableConcept"]


def test_each_profile_card_explains_its_product() -> None:
    request = medication_request(HYOSCINE_PATCH)
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), request)
    assert "Sialanar is 320 micrograms/mL glycopyrronium" in render(finding, "nice")["detail"]
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), request, config=US)
    assert "glycopyrrolate is the US name of glycopyrronium bromide" in render(finding, "us")["detail"]


@pytest.mark.parametrize(("config", "salt"), [(NICE, "glycopyrronium bromide"), (US, "glycopyrrolate")])
def test_what_the_clinician_reads_names_salt_strength_and_route_and_no_code(
    config: RuleConfig, salt: str
) -> None:
    """The detail and the draft's action text, not only the resource: a dose without its salt or
    strength risks a dose error (Sialanar is a different strength); codes stay in the resource."""
    request = medication_request(HYOSCINE_PATCH)
    resources = (als(), dementia(), drooling(), request)
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, *resources, config=config)
    body = render(finding, config.profile)
    [create] = [a for a in actions(body) if a["type"] == "create"]
    for text in (body["detail"], create["description"]):
        assert f"200 micrograms of {salt} (1 mL) by mouth every 8 hours" in text
        assert "1 mg/5 mL" in text
        assert "RxNorm" not in text and "999961" not in text
    assert ("not interchangeable" if config is NICE else "off-label") in body["detail"]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # Finding 6 (silent): amitriptyline for depression: no switch; glycopyrrolate offered for drooling.
        ("saliva-dementia-amitriptyline-for-depression", {("sialorrhoea-treatment", "cognitive-impairment")}),
        # Finding 6 (fires): amitriptyline for drooling (by reference): switch, withdrawn gradually.
        (
            "saliva-dementia-amitriptyline-for-drooling",
            {("antimuscarinic-cognitive-impairment", "withdraw-gradually")},
        ),
        # Finding 6 (fires): hyoscine patch for drooling: switch with a stop (update), not a delete.
        ("saliva-ftd-hyoscine-patch", {("antimuscarinic-cognitive-impairment", None)}),
        # Finding 16 (silent): altered mental status is not impaired cognition.
        ("saliva-altered-mental-status-hyoscine", {("sialorrhoea-treatment", "refer-botulinum")}),
        # Finding 8 (silent): already on glycopyrronium: no new draft.
        ("saliva-dementia-glycopyrronium-butylbromide", {("sialorrhoea-treatment", "refer-botulinum")}),
    ],
)
def test_fixture_patients_get_the_saliva_cards_their_data_call_for(fixture: str, expected: set[Any]) -> None:
    record = record_from(patient_resources(fixture), patient_id=fixture)
    findings = evaluate(RULES, record, NICE)
    assert {(f.rule_id, f.variant) for f in findings} == expected
    for finding in findings:
        body = render(finding)
        assert "delete" not in [a["type"] for a in actions(body)]


def test_the_depression_fixture_says_why_amitriptyline_is_not_counted() -> None:
    fixture = "saliva-dementia-amitriptyline-for-depression"
    [finding] = evaluate(RULES, record_from(patient_resources(fixture), patient_id=fixture), NICE)
    assert any("prescribed for Depression" in line for line in finding.evidence)
    assert _draft(finding, "nice")["medicationCodeableConcept"]["text"].startswith("Glycopyrronium bromide")


def test_the_f03911_fixture_counts_as_dementia() -> None:
    """Finding 16 (fires): dementia recorded only as ICD-10-CM F03.911 (a FY2023 leaf)."""
    fixture = "saliva-dementia-amitriptyline-for-drooling"
    [finding] = evaluate(RULES, record_from(patient_resources(fixture), patient_id=fixture), NICE)
    [line] = [line for line in finding.evidence if line.startswith("Cognition:")]
    assert "named in free text" not in line  # recognised by its code, F03.911, not by a word
