"""Disease-modifying drugs other than riluzole: Relyvrio withdrawal, edaravone (sulfite allergy,
regimen) and tofersen (SOD1 variant), through the evaluator so the ALS gate is exercised."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cds_service import cards
from cds_service.rules import Rule, RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.rules.dmt import (
    EDARAVONE_REGIMEN,
    EDARAVONE_SULFITE_ALLERGY,
    RELYVRIO_ORDER,
    RELYVRIO_WITHDRAWN,
    RULES,
    TOFERSEN_SOD1,
)
from cds_service.settings import Settings
from cds_service.terminology import Concept
from tests.factories import (
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    allergy,
    als,
    coding,
    concept,
    condition,
    days_ago,
    draft_orders,
    medication_request,
    observation,
    patient,
    rxnorm,
    service_request,
)
from tests.support import FIXTURES, patient_bundle, record_from, service_interest

PID = "p1"
CATALOG = cards.load_catalogue(Settings().cards_dir)
HGNC = "http://www.genenames.org/geneId"


def run(
    rule: Rule,
    *resources: dict[str, Any],
    orders: tuple[dict[str, Any], ...] = (),
    selections: tuple[str, ...] = (),
    diagnosis: dict[str, Any] | None = None,
    hook: str | None = None,
) -> list[Finding]:
    hook = hook or ("patient-view" if "patient-view" in rule.hooks else "order-select")
    chart = [patient(pid=PID), diagnosis if diagnosis is not None else als(), *resources]
    record = record_from(
        chart,
        patient_id=PID,
        interest=service_interest(f"als-{hook}"),
        draft_orders=draft_orders(*orders) if orders else None,
        selections=selections,
    )
    return evaluate([rule], record, RuleConfig())


def render(finding: Finding) -> dict[str, Any]:
    body = cards.render(finding, CATALOG[finding.rule_id]).to_json()
    assert no_empty_values(body) == [], finding.rule_id
    assert len(body["summary"]) < 140, body["summary"]
    return body


def no_empty_values(value: Any, path: str = "$") -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in no_empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in no_empty_values(v, f"{path}[{i}]")]
    return []


def draft(medication: dict[str, Any], rid: str = "draft-1", **kwargs: Any) -> dict[str, Any]:
    return medication_request(medication, status="draft", rid=rid, **kwargs)


NOT_ALS = condition(concept(coding(SNOMED, "38341003", "Hypertensive disorder")), rid="htn")

# ============================================================================================
# Relyvrio

RELYVRIO_NAMES = [
    "Relyvrio 3 g-1 g powder for oral suspension",
    "ALBRIOZA sachet",
    "AMX0035 (trial supply)",
    "sodium phenylbutyrate-taurursodiol 3 g-1 g packet",
    "Sodium phenylbutyrate and ursodoxicoltaurine",
]

PHENYLBUTYRATE_ALONE = [
    concept(coding(RXNORM, "214837", "sodium phenylbutyrate")),
    concept(coding(RXNORM, "199369"), text="Buphenyl 500 mg tablets"),
    concept(coding(RXNORM, "984105"), text="Sodium phenylbutyrate 0.94 g/g oral powder"),
    concept(text="Pheburane 483 mg/g granules"),
    concept(text="Olpruva (sodium phenylbutyrate) oral suspension kit"),
    concept(text="Glycerol phenylbutyrate (Ravicti) 1.1 g/mL"),
    concept(coding(RXNORM, "858733"), text="Ursodiol 500 mg tablet"),
    concept(text="Tauroursodeoxycholic acid 500 mg capsules"),
]


@pytest.mark.parametrize("text", RELYVRIO_NAMES)
def test_active_relyvrio_known_by_any_of_its_names_fires_the_withdrawal_warning(text: str) -> None:
    [finding] = run(RELYVRIO_WITHDRAWN, medication_request(concept(text=text), authored=days_ago(400)))
    assert "named in free text, no code" in finding.evidence[0]
    body = render(finding)
    assert body["indicator"] == "warning"
    assert "April 2024" in body["summary"]


def test_relyvrio_under_an_unknown_local_code_with_its_name_fires_by_name() -> None:
    med = concept(coding("urn:oid:1.2.840.114350.1.13.0.1.7.2.698288", "88123", "Relyvrio powder"))
    [finding] = run(RELYVRIO_WITHDRAWN, medication_request(med))
    assert "named in free text, no code" in finding.evidence[0]


@pytest.mark.parametrize(
    "medication", PHENYLBUTYRATE_ALONE, ids=lambda m: m.get("text") or m["coding"][0]["code"]
)
def test_sodium_phenylbutyrate_alone_or_ursodiol_never_fires_either_relyvrio_card(medication: dict) -> None:
    assert run(RELYVRIO_WITHDRAWN, medication_request(medication)) == []
    assert run(RELYVRIO_ORDER, orders=(draft(medication),)) == []


@pytest.mark.parametrize(
    ("status", "fires"),
    [
        ("active", True),
        ("on-hold", True),
        ("stopped", False),
        ("completed", False),
        ("cancelled", False),
        ("entered-in-error", False),
        ("draft", False),
    ],
)
def test_only_a_current_relyvrio_prescription_fires(status: str, fires: bool) -> None:
    findings = run(RELYVRIO_WITHDRAWN, medication_request(concept(text="Relyvrio"), status=status))
    assert bool(findings) is fires


def test_a_relyvrio_plan_rather_than_an_order_does_not_fire() -> None:
    plan = medication_request(concept(text="Relyvrio"), intent="plan")
    assert run(RELYVRIO_WITHDRAWN, plan) == []


def test_several_relyvrio_prescriptions_give_one_card_listing_each() -> None:
    findings = run(
        RELYVRIO_WITHDRAWN,
        medication_request(concept(text="Relyvrio"), rid="a"),
        medication_request(concept(text="AMX0035"), rid="b"),
    )
    assert len(findings) == 1 and len(findings[0].evidence) == 2


@pytest.mark.parametrize(
    "diagnosis",
    [
        condition(concept(coding(ICD10CM, "G12.21", "Amyotrophic lateral sclerosis")), rid="als"),
        condition(concept(coding(SNOMED, "37340000", "Motor neuron disease")), rid="als"),
    ],
    ids=["icd10cm", "snomed-mnd"],
)
def test_relyvrio_card_fires_for_icd10_and_snomed_coded_diagnoses(diagnosis: dict) -> None:
    assert run(RELYVRIO_WITHDRAWN, medication_request(concept(text="Relyvrio")), diagnosis=diagnosis)


@pytest.mark.parametrize(
    "diagnosis",
    [NOT_ALS, als(verification="refuted"), als(verification="entered-in-error"), als(clinical="resolved")],
    ids=["no-als", "refuted", "entered-in-error", "resolved"],
)
def test_no_dmt_card_without_an_active_als_diagnosis(diagnosis: dict) -> None:
    assert run(RELYVRIO_WITHDRAWN, medication_request(concept(text="Relyvrio")), diagnosis=diagnosis) == []
    assert run(RELYVRIO_ORDER, orders=(draft(concept(text="Relyvrio")),), diagnosis=diagnosis) == []
    assert run(TOFERSEN_SOD1, orders=(draft(rxnorm("2635005")),), diagnosis=diagnosis) == []
    assert run(EDARAVONE_REGIMEN, orders=(draft(rxnorm("1924317")),), diagnosis=diagnosis) == []
    sulfite = allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")))
    assert (
        run(EDARAVONE_SULFITE_ALLERGY, sulfite, orders=(draft(rxnorm("1924317")),), diagnosis=diagnosis) == []
    )


def test_relyvrio_order_is_critical_and_offers_to_remove_exactly_that_draft() -> None:
    [finding] = run(RELYVRIO_ORDER, orders=(draft(concept(text="Relyvrio powder packet"), rid="rel-1"),))
    body = render(finding)
    assert body["indicator"] == "critical"
    [action] = body["suggestions"][0]["actions"]
    assert action == {
        "type": "delete",
        "description": "Remove the draft order for Relyvrio powder packet (withdrawn from the market)",
        "resourceId": "MedicationRequest/rel-1",
    }
    assert {r["code"] for r in body["overrideReasons"]} >= {"free-drug-programme"}


def test_relyvrio_order_only_looks_at_the_selected_orders_on_order_select() -> None:
    orders = (draft(concept(text="Relyvrio"), rid="old"), draft(rxnorm("199206"), rid="ril"))
    assert run(RELYVRIO_ORDER, orders=orders, selections=("MedicationRequest/ril",)) == []
    assert run(RELYVRIO_ORDER, orders=orders, selections=("MedicationRequest/old",))


def test_a_draft_without_an_id_gets_the_card_without_a_remove_action() -> None:
    order = draft(concept(text="Relyvrio"))
    del order["id"]
    [finding] = run(RELYVRIO_ORDER, orders=(order,))
    assert finding.variant == "no-draft-id"
    assert "suggestions" not in render(finding)


def test_relyvrio_withdrawn_is_a_patient_view_rule_and_relyvrio_order_an_order_rule() -> None:
    assert RELYVRIO_WITHDRAWN.hooks == {"patient-view"}
    assert RELYVRIO_ORDER.hooks == {"order-select", "order-sign"}


def test_longest_relyvrio_summaries_stay_under_140_characters() -> None:
    long_name = "Sodium phenylbutyrate and taurursodiol 3 g/1 g powder for oral suspension, sachet (Relyvrio)"
    [withdrawn] = run(RELYVRIO_WITHDRAWN, medication_request(concept(text=long_name)))
    [ordered] = run(RELYVRIO_ORDER, orders=(draft(concept(text=long_name)),))
    render(withdrawn)
    render(ordered)


# ============================================================================================
# Edaravone + sulfite allergy

EDARAVONE_PRODUCTS = [
    rxnorm("1921877", "edaravone"),
    rxnorm("1924316", "100 ML edaravone 0.3 MG/ML Injection"),
    rxnorm("1924317", "100 ML edaravone 0.3 MG/ML Injection [Radicava]"),
    rxnorm("2602117", "edaravone 21 MG/ML Oral Suspension"),
    rxnorm("2602122", "edaravone 21 MG/ML Oral Suspension [Radicava]"),
    rxnorm("2681044", "100 ML edaravone 0.6 MG/ML Injection"),
    concept(coding("urn:oid:2.16.840.1.113883.6.88", "2602122")),
    concept(coding("urn:oid:1.2.840.114350", "LOCAL-9"), text="Radicava ORS 105 mg/5 mL"),
]

SULFITE_ALLERGIES = [
    allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite"))),
    allergy(concept(coding(SNOMED, "6249003", "Potassium metabisulfite"))),
    allergy(concept(coding(RXNORM, "36679", "sodium bisulfite"))),
    allergy(concept(coding("urn:oid:2.16.840.1.113883.6.88", "36696", "sodium metabisulfite"))),
    allergy(
        concept(text="Food preservative"), substances=[concept(coding(RXNORM, "36679", "sodium bisulfite"))]
    ),
    allergy(concept(coding("urn:oid:1.2.3", "A-77"), text="Sulphite allergy")),
    allergy(concept(text="Sulfites (wine) - wheeze")),
    allergy(concept(text="Metabisulphite intolerance")),
    allergy(concept(coding(SNOMED, "419421008", "Allergy to sulfite based food preservative"))),
]


@pytest.mark.parametrize("medication", EDARAVONE_PRODUCTS, ids=lambda m: json.dumps(m)[:60])
def test_every_edaravone_product_with_a_sulfite_allergy_is_critical(medication: dict) -> None:
    sulfite = allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")))
    [finding] = run(EDARAVONE_SULFITE_ALLERGY, sulfite, orders=(draft(medication, rid="eda"),))
    body = render(finding)
    assert body["indicator"] == "critical"
    assert body["suggestions"][0]["actions"][0] == {
        "type": "delete",
        "description": (
            "Remove the draft edaravone order (contains sodium bisulfite; sulfite allergy recorded)"
        ),
        "resourceId": "MedicationRequest/eda",
    }
    assert "Radicava ORS" in body["detail"] and "sodium bisulfite" in body["detail"]


@pytest.mark.parametrize("record", SULFITE_ALLERGIES, ids=lambda a: json.dumps(a["code"])[:60])
def test_sulfite_allergy_is_recognised_by_code_reaction_substance_or_name(record: dict) -> None:
    findings = run(EDARAVONE_SULFITE_ALLERGY, record, orders=(draft(rxnorm("1924317")),))
    assert len(findings) == 1
    assert any("Recorded allergy/intolerance" in line for line in findings[0].evidence)


@pytest.mark.parametrize(
    "record",
    [
        allergy(concept(text="Sulfa drugs (sulfonamide antibiotics)")),
        allergy(concept(text="Magnesium sulfate")),
        allergy(concept(coding(SNOMED, "419421008", "Food preservative allergy"))),
        allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")), clinical="resolved"),
        allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")), clinical="inactive"),
        allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")), verification="refuted"),
        allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")), verification="entered-in-error"),
    ],
    ids=[
        "sulfa",
        "sulfate",
        "preservative-unspecified",
        "resolved",
        "inactive",
        "refuted",
        "entered-in-error",
    ],
)
def test_no_sulfite_card_for_other_or_no_longer_current_allergies(record: dict) -> None:
    assert run(EDARAVONE_SULFITE_ALLERGY, record, orders=(draft(rxnorm("1924317")),)) == []


def test_an_unconfirmed_sulfite_allergy_still_fires_and_the_card_says_it_is_unconfirmed() -> None:
    record = allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")), verification="unconfirmed")
    [finding] = run(EDARAVONE_SULFITE_ALLERGY, record, orders=(draft(rxnorm("2602122")),))
    assert "unconfirmed" in " ".join(finding.evidence)


def test_sulfite_allergy_without_an_edaravone_order_gives_no_card() -> None:
    record = allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite")))
    assert run(EDARAVONE_SULFITE_ALLERGY, record, orders=(draft(rxnorm("199206")),)) == []
    assert run(EDARAVONE_SULFITE_ALLERGY, record) == []


def test_edaravone_without_a_sulfite_allergy_gives_no_allergy_card() -> None:
    other = allergy(concept(coding(SNOMED, "91936005", "Allergy to penicillin")))
    assert run(EDARAVONE_SULFITE_ALLERGY, other, orders=(draft(rxnorm("1924317")),)) == []


def test_sulfite_card_fires_on_order_sign_for_every_edaravone_draft() -> None:
    record = allergy(concept(coding(RXNORM, "36696", "sodium metabisulfite")))
    orders = (draft(rxnorm("1924317"), rid="a"), draft(rxnorm("2602122"), rid="b"))
    findings = run(EDARAVONE_SULFITE_ALLERGY, record, orders=orders, hook="order-sign")
    assert [f.bindings["draft_reference"] for f in findings] == ["MedicationRequest/a", "MedicationRequest/b"]


def test_sulfite_card_summary_with_the_longest_allergy_name_stays_short() -> None:
    record = allergy(
        concept(text="Sodium metabisulphite (preservative in wine, dried fruit, some injections)")
    )
    [finding] = run(EDARAVONE_SULFITE_ALLERGY, record, orders=(draft(rxnorm("1924317")),))
    render(finding)


# ============================================================================================
# Edaravone regimen

IV = rxnorm("1924317", "100 ML edaravone 0.3 MG/ML Injection [Radicava]")
ORS = rxnorm("2602122", "edaravone 21 MG/ML Oral Suspension [Radicava]")
IV_ROUTE = concept(coding(SNOMED, "47625008", "Intravenous route"))
ORAL_ROUTE = concept(coding(SNOMED, "26643006", "Oral route"))


def edaravone_order(
    medication: dict[str, Any],
    dose: tuple[float, str] | None,
    *,
    route: dict[str, Any] | None = None,
    every_hours: float | None = 24,
    minutes: tuple[float, str] | None = None,
    rid: str = "eda-1",
) -> dict[str, Any]:
    order = draft(medication, rid=rid, dose=dose, route=route, every_hours=every_hours)
    if minutes is not None:
        repeat = (
            order.setdefault("dosageInstruction", [{}])[0].setdefault("timing", {}).setdefault("repeat", {})
        )
        repeat.update(duration=minutes[0], durationUnit=minutes[1])
    return order


def regimen(order: dict[str, Any], **kwargs: Any) -> Finding:
    [finding] = run(EDARAVONE_REGIMEN, orders=(order,), **kwargs)
    render(finding)
    return finding


@pytest.mark.parametrize(
    ("medication", "dose", "variant"),
    [
        (IV, (59, "mg"), "dose-differs"),
        (IV, (60, "mg"), None),
        (IV, (61, "mg"), "dose-differs"),
        (IV, (0.06, "g"), None),
        (ORS, (104, "mg"), "dose-differs"),
        (ORS, (105, "mg"), None),
        (ORS, (106, "mg"), "dose-differs"),
        (ORS, (5, "mL"), None),
        (ORS, (10, "mL"), "dose-differs"),
    ],
)
def test_dose_just_under_at_and_above_the_label_dose(
    medication: dict, dose: tuple, variant: str | None
) -> None:
    finding = regimen(edaravone_order(medication, dose))
    assert finding.variant == variant
    expected_indicator = "warning" if variant else "info"
    assert render(finding)["indicator"] == expected_indicator


def test_label_dose_card_states_the_cycle() -> None:
    body = render(regimen(edaravone_order(IV, (60, "mg"), route=IV_ROUTE, minutes=(60, "min"))))
    assert "14 days" in body["summary"] and "10 of 14" in body["summary"]
    assert "60 mg over 60 min" in body["summary"]


def test_a_wrong_dose_is_offered_the_label_dose_in_the_same_draft() -> None:
    finding = regimen(edaravone_order(ORS, (10, "mL"), route=ORAL_ROUTE, rid="ors-9"))
    body = render(finding)
    assert "210 mg" in body["summary"] and "105 mg (5 mL)" in body["summary"]
    [action] = body["suggestions"][0]["actions"]
    assert action["type"] == "update"
    updated = action["resource"]
    assert updated["id"] == "ors-9" and updated["status"] == "draft"
    assert updated["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": 105,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert updated["dosageInstruction"][0]["route"] == ORAL_ROUTE
    assert updated["medicationCodeableConcept"] == ORS


@pytest.mark.parametrize(
    ("dose", "expected"),
    [
        ((2, "{bag}"), "cannot be read as mg"),
        ((200, "mL"), "cannot be read as mg"),  # IV bags come in two strengths: a volume is not a dose
        (None, "no structured dose"),
    ],
)
def test_an_unreadable_dose_asks_for_a_check_and_is_never_called_wrong(
    dose: tuple | None, expected: str
) -> None:
    finding = regimen(edaravone_order(IV, dose))
    assert finding.variant == "check"
    assert expected in finding.fields["problem"]
    assert render(finding)["indicator"] == "info"


def test_ingredient_code_without_a_route_cannot_be_checked() -> None:
    finding = regimen(edaravone_order(rxnorm("1921877", "edaravone"), (60, "mg")))
    assert finding.variant == "check"
    assert finding.fields["route"] == "route not recorded"


@pytest.mark.parametrize(
    ("route", "dose", "variant", "route_label"),
    [
        (IV_ROUTE, (60, "mg"), None, "IV"),
        (ORAL_ROUTE, (105, "mg"), None, "oral suspension (ORS)"),
        (concept(text="via PEG tube"), (105, "mg"), None, "oral suspension (ORS)"),
        (
            concept(coding(SNOMED, "127492001", "Nasogastric route")),
            (60, "mg"),
            "dose-differs",
            "oral suspension (ORS)",
        ),
        (concept(text="IV"), (105, "mg"), "dose-differs", "IV"),
    ],
)
def test_the_route_tells_iv_from_oral_when_the_product_does_not(
    route: dict, dose: tuple, variant: str | None, route_label: str
) -> None:
    finding = regimen(edaravone_order(rxnorm("1921877", "edaravone"), dose, route=route))
    assert (finding.variant, finding.fields["route"]) == (variant, route_label)


def test_product_named_only_in_text_gives_the_form() -> None:
    finding = regimen(edaravone_order(concept(text="Radicava ORS 105 mg/5 mL oral suspension"), (5, "mL")))
    assert finding.variant is None and finding.fields["route"] == "oral suspension (ORS)"


def test_route_that_contradicts_the_product_is_a_warning() -> None:
    finding = regimen(edaravone_order(ORS, (105, "mg"), route=IV_ROUTE))
    assert finding.variant == "schedule-differs"
    assert "does not fit the product" in finding.fields["problem"]


@pytest.mark.parametrize(
    ("every_hours", "minutes", "variant"),
    [
        (24, (60, "min"), None),
        (24, (1, "h"), None),
        (24, (59, "min"), "schedule-differs"),
        (24, (30, "min"), "schedule-differs"),
        (12, (60, "min"), "schedule-differs"),
        (None, None, None),
    ],
)
def test_doses_a_day_and_infusion_time_are_checked(
    every_hours: float | None, minutes: tuple | None, variant
) -> None:
    finding = regimen(edaravone_order(IV, (60, "mg"), every_hours=every_hours, minutes=minutes))
    assert finding.variant == variant


def test_unreadable_infusion_time_asks_for_a_check() -> None:
    finding = regimen(edaravone_order(IV, (60, "mg"), minutes=(1, "wk")))
    assert finding.variant == "check" and "infusion duration" in finding.fields["problem"]


def test_a_wrong_dose_and_a_wrong_schedule_both_appear_on_the_dose_card() -> None:
    finding = regimen(edaravone_order(IV, (120, "mg"), every_hours=12))
    assert finding.variant == "dose-differs"
    assert "doses a day" in finding.fields["problem"] and "120 mg" in finding.fields["problem"]


def test_an_edaravone_service_request_is_not_checked_as_a_medication_order() -> None:
    infusion = service_request(concept(text="Edaravone infusion, day unit"))
    assert run(EDARAVONE_REGIMEN, orders=(infusion,)) == []


def test_regimen_rule_ignores_other_drugs_and_unselected_edaravone() -> None:
    orders = (edaravone_order(IV, (30, "mg"), rid="eda"), draft(rxnorm("199206"), rid="ril"))
    assert run(EDARAVONE_REGIMEN, orders=orders, selections=("MedicationRequest/ril",)) == []
    assert run(EDARAVONE_REGIMEN, orders=orders, hook="order-sign")  # all drafts on order-sign


# ============================================================================================
# Tofersen and SOD1

TOFERSEN_PRODUCTS = [
    rxnorm("2634995", "tofersen"),
    rxnorm("2634999", "15 ML tofersen 6.7 MG/ML Injection"),
    rxnorm("2635005", "15 ML tofersen 6.7 MG/ML Injection [Qalsody]"),
    concept(text="Qalsody 100 mg/15 mL intrathecal"),
]

SOD1_GENE = concept(coding(HGNC, "HGNC:11179", "SOD1"))


def component(code: str, value: dict[str, Any] | None = None, text: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"code": concept(coding(LOINC, code))}
    if value is not None:
        item["valueCodeableConcept"] = value
    if text is not None:
        item["valueString"] = text
    return item


def variant_obs(
    value: dict[str, Any] | None,
    *components: dict[str, Any],
    gene: dict[str, Any] | None = SOD1_GENE,
    when: Any = "default",
    **kwargs: Any,
) -> dict[str, Any]:
    """A Genomics Reporting IG style variant: 69548-6 with a gene-studied component."""
    parts = [component("48018-6", gene)] if gene is not None else []
    when = days_ago(700) if when == "default" else when
    return observation(
        concept(coding(LOINC, "69548-6", "Genetic variant assessment")),
        when,
        value_concept=value,
        components=[*parts, *components],
        **kwargs,
    )


PRESENT = concept(coding(LOINC, "LA9633-4", "Present"))
ABSENT = concept(coding(LOINC, "LA9634-2", "Absent"))


def significance(code: str, display: str) -> dict[str, Any]:
    return component("53037-8", concept(coding(LOINC, code, display)))


def tofersen(*resources: dict[str, Any], product: dict[str, Any] | None = None) -> list[Finding]:
    return run(TOFERSEN_SOD1, *resources, orders=(draft(product or TOFERSEN_PRODUCTS[2], rid="tof"),))


@pytest.mark.parametrize("product", TOFERSEN_PRODUCTS, ids=lambda m: json.dumps(m)[:50])
def test_tofersen_without_any_sod1_result_warns(product: dict) -> None:
    [finding] = tofersen(product=product)
    assert finding.fields["sod1_status"] == "no SOD1 result on record"
    body = render(finding)
    assert body["indicator"] == "warning"
    assert "100 mg (15 mL) intrathecally" in body["detail"] and "aseptic meningitis" in body["detail"]
    assert body["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/tof"


@pytest.mark.parametrize(
    "result",
    [
        variant_obs(PRESENT),
        variant_obs(None, significance("LA6668-3", "Pathogenic")),
        variant_obs(PRESENT, significance("LA26332-9", "Likely pathogenic")),
        variant_obs(None, component("48004-6", text="NM_000454.4:c.272A>C")),
        variant_obs(PRESENT, gene=concept(text="SOD1")),
        variant_obs(PRESENT, when=None),  # a germline result without a date still counts
        observation(
            concept(coding("urn:oid:1.2.3.4", "SOD1SEQ"), text="SOD1 gene sequencing"),
            days_ago(300),
            value_concept=concept(text="SOD1 c.272A>C p.(Asp91Ala): pathogenic variant detected"),
        ),
    ],
    ids=["present", "pathogenic", "likely-pathogenic", "hgvs-only", "gene-as-text", "undated", "local-test"],
)
def test_a_recorded_sod1_variant_means_no_card(result: dict) -> None:
    assert tofersen(result) == []


@pytest.mark.parametrize(
    ("result", "status", "said"),
    [
        (variant_obs(ABSENT), "SOD1 result negative", "Absent"),
        (variant_obs(None, significance("LA6675-8", "Benign")), "SOD1 result negative", "Benign"),
        (
            variant_obs(None, significance("LA26334-5", "Likely benign")),
            "SOD1 result negative",
            "Likely benign",
        ),
        (
            variant_obs(None, significance("LA26333-7", "Uncertain significance")),
            "SOD1 result inconclusive",
            "",
        ),
        (variant_obs(concept(coding(LOINC, "LA18198-4", "No call"))), "SOD1 result inconclusive", "No call"),
        (variant_obs(PRESENT, significance("LA6675-8", "Benign")), "SOD1 result inconclusive", "conflicting"),
        (variant_obs(None), "SOD1 result unreadable", "could not be read"),
        (
            observation(
                concept(coding("urn:oid:1.2.3.4", "SOD1SEQ"), text="SOD1 gene sequencing"),
                days_ago(300),
                value_concept=concept(text="No pathogenic variant detected"),
            ),
            "SOD1 result negative",
            "No pathogenic variant detected",
        ),
    ],
    ids=[
        "absent",
        "benign",
        "likely-benign",
        "vus",
        "no-call",
        "present-but-benign",
        "no-answer",
        "negative-text",
    ],
)
def test_a_negative_uncertain_or_unreadable_sod1_result_is_not_a_recorded_variant(
    result: dict, status: str, said: str
) -> None:
    [finding] = tofersen(result)
    assert finding.fields["sod1_status"] == status
    assert said in finding.evidence[1]
    render(finding)


def test_a_gene_panel_named_sod1_only_in_its_title_does_not_prove_a_sod1_variant() -> None:
    panel = observation(
        concept(text="ALS gene panel (SOD1, C9orf72, TARDBP, FUS)"),
        days_ago(200),
        value_concept=concept(text="Pathogenic variant detected"),
    )
    [finding] = tofersen(panel)
    assert finding.fields["sod1_status"] == "SOD1 result inconclusive"
    assert "only the test name mentions SOD1" in finding.evidence[1]


def test_a_result_covering_sod1_and_another_gene_is_not_specific() -> None:
    both = variant_obs(PRESENT, component("48018-6", concept(coding(HGNC, "HGNC:28337", "C9orf72"))))
    [finding] = tofersen(both)
    assert "not specific to SOD1" in finding.evidence[1]


def test_a_variant_in_another_gene_is_not_a_sod1_result() -> None:
    c9 = variant_obs(PRESENT, gene=concept(coding(HGNC, "HGNC:28337", "C9orf72")))
    [finding] = tofersen(c9)
    assert finding.fields["sod1_status"] == "no SOD1 result on record"


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered"])
def test_a_sod1_variant_result_without_a_valid_status_does_not_count(status: str) -> None:
    assert tofersen(variant_obs(PRESENT, status=status))


def test_a_future_dated_sod1_result_does_not_count() -> None:
    assert tofersen(variant_obs(PRESENT, when=days_ago(-30)))


def test_one_positive_result_is_enough_even_with_an_older_negative_one() -> None:
    assert tofersen(variant_obs(ABSENT, when=days_ago(2000)), variant_obs(PRESENT, when=days_ago(400))) == []


def test_hgnc_gene_under_the_https_system_spelling_is_recognised() -> None:
    gene = concept(coding("https://www.genenames.org", "HGNC:11179"))
    assert tofersen(variant_obs(PRESENT, gene=gene)) == []


def test_a_sod1_result_reaches_the_rule_through_the_order_service_prefilter() -> None:
    interest = service_interest("als-order-select")
    local = observation(
        concept(coding("urn:oid:1.2.3.4", "SOD1SEQ"), text="SOD1 gene sequencing"), days_ago(9)
    )
    assert interest.wants("Observation", [Concept.from_json(local["code"])])


def test_no_tofersen_order_no_card() -> None:
    assert run(TOFERSEN_SOD1, orders=(draft(rxnorm("199206")),)) == []


# ============================================================================================
# Module-level checks


def test_every_dmt_rule_has_facts_citing_its_card() -> None:
    for rule in RULES:
        definition = CATALOG[rule.id]
        assert rule.facts
        for fact in rule.facts:
            assert definition.citation(fact.citation) is not None, (rule.id, fact.name)


def test_order_rules_do_not_fire_on_patient_view_data_alone() -> None:
    # Without draft orders there is nothing to check.
    chart = (allergy(concept(coding(SNOMED, "3692009"))), variant_obs(ABSENT))
    for rule in (RELYVRIO_ORDER, EDARAVONE_SULFITE_ALLERGY, EDARAVONE_REGIMEN, TOFERSEN_SOD1):
        assert run(rule, *chart) == []


# ============================================================================================
# Fixtures: the expectations file, checked rule by rule


def _fixture_findings(name: str, hook: str) -> list[str]:
    bundle = patient_bundle(name)
    resources = [e["resource"] for e in bundle["entry"] if e["request"]["method"] == "PUT"]
    posts = [copy.deepcopy(e["resource"]) for e in bundle["entry"] if e["request"]["method"] == "POST"]
    orders = draft_orders(*posts) if posts and hook != "patient-view" else None
    selections = [f"{r['resourceType']}/{r['id']}" for r in posts] if hook == "order-select" else []
    record = record_from(
        resources,
        patient_id=name,
        interest=service_interest(f"als-{hook}"),
        draft_orders=orders,
        selections=selections,
    )
    rules = [r for r in RULES if hook in r.hooks]
    findings = evaluate(rules, record, RuleConfig())
    for finding in findings:
        render(finding)
    return sorted(f.rule_id for f in findings)


EXPECTED = json.loads((FIXTURES / "expected" / "dmt.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_fixture_patients_get_exactly_the_expected_dmt_cards(name: str, hook: str) -> None:
    assert _fixture_findings(name, hook) == sorted(EXPECTED[name][hook])


def test_expectations_cover_every_dmt_fixture_and_the_shared_als_fixtures() -> None:
    stems = {p.stem for p in (FIXTURES / "patients").glob("*.json")}
    wanted = {s for s in stems if s.startswith(("dmt-", "als-"))} | {"no-als-on-riluzole"}
    assert wanted <= set(EXPECTED)
    fired = {rule for hooks in EXPECTED.values() for ids in hooks.values() for rule in ids}
    assert fired == {r.id for r in RULES}


def test_other_areas_fixture_patients_get_no_dmt_card() -> None:
    others = sorted(p.stem for p in (FIXTURES / "patients").glob("*.json") if p.stem not in EXPECTED)
    for name in others:
        for hook in ("patient-view", "order-select", "order-sign"):
            assert _fixture_findings(name, hook) == [], (name, hook)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_the_us_and_nice_profiles_give_the_same_dmt_cards(rule: Rule) -> None:
    # Label facts (FDA) and the withdrawal apply in both profiles: nothing here is jurisdictional.
    chart = [
        patient(pid=PID),
        als(),
        allergy(concept(coding(SNOMED, "3692009", "Sodium sulfite"))),
        medication_request(concept(text="Relyvrio"), rid="rel"),
    ]
    orders = draft_orders(
        draft(rxnorm("1924317"), rid="eda", dose=(30, "mg")),
        draft(rxnorm("2635005"), rid="tof"),
        draft(concept(text="Relyvrio"), rid="rel-new"),
    )
    hook = sorted(rule.hooks)[0]
    record = record_from(chart, patient_id=PID, interest=service_interest(f"als-{hook}"), draft_orders=orders)
    nice = evaluate([rule], record, RuleConfig(profile="nice"))
    us = evaluate([rule], record, RuleConfig(profile="us"))
    assert nice and [(f.rule_id, f.fields, f.variant) for f in nice] == [
        (f.rule_id, f.fields, f.variant) for f in us
    ]
