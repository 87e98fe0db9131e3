"""massage-order-contraindications and exercise-prescription-als: order checks for physio and massage."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cds_service import cards
from cds_service.bundles import split_bundle
from cds_service.rules import RuleConfig, evaluate, rules_for_hook
from cds_service.rules.base import Finding
from cds_service.rules.physio import (
    EXERCISE_PRESCRIPTION_ALS,
    MASSAGE_ORDER_CONTRAINDICATIONS,
    RULES,
)
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    PID,
    SNOMED,
    als,
    coding,
    concept,
    condition,
    draft_orders,
    loinc,
    medication_request,
    observation,
    patient,
    procedure,
    rxnorm,
    service_request,
    snomed,
)
from tests.support import NOW, patient_bundle, record_from, service_interest

CATALOGUE = cards.load_catalogue(Settings().cards_dir)
LOCAL = "urn:oid:1.2.840.114350.1.13.0.1.7.2.727688"
MASSAGE_BY_NAME = concept(
    coding(LOCAL, "THER-MASS-60", "THERAPEUTIC MASSAGE 60 MIN"), text="Massage therapy, legs"
)
MASSAGE_CODED = snomed("387854002", "Therapeutic massage")
PHYSIO = snomed("91251008", "Physical therapy procedure")
EXERCISE = snomed("229065009", "Exercise therapy")
DVT = concept(coding(SNOMED, "128053003", "Deep venous thrombosis"))
DVT_ICD = concept(coding(ICD10CM, "I82.411", "Acute embolism and thrombosis of right femoral vein"))
TEMPERATURE = loinc("8310-5", "Body temperature")
SURGICAL = concept(coding(SNOMED, "387713003", "Surgical procedure"))
GASTROSTOMY = snomed("54956002", "Gastrostomy")


def days_ago(days: float) -> Any:
    return NOW - timedelta(days=days)


def run(
    rule: Any,
    *resources: dict[str, Any],
    orders: tuple[dict[str, Any], ...] = (),
    hook: str = "order-sign",
    selections: tuple[str, ...] = (),
) -> list[Finding]:
    record = record_from(
        [patient(), *resources],
        patient_id=PID,
        interest=service_interest(f"als-{hook}"),
        draft_orders=draft_orders(*orders),
        selections=selections,
    )
    return evaluate([rule], record, RuleConfig())


def massage(*resources: dict[str, Any], order: dict[str, Any] | None = None, **kwargs: Any) -> list[Finding]:
    orders = kwargs.pop("orders", None) or (order or service_request(MASSAGE_BY_NAME, rid="sr-massage"),)
    return run(MASSAGE_ORDER_CONTRAINDICATIONS, *resources, orders=orders, **kwargs)


def exercise(*orders: dict[str, Any], resources: tuple[dict[str, Any], ...] = ()) -> list[Finding]:
    return run(EXERCISE_PRESCRIPTION_ALS, als(), *resources, orders=orders)


def temperature(days: float, value: float, unit: str = "Cel", **kwargs: Any) -> dict[str, Any]:
    return observation(TEMPERATURE, days_ago(days), value, unit, **kwargs)


def surgery(days: float, **kwargs: Any) -> dict[str, Any]:
    resource = procedure(GASTROSTOMY, days_ago(days), **kwargs)
    resource["category"] = SURGICAL
    return resource


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


# -- massage-order-contraindications: which orders ----------------------------------------------


def test_massage_known_only_by_name_with_active_dvt_gives_a_warning_that_says_it_had_no_code() -> None:
    [finding] = massage(als(), condition(DVT, onset=days_ago(10)))
    assert finding.fields == {"order_kind": "Massage", "findings": "DVT"}
    assert "(named in free text, no code)" in finding.evidence[0]
    assert render(finding)["indicator"] == "warning"


def test_massage_coded_387854002_is_checked() -> None:
    [finding] = massage(als(), condition(DVT), order=service_request(MASSAGE_CODED))
    assert finding.evidence[0] == "Order: Therapeutic massage."  # by its code: no caveat


def test_physiotherapy_order_is_checked_too() -> None:
    [finding] = massage(als(), condition(DVT), order=service_request(PHYSIO))
    assert finding.fields["order_kind"] == "Physiotherapy"


def test_physiotherapy_known_only_by_name_is_checked() -> None:
    order = service_request(concept(coding(LOCAL, "PT-1"), text="Community physiotherapy referral"))
    assert massage(als(), condition(DVT), order=order)


@pytest.mark.parametrize(
    "text", ["Cardiac massage", "Carotid sinus massage", "Prostatic massage", "Chest physiotherapy"]
)
def test_orders_that_are_not_therapeutic_massage_or_exercise_physio_are_not_checked(text: str) -> None:
    order = service_request(concept(coding(LOCAL, "X-1"), text=text))
    assert massage(als(), condition(DVT), order=order) == []


def test_medication_orders_are_not_checked() -> None:
    order = medication_request(
        rxnorm("197391", "baclofen 10 MG Oral Tablet", text="massage oil"), status="draft"
    )
    assert massage(als(), condition(DVT), order=order) == []


def test_on_order_select_only_the_selected_order_is_checked() -> None:
    orders = (
        service_request(MASSAGE_BY_NAME, rid="sr-massage"),
        service_request(loinc("24325-3", "Hepatic function panel"), rid="sr-lft"),
    )
    only_lft = ("ServiceRequest/sr-lft",)
    assert massage(als(), condition(DVT), orders=orders, hook="order-select", selections=only_lft) == []
    both = ("ServiceRequest/sr-lft", "ServiceRequest/sr-massage")
    assert massage(als(), condition(DVT), orders=orders, hook="order-select", selections=both)
    assert massage(als(), condition(DVT), orders=orders, hook="order-sign")


def test_two_checked_orders_get_one_card_each_bound_to_their_own_draft() -> None:
    orders = (service_request(MASSAGE_BY_NAME, rid="a"), service_request(PHYSIO, rid="b"))
    findings = massage(als(), condition(DVT), orders=orders)
    assert sorted(f.bindings["draft_reference"] for f in findings) == ["ServiceRequest/a", "ServiceRequest/b"]


def test_no_contraindication_no_card() -> None:
    assert massage(als(), temperature(1, 37.2), surgery(90)) == []


# -- the contraindications -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (DVT, "DVT"),
        (DVT_ICD, "DVT"),
        (concept(coding(ICD10CM, "I824Z9")), "DVT"),  # ICD-10 without the dot
        (snomed("1163215007", "Pressure injury"), "pressure injury"),
        (snomed("399912005", "Pressure ulcer"), "pressure injury"),  # inactive legacy code
        (concept(coding(ICD10CM, "L89.154")), "pressure injury"),
        (snomed("64859006", "Osteoporosis"), "osteoporosis"),
        (concept(coding(ICD10CM, "M81.0")), "osteoporosis"),
        (snomed("50417007", "Lower respiratory tract infection"), "infection"),
        (snomed("40733004", "Infectious disease"), "infection"),
        (snomed("386661006", "Fever"), "fever"),
        (concept(coding(ICD10CM, "R50.9")), "fever"),
    ],
)
def test_each_active_condition_is_a_contraindication(code: dict[str, Any], label: str) -> None:
    [finding] = massage(als(), condition(code, onset=days_ago(5)))
    assert finding.fields["findings"] == label
    assert f"since {days_ago(5).date().isoformat()}" in finding.evidence[1]


@pytest.mark.parametrize(
    ("clinical", "verification"),
    [
        ("resolved", "confirmed"),
        ("inactive", "confirmed"),
        ("active", "refuted"),
        ("active", "entered-in-error"),
    ],
)
def test_resolved_refuted_or_erroneous_conditions_are_not_contraindications(
    clinical: str, verification: str
) -> None:
    assert massage(als(), condition(DVT, clinical=clinical, verification=verification)) == []


def test_condition_without_clinical_status_counts_as_active() -> None:
    assert massage(als(), condition(DVT, clinical=None))


def test_condition_known_only_by_text_is_not_matched() -> None:
    assert massage(als(), condition(concept(coding(LOCAL, "DVT-1"), text="Deep vein thrombosis"))) == []


def test_chronic_dvt_icd10_code_is_not_in_the_acute_set() -> None:
    assert massage(als(), condition(concept(coding(ICD10CM, "I82.511")))) == []


@pytest.mark.parametrize(("value", "fires"), [(37.9, False), (38.0, True), (38.1, True)])
def test_fever_threshold_is_38_0_celsius(value: float, fires: bool) -> None:
    assert bool(massage(als(), temperature(1, value))) is fires


@pytest.mark.parametrize(("value", "fires"), [(100.3, False), (100.4, True)])
def test_fahrenheit_temperatures_are_converted(value: float, fires: bool) -> None:
    assert bool(massage(als(), temperature(1, value, "[degF]"))) is fires


def test_temperature_with_only_a_human_unit_is_read() -> None:
    assert massage(als(), temperature(1, 38.5, "°C", ucum=""))


def test_temperature_in_an_unreadable_unit_gives_no_card() -> None:
    assert massage(als(), temperature(1, 39.5, "mm[Hg]")) == []
    assert massage(als(), temperature(1, 39.5, "degrees", ucum="")) == []


@pytest.mark.parametrize(("days", "fires"), [(6.9, True), (7, True), (7.1, False), (10, False)])
def test_a_measured_fever_counts_for_7_days(days: float, fires: bool) -> None:
    assert bool(massage(als(), temperature(days, 39.0))) is fires


def test_latest_normal_temperature_does_not_hide_a_fever_earlier_in_the_week() -> None:
    [finding] = massage(als(), temperature(0.5, 37.0), temperature(3, 38.6))
    assert "38.6" in finding.evidence[1]


def test_undated_or_cancelled_temperature_gives_no_card() -> None:
    assert massage(als(), temperature(1, 39.0, status="cancelled")) == []
    assert massage(als(), observation(TEMPERATURE, None, 39.0, "Cel")) == []


def test_fever_from_condition_and_measurement_is_named_once_in_the_summary() -> None:
    [finding] = massage(als(), condition(snomed("386661006")), temperature(1, 38.4))
    assert finding.fields["findings"] == "fever"
    assert len(finding.evidence) == 3


@pytest.mark.parametrize(("days", "fires"), [(41, True), (42, True), (43, False)])
def test_surgery_counts_for_42_days(days: int, fires: bool) -> None:
    assert bool(massage(als(), surgery(days))) is fires


def test_surgery_recognised_by_its_code_without_category() -> None:
    [finding] = massage(als(), procedure(SURGICAL, days_ago(10)))
    assert finding.evidence[1].endswith("(10 days ago).")


def test_surgery_recognised_by_its_category_counts() -> None:
    [finding] = massage(als(), surgery(20))
    assert (
        "Gastrostomy" in finding.evidence[1] and finding.evidence[1].endswith("(20 days ago).")
    )


@pytest.mark.parametrize("status", ["in-progress", "not-done", "entered-in-error"])
def test_surgery_that_is_not_completed_does_not_count(status: str) -> None:
    assert massage(als(), surgery(10, status=status)) == []


def test_non_surgical_procedure_does_not_count() -> None:
    diagnostic = procedure(GASTROSTOMY, days_ago(10))
    diagnostic["category"] = snomed("103693007", "Diagnostic procedure")
    assert massage(als(), diagnostic) == []
    assert massage(als(), procedure(GASTROSTOMY, days_ago(10))) == []  # no category: not recognised


def test_undated_or_future_surgery_does_not_count() -> None:
    assert massage(als(), surgery(-3)) == []
    undated = surgery(10)
    del undated["performedDateTime"]
    assert massage(als(), undated) == []


def test_every_finding_is_listed_with_its_date() -> None:
    [finding] = massage(
        als(),
        condition(DVT, onset=days_ago(9)),
        condition(snomed("1163215007"), onset=days_ago(8)),
        condition(snomed("64859006")),
        condition(snomed("50417007"), onset=days_ago(3)),
        temperature(1, 38.2),
        surgery(20),
    )
    assert (
        finding.fields["findings"] == "DVT, pressure injury, osteoporosis, infection, fever, recent surgery"
    )
    assert len(finding.evidence) == 7
    assert "date not recorded" in finding.evidence[3]  # osteoporosis without onset
    assert len(render(finding)["summary"]) < 140


# -- massage card and suggestions ---------------------------------------------------------------


def test_massage_card_offers_the_order_with_precautions_and_removal() -> None:
    original = service_request(MASSAGE_BY_NAME, rid="sr-massage")
    original["note"] = [{"text": "Twice weekly"}]
    [finding] = massage(als(), condition(DVT), surgery(10), order=original)
    body = render(finding)
    assert empty_values(body) == []
    assert body["summary"] == "Massage order: contraindications to massage found (DVT, recent surgery)"
    update, delete = (s["actions"][0] for s in body["suggestions"])
    assert update["type"] == "update" and delete["type"] == "delete"
    assert delete["resourceId"] == "ServiceRequest/sr-massage"
    updated = update["resource"]
    assert updated["id"] == "sr-massage" and updated["code"] == MASSAGE_BY_NAME
    assert updated["status"] == "draft" and updated["subject"] == {"reference": f"Patient/{PID}"}
    assert updated["note"][0] == {"text": "Twice weekly"}
    assert (
        "no deep-tissue massage" in updated["note"][1]["text"]
        and "DVT, recent surgery" in updated["note"][1]["text"]
    )
    assert "no als-specific guideline" in body["detail"].lower()
    assert "corroborated" in body["detail"]


def test_draft_without_an_id_gets_the_card_without_suggestions() -> None:
    order = service_request(MASSAGE_BY_NAME)
    del order["id"]
    [finding] = massage(als(), condition(DVT), order=order)
    assert finding.variant == "no-draft-id"
    body = render(finding)
    assert "suggestions" not in body and empty_values(body) == []


# -- massage or respiratory physiotherapy (finding 7 of the safety review) -----------------------

LRTI = snomed("50417007", "Lower respiratory tract infection")
FEVER = snomed("386661006", "Fever")


@pytest.mark.parametrize(
    "code",
    [
        concept(coding(LOCAL, "RESP-PT"), text="Chest physiotherapy - airway clearance"),
        concept(coding(LOCAL, "MIE"), text="Mechanical insufflation-exsufflation (cough assist)"),
        concept(coding(SNOMED, "91251008"), text="Physiotherapy: cough augmentation and breath stacking"),
        concept(coding(SNOMED, "91251008", "Physical therapy procedure"), text="Respiratory physiotherapy"),
        concept(coding(LOCAL, "LVR"), text="Lung volume recruitment bag training"),
        concept(coding(LOCAL, "MAC"), text="Manual assisted cough - teach carers"),
    ],
    ids=[
        "chest-physio",
        "cough-assist",
        "coded-physio-cough-augmentation",
        "respiratory-physio",
        "lvr",
        "mac",
    ],
)
def test_respiratory_physiotherapy_during_a_chest_infection_is_not_screened_as_massage(
    code: dict[str, Any],
) -> None:
    order = service_request(code, rid="sr-resp")
    assert massage(als(), condition(LRTI, onset=days_ago(3)), condition(FEVER), order=order) == []
    assert exercise(order, resources=(condition(LRTI),)) == []


def test_respiratory_physiotherapy_named_only_in_the_category_is_not_screened() -> None:
    order = service_request(PHYSIO, category=[concept(text="Respiratory physiotherapy")], rid="sr-resp")
    assert massage(als(), condition(LRTI), order=order) == []


def test_a_general_physiotherapy_order_during_a_chest_infection_is_not_deferred() -> None:
    [finding] = massage(als(), condition(LRTI, onset=days_ago(3)), order=service_request(PHYSIO, rid="sr-pt"))
    assert finding.variant == "physiotherapy"
    assert finding.fields == {"order_kind": "Physiotherapy", "findings": "infection"}
    body = render(finding)
    assert empty_values(body) == [] and len(body["summary"]) < 140
    assert body["summary"] == "Physiotherapy order: if it includes massage, take care (infection)"
    assert [a["type"] for s in body["suggestions"] for a in s["actions"]] == ["update"]
    assert "1.13" in body["detail"] and "Do not defer respiratory physiotherapy" in body["detail"]
    note = body["suggestions"][0]["actions"][0]["resource"]["note"][-1]["text"]
    assert "if this programme includes massage" in note


def test_a_general_physiotherapy_draft_without_id_has_no_suggestions() -> None:
    order = service_request(PHYSIO)
    del order["id"]
    [finding] = massage(als(), condition(DVT), order=order)
    assert finding.variant == "physiotherapy-no-draft-id"
    assert "suggestions" not in render(finding)


def test_a_massage_order_during_a_chest_infection_keeps_the_full_card() -> None:
    [finding] = massage(als(), condition(LRTI), order=service_request(MASSAGE_CODED, rid="sr-m"))
    assert finding.variant is None and finding.fields["order_kind"] == "Massage"
    assert [s["actions"][0]["type"] for s in render(finding)["suggestions"]] == ["update", "delete"]


def test_massage_and_chest_physiotherapy_together_only_the_massage_gets_the_card() -> None:
    orders = (
        service_request(MASSAGE_BY_NAME, rid="sr-massage"),
        service_request(concept(text="Chest physiotherapy"), rid="sr-chest"),
    )
    [finding] = massage(als(), condition(LRTI), orders=orders)
    assert finding.bindings["draft_reference"] == "ServiceRequest/sr-massage"


# -- exercise-prescription-als -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (PHYSIO, "Physiotherapy"),
        (EXERCISE, "Exercise programme"),
        (snomed("229095001", "Exercise class"), "Exercise programme"),
        (concept(coding(LOCAL, "EX-1"), text="Home exercise programme"), "Exercise programme"),
        (concept(coding(LOCAL, "PT-2"), text="Physical therapy evaluation and treatment"), "Physiotherapy"),
    ],
)
def test_physiotherapy_or_exercise_order_gets_the_exercise_guidance(code: dict[str, Any], kind: str) -> None:
    [finding] = exercise(service_request(code, rid="sr-1"))
    assert finding.fields == {"order_kind": kind}
    body = render(finding)
    assert body["indicator"] == "info" and empty_values(body) == [] and len(body["summary"]) < 140


@pytest.mark.parametrize(
    "text", ["Exercise tolerance test", "Exercise ECG", "Chest physiotherapy", "Massage therapy"]
)
def test_exercise_tests_chest_physio_and_massage_do_not_get_exercise_guidance(text: str) -> None:
    assert exercise(service_request(concept(coding(LOCAL, "X-9"), text=text))) == []


def test_exercise_card_states_the_programme_advice_without_unverified_numbers() -> None:
    [finding] = exercise(service_request(PHYSIO, rid="sr-1"))
    body = render(finding)
    detail = body["detail"]
    for phrase in ("antigravity", "eccentric", "talk test", "exhaustion", "1.8.5", "1.8.6"):
        assert phrase in detail, phrase
    for number in ("MRC", "50-65", "30 min", "1 h"):
        assert number not in body["summary"] + detail.split("**Sources:**")[0], number
    updated = body["suggestions"][0]["actions"][0]["resource"]
    assert updated["id"] == "sr-1" and "antigravity strength" in updated["note"][-1]["text"]


def test_exercise_guidance_is_given_even_when_there_are_massage_contraindications() -> None:
    assert exercise(service_request(PHYSIO), resources=(condition(DVT),))


def test_exercise_draft_without_id_gets_the_card_without_suggestions() -> None:
    order = service_request(PHYSIO)
    del order["id"]
    [finding] = exercise(order)
    assert finding.variant == "no-draft-id" and "suggestions" not in render(finding)


def test_one_exercise_card_per_order_even_when_it_is_physio_and_exercise() -> None:
    both = service_request(concept(coding(SNOMED, "91251008"), coding(SNOMED, "229065009")))
    assert len(exercise(both)) == 1


# -- the ALS gate and hooks ----------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_no_card_for_a_patient_without_als(rule: Any) -> None:
    other = condition(concept(coding(SNOMED, "24700007", "Multiple sclerosis"), coding(ICD10CM, "G35")))
    refuted = als(verification="refuted")
    assert run(rule, other, refuted, condition(DVT), orders=(service_request(PHYSIO),)) == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
@pytest.mark.parametrize("code", [concept(coding(SNOMED, "86044005")), concept(coding(ICD10CM, "G12.21"))])
def test_als_coded_in_snomed_or_icd10_gets_the_card(rule: Any, code: dict[str, Any]) -> None:
    assert run(rule, condition(code), condition(DVT), orders=(service_request(PHYSIO),))


def test_no_card_without_draft_orders() -> None:
    for rule in RULES:
        assert run(rule, als(), condition(DVT)) == []


def test_rules_run_on_order_select_and_order_sign_not_patient_view() -> None:
    for rule in RULES:
        assert rule.hooks == frozenset({"order-select", "order-sign"})
        assert rule not in rules_for_hook("patient-view")


# -- fixture patients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("physio-massage-dvt-fever", ["massage-order-contraindications"]),
        ("physio-exercise-no-contraindication", ["exercise-prescription-als"]),
        (
            "physio-surgery-osteoporosis-pressure",
            ["exercise-prescription-als", "exercise-prescription-als", "massage-order-contraindications"],
        ),
        ("physio-no-als-massage-dvt", []),
        ("physio-chest-infection-cough-assist", []),
        ("physio-chest-infection-massage-and-chest-physio", ["massage-order-contraindications"]),
    ],
)
def test_fixture_patients_get_the_order_cards_their_data_call_for(name: str, expected: list[str]) -> None:
    chart, drafts = split_bundle(patient_bundle(name))
    record = record_from(
        chart,
        patient_id=name,
        interest=service_interest("als-order-sign"),
        draft_orders=draft_orders(*drafts),
    )
    assert sorted(f.rule_id for f in evaluate(RULES, record, RuleConfig())) == expected
