"""The riluzole rules (other than riluzole-lft-due, tested in tests/unit/test_rule_riluzole_lft_due.py).

Every test goes through `evaluate`, so the ALS gate is always in front of the rule, and through
`record_from`, so the FHIR JSON is parsed exactly as in production. Boundaries are tested just
under, at and above each threshold.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Iterable
from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding, Rule
from cds_service.rules.riluzole import (
    ALT_RAISED,
    FEVER_CHECK_WBC,
    LFT_DUE,
    NEUTROPENIA,
    NOT_PRESCRIBED,
    ORDER_CONTRAINDICATION,
    ORDER_DOSE,
    ORDER_LIVER,
    ORDER_MONITORING,
    RECHALLENGE,
    RULES,
)
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    LOINC,
    PID,
    RXNORM,
    SNOMED,
    UCUM,
    allergy,
    als,
    coding,
    concept,
    condition,
    days_ago,
    draft_orders,
    loinc,
    medication_request,
    observation,
    patient,
    rxnorm,
    snomed,
)
from tests.support import FIXTURES, load_json, record_from, service_interest

CATALOG = cards.load_catalogue(Settings().cards_dir)
NEW_RULES = (
    NOT_PRESCRIBED,
    ALT_RAISED,
    FEVER_CHECK_WBC,
    NEUTROPENIA,
    ORDER_LIVER,
    ORDER_DOSE,
    ORDER_MONITORING,
    RECHALLENGE,
    ORDER_CONTRAINDICATION,
)

TABLET = rxnorm("199206", "riluzole 50 MG Oral Tablet")
RILUTEK = rxnorm("152915", "riluzole 50 MG Oral Tablet [Rilutek]")
SUSPENSION = rxnorm("2058147", "riluzole 5 MG/ML Oral Suspension")
FILM = rxnorm("2267572", "riluzole 50 MG Oral Film [Exservan]")
BY_NAME = concept(coding("urn:oid:1.2.840.114350.1.13.0.1.7.2.698288", "312045"), text="Rilutek 50mg tablets")
AMLODIPINE = rxnorm("197361", "amlodipine 5 MG Oral Tablet")


# --------------------------------------------------------------------------------------------
# Builders


def on_riluzole(medication: dict[str, Any] = TABLET, **kwargs: Any) -> dict[str, Any]:
    return medication_request(medication, **{"authored": days_ago(400), "rid": "ril", **kwargs})


def draft(
    medication: dict[str, Any] = TABLET,
    *,
    dose: tuple[float, str] | None = (50, "mg"),
    every_hours: float | None = 12,
    rid: str = "draft-ril",
) -> dict[str, Any]:
    return medication_request(medication, status="draft", dose=dose, every_hours=every_hours, rid=rid)


def lab(code: str, value: float | None, unit: str | None = "U/L", *, days: float = 3, **kwargs: Any) -> dict:
    return observation(loinc(code), days_ago(days), value, unit, **kwargs)


def alt(value: float, unit: str = "U/L", **kwargs: Any) -> dict[str, Any]:
    return lab("1742-6", value, unit, **kwargs)


def ast(value: float, unit: str = "U/L", **kwargs: Any) -> dict[str, Any]:
    return lab("1920-8", value, unit, **kwargs)


def bilirubin(value: float, unit: str = "umol/L", **kwargs: Any) -> dict[str, Any]:
    return lab("1975-2", value, unit, **kwargs)


def neutrophils(value: float, unit: str = "10*9/L", **kwargs: Any) -> dict[str, Any]:
    return lab("751-8", value, unit, **kwargs)


def wbc(value: float, unit: str = "10*9/L", **kwargs: Any) -> dict[str, Any]:
    return lab("6690-2", value, unit, **kwargs)


def temperature(value: float, unit: str = "Cel", *, days: float = 1, **kwargs: Any) -> dict[str, Any]:
    return lab("8310-5", value, unit, days=days, **kwargs)


def liver_disease(code: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return condition(code or snomed("328383001", "Chronic liver disease"), **kwargs)


def fever_condition(code: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    return condition(code or snomed("386661006", "Fever"), **kwargs)


def run(
    rule: Rule,
    *resources: dict[str, Any],
    drafts: Iterable[dict[str, Any]] = (),
    selections: Iterable[str] = (),
    config: RuleConfig | None = None,
    sex: str | None = "female",
) -> list[Finding]:
    everything = list(resources)
    if sex is not None:
        everything.append(patient(gender=sex))
    orders = list(drafts)
    service = "als-patient-view" if "patient-view" in rule.hooks else "als-order-sign"
    record = record_from(
        everything,
        patient_id=PID,
        interest=service_interest(service),
        draft_orders=draft_orders(*orders) if orders else None,
        selections=list(selections),
    )
    return evaluate([rule], record, config or RuleConfig())


def render(finding: Finding) -> dict[str, Any]:
    """Render through the card file and check what every card must satisfy."""
    definition = CATALOG[finding.rule_id]
    body = cards.render(finding, definition).to_json()
    Card.model_validate(body)
    assert len(body["summary"]) < 140, body["summary"]
    assert empty_values(body) == [], empty_values(body)
    return body


def empty_values(value: Any, path: str = "$") -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_values(v, f"{path}[{i}]")]
    return []


def text(findings: list[Finding]) -> str:
    return " ".join(line for f in findings for line in f.evidence)


NON_ALS = condition(snomed("38341003", "Hypertensive disorder"), rid="htn")
REFUTED_ALS = als(verification="refuted")


# ============================================================================================
# riluzole-not-prescribed


def test_not_prescribed_fires_for_als_without_riluzole_and_says_no_alt_is_on_record() -> None:
    [finding] = run(NOT_PRESCRIBED, als())
    assert finding.fields["history"] == "none on record"
    assert "No active or on-hold riluzole" in finding.evidence[0]
    assert "No ALT result on record" in text([finding])
    assert finding.variant is None


def test_not_prescribed_fires_for_icd10_coded_als() -> None:
    icd_only = condition(concept(coding(ICD10CM, "G12.21", "Amyotrophic lateral sclerosis")), rid="als")
    assert run(NOT_PRESCRIBED, icd_only)


@pytest.mark.parametrize("diagnosis", [NON_ALS, REFUTED_ALS, als(verification="entered-in-error")])
def test_not_prescribed_needs_an_active_als_diagnosis(diagnosis: dict[str, Any]) -> None:
    assert run(NOT_PRESCRIBED, diagnosis) == []


@pytest.mark.parametrize(
    "medication", [TABLET, RILUTEK, SUSPENSION, FILM, BY_NAME, rxnorm("35623", "riluzole")]
)
@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_not_prescribed_is_silent_when_riluzole_is_current_at_any_rxnorm_level_or_by_name(
    medication: dict[str, Any], status: str
) -> None:
    assert run(NOT_PRESCRIBED, als(), on_riluzole(medication, status=status)) == []


def test_not_prescribed_is_not_silenced_by_another_drug() -> None:
    assert run(NOT_PRESCRIBED, als(), medication_request(AMLODIPINE))


def test_a_stopped_course_is_not_a_contraindication_and_the_card_says_when_it_stopped() -> None:
    stopped = on_riluzole(status="stopped", authored=days_ago(700))
    stopped["dispenseRequest"] = {"validityPeriod": {"start": "2024-12-01", "end": "2025-03-15"}}
    stopped["statusReason"] = {"text": "Nausea"}
    [finding] = run(NOT_PRESCRIBED, als(), stopped)
    assert finding.fields["history"] == "an earlier course ended"
    line = next(line for line in finding.evidence if "stopped" in line)
    assert "Riluzole was stopped on 2025-03-15" in line
    assert "reason recorded: Nausea" in line
    assert "not a contraindication by itself" in line


def test_a_stop_without_a_date_is_reported_as_such() -> None:
    [finding] = run(NOT_PRESCRIBED, als(), on_riluzole(status="stopped"))
    assert "Riluzole was stopped (date not recorded)" in text([finding])


def test_a_completed_course_is_reported_as_completed() -> None:
    [finding] = run(NOT_PRESCRIBED, als(), on_riluzole(status="completed"))
    assert "Riluzole was completed" in text([finding])


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "draft"])
def test_riluzole_requests_that_never_ran_are_neither_current_nor_an_earlier_course(status: str) -> None:
    [finding] = run(NOT_PRESCRIBED, als(), on_riluzole(status=status))
    assert finding.fields["history"] == "none on record"


@pytest.mark.parametrize(
    "code",
    [
        snomed("328383001", "Chronic liver disease"),
        snomed("19943007", "Cirrhosis of liver"),
        concept(coding(ICD10CM, "K74.60", "Unspecified cirrhosis of liver")),
        concept(coding(ICD10CM, "K7460")),
    ],
)
def test_hepatic_disease_silences_the_offer(code: dict[str, Any]) -> None:
    assert run(NOT_PRESCRIBED, als(), liver_disease(code)) == []


@pytest.mark.parametrize(
    "kwargs", [{"clinical": "resolved"}, {"verification": "refuted"}, {"verification": "entered-in-error"}]
)
def test_resolved_refuted_or_erroneous_hepatic_disease_does_not_silence_the_offer(kwargs: dict) -> None:
    assert run(NOT_PRESCRIBED, als(), liver_disease(**kwargs))


def test_hepatic_disease_is_never_matched_by_name() -> None:
    assert run(NOT_PRESCRIBED, als(), liver_disease(concept(text="Chronic liver disease")))


@pytest.mark.parametrize(("value", "offered"), [(119, True), (120, True), (121, False)])
def test_alt_above_three_times_the_labs_uln_silences_the_offer(value: float, offered: bool) -> None:
    assert bool(run(NOT_PRESCRIBED, als(), alt(value, low=7, high=40))) is offered


@pytest.mark.parametrize(
    ("sex", "value", "offered"),
    [
        ("male", 99, True),  # 3.0 x 33
        ("male", 100, False),
        ("female", 75, True),  # 3.0 x 25
        ("female", 76, False),
        ("unknown", 76, False),  # unknown sex: the lower, female default
        (None, 76, False),  # no Patient resource at all
    ],
)
def test_alt_without_a_range_is_judged_against_the_acg_default_for_the_patients_sex(
    sex: str | None, value: float, offered: bool
) -> None:
    assert bool(run(NOT_PRESCRIBED, als(), alt(value), sex=sex)) is offered


def test_the_alt_uln_defaults_are_configurable() -> None:
    config = RuleConfig(alt_uln_default_female=40)
    assert run(NOT_PRESCRIBED, als(), alt(110), config=config)


def test_an_alt_in_an_unreadable_unit_is_not_a_contraindication_and_is_reported_as_unassessed() -> None:
    [finding] = run(NOT_PRESCRIBED, als(), alt(900, "mmol/L"))
    assert "its unit cannot be read" in text([finding])


@pytest.mark.parametrize(("value", "offered"), [(120, True), (121, False)])
def test_ast_above_three_times_the_labs_uln_silences_the_offer(value: float, offered: bool) -> None:
    assert bool(run(NOT_PRESCRIBED, als(), ast(value, low=0, high=40))) is offered


def test_ast_without_a_reference_range_is_not_judged() -> None:
    assert run(NOT_PRESCRIBED, als(), ast(500))


def test_the_latest_alt_decides_not_an_older_one() -> None:
    old_high = alt(300, low=7, high=40, days=200)
    assert run(NOT_PRESCRIBED, als(), old_high, alt(30, low=7, high=40, days=5))
    assert run(NOT_PRESCRIBED, als(), alt(30, low=7, high=40, days=200), alt(300, low=7, high=40)) == []


def test_pregnancy_condition_silences_the_offer() -> None:
    assert run(NOT_PRESCRIBED, als(), condition(snomed("77386006", "Pregnancy"))) == []
    assert run(NOT_PRESCRIBED, als(), condition(concept(coding(ICD10CM, "Z33.1")))) == []
    assert run(NOT_PRESCRIBED, als(), condition(snomed("77386006"), clinical="resolved"))


def pregnancy_status(value: dict[str, Any], days: float) -> dict[str, Any]:
    return observation(loinc("82810-3"), days_ago(days), value_concept=value)


def test_the_latest_pregnancy_status_decides() -> None:
    pregnant = pregnancy_status(snomed("77386006", "Pregnant"), days=10)
    not_pregnant = pregnancy_status(snomed("60001007", "Not pregnant"), days=2)
    assert run(NOT_PRESCRIBED, als(), pregnant) == []
    assert run(NOT_PRESCRIBED, als(), pregnant, not_pregnant)


def breastfeeding(days: float = 5, **kwargs: Any) -> dict[str, Any]:
    return observation(loinc("63895-7"), days_ago(days), **kwargs)


def test_current_breastfeeding_silences_the_offer() -> None:
    yes = concept(coding(LOINC, "LA29252-6", "Currently breastfeeding"))
    no = concept(coding(LOINC, "LA29253-4", "Not currently breastfeeding"))
    assert run(NOT_PRESCRIBED, als(), breastfeeding(value_concept=yes)) == []
    assert run(NOT_PRESCRIBED, als(), breastfeeding(value_concept=no))
    as_boolean = breastfeeding()
    as_boolean["valueBoolean"] = True
    assert run(NOT_PRESCRIBED, als(), as_boolean) == []


@pytest.mark.parametrize(
    "code",
    [rxnorm("35623", "riluzole"), concept(text="Riluzole"), concept(coding("urn:x", "1", "Rilutek"))],
)
def test_a_riluzole_allergy_silences_the_offer(code: dict[str, Any]) -> None:
    assert run(NOT_PRESCRIBED, als(), allergy(code)) == []


@pytest.mark.parametrize("kwargs", [{"verification": "refuted"}, {"clinical": "resolved"}])
def test_a_refuted_or_resolved_riluzole_allergy_does_not_silence_the_offer(kwargs: dict) -> None:
    assert run(NOT_PRESCRIBED, als(), allergy(rxnorm("35623"), **kwargs))


def test_an_allergy_to_something_else_does_not_silence_the_offer() -> None:
    assert run(NOT_PRESCRIBED, als(), allergy(rxnorm("7980", "penicillin G")))


def test_not_prescribed_card_offers_a_draft_proposal_for_riluzole_50_mg_every_12_hours() -> None:
    [finding] = run(NOT_PRESCRIBED, als(), alt(28, low=7, high=40))
    body = render(finding)
    assert "NICE" in body["summary"]
    [suggestion] = body["suggestions"]
    [action] = suggestion["actions"]
    resource = action["resource"]
    assert action["type"] == "create"
    assert resource["status"] == "draft" and resource["intent"] == "proposal"
    assert resource["subject"] == {"reference": f"Patient/{PID}"}
    assert resource["medicationCodeableConcept"]["coding"][0] == {
        "system": RXNORM,
        "code": "199206",
        "display": "riluzole 50 MG Oral Tablet",
    }
    [dosage] = resource["dosageInstruction"]
    assert dosage["timing"] == {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}}
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 50
    assert "28 U/L on" in body["detail"] and "0.7 × ULN 40" in body["detail"]


def test_the_us_profile_cites_aan_level_a_instead_of_nice() -> None:
    [nice] = run(NOT_PRESCRIBED, als())
    [us] = run(NOT_PRESCRIBED, als(), config=RuleConfig(profile="us"))
    assert nice.variant is None and us.variant == "us"
    body = render(us)
    assert "AAN 2009, Level A" in body["summary"] and "NICE" not in body["summary"]
    assert body["suggestions"][0]["actions"][0]["resource"]["intent"] == "proposal"


# ============================================================================================
# riluzole-alt-raised


@pytest.mark.parametrize(
    ("value", "variant", "indicator"),
    [
        (119, "none", None),  # 2.975 x 40
        (120, None, "warning"),  # 3.0 x
        (199, None, "warning"),
        (200, "stop", "critical"),  # 5.0 x
        (201, "stop", "critical"),
    ],
)
def test_alt_raised_thresholds_against_the_labs_uln(
    value: float, variant: str | None, indicator: str
) -> None:
    findings = run(ALT_RAISED, als(), on_riluzole(), alt(value, low=7, high=40))
    if variant == "none":
        assert findings == []
        return
    [finding] = findings
    assert (finding.variant, finding.indicator) == (variant, indicator)
    assert "ULN from the lab's reference range" in text(findings)


@pytest.mark.parametrize(
    ("sex", "value", "fires"),
    [
        ("male", 98, False),
        ("male", 99, True),
        ("female", 74, False),
        ("female", 75, True),
        ("unknown", 75, True),
    ],
)
def test_alt_raised_uses_the_sex_specific_default_without_a_range(
    sex: str, value: float, fires: bool
) -> None:
    findings = run(ALT_RAISED, als(), on_riluzole(), alt(value), sex=sex)
    assert bool(findings) is fires
    if fires:
        expected = "men" if sex == "male" else "women"
        assert f"default ULN for {expected}" in text(findings)
        assert "ACG 2017" in text(findings)


def test_unknown_sex_takes_the_lower_default_and_says_why() -> None:
    findings = run(ALT_RAISED, als(), on_riluzole(), alt(80), sex=None)
    assert "the lower one, as sex is not recorded" in text(findings)


@pytest.mark.parametrize(
    ("value", "unit", "high", "variant"),
    [
        (120, "[IU]/L", 40, None),
        (1.65, "ukat/L", 0.55, None),  # 99 U/L against 33 U/L: exactly 3 x
        (3.0, "ukat/L", 0.6, "stop"),  # 180 against 36: 5 x
    ],
)
def test_alt_raised_converts_units(value: float, unit: str, high: float, variant: str | None) -> None:
    [finding] = run(ALT_RAISED, als(), on_riluzole(), alt(value, unit, low=0, high=high))
    assert finding.variant == variant


def test_an_alt_and_its_range_may_be_in_different_units() -> None:
    observation_ = alt(3.0, "ukat/L")  # 180 U/L
    observation_["referenceRange"] = [{"high": {"value": 36, "unit": "U/L", "system": UCUM, "code": "U/L"}}]
    [finding] = run(ALT_RAISED, als(), on_riluzole(), observation_)
    assert finding.variant == "stop"
    assert "3 µkat/L (= 180 U/L)" in finding.evidence[1]


def test_an_alt_in_an_unreadable_unit_fires_no_card() -> None:
    assert run(ALT_RAISED, als(), on_riluzole(), alt(900, "mmol/L", low=7, high=40)) == []
    assert run(ALT_RAISED, als(), on_riluzole(), alt(900, "U/L", ucum="")) != []  # unit text alone is read


def test_an_unreadable_reference_range_falls_back_to_the_default_and_says_so() -> None:
    observation_ = alt(80, low=7, high=40)
    observation_["referenceRange"][0]["high"] = {"value": 40, "unit": "furlongs", "code": "furlongs"}
    findings = run(ALT_RAISED, als(), on_riluzole(), observation_, sex="female")
    assert "could not be read" in text(findings) and "default ULN for women" in text(findings)


@pytest.mark.parametrize(
    ("bili", "unit", "high", "alt_value", "variant"),
    [
        (22, "umol/L", 21, 41, "liver-dysfunction"),  # both above ULN
        (21, "umol/L", 21, 41, "none"),  # bilirubin at the limit is not raised
        (22, "umol/L", 21, 40, "none"),  # ALT at ULN: not raised
        (1.3, "mg/dL", 1.2, 60, "liver-dysfunction"),
        (22, "umol/L", 21, 200, "stop"),  # 5 x ULN wins; bilirubin shown
    ],
)
def test_raised_bilirubin_with_raised_alt_is_critical(
    bili: float, unit: str, high: float, alt_value: float, variant: str
) -> None:
    findings = run(
        ALT_RAISED,
        als(),
        on_riluzole(),
        alt(alt_value, low=7, high=40),
        bilirubin(bili, unit, low=0, high=high),
    )
    if variant == "none":
        assert findings == []
        return
    [finding] = findings
    assert finding.variant == variant and finding.indicator == "critical"
    assert any(line.startswith("Bilirubin") and "above" in line for line in finding.evidence)


def test_bilirubin_without_a_range_is_not_assessed_and_says_so() -> None:
    findings = run(ALT_RAISED, als(), on_riluzole(), alt(130, low=7, high=40), bilirubin(60))
    [finding] = findings
    assert finding.variant is None  # 3.25 x: warning only, bilirubin could not be judged
    assert "no default ULN is configured for bilirubin" in text(findings)


@pytest.mark.parametrize("status", ["stopped", "completed", "cancelled", "entered-in-error", "draft"])
def test_alt_raised_needs_current_riluzole(status: str) -> None:
    assert run(ALT_RAISED, als(), on_riluzole(status=status), alt(300, low=7, high=40)) == []


@pytest.mark.parametrize("medication", [RILUTEK, SUSPENSION, FILM, BY_NAME])
def test_alt_raised_recognises_products_and_names(medication: dict[str, Any]) -> None:
    [finding] = run(ALT_RAISED, als(), on_riluzole(medication), alt(300, low=7, high=40))
    if medication is BY_NAME:
        assert "named in free text, no code" in finding.evidence[0]
    else:
        assert "named in free text" not in finding.evidence[0]


def test_alt_raised_reads_the_latest_result_only() -> None:
    # An earlier 3.75 x ULN does not fire once ALT is back to normal (an earlier 5 x ULN does: below).
    assert (
        run(ALT_RAISED, als(), on_riluzole(), alt(150, low=7, high=40, days=30), alt(30, low=7, high=40))
        == []
    )


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered"])
def test_alt_results_without_a_valid_status_are_ignored(status: str) -> None:
    newest_bad = alt(300, low=7, high=40, days=1, status=status)
    assert run(ALT_RAISED, als(), on_riluzole(), newest_bad, alt(30, low=7, high=40, days=10)) == []


def test_an_undated_alt_is_not_used() -> None:
    undated = alt(300, low=7, high=40)
    del undated["effectiveDateTime"]
    assert run(ALT_RAISED, als(), on_riluzole(), undated) == []


@pytest.mark.parametrize("diagnosis", [NON_ALS, REFUTED_ALS])
def test_alt_raised_needs_als(diagnosis: dict[str, Any]) -> None:
    assert run(ALT_RAISED, diagnosis, on_riluzole(), alt(300, low=7, high=40)) == []


@pytest.mark.parametrize(
    ("value", "bili"), [(130, None), (250, None), (60, 30)], ids=["warning", "stop", "liver-dysfunction"]
)
def test_alt_raised_renders_every_variant_with_an_lft_suggestion(value: float, bili: float | None) -> None:
    resources = [als(), on_riluzole(), alt(value, low=7, high=40)]
    if bili is not None:
        resources.append(bilirubin(bili, low=0, high=21))
    [finding] = run(ALT_RAISED, *resources)
    body = render(finding)
    assert body["indicator"] == (finding.indicator or "warning")
    [lft] = [s for s in body["suggestions"] if s["actions"][0]["type"] == "create"]
    action = lft["actions"][0]
    assert action["resource"]["code"]["coding"][0]["code"] == "24325-3"
    assert action["resource"]["subject"] == {"reference": f"Patient/{PID}"}


# ============================================================================================
# riluzole-fever-check-wbc


@pytest.mark.parametrize(
    ("value", "unit", "fires"),
    [
        (37.9, "Cel", False),
        (38.0, "Cel", True),
        (38.1, "Cel", True),
        (100.3, "[degF]", False),
        (100.4, "[degF]", True),  # = 38.0 °C
        (39.0, "K", False),  # unreadable unit: not evidence of fever
    ],
)
def test_fever_threshold_in_celsius_and_fahrenheit(value: float, unit: str, fires: bool) -> None:
    assert bool(run(FEVER_CHECK_WBC, als(), on_riluzole(), temperature(value, unit))) is fires


@pytest.mark.parametrize(("days", "fires"), [(6.9, True), (7, True), (7.1, False)])
def test_only_a_fever_in_the_last_7_days_counts(days: float, fires: bool) -> None:
    assert bool(run(FEVER_CHECK_WBC, als(), on_riluzole(), temperature(39, days=days))) is fires


@pytest.mark.parametrize(
    "count", [wbc(6.1, days=0.5), neutrophils(3.9, days=0.5), neutrophils(3900, "/uL", days=0.5)]
)
def test_a_count_after_the_fever_clears_the_card(count: dict[str, Any]) -> None:
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), temperature(39, days=1), count) == []


def test_a_count_before_the_fever_does_not_clear_the_card() -> None:
    [finding] = run(FEVER_CHECK_WBC, als(), on_riluzole(), temperature(39, days=1), wbc(6.1, days=2))
    assert "No white cell or neutrophil count" in finding.evidence[-1]


@pytest.mark.parametrize(("count_days", "clears"), [(1.05, False), (1, True), (0.95, True)])
def test_a_count_clears_the_card_from_the_moment_of_the_fever_on(count_days: float, clears: bool) -> None:
    findings = run(FEVER_CHECK_WBC, als(), on_riluzole(), temperature(39, days=1), wbc(6.1, days=count_days))
    assert (findings == []) is clears


def test_a_count_in_an_unreadable_unit_counts_as_missing() -> None:
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), temperature(39, days=1), wbc(6.1, "%", days=0.5))


def test_the_fever_onset_is_the_earliest_febrile_reading() -> None:
    readings = [temperature(38.5, days=4), temperature(38.2, days=1)]
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), *readings, wbc(6, days=2)) == []
    [finding] = run(FEVER_CHECK_WBC, als(), on_riluzole(), *readings, wbc(6, days=5))
    assert finding.fields["fever_since"] == days_ago(4).date().isoformat()


@pytest.mark.parametrize(
    "code", [snomed("386661006", "Fever"), concept(coding(ICD10CM, "R50.9", "Fever, unspecified"))]
)
def test_an_active_fever_condition_fires(code: dict[str, Any]) -> None:
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), fever_condition(code, onset=days_ago(2)))


def test_a_count_after_a_fever_conditions_onset_clears_it() -> None:
    fever = fever_condition(onset=days_ago(3))
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), fever, wbc(5, days=1)) == []


@pytest.mark.parametrize("kwargs", [{"clinical": "resolved"}, {"verification": "refuted"}])
def test_a_resolved_or_refuted_fever_does_not_fire(kwargs: dict[str, Any]) -> None:
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), fever_condition(onset=days_ago(2), **kwargs)) == []


def test_an_undated_fever_condition_needs_a_count_in_the_last_7_days() -> None:
    [finding] = run(FEVER_CHECK_WBC, als(), on_riluzole(), fever_condition(), wbc(5, days=9))
    assert finding.fields["fever_since"] == "date not recorded"
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(), fever_condition(), wbc(5, days=3)) == []


def test_fever_without_riluzole_fires_nothing() -> None:
    assert run(FEVER_CHECK_WBC, als(), on_riluzole(status="stopped"), temperature(39)) == []
    assert run(FEVER_CHECK_WBC, NON_ALS, on_riluzole(), temperature(39)) == []


def test_fever_card_renders_with_a_cbc_draft_order() -> None:
    [finding] = run(FEVER_CHECK_WBC, als(), on_riluzole(BY_NAME), temperature(101.3, "[degF]"))
    body = render(finding)
    assert "(= 38.5 °C)" in body["detail"]
    resource = body["suggestions"][0]["actions"][0]["resource"]
    assert resource["resourceType"] == "ServiceRequest" and resource["status"] == "draft"
    assert resource["code"]["coding"][0] == {
        "system": LOINC,
        "code": "58410-2",
        "display": "CBC panel - Blood by Automated count",
    }


# ============================================================================================
# riluzole-neutropenia


@pytest.mark.parametrize(("value", "fires"), [(1.7, True), (1.8, False), (1.9, False)])
def test_neutropenia_against_the_labs_lower_limit(value: float, fires: bool) -> None:
    findings = run(NEUTROPENIA, als(), on_riluzole(), neutrophils(value, low=1.8, high=7.7))
    assert bool(findings) is fires
    if fires:
        assert findings[0].fields["limit"] == "1.8"
        assert "lower limit of the lab's reference range" in text(findings)


@pytest.mark.parametrize(("value", "fires"), [(1.49, True), (1.5, False), (1.51, False)])
def test_neutropenia_without_a_range_uses_the_configured_limit(value: float, fires: bool) -> None:
    findings = run(NEUTROPENIA, als(), on_riluzole(), neutrophils(value))
    assert bool(findings) is fires
    if fires:
        assert "configured lower limit" in text(findings)


def test_the_neutrophil_lower_limit_is_configurable() -> None:
    config = RuleConfig(neutrophil_lower_limit=2)
    assert run(NEUTROPENIA, als(), on_riluzole(), neutrophils(1.9), config=config)


@pytest.mark.parametrize(
    ("value", "unit", "fires"),
    [
        (1400, "/uL", True),
        (1600, "/uL", False),
        (1400, "/mm3", True),
        (1.4, "10*3/uL", True),
        (1.6, "10*3/uL", False),
        (1.0, "%", False),  # a percentage is not a count
        (1.0, "furlongs", False),
    ],
)
def test_neutropenia_converts_count_units_and_ignores_unreadable_ones(
    value: float, unit: str, fires: bool
) -> None:
    assert bool(run(NEUTROPENIA, als(), on_riluzole(), neutrophils(value, unit))) is fires


def test_neutrophils_under_the_other_loinc_code_count() -> None:
    other = observation(loinc("26499-4"), days_ago(1), 0.4, "10*9/L")
    assert run(NEUTROPENIA, als(), on_riluzole(), other)


def test_neutropenia_reads_the_latest_count_only() -> None:
    assert run(NEUTROPENIA, als(), on_riluzole(), neutrophils(0.5, days=20), neutrophils(3.0, days=1)) == []


def test_neutropenia_needs_current_riluzole_and_als() -> None:
    assert run(NEUTROPENIA, als(), on_riluzole(status="stopped"), neutrophils(0.5)) == []
    assert run(NEUTROPENIA, NON_ALS, on_riluzole(), neutrophils(0.5)) == []


def test_neutropenia_card_is_critical() -> None:
    [finding] = run(NEUTROPENIA, als(), on_riluzole(SUSPENSION), neutrophils(900, "/uL", low=1800, high=7700))
    body = render(finding)
    assert body["indicator"] == "critical"
    assert body["summary"].startswith("Stop riluzole")
    assert "0.9 × 10⁹/L" in body["summary"] and "below 1.8" in body["summary"]


# ============================================================================================
# riluzole-order-liver


def test_order_liver_fires_on_hepatic_disease_and_removes_the_draft() -> None:
    [finding] = run(ORDER_LIVER, als(), liver_disease(), drafts=[draft()])
    body = render(finding)
    assert body["indicator"] == "critical"
    assert finding.fields["basis"] == "SmPC 4.3 contraindication"
    [action] = body["suggestions"][0]["actions"]
    assert action == {
        "type": "delete",
        "description": "Remove the draft riluzole order (SmPC 4.3 contraindication)",
        "resourceId": "MedicationRequest/draft-ril",
    }


@pytest.mark.parametrize(
    "code",
    [concept(coding(ICD10CM, "K70.30", "Alcoholic cirrhosis of liver without ascites")), snomed("61977001")],
)
def test_order_liver_recognises_icd10_and_snomed_liver_disease(code: dict[str, Any]) -> None:
    assert run(ORDER_LIVER, als(), liver_disease(code), drafts=[draft()])


def test_order_liver_ignores_resolved_hepatic_disease() -> None:
    assert run(ORDER_LIVER, als(), liver_disease(clinical="resolved"), drafts=[draft()]) == []


@pytest.mark.parametrize(
    ("result", "fires"),
    [
        (alt(120, low=7, high=40), False),
        (alt(121, low=7, high=40), True),
        (ast(121, low=0, high=40), True),
        (ast(600), False),  # AST without the lab's range is not judged
        (alt(3.0, "ukat/L", low=0, high=0.75), True),  # 180 U/L against 45 U/L: 4 x
        (alt(900, "mmol/L", low=7, high=40), False),  # unreadable unit: not evidence
    ],
)
def test_order_liver_baseline_transaminases_when_starting(result: dict[str, Any], fires: bool) -> None:
    assert bool(run(ORDER_LIVER, als(), result, drafts=[draft()])) is fires


@pytest.mark.parametrize("value", [150, 199, 200])
def test_order_liver_on_renewal_does_not_apply_the_baseline_limit(value: float) -> None:
    # ALT 3-5 x ULN on treatment: closer monitoring, not removal; 5 x ULN on treatment is a stop, and
    # renewing after it is riluzole-rechallenge's card, not a hepatic contraindication.
    assert run(ORDER_LIVER, als(), on_riluzole(), alt(value, low=7, high=40), drafts=[draft()]) == []
    assert bool(run(RECHALLENGE, als(), on_riluzole(), alt(value, low=7, high=40), drafts=[draft()])) is (
        value >= 200
    )


def test_order_liver_on_renewal_still_stops_on_an_alt_of_5_x_uln_from_before_the_course() -> None:
    # Not measured on riluzole, so not a rechallenge; still a reason not to renew.
    course = on_riluzole(authored=days_ago(20))
    findings = run(ORDER_LIVER, als(), course, alt(200, low=7, high=40, days=25), drafts=[draft()])
    [finding] = findings
    assert finding.fields["basis"] == "SmPC 4.4: stop at 5 × ULN"
    assert "already active" in text(findings)
    assert run(RECHALLENGE, als(), course, alt(200, low=7, high=40, days=25), drafts=[draft()]) == []


def test_order_liver_on_renewal_at_5_x_uln_offers_to_stop_the_current_course_as_well() -> None:
    """Issue 10: a critical 'stop' card offers the stop itself, on the order hooks too."""
    course = on_riluzole(authored=days_ago(20))
    [finding] = run(ORDER_LIVER, als(), course, alt(200, low=7, high=40, days=25), drafts=[draft()])
    assert finding.variant == "stop"
    body = render(finding)
    assert body["indicator"] == "critical"
    remove, stop = ([a for s in body["suggestions"] for a in s["actions"]])
    assert remove == {
        "type": "delete",
        "description": "Remove the draft riluzole order (SmPC 4.4: stop at 5 × ULN)",
        "resourceId": "MedicationRequest/draft-ril",
    }
    assert stop["type"] == "update" and stop["resource"]["id"] == "ril"
    assert stop["resource"]["status"] == "stopped" and "SmPC 4.4" in stop["resource"]["statusReason"]["text"]


def test_order_liver_on_renewal_for_hepatic_disease_removes_the_order_without_a_stop() -> None:
    [finding] = run(ORDER_LIVER, als(), on_riluzole(), liver_disease(), drafts=[draft()])
    assert finding.variant is None and "stopped_order" not in finding.bindings


def test_order_liver_on_renewal_still_fires_on_hepatic_disease() -> None:
    [finding] = run(ORDER_LIVER, als(), on_riluzole(), liver_disease(), drafts=[draft()])
    assert finding.fields["basis"] == "SmPC 4.3"


def test_order_liver_fires_for_a_riluzole_draft_known_only_by_name() -> None:
    [finding] = run(ORDER_LIVER, als(), liver_disease(), drafts=[draft(BY_NAME)])
    assert "named in free text, no code" in finding.evidence[0]


def test_order_liver_ignores_other_drugs_and_unselected_orders() -> None:
    assert run(ORDER_LIVER, als(), liver_disease(), drafts=[draft(AMLODIPINE)]) == []
    other = draft(AMLODIPINE, rid="other")
    selected_other = run(
        ORDER_LIVER, als(), liver_disease(), drafts=[draft(), other], selections=["MedicationRequest/other"]
    )
    assert selected_other == []


def test_order_liver_without_a_draft_or_without_als_fires_nothing() -> None:
    assert run(ORDER_LIVER, als(), liver_disease()) == []
    assert run(ORDER_LIVER, NON_ALS, liver_disease(), drafts=[draft()]) == []


def test_order_liver_for_a_draft_without_an_id_offers_no_delete() -> None:
    no_id = draft()
    del no_id["id"]
    [finding] = run(ORDER_LIVER, als(), liver_disease(), drafts=[no_id])
    assert finding.variant == "no-reference"
    assert "suggestions" not in render(finding)


# ============================================================================================
# riluzole-order-dose


@pytest.mark.parametrize(
    ("medication", "dose", "every_hours"),
    [
        (TABLET, (50, "mg"), 12),
        (RILUTEK, (0.05, "g"), 12),
        (TABLET, (1, "{tablet}"), 12),
        (FILM, (1, "{film}"), 12),
        (SUSPENSION, (10, "mL"), 12),
        (SUSPENSION, (50, "mg"), 12),
        (rxnorm("35623", "riluzole"), (50, "mg"), 12),
        (BY_NAME, (50, "mg"), 12),
    ],
)
def test_order_dose_accepts_the_licensed_dose_in_every_form(
    medication: dict[str, Any], dose: tuple[float, str], every_hours: float
) -> None:
    assert run(ORDER_DOSE, als(), drafts=[draft(medication, dose=dose, every_hours=every_hours)]) == []


def test_order_dose_accepts_twice_daily_written_as_a_timing_code() -> None:
    bid = draft(every_hours=None)
    bid["dosageInstruction"][0]["timing"] = {
        "code": concept(coding("http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "BID"))
    }
    assert run(ORDER_DOSE, als(), drafts=[bid]) == []


@pytest.mark.parametrize(
    ("medication", "dose", "every_hours", "written"),
    [
        (TABLET, (100, "mg"), 12, "100 mg every 12 hours"),
        (TABLET, (25, "mg"), 12, "25 mg every 12 hours"),
        (TABLET, (50, "mg"), 24, "50 mg every 24 hours"),
        (TABLET, (50, "mg"), 8, "50 mg every 8 hours"),
        (TABLET, (2, "{tablet}"), 12, "2 tablet every 12 hours"),
        (SUSPENSION, (20, "mL"), 12, "20 mL every 12 hours"),
    ],
)
def test_order_dose_warns_on_any_other_dose_or_interval(
    medication: dict[str, Any], dose: tuple[float, str], every_hours: float, written: str
) -> None:
    [finding] = run(ORDER_DOSE, als(), drafts=[draft(medication, dose=dose, every_hours=every_hours)])
    assert finding.variant is None and finding.fields["written"] == written
    body = render(finding)
    assert body["indicator"] == "warning"


def test_order_dose_update_keeps_the_order_and_sets_the_licensed_dose() -> None:
    wrong = draft(dose=(100, "mg"))
    wrong["dosageInstruction"][0]["route"] = snomed("26643006", "Oral route")
    wrong["note"] = [{"text": "via PEG if needed"}]
    [finding] = run(ORDER_DOSE, als(), drafts=[wrong])
    body = render(finding)
    [action] = body["suggestions"][0]["actions"]
    assert action["type"] == "update"
    updated = action["resource"]
    expected = copy.deepcopy(wrong)
    assert {k: v for k, v in updated.items() if k != "dosageInstruction"} == {
        k: v for k, v in expected.items() if k != "dosageInstruction"
    }
    [dosage] = updated["dosageInstruction"]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 50,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert dosage["timing"] == {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}}
    assert dosage["route"] == wrong["dosageInstruction"][0]["route"]


def test_order_dose_corrects_a_suspension_in_millilitres() -> None:
    [finding] = run(ORDER_DOSE, als(), drafts=[draft(SUSPENSION, dose=(20, "mL"))])
    assert finding.fields["standard"] == "10 mL (50 mg) every 12 hours"
    dosage = finding.bindings["updated_order"]["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 10
    assert dosage["doseAndRate"][0]["doseQuantity"]["code"] == "mL"


def test_the_product_code_alone_tells_a_suspension_from_a_tablet() -> None:
    code_only = concept(coding(RXNORM, "2058147"))
    [finding] = run(ORDER_DOSE, als(), drafts=[draft(code_only, dose=(100, "mg"))])
    assert finding.fields["standard"] == "10 mL (50 mg) every 12 hours"
    [finding] = run(ORDER_DOSE, als(), drafts=[draft(concept(coding(RXNORM, "199206")), dose=(100, "mg"))])
    assert finding.fields["standard"] == "50 mg every 12 hours"


@pytest.mark.parametrize(
    ("dose", "every_hours", "dosage_text"),
    [
        (None, None, None),  # no dosage at all
        (None, None, "one tablet twice a day"),  # free text only
        ((50, "mg"), None, None),  # dose without timing
        (None, 12, None),  # timing without dose
        ((1, "puff"), 12, None),  # a unit that is not a riluzole dose
        ((10, "mL"), 12, None),  # millilitres of a tablet
    ],
)
def test_an_unreadable_dose_is_not_assumed_right(
    dose: tuple[float, str] | None, every_hours: float | None, dosage_text: str | None
) -> None:
    order = draft(dose=dose, every_hours=every_hours)
    if dosage_text:
        order["dosageInstruction"] = [{"text": dosage_text}]
    [finding] = run(ORDER_DOSE, als(), drafts=[order])
    assert finding.variant == "unstated"
    body = render(finding)
    assert body["indicator"] == "info"
    assert body["suggestions"][0]["actions"][0]["type"] == "update"
    if dosage_text:
        assert f"'{dosage_text}'" in body["detail"]


def test_order_dose_for_a_draft_without_an_id_offers_no_update() -> None:
    for dose, variant in (((100, "mg"), "no-reference"), (None, "unstated-no-reference")):
        order = draft(dose=dose, every_hours=12)
        del order["id"]
        [finding] = run(ORDER_DOSE, als(), drafts=[order])
        assert finding.variant == variant
        assert "suggestions" not in render(finding)


def test_order_dose_needs_als_and_a_riluzole_draft() -> None:
    assert run(ORDER_DOSE, NON_ALS, drafts=[draft(dose=(100, "mg"))]) == []
    assert run(ORDER_DOSE, als(), drafts=[draft(AMLODIPINE, dose=(100, "mg"))]) == []


# ============================================================================================
# riluzole-order-monitoring


def lft_due_suggestion_resource() -> dict[str, Any]:
    raw = tomllib.loads((Settings().cards_dir / "riluzole-lft-due.toml").read_text(encoding="utf-8"))
    return raw["suggestions"][0]["actions"][0]["resource"]


def test_order_monitoring_fires_when_a_course_starts_and_drafts_the_same_lft_order_as_lft_due() -> None:
    [finding] = run(ORDER_MONITORING, als(), alt(30, low=7, high=40, days=10), drafts=[draft()])
    body = render(finding)
    assert body["indicator"] == "info"
    resource = body["suggestions"][0]["actions"][0]["resource"]
    expected = json.loads(
        json.dumps(lft_due_suggestion_resource()).replace("$patient_reference", f"Patient/{PID}")
    )
    assert {k: v for k, v in resource.items() if k != "reasonCode"} == {
        k: v for k, v in expected.items() if k != "reasonCode"
    }
    assert resource["code"]["coding"][0]["code"] == "24325-3"
    assert finding.fields["last_alt"] == days_ago(10).date().isoformat()


@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_order_monitoring_is_silent_for_a_renewal_whose_alt_is_in_time(status: str) -> None:
    in_time = alt(30, low=7, high=40, days=300)  # course of 400 days: yearly
    assert run(ORDER_MONITORING, als(), on_riluzole(status=status), in_time, drafts=[draft()]) == []


def test_order_monitoring_after_a_stopped_course_says_so() -> None:
    [finding] = run(ORDER_MONITORING, als(), on_riluzole(status="stopped"), drafts=[draft()])
    assert "Riluzole was stopped" in text([finding])
    assert finding.fields["last_alt"] == "none in the data received"


def test_order_monitoring_reports_an_unreadable_alt() -> None:
    [finding] = run(ORDER_MONITORING, als(), alt(30, "mmol/L"), drafts=[draft()])
    assert "its unit cannot be read" in text([finding])


def test_order_monitoring_needs_a_riluzole_draft_and_als() -> None:
    assert run(ORDER_MONITORING, als()) == []
    assert run(ORDER_MONITORING, als(), drafts=[draft(AMLODIPINE)]) == []
    assert run(ORDER_MONITORING, REFUTED_ALS, drafts=[draft()]) == []


# ============================================================================================
# The catalogue, the cards and the fixtures


def test_rules_lists_every_riluzole_rule_once_with_lft_due_first() -> None:
    assert RULES[0] is LFT_DUE
    assert [r.id for r in RULES[1:]] == [r.id for r in NEW_RULES]
    assert len({r.id for r in RULES}) == len(RULES)


@pytest.mark.parametrize("rule", NEW_RULES, ids=lambda r: r.id)
def test_every_rule_has_a_card_whose_citations_cover_its_facts(rule: Rule) -> None:
    definition = CATALOG[rule.id]
    assert definition.title == rule.title
    assert rule.facts
    for fact in rule.facts:
        assert definition.citation(fact.citation) is not None, fact.name


@pytest.mark.parametrize(
    ("rule_id", "fields", "bindings"),
    [
        (
            "riluzole-not-prescribed",
            {"history": "an earlier course ended"},
            {"patient_reference": "Patient/x"},
        ),
        (
            "riluzole-alt-raised",
            {"times_uln": "123.4", "alt_date": "2026-11-22", "flag": "H, HH, HU"},
            {"patient_reference": "P/x", "stopped_order": {"resourceType": "MedicationRequest", "id": "x"}},
        ),
        (
            "riluzole-fever-check-wbc",
            {"fever_since": "date not recorded"},
            {"patient_reference": "Patient/x"},
        ),
        (
            "riluzole-neutropenia",
            {"count": "1.49", "limit": "12.34", "count_date": "2026-11-22"},
            {"stopped_order": {"resourceType": "MedicationRequest", "id": "x"}},
        ),
        (
            "riluzole-order-liver",
            {
                "reason": "hepatic disease recorded, ALT 123.4 × ULN, AST 123.4 × ULN",
                "basis": "SmPC 4.4: stop at 5 × ULN",
            },
            {"draft_reference": "MedicationRequest/x", "stopped_order": {"resourceType": "MedicationRequest"}},  # noqa: E501
        ),
        (
            "riluzole-order-dose",
            {"written": "x" * 60, "standard": "10 mL (50 mg) every 12 hours"},
            {"updated_order": {"resourceType": "MedicationRequest", "id": "x"}},
        ),
        (
            "riluzole-order-monitoring",
            {"last_alt": "none in the data received", "window_days": "365"},
            {"patient_reference": "Patient/x"},
        ),
        (
            "riluzole-rechallenge",
            {"times_uln": "123.4", "alt_date": "date not recorded"},
            {"draft_reference": "MedicationRequest/x", "stopped_order": {"resourceType": "MedicationRequest"}},  # noqa: E501
        ),
        (
            "riluzole-order-contraindication",
            {"reason": "pregnancy, breast-feeding, riluzole allergy"},
            {"draft_reference": "MedicationRequest/x"},
        ),
    ],
)
def test_the_longest_summaries_stay_under_140_characters_in_every_variant(
    rule_id: str, fields: dict[str, str], bindings: dict[str, Any]
) -> None:
    definition = CATALOG[rule_id]
    for variant in (None, *definition.variants):
        finding = Finding(rule_id, fields, (), variant=variant, bindings=bindings)
        assert len(cards.render(finding, definition).summary) < 140, (rule_id, variant)


EXPECTED = load_json(FIXTURES / "expected" / "riluzole.json")
HOOKS = ("patient-view", "order-select", "order-sign")


def fixture_findings(name: str, hook: str) -> list[Finding]:
    """What the integration test does: PUT entries are the chart, POST entries the draft orders."""
    bundle = load_json(FIXTURES / "patients" / f"{name}.json")
    chart = [e["resource"] for e in bundle["entry"] if e["request"]["method"] == "PUT"]
    posted = [e["resource"] for e in bundle["entry"] if e["request"]["method"] == "POST"]
    drafts = {"resourceType": "Bundle", "entry": [{"resource": r} for r in posted]} if posted else None
    record = record_from(
        chart,
        patient_id=name,
        interest=service_interest(f"als-{hook}"),
        draft_orders=drafts if hook != "patient-view" else None,
        selections=[f"{r['resourceType']}/{r['id']}" for r in posted] if hook == "order-select" else [],
    )
    return evaluate([r for r in RULES if hook in r.hooks], record, RuleConfig())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_patients_get_exactly_the_expected_riluzole_cards(name: str) -> None:
    for hook in HOOKS:
        got = sorted({f.rule_id for f in fixture_findings(name, hook)})
        assert got == sorted(EXPECTED[name][hook]), (name, hook)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_fixture_card_renders_as_a_valid_card(name: str) -> None:
    for hook in HOOKS:
        for finding in fixture_findings(name, hook):
            render(finding)


def test_every_riluzole_fixture_and_the_existing_als_fixtures_have_expectations() -> None:
    stems = {p.stem for p in (FIXTURES / "patients").glob("riluzole-*.json")}
    stems |= {p.stem for p in (FIXTURES / "patients").glob("als-*.json")} | {"no-als-on-riluzole"}
    assert stems <= set(EXPECTED)
    assert all(set(v) == set(HOOKS) for v in EXPECTED.values())


@pytest.mark.parametrize("rule", NEW_RULES, ids=lambda r: r.id)
def test_every_rule_fires_in_one_fixture_and_stays_silent_in_another(rule: Rule) -> None:
    hook = sorted(rule.hooks)[0]
    fired = {name for name, hooks in EXPECTED.items() if rule.id in hooks[hook]}
    silent = {name for name, hooks in EXPECTED.items() if rule.id not in hooks[hook]}
    assert fired and silent


@pytest.mark.parametrize(
    "path", sorted((FIXTURES / "patients").glob("riluzole-*.json")), ids=lambda p: p.stem
)
def test_riluzole_fixtures_are_well_formed_transaction_bundles(path: Any) -> None:
    bundle = load_json(path)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert [p["id"] for p in patients] == [path.stem]
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls) and all(u.startswith("urn:uuid:") for u in full_urls)
    for entry in bundle["entry"]:
        resource, request = entry["resource"], entry["request"]
        if request["method"] == "PUT":
            assert request["url"] == f"{resource['resourceType']}/{resource['id']}"
        else:
            assert request == {"method": "POST", "url": resource["resourceType"]}
            assert resource["status"] == "draft"
        for element in ("subject", "patient"):
            if element in resource:
                assert resource[element]["reference"] == f"Patient/{path.stem}"
    systems = {c["system"] for e in bundle["entry"] for c in e["resource"].get("code", {}).get("coding", [])}
    assert systems <= {SNOMED, LOINC, ICD10CM}
