"""Saliva rules (NICE NG42 1.8.12-1.8.15): sialorrhoea treatment, antimuscarinics with impaired
cognition (chart and orders) and thick saliva: when they fire, when not, and the cards they make."""

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
    THICK_SALIVA_RULE,
)
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    PID,
    RXNORM,
    SNOMED,
    als,
    coding,
    concept,
    condition,
    days_ago,
    draft_orders,
    medication_request,
    procedure,
    rxnorm,
    snomed,
)
from tests.support import patient_resources, record_from, service_interest

CATALOGUE = cards.load_catalogue(Settings().cards_dir)
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.698288"

DROOLING = snomed("62718007", "Dribbling from mouth")
DEMENTIA = snomed("52448006", "Dementia")
HYOSCINE_PATCH = rxnorm("226552", "72 HR scopolamine 0.0139 MG/HR Transdermal System")
AMITRIPTYLINE = rxnorm("856783", "amitriptyline hydrochloride 10 MG Oral Tablet")
GLYCOPYRROLATE = rxnorm("197738", "glycopyrrolate 1 MG Oral Tablet")
BUTYLBROMIDE = concept(coding(LOCAL, "51177", "Hyoscine butylbromide 20 mg/1 mL injection"))
THICK = concept(coding("urn:als-cds:codesystem:local-finding", "thick-saliva"), text="Thick tenacious saliva")
BOTULINUM_INJECTION = snomed("404909007", "Injection of botulinum toxin")


def drooling(**kwargs: Any) -> dict[str, Any]:
    return condition(DROOLING, onset=days_ago(60), **kwargs)


def dementia(**kwargs: Any) -> dict[str, Any]:
    return condition(DEMENTIA, onset=days_ago(300), **kwargs)


def named(text: str) -> dict[str, Any]:
    """A medication known only by its name, as UK records send it (local code, no RxNorm)."""
    return concept(coding(LOCAL, "12345", text), text=text)


def run(rule: Rule, *resources: dict[str, Any], config: RuleConfig | None = None) -> list[Finding]:
    return evaluate([rule], record_from(resources, patient_id=PID), config or RuleConfig())


def run_order(
    *resources: dict[str, Any], orders: list[dict[str, Any]], selections: tuple[str, ...] = ()
) -> list[Finding]:
    record = record_from(
        resources,
        patient_id=PID,
        interest=service_interest("als-order-select"),
        draft_orders=draft_orders(*orders),
        selections=selections,
    )
    return evaluate([ANTIMUSCARINIC_ORDER_COGNITIVE_IMPAIRMENT], record, RuleConfig())


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


# -- the catalogue -----------------------------------------------------------------------------


def test_module_lists_its_four_rules_with_the_right_hooks() -> None:
    hooks = {rule.id: rule.hooks for rule in RULES}
    assert hooks == {
        "sialorrhoea-treatment": frozenset({"patient-view"}),
        "antimuscarinic-cognitive-impairment": frozenset({"patient-view"}),
        "thick-saliva": frozenset({"patient-view"}),
        "antimuscarinic-order-cognitive-impairment": frozenset({"order-select", "order-sign"}),
    }


# -- sialorrhoea-treatment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        snomed("62718007"),
        snomed("53827007", "Excessive salivation"),
        snomed("288959006", "Unable to swallow saliva"),
        concept(coding(ICD10CM, "K11.7")),
        concept(coding(ICD10CM, "K117")),
        concept(coding(ICD10, "K11.7")),
        concept(coding("urn:oid:2.16.840.1.113883.6.96", "53827007")),
    ],
)
def test_drooling_without_treatment_suggests_an_antimuscarinic_trial(code: dict[str, Any]) -> None:
    [finding] = run(SIALORRHOEA_TREATMENT, als(), condition(code))
    assert finding.variant is None
    assert "No antimuscarinic" in " ".join(finding.evidence)
    body = render(finding)
    assert "NG42 1.8.12" in body["summary"]


@pytest.mark.parametrize(
    "status",
    [
        {"clinical": "resolved"},
        {"clinical": "inactive"},
        {"verification": "refuted"},
        {"verification": "entered-in-error"},
    ],
)
def test_no_sialorrhoea_card_for_resolved_refuted_or_erroneous_drooling(status: dict[str, str]) -> None:
    assert run(SIALORRHOEA_TREATMENT, als(), drooling(**status)) == []


def test_drooling_written_only_as_text_is_not_a_diagnosis() -> None:
    assert run(SIALORRHOEA_TREATMENT, als(), condition(concept(text="Drooling ++"))) == []


def test_no_card_for_a_patient_without_als() -> None:
    assert run(SIALORRHOEA_TREATMENT, drooling()) == []


@pytest.mark.parametrize(
    "cognition",
    [
        snomed("386806002", "Impaired cognition"),
        DEMENTIA,
        snomed("230270009", "Frontotemporal dementia"),
        concept(coding(ICD10CM, "F03.90")),
        concept(coding(ICD10CM, "G31.09")),
        concept(coding(ICD10CM, "R41.844")),
    ],
)
def test_drooling_with_impaired_cognition_suggests_glycopyrrolate_first(cognition: dict[str, Any]) -> None:
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), condition(cognition))
    assert finding.variant == "cognitive-impairment"
    body = render(finding)
    [suggestion] = body["suggestions"]
    [action] = suggestion["actions"]
    draft = action["resource"]
    assert action["type"] == "create" and draft["status"] == "draft"
    assert draft["subject"] == {"reference": f"Patient/{PID}"}
    # Profile 'nice' (the default): the UK product by name, salt and strength; no US RxNorm code.
    assert draft["medicationCodeableConcept"] == {"text": "Glycopyrronium bromide 1 mg/5 mL oral solution"}
    dosage = draft["dosageInstruction"][0]
    assert dosage["route"]["coding"][0]["code"] == "26643006"
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 200,
        "unit": "microgram",
        "system": "http://unitsofmeasure.org",
        "code": "ug",
    }
    assert dosage["timing"]["repeat"] == {"frequency": 1, "period": 8, "periodUnit": "h"}


def test_cognitive_impairment_entered_in_error_does_not_change_the_advice() -> None:
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), dementia(verification="entered-in-error"))
    assert finding.variant is None


@pytest.mark.parametrize(
    ("medication", "status", "how"),
    [
        (HYOSCINE_PATCH, "active", "active"),
        (named("Hyoscine hydrobromide 300 microgram tablets"), "stopped", "named in free text, no code"),
        (named("Kwells 300 micrograms"), "completed", "named in free text, no code"),
        (GLYCOPYRROLATE, "on-hold", "on-hold"),
        (named("Atropine 1% eye drops, 2 drops under the tongue"), "active", "named in free text, no code"),
    ],
)
def test_drooling_after_an_antimuscarinic_suggests_botulinum_toxin_referral(
    medication: dict[str, Any], status: str, how: str
) -> None:
    [finding] = run(
        SIALORRHOEA_TREATMENT,
        als(),
        drooling(),
        medication_request(medication, status=status, authored=days_ago(90)),
    )
    assert finding.variant == "refer-botulinum"
    assert any(how in line and "Antimuscarinic tried" in line for line in finding.evidence)
    body = render(finding)
    action = body["suggestions"][0]["actions"][0]
    assert action["resource"]["resourceType"] == "ServiceRequest"
    assert action["resource"]["code"]["coding"][0]["code"] == "404909007"


def test_with_impaired_cognition_a_current_central_antimuscarinic_leaves_the_advice_to_the_switch_card() -> (
    None
):
    resources = (als(), drooling(), dementia(), medication_request(HYOSCINE_PATCH))
    assert run(SIALORRHOEA_TREATMENT, *resources) == []
    assert [f.rule_id for f in run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, *resources)] == [
        "antimuscarinic-cognitive-impairment"
    ]


def test_with_impaired_cognition_a_stopped_central_antimuscarinic_is_not_first_line_tried() -> None:
    stopped = medication_request(AMITRIPTYLINE, status="stopped", authored=days_ago(200))
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), dementia(), stopped)
    assert finding.variant == "cognitive-impairment"
    assert finding.fields["antimuscarinics"] == "amitriptyline hydrochloride 10 MG Oral Tablet"
    assert "No glycopyrronium (current or past) on record." in finding.evidence
    render(finding)


@pytest.mark.parametrize("status", ["active", "stopped"])
def test_with_impaired_cognition_glycopyrronium_tried_leads_to_botulinum_referral(status: str) -> None:
    glycopyrronium = medication_request(GLYCOPYRROLATE, status=status)
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), dementia(), glycopyrronium)
    assert finding.variant == "refer-botulinum"
    render(finding)


@pytest.mark.parametrize("status", ["draft", "cancelled", "entered-in-error"])
def test_antimuscarinic_requests_that_never_happened_do_not_count_as_tried(status: str) -> None:
    [finding] = run(
        SIALORRHOEA_TREATMENT, als(), drooling(), medication_request(HYOSCINE_PATCH, status=status)
    )
    assert finding.variant is None


def test_hyoscine_butylbromide_is_not_counted_as_an_antimuscarinic_tried() -> None:
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), medication_request(BUTYLBROMIDE))
    assert finding.variant is None


def test_inhaled_glycopyrronium_for_copd_is_not_a_saliva_treatment_even_with_the_ingredient_code() -> None:
    inhaler = concept(
        coding(RXNORM, "1546438", "glycopyrronium"),
        text="Bevespi Aerosphere inhaler (glycopyrrolate/formoterol)",
    )
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), medication_request(inhaler))
    assert finding.variant is None


def test_inhalation_route_excludes_glycopyrronium_too() -> None:
    request = medication_request(
        rxnorm("1546438", "glycopyrronium"), route=concept(text="Inhalation"), dose=(1, "{puff}")
    )
    [finding] = run(SIALORRHOEA_TREATMENT, als(), drooling(), request)
    assert finding.variant is None


def test_botulinum_toxin_injection_done_means_no_sialorrhoea_card() -> None:
    assert run(SIALORRHOEA_TREATMENT, als(), drooling(), procedure(BOTULINUM_INJECTION, days_ago(100))) == []


@pytest.mark.parametrize(
    "product",
    [
        rxnorm("1732161", "incobotulinumtoxinA 100 UNT Injection [Xeomin]"),
        named("Xeomin 100 units injection"),
    ],
)
def test_botulinum_toxin_order_means_no_sialorrhoea_card(product: dict[str, Any]) -> None:
    assert (
        run(SIALORRHOEA_TREATMENT, als(), drooling(), medication_request(product, status="completed")) == []
    )


@pytest.mark.parametrize("status", ["not-done", "entered-in-error", "preparation"])
def test_botulinum_injection_not_done_does_not_silence_the_card(status: str) -> None:
    injection = procedure(BOTULINUM_INJECTION, days_ago(10), status=status)
    assert run(SIALORRHOEA_TREATMENT, als(), drooling(), injection)


# -- antimuscarinic-cognitive-impairment -------------------------------------------------------

CNS_ANTIMUSCARINICS = [
    HYOSCINE_PATCH,
    rxnorm("351875", "72 HR scopolamine 0.0139 MG/HR Transdermal System [Transderm Scop]"),
    rxnorm("9601", "scopolamine"),
    AMITRIPTYLINE,
    rxnorm("704", "amitriptyline"),
    rxnorm("1223", "atropine"),
    rxnorm("905269", "trihexyphenidyl hydrochloride 2 MG Oral Tablet"),
    rxnorm("885219", "benztropine mesylate 0.5 MG Oral Tablet"),
    concept(coding("urn:oid:2.16.840.1.113883.6.88", "856834")),
    named("Hyoscine hydrobromide 300 microgram tablets"),
    named("Scopoderm 1.5 mg patch"),
    named("Benzhexol 2 mg tablets"),
    named("Benzatropine 1 mg tablets"),
    named("Atropine 1% eye drops"),
]


#: Labels ask for gradual withdrawal of these (amitriptyline; trihexyphenidyl; benzatropine by analogy).
WITHDRAW_GRADUALLY = ("amitriptyline", "trihexyphenidyl", "benztropine", "benzhexol", "benzatropine")


def _gradual(medication: dict[str, Any]) -> bool:
    names = " ".join(
        [medication.get("text", "")] + [c.get("display", "") for c in medication.get("coding", [])]
    )
    codes = {c["code"] for c in medication.get("coding", [])}
    return any(w in names.lower() for w in WITHDRAW_GRADUALLY) or bool(codes & {"704", "856834"})


@pytest.mark.parametrize("medication", CNS_ANTIMUSCARINICS)
def test_centrally_acting_antimuscarinic_with_dementia_gets_the_glycopyrronium_warning(
    medication: dict[str, Any],
) -> None:
    request = medication_request(medication, rid="am-1", authored=days_ago(30))
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), request)
    body = render(finding)
    assert body["indicator"] == "warning"
    [suggestion] = body["suggestions"]
    assert suggestion["isRecommended"] is True
    # A current treatment is never deleted: it is stopped, or (labels asking for it) withdrawn gradually.
    assert "delete" not in [a["type"] for a in suggestion["actions"]]
    create = suggestion["actions"][-1]
    assert create["type"] == "create" and create["resource"]["status"] == "draft"
    assert create["resource"]["medicationCodeableConcept"]["text"].startswith(
        "Glycopyrronium bromide 1 mg/5 mL"
    )
    assert create["resource"]["subject"] == {"reference": f"Patient/{PID}"}
    if _gradual(medication):
        assert finding.variant == "withdraw-gradually"
        assert len(suggestion["actions"]) == 1
        assert "gradually, not abruptly" in body["detail"]
    else:
        assert finding.variant is None
        stop = suggestion["actions"][0]
        assert stop["type"] == "update"
        assert stop["resource"]["id"] == "am-1"
        assert stop["resource"]["status"] == "stopped"
        assert stop["resource"]["statusReason"]["text"].startswith("Switched to glycopyrronium")
        assert stop["resource"]["subject"] == {"reference": f"Patient/{PID}"}


@pytest.mark.parametrize(
    "medication",
    [
        BUTYLBROMIDE,
        named("Buscopan 10 mg tablets"),
        named("Scopolamine butylbromide 10 mg"),
        # A coded scopolamine request whose text says butylbromide: the text wins, no card.
        concept(coding(RXNORM, "9601", "scopolamine"), text="Hyoscine butylbromide 20 mg injection"),
        named("Diphenoxylate/atropine (Lomotil) 2.5 mg"),
        named("Methscopolamine bromide 2.5 mg"),
        GLYCOPYRROLATE,
        named("Glycopyrronium bromide 1 mg/5 mL oral solution"),
    ],
)
def test_butylbromide_glycopyrronium_and_lomotil_never_get_the_warning(medication: dict[str, Any]) -> None:
    assert (
        run(
            ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), medication_request(medication)
        )
        == []
    )


def test_no_warning_without_impaired_cognition() -> None:
    assert (
        run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), drooling(), medication_request(HYOSCINE_PATCH)) == []
    )


@pytest.mark.parametrize(
    "status",
    [{"clinical": "resolved"}, {"verification": "refuted"}, {"verification": "entered-in-error"}],
)
def test_no_warning_when_the_cognitive_diagnosis_does_not_stand(status: dict[str, str]) -> None:
    resources = (als(), dementia(**status), medication_request(HYOSCINE_PATCH))
    assert run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, *resources) == []


def test_ftd_code_230270009_counts_as_cognitive_impairment_not_as_mnd() -> None:
    ftd_only = condition(snomed("230270009", "Frontotemporal dementia"))
    # Without an ALS diagnosis the gate holds: 230270009 is FTD, not motor neurone disease.
    assert run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, ftd_only, medication_request(AMITRIPTYLINE)) == []
    assert run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), ftd_only, medication_request(AMITRIPTYLINE))


@pytest.mark.parametrize("code", ["F00.1", "G30.9", "F01.1", "F02.3", "F03"])
def test_dementia_coded_in_who_icd10_as_uk_hospitals_do_counts_as_cognitive_impairment(code: str) -> None:
    """UK secondary care codes in WHO ICD-10 (F00.x* with its dagger G30.x, F01.x, F02.x), not ICD-10-CM."""
    who_dementia = condition(concept(coding(ICD10, code)), onset=days_ago(300))
    assert run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), who_dementia, medication_request(AMITRIPTYLINE))
    assert run(SIALORRHOEA_TREATMENT, als(), drooling(), who_dementia)[0].variant == "cognitive-impairment"


def test_a_who_icd10_code_outside_dementia_does_not_count() -> None:
    delirium = condition(concept(coding(ICD10, "F05.0")), onset=days_ago(300))
    assert run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), delirium, medication_request(AMITRIPTYLINE)) == []


@pytest.mark.parametrize(("status", "fires"), [("on-hold", True), ("stopped", False), ("completed", False)])
def test_only_current_antimuscarinics_are_flagged(status: str, fires: bool) -> None:
    request = medication_request(HYOSCINE_PATCH, status=status)
    assert bool(run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), request)) is fires


def test_without_recorded_drooling_the_swap_is_offered_but_not_recommended() -> None:
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), medication_request(AMITRIPTYLINE))
    assert finding.variant == "indication-not-recorded-withdraw-gradually"
    assert any("indication unknown" in line for line in finding.evidence)
    body = render(finding)
    assert "if it is for saliva" in body["summary"]
    assert "isRecommended" not in body["suggestions"][0]


def test_a_coded_saliva_reason_on_the_request_counts_as_the_indication() -> None:
    request = medication_request(HYOSCINE_PATCH)
    request["reasonCode"] = [snomed("53827007", "Excessive salivation")]
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), request)
    assert finding.variant is None
    assert any("coded reason is drooling" in line for line in finding.evidence)


def test_a_request_without_an_id_gets_the_card_without_the_delete_action() -> None:
    request = medication_request(HYOSCINE_PATCH)
    del request["id"]
    [finding] = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), request)
    assert finding.variant == "no-reference"
    body = render(finding)
    assert [a["type"] for a in body["suggestions"][0]["actions"]] == ["create"]


def test_each_current_antimuscarinic_gets_its_own_card() -> None:
    resources = (
        als(),
        dementia(),
        drooling(),
        medication_request(HYOSCINE_PATCH, rid="a"),
        medication_request(AMITRIPTYLINE, rid="b"),
    )
    findings = run(ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, *resources)
    # Hyoscine is stopped by the card; amitriptyline is withdrawn gradually (no stop action).
    assert sorted((f.variant or "", f.fields["drug"]) for f in findings) == [
        ("", "72 HR scopolamine 0.0139 MG/HR Transdermal System"),
        ("withdraw-gradually", "amitriptyline hydrochloride 10 MG Oral Tablet"),
    ]
    assert [f.bindings["stop_order"]["id"] for f in findings if "stop_order" in f.bindings] == ["a"]


def test_a_very_long_drug_name_keeps_the_summary_under_140_characters() -> None:
    long_name = named("Hyoscine hydrobromide " + "1 mg/72 hours transdermal patch, apply behind the ear " * 3)
    [finding] = run(
        ANTIMUSCARINIC_COGNITIVE_IMPAIRMENT, als(), dementia(), drooling(), medication_request(long_name)
    )
    assert len(finding.fields["drug_short"]) == 40
    render(finding)


# -- antimuscarinic-order-cognitive-impairment -------------------------------------------------


def test_ordering_amitriptyline_with_dementia_offers_to_replace_the_draft() -> None:
    order = medication_request(AMITRIPTYLINE, status="draft", rid="draft-1")
    [finding] = run_order(
        als(), dementia(), drooling(), orders=[order], selections=("MedicationRequest/draft-1",)
    )
    assert finding.bindings["draft_reference"] == "MedicationRequest/draft-1"
    body = render(finding)
    # Deleting is right for a draft: it is not yet a treatment the patient takes.
    delete, create = body["suggestions"][0]["actions"]
    assert delete["type"] == "delete" and delete["resourceId"] == "MedicationRequest/draft-1"
    assert create["resource"]["medicationCodeableConcept"] == {
        "text": "Glycopyrronium bromide 1 mg/5 mL oral solution"
    }


def test_order_without_recorded_drooling_uses_the_hedged_variant() -> None:
    order = medication_request(named("Trihexyphenidyl 2 mg tablets"), status="draft", rid="d")
    [finding] = run_order(als(), dementia(), orders=[order])
    assert finding.variant == "indication-not-recorded"
    render(finding)


def test_order_select_looks_only_at_the_selected_orders() -> None:
    amitriptyline = medication_request(AMITRIPTYLINE, status="draft", rid="d1")
    other = medication_request(rxnorm("197391", "baclofen 10 MG Oral Tablet"), status="draft", rid="d2")
    resources = (als(), dementia(), drooling())
    assert run_order(*resources, orders=[amitriptyline, other], selections=("MedicationRequest/d2",)) == []
    assert run_order(*resources, orders=[amitriptyline, other], selections=("MedicationRequest/d1",))
    assert run_order(*resources, orders=[amitriptyline, other])  # order-sign: every draft


@pytest.mark.parametrize(
    "medication",
    [
        BUTYLBROMIDE,
        named("Buscopan 10 mg tablets"),
        GLYCOPYRROLATE,
        named("Lomotil (diphenoxylate/atropine)"),
    ],
)
def test_ordering_butylbromide_or_glycopyrronium_gets_no_warning(medication: dict[str, Any]) -> None:
    order = medication_request(medication, status="draft", rid="d")
    assert run_order(als(), dementia(), drooling(), orders=[order]) == []


def test_ordering_an_antimuscarinic_without_impaired_cognition_gets_no_warning() -> None:
    order = medication_request(AMITRIPTYLINE, status="draft", rid="d")
    assert run_order(als(), drooling(), orders=[order]) == []


def test_ordering_for_a_patient_without_als_gets_no_warning() -> None:
    order = medication_request(AMITRIPTYLINE, status="draft", rid="d")
    assert run_order(dementia(), drooling(), orders=[order]) == []


def test_a_draft_without_an_id_gets_the_card_without_the_delete_action() -> None:
    order = medication_request(AMITRIPTYLINE, status="draft")
    del order["id"]
    [finding] = run_order(als(), dementia(), drooling(), orders=[order])
    assert finding.variant == "no-reference"
    body = render(finding)
    assert [a["type"] for a in body["suggestions"][0]["actions"]] == ["create"]


# -- thick-saliva ------------------------------------------------------------------------------


def test_thick_saliva_suggests_review_and_offers_carbocisteine() -> None:
    hyoscine = medication_request(named("Hyoscine hydrobromide 300 microgram tablets"))
    [finding] = run(THICK_SALIVA_RULE, als(), condition(THICK), hyoscine)
    assert finding.variant is None
    assert finding.fields["antimuscarinics"] == "Hyoscine hydrobromide 300 microgram tablets"
    assert any("can thicken secretions" in line for line in finding.evidence)
    body = render(finding)
    create = body["suggestions"][0]["actions"][0]
    assert create["resource"]["medicationCodeableConcept"]["coding"][0]["code"] == "2023"
    assert "dosageInstruction" not in create["resource"]  # no dose invented


@pytest.mark.parametrize(
    "carbocisteine", [named("Carbocisteine 375 mg capsules"), rxnorm("2023", "carbocysteine")]
)
def test_thick_saliva_already_on_carbocisteine_offers_no_new_draft(carbocisteine: dict[str, Any]) -> None:
    [finding] = run(THICK_SALIVA_RULE, als(), condition(THICK), medication_request(carbocisteine))
    assert finding.variant == "on-carbocisteine"
    assert "suggestions" not in render(finding)


def test_stopped_carbocisteine_does_not_count() -> None:
    stopped = medication_request(named("Carbocisteine 250 mg/5 mL oral solution"), status="stopped")
    [finding] = run(THICK_SALIVA_RULE, als(), condition(THICK), stopped)
    assert finding.variant is None
    assert finding.fields["antimuscarinics"] == "none on record"


@pytest.mark.parametrize(
    "resource",
    [
        condition(concept(text="Thick saliva")),  # text only: no code, no match
        condition(concept(coding(SNOMED, "62718007")), rid="drool-only"),
        condition(THICK, clinical="resolved"),
        condition(THICK, verification="entered-in-error"),
    ],
)
def test_no_thick_saliva_card_without_an_active_coded_finding(resource: dict[str, Any]) -> None:
    assert run(THICK_SALIVA_RULE, als(), resource) == []


def test_no_thick_saliva_card_without_als() -> None:
    assert run(THICK_SALIVA_RULE, condition(THICK)) == []


# -- fixtures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("saliva-drooling-untreated", {("sialorrhoea-treatment", None)}),
        ("saliva-ftd-hyoscine-patch", {("antimuscarinic-cognitive-impairment", None)}),
        ("saliva-dementia-glycopyrronium-butylbromide", {("sialorrhoea-treatment", "refer-botulinum")}),
        ("saliva-thick-secretions-after-botulinum", {("thick-saliva", None)}),
        ("als-riluzole-lft-overdue", set()),  # FTD entered in error, no antimuscarinic
    ],
)
def test_fixture_patients_get_the_saliva_cards_their_data_call_for(fixture: str, expected: set[Any]) -> None:
    record = record_from(patient_resources(fixture), patient_id=fixture)
    findings = evaluate(RULES, record, RuleConfig())
    assert {(f.rule_id, f.variant) for f in findings} == expected
    for finding in findings:
        render(finding)
