"""Breathing rules (NICE NG42 1.14): assessment due, NIV discussion/referral, hypercapnia, sleep studies.

Every test goes through `evaluate`, so the ALS gate is exercised. These rules read no medications,
so the medication cases of the house checklist (product codes, names, stopped drugs) do not apply;
the rules do not differ between the 'nice' and 'us' profiles (tested once).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.record import UNREAD_PREFIX
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.rules.respiratory import (
    ASSESSMENT_DUE,
    HYPERCAPNIA,
    NIV_REFERRAL,
    RULES,
    SLEEP_STUDY_RULE,
    _criteria_text,
    assessment_due,
    hypercapnia,
    niv_referral,
    respiratory_decline,
    sleep_study,
)
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    LOINC,
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


def run(
    rule: Any, *resources: dict[str, Any], config: RuleConfig | None = None, sex: str = "male"
) -> list[Finding]:
    record = record_from([patient(sex), *resources], patient_id=PID)
    return evaluate([rule], record, config or RuleConfig())


# -- builders ---------------------------------------------------------------------------------


def fvc_percent(days: float, value: float, unit: str = "%", **kw: Any) -> dict[str, Any]:
    return observation(loinc("19872-1", "FVC measured/predicted"), days_ago(days), value, unit, **kw)


def fvc_volume(
    days: float, litres: float | None, components: list[dict[str, Any]] | None = None, **kw: Any
) -> dict:
    code = concept(coding(LOINC, "19868-9"), coding(SNOMED, "50834005"))
    return observation(
        code, days_ago(days), litres, "L" if litres is not None else None, components=components, **kw
    )


def component(code: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "code": loinc(code),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def fvc_predicted(days: float, litres: float) -> dict[str, Any]:
    return observation(loinc("19869-7"), days_ago(days), litres, "L")


def vc_percent(days: float, value: float) -> dict[str, Any]:
    return observation(loinc("98088-8"), days_ago(days), value, "%")


def vc_percent_in(days: float, value: float, unit: str) -> dict[str, Any]:
    return observation(loinc("98088-8"), days_ago(days), value, unit)


def snip(days: float, value: float, unit: str = "cm[H2O]") -> dict[str, Any]:
    code = concept(coding("urn:als-cds:codes", "SNIP"), coding("urn:oid:1.2.3.4", "LOCAL-SNIP"))
    return observation(code, days_ago(days), value, unit)


def spo2(days: float, value: float, unit: str = "%", **kw: Any) -> dict[str, Any]:
    code = concept(coding(LOINC, "2708-6"), coding(LOINC, "59408-5"))
    return observation(code, days_ago(days), value, unit, **kw)


def paco2(days: float, value: float, unit: str = "kPa", code: str = "2019-8") -> dict[str, Any]:
    return observation(loinc(code), days_ago(days), value, unit)


def _undated(resource: dict[str, Any]) -> dict[str, Any]:
    resource.pop("effectiveDateTime", None)
    return resource


def copd(**kw: Any) -> dict[str, Any]:
    return condition(concept(coding(SNOMED, "13645005", "Chronic obstructive lung disease")), **kw)


ORTHOPNOEA_CODE = concept(coding(SNOMED, "62744007", "Orthopnea (finding)"), text="Orthopnoea")
DYSPNOEA_CODE = concept(coding(SNOMED, "267036007", "Dyspnea (finding)"), text="Breathlessness")
DISTURBED_SLEEP = concept(coding(SNOMED, "26677001", "Disturbed sleep pattern"), text="Disturbed sleep")
NIV_CODE = snomed("428311008", "Noninvasive ventilation")
BIPAP = snomed("702173003", "Home bilevel positive airway pressure unit")
NIV_DEPENDENT = snomed("713655003", "Dependence on non-invasive ventilation")
REFERRAL_CODE = snomed("306275005", "Referral to respiratory physician")
POLYSOMNOGRAPHY = snomed("60554003", "Polysomnography")
ABSENT = concept(coding(SNOMED, "2667000", "Absent"))
MILD = concept(coding(SNOMED, "255604002", "Mild"))


def orthopnoea(**kw: Any) -> dict[str, Any]:
    return condition(ORTHOPNOEA_CODE, **kw)


def symptom_obs(code: dict[str, Any], days: float, **kw: Any) -> dict[str, Any]:
    return observation(code, days_ago(days), **kw)


def niv_in_progress(days: float = 60) -> dict[str, Any]:
    return procedure(NIV_CODE, days_ago(days), status="in-progress")


def referral(days: float) -> dict[str, Any]:
    return procedure(REFERRAL_CODE, days_ago(days))


# -- respiratory-assessment-due ---------------------------------------------------------------


def test_assessment_due_fires_when_nothing_is_on_record_and_says_so() -> None:
    [finding] = run(ASSESSMENT_DUE, als())
    assert finding.fields == {"interval_days": "92", "last_assessment": "none in the data received"}
    assert finding.variant is None
    assert finding.evidence == ("No FVC, VC, SNIP or respiratory function test in the data received.",)
    assert finding.bindings["patient_reference"] == f"Patient/{PID}"


@pytest.mark.parametrize(
    ("days", "fires"),
    [(91, False), (92, False), (93, True)],
)
def test_assessment_interval_boundary_is_92_days(days: int, fires: bool) -> None:
    assert bool(run(ASSESSMENT_DUE, als(), fvc_percent(days, 97))) is fires


@pytest.mark.parametrize(
    "resource",
    [
        fvc_percent(10, 80),
        fvc_volume(10, 3.2),
        fvc_volume(10, None, components=[component("19872-1", 78, "%")]),
        vc_percent(10, 85),
        observation(loinc("19866-3"), days_ago(10), 3.4, "L"),
        snip(10, 70),
        snip(10, 6.9, "kPa"),
        procedure(snomed("23426006", "Measurement of respiratory function"), days_ago(10)),
    ],
    ids=["fvc-pct", "fvc-L", "fvc-component-pct", "vc-pct", "vc-L", "snip", "snip-kPa", "procedure"],
)
def test_any_readable_recent_test_counts_as_an_assessment(resource: dict[str, Any]) -> None:
    assert run(ASSESSMENT_DUE, als(), resource) == []


def test_interval_is_configurable() -> None:
    resources = (als(), fvc_percent(70, 97))
    assert run(ASSESSMENT_DUE, *resources) == []
    [finding] = run(ASSESSMENT_DUE, *resources, config=RuleConfig(respiratory_interval_days=60))
    assert finding.fields["interval_days"] == "60"


@pytest.mark.parametrize(
    "resource",
    [
        vc_percent_in(5, 97, "mm[Hg]"),  # a percentage in a pressure unit cannot be read
        fvc_percent(5, 3.1, unit="L"),  # a volume filed under the % predicted code
        observation(loinc("19868-9"), days_ago(5), 80, "%"),  # a percentage under the volume code
        snip(5, 60, "furlong"),
        observation(loinc("19872-1"), days_ago(5)),  # no value at all
    ],
    ids=["vc-pct-mmHg", "fvc-pct-in-L", "fvc-volume-in-%", "snip-unknown-unit", "no-value"],
)
def test_unreadable_results_count_as_missing(resource: dict[str, Any]) -> None:
    [finding] = run(ASSESSMENT_DUE, als(), resource)
    assert finding.fields["last_assessment"] == "none in the data received"
    [line] = [line for line in finding.evidence if line.startswith(UNREAD_PREFIX)]  # always shown
    assert "1 respiratory result(s) without a value or in a unit that cannot be read (not counted)" in line


def test_undated_result_does_not_count_as_recent() -> None:
    assert run(ASSESSMENT_DUE, als(), _undated(fvc_percent(1, 97)))


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered"])
def test_results_without_a_final_status_do_not_count(status: str) -> None:
    assert run(ASSESSMENT_DUE, als(), fvc_percent(3, 97, status=status))


def test_future_dated_result_does_not_count() -> None:
    assert run(ASSESSMENT_DUE, als(), fvc_percent(-5, 97))


@pytest.mark.parametrize("status", ["not-done", "preparation", "entered-in-error"])
def test_procedure_not_done_does_not_count(status: str) -> None:
    test = procedure(snomed("23426006"), days_ago(3), status=status)
    assert run(ASSESSMENT_DUE, als(), test)


def test_predicted_volume_alone_is_not_an_assessment() -> None:
    assert run(ASSESSMENT_DUE, als(), fvc_predicted(3, 3.6))
    assert run(ASSESSMENT_DUE, als(), fvc_volume(3, None, components=[component("19869-7", 3.6, "L")]))


def test_evidence_names_the_latest_assessment_with_its_age() -> None:
    [finding] = run(ASSESSMENT_DUE, als(), spo2(200, 96), fvc_percent(150, 74), snip(300, 80))
    assert finding.fields["last_assessment"] == days_ago(150).date().isoformat()
    assert "FVC 74 % predicted" in finding.evidence[0] and "(150 days ago; none in the last 92 days)" in (
        finding.evidence[0]
    )


# Finding 2 of the safety review: any SpO2 silenced the card. NG42 1.14.8 / 1.14.10: SpO2, then FVC or
# VC and/or SNIP or MIP, every 2 to 3 months; an SpO2 alone is not that assessment.


@pytest.mark.parametrize("days", [0, 10, 92])
def test_a_recent_spo2_alone_does_not_silence_the_card_and_the_card_says_why(days: int) -> None:
    [finding] = run(ASSESSMENT_DUE, als(), spo2(days, 97))
    assert finding.variant == "spo2-only"
    assert finding.fields["last_assessment"] == "none in the data received"
    assert any("an SpO2 alone is not the 2- to 3-monthly test" in line for line in finding.evidence)
    body = render(finding)
    assert body["summary"].startswith("Breathing tests due: SpO2 only")
    assert "1.14.9" in body["detail"] and "interfaces" in body["detail"]
    assert "interfaces-unsuitable" in [r["code"] for r in body["overrideReasons"]]


def test_an_old_spo2_does_not_change_the_card() -> None:
    [finding] = run(ASSESSMENT_DUE, als(), spo2(93, 97))
    assert finding.variant is None


def test_spo2_with_a_recent_fvc_or_snip_is_an_assessment() -> None:
    assert run(ASSESSMENT_DUE, als(), spo2(5, 97), fvc_percent(5, 88)) == []
    assert run(ASSESSMENT_DUE, als(), spo2(5, 97), snip(40, 80)) == []


def test_an_old_fvc_with_a_recent_spo2_names_both() -> None:
    [finding] = run(ASSESSMENT_DUE, als(), spo2(5, 97), fvc_percent(120, 88))
    assert finding.variant == "spo2-only"
    assert finding.fields["last_assessment"] == days_ago(120).date().isoformat()
    assert any("FVC 88 % predicted" in line for line in finding.evidence)


# -- respiratory-niv-referral -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "fires"), [(49.9, True), (50, False), (50.1, False)])
def test_fvc_percent_predicted_boundary_is_below_50(value: float, fires: bool) -> None:
    assert bool(run(NIV_REFERRAL, als(), fvc_percent(5, value))) is fires


def test_fvc_volume_and_predicted_in_the_same_result_give_percent_predicted() -> None:
    result = fvc_volume(5, 1.45, components=[component("19869-7", 3.3, "L")])
    [finding] = run(NIV_REFERRAL, als(), result)
    assert finding.fields["criteria"] == "FVC < 50 % predicted"
    assert "= 43.9 % predicted" in finding.evidence[0] and "(computed)" in finding.evidence[0]


def test_fvc_percent_component_is_used_as_reported() -> None:
    result = fvc_volume(5, 1.5, components=[component("19869-7", 3.6, "L"), component("19872-1", 42, "%")])
    [finding] = run(NIV_REFERRAL, als(), result)
    assert "= 42 % predicted" in finding.evidence[0]


def test_fvc_volume_with_a_predicted_volume_reported_the_same_day() -> None:
    [finding] = run(NIV_REFERRAL, als(), fvc_volume(5, 1.6), fvc_predicted(5, 3.6))
    assert "reported the same day" in finding.evidence[0]


def test_fvc_volume_in_millilitres_is_converted() -> None:
    result = observation(
        loinc("19868-9"), days_ago(5), 1450, "mL", components=[component("19869-7", 3.3, "L")]
    )
    assert run(NIV_REFERRAL, als(), result)


@pytest.mark.parametrize(
    "resources",
    [
        (fvc_volume(5, 1.2),),  # no predicted value anywhere: litres are not a percentage
        (fvc_volume(5, 1.2), fvc_predicted(40, 3.6)),  # predicted from another day
        (fvc_volume(5, 1.2, components=[component("19869-7", 0, "L")]),),  # unusable predicted
        (fvc_percent(5, 1.2, unit="L"),),  # litres under the % predicted code
    ],
    ids=["no-predicted", "predicted-other-day", "predicted-zero", "pct-code-in-L"],
)
def test_fvc_volume_is_never_read_as_a_percentage(resources: tuple[dict[str, Any], ...]) -> None:
    assert run(NIV_REFERRAL, als(), *resources) == []


def test_a_newer_volume_without_predicted_is_skipped_and_the_older_percentage_decides() -> None:
    [finding] = run(NIV_REFERRAL, als(), fvc_percent(30, 45), fvc_volume(5, 1.2), fvc_predicted(60, 3.6))
    assert finding.evidence[0].startswith(f"FVC 45 % predicted on {days_ago(30).date().isoformat()}")


def test_odd_inputs_never_raise_inside_the_rules() -> None:
    """`evaluate` hides a crash as 'no card'; call the rule functions directly to prove there is none."""
    odd = [
        fvc_volume(5, 1.2, components=[component("19869-7", 0, "L")]),
        fvc_volume(5, 1.2, components=[{"code": loinc("19872-1")}]),
        fvc_volume(5, None),
        fvc_predicted(5, 0),
        spo2(5, 93, components=[{"code": loinc("3151-8")}]),
        snip(5, -3),
        paco2(5, 0),
    ]
    odd += [
        condition(ORTHOPNOEA_CODE, clinical=None),
        observation(ORTHOPNOEA_CODE, days_ago(3), value_concept=concept()),
        procedure(NIV_CODE, None, status="in-progress"),
        device(BIPAP),
        procedure(REFERRAL_CODE, None),
        snip(50, 90),
        snip(5, -20),
    ]
    for sex in ("male", "female", "other"):
        record = record_from([patient(sex), als(), *odd], patient_id=PID)
        for rule in (assessment_due, niv_referral, hypercapnia, sleep_study):
            rule(record, RuleConfig())
        respiratory_decline(record, RuleConfig())


def test_vc_below_50_percent_predicted_fires() -> None:
    [finding] = run(NIV_REFERRAL, als(), vc_percent(5, 47))
    assert finding.fields["criteria"] == "VC < 50 % predicted"


@pytest.mark.parametrize(
    ("value", "unit", "fires"),
    [
        (39.9, "cm[H2O]", True),
        (40, "cm[H2O]", False),
        (3.9, "kPa", True),  # 39.77 cmH2O
        (4.0, "kPa", False),  # 40.79 cmH2O
        (29, "mm[Hg]", True),  # 39.4 cmH2O
        (30, "mm[Hg]", False),  # 40.8 cmH2O
        (20, "bar-ish", False),  # unreadable unit: not evidence
    ],
)
def test_snip_boundary_is_below_40_cmh2o_in_any_pressure_unit(value: float, unit: str, fires: bool) -> None:
    assert bool(run(NIV_REFERRAL, als(), snip(5, value, unit))) is fires


def test_snip_in_kpa_shows_the_converted_value() -> None:
    [finding] = run(NIV_REFERRAL, als(), snip(5, 3.5, "kPa"))
    assert "SNIP 3.5 kPa (= 35.6 cmH2O)" in finding.evidence[0]


@pytest.mark.parametrize(("value", "fires"), [(93, True), (94, True), (94.1, False), (95, False)])
def test_spo2_boundary_is_at_or_below_94_without_lung_disease(value: float, fires: bool) -> None:
    assert bool(run(NIV_REFERRAL, als(), spo2(5, value))) is fires


@pytest.mark.parametrize(("value", "fires"), [(91, True), (92, True), (93, False), (94, False)])
def test_spo2_boundary_is_at_or_below_92_with_known_lung_disease(value: float, fires: bool) -> None:
    assert bool(run(NIV_REFERRAL, als(), copd(), spo2(5, value))) is fires


def test_lung_disease_coded_only_in_icd10cm_is_not_recognised_so_94_applies() -> None:
    icd_only = condition(concept(coding(ICD10CM, "J44.9")))
    assert run(NIV_REFERRAL, als(), icd_only, spo2(5, 93))


@pytest.mark.parametrize(
    "kwargs",
    [{"clinical": "resolved"}, {"verification": "refuted"}, {"verification": "entered-in-error"}],
)
def test_resolved_or_refuted_lung_disease_does_not_lower_the_threshold(kwargs: dict[str, str]) -> None:
    assert run(NIV_REFERRAL, als(), copd(**kwargs), spo2(5, 93))


def test_spo2_card_uses_the_blood_gas_variant_and_names_the_threshold() -> None:
    [finding] = run(NIV_REFERRAL, als(), spo2(5, 93))
    assert finding.variant == "blood-gas"
    assert finding.fields["criteria"] == "SpO2 ≤ 94 %"
    assert "at or below 94 % (no known lung disease on record" in finding.evidence[0]


def test_no_blood_gas_suggestion_when_one_was_taken_after_the_low_spo2() -> None:
    [finding] = run(NIV_REFERRAL, als(), spo2(5, 93), paco2(3, 5.4))
    assert finding.variant is None
    assert any("Blood gas already taken after that SpO2: PaCO2 5.4 kPa" in line for line in finding.evidence)
    [before] = run(NIV_REFERRAL, als(), spo2(5, 93), paco2(8, 5.4))
    assert before.variant == "blood-gas"


def test_spo2_on_supplemental_oxygen_still_fires_and_says_so() -> None:
    flow = [component("3151-8", 2, "L/min")]
    [finding] = run(NIV_REFERRAL, als(), spo2(5, 93, components=flow))
    assert any("supplemental oxygen (2 L/min)" in line for line in finding.evidence)


def test_spo2_with_zero_oxygen_flow_is_room_air() -> None:
    [finding] = run(NIV_REFERRAL, als(), spo2(5, 93, components=[component("3151-8", 0, "L/min")]))
    assert not any("supplemental oxygen" in line for line in finding.evidence)


def test_spo2_in_an_unreadable_unit_fires_nothing() -> None:
    assert run(NIV_REFERRAL, als(), spo2(5, 0.9, unit="1")) == []


def test_without_spo2_criterion_there_is_no_blood_gas_variant() -> None:
    [finding] = run(NIV_REFERRAL, als(), fvc_percent(5, 45), spo2(5, 97))
    assert finding.variant is None


@pytest.mark.parametrize(("days", "fires"), [(92, True), (93, False), (730, False)])
def test_only_results_inside_the_interval_count(days: int, fires: bool) -> None:
    assert bool(run(NIV_REFERRAL, als(), fvc_percent(days, 40))) is fires


def test_stale_window_follows_the_configured_interval() -> None:
    assert (
        run(NIV_REFERRAL, als(), fvc_percent(70, 40), config=RuleConfig(respiratory_interval_days=60)) == []
    )


def test_the_latest_result_of_each_test_decides() -> None:
    assert run(NIV_REFERRAL, als(), fvc_percent(40, 45), fvc_percent(5, 62)) == []
    assert run(NIV_REFERRAL, als(), fvc_percent(40, 62), fvc_percent(5, 45))


def test_evidence_names_every_threshold_that_fired_with_values_and_dates() -> None:
    [finding] = run(NIV_REFERRAL, als(), fvc_percent(10, 45), snip(12, 35), spo2(3, 92))
    assert finding.fields["criteria"] == "FVC < 50 % predicted, SNIP < 40 cmH2O, SpO2 ≤ 94 %"
    text = "\n".join(finding.evidence)
    for expected in (
        f"FVC 45 % predicted on {days_ago(10).date().isoformat()}",
        f"SNIP 35 cmH2O on {days_ago(12).date().isoformat()}",
        f"SpO2 92 % on {days_ago(3).date().isoformat()}",
    ):
        assert expected in text


def test_a_past_niv_episode_is_mentioned_but_does_not_silence_the_card() -> None:
    niv = procedure(snomed("428311008", "Noninvasive ventilation"), days_ago(300))
    [finding] = run(NIV_REFERRAL, als(), niv, fvc_percent(5, 40))
    assert any(
        "Non-invasive ventilation recorded on" in line and "(completed)" in line for line in finding.evidence
    )


def test_undated_and_entered_in_error_results_do_not_fire() -> None:
    assert run(NIV_REFERRAL, als(), _undated(fvc_percent(3, 30))) == []
    assert run(NIV_REFERRAL, als(), fvc_percent(3, 30, status="entered-in-error")) == []


# -- respiratory-hypercapnia ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "fires"),
    [
        (6.0, "kPa", False),
        (6.01, "kPa", True),
        (45, "mm[Hg]", False),  # 5.9995 kPa
        (45.1, "mm[Hg]", True),  # 6.013 kPa
        (46, "mm[Hg]", True),
        (60, "%", False),  # unreadable for a pressure
    ],
)
def test_paco2_boundary_is_above_6_kpa(value: float, unit: str, fires: bool) -> None:
    assert bool(run(HYPERCAPNIA, als(), paco2(2, value, unit))) is fires


def test_hypercapnia_card_shows_the_value_in_kpa_and_the_reported_one() -> None:
    [finding] = run(HYPERCAPNIA, als(), paco2(4, 52, "mm[Hg]"))
    assert finding.fields == {
        "paco2": "6.93 kPa",
        "date": days_ago(4).date().isoformat(),
        "referral_date": "none on record",
    }
    assert finding.variant is None
    assert "PaCO2 52 mmHg (= 6.93 kPa)" in finding.evidence[0]
    assert "4 days old" in finding.evidence[1]


def test_capillary_blood_gas_counts_venous_does_not() -> None:
    assert run(HYPERCAPNIA, als(), paco2(2, 7.0, code="2020-6"))
    assert run(HYPERCAPNIA, als(), paco2(2, 7.0, code="2021-4")) == []


@pytest.mark.parametrize(("days", "fires"), [(92, True), (93, False)])
def test_blood_gas_counts_for_the_respiratory_interval(days: int, fires: bool) -> None:
    assert bool(run(HYPERCAPNIA, als(), paco2(days, 7.2))) is fires


def test_a_newer_normal_blood_gas_supersedes_a_high_one() -> None:
    assert run(HYPERCAPNIA, als(), paco2(20, 7.2), paco2(2, 5.5)) == []


# -- NICE NG42 table 2 in full (finding 13 of the safety review) ------------------------------


@pytest.mark.parametrize(("value", "fires"), [(79.9, True), (80, False), (50, True), (49.9, True)])
def test_fvc_below_80_percent_with_orthopnoea_fires(value: float, fires: bool) -> None:
    found = run(NIV_REFERRAL, als(), orthopnoea(onset=days_ago(20)), fvc_percent(5, value))
    assert bool(found) is fires
    if fires and value >= 50:
        [finding] = found
        assert finding.fields["criteria"] == "FVC < 80 % predicted with orthopnoea"
        assert any("below 80 % predicted, with symptoms" in line for line in finding.evidence)
        assert any("Orthopnoea (active problem since" in line for line in finding.evidence)


def test_fvc_below_80_percent_without_symptoms_is_silent() -> None:
    assert run(NIV_REFERRAL, als(), fvc_percent(5, 65)) == []
    assert run(NIV_REFERRAL, als(), vc_percent(5, 65)) == []


def test_vc_below_80_percent_with_breathlessness_says_symptoms() -> None:
    [finding] = run(NIV_REFERRAL, als(), condition(DYSPNOEA_CODE), vc_percent(5, 70))
    assert finding.fields["criteria"] == "VC < 80 % predicted with symptoms"


@pytest.mark.parametrize(
    "symptom",
    [
        symptom_obs(ORTHOPNOEA_CODE, 10),  # recorded, no value: present
        symptom_obs(ORTHOPNOEA_CODE, 10, value_concept=MILD),  # graded: present
        symptom_obs(DISTURBED_SLEEP, 10, value_concept=concept(coding(LOINC, "LA33-6", "Yes"))),
    ],
    ids=["recorded", "graded-mild", "answered-yes"],
)
def test_a_symptom_observation_of_the_interval_counts(symptom: dict[str, Any]) -> None:
    assert run(NIV_REFERRAL, als(), symptom, fvc_percent(5, 70))


@pytest.mark.parametrize(
    "symptom",
    [
        symptom_obs(ORTHOPNOEA_CODE, 10, value_concept=ABSENT),
        symptom_obs(ORTHOPNOEA_CODE, 10, value_concept=concept(coding(LOINC, "LA32-8", "No"))),
        symptom_obs(ORTHOPNOEA_CODE, 10, value_concept=concept(coding(SNOMED, "373067005", "No"))),
        symptom_obs(ORTHOPNOEA_CODE, 120),  # older than the interval
        orthopnoea(clinical="resolved"),
        orthopnoea(verification="refuted"),
        condition(concept(coding("urn:oid:1.2.3.4", "SOB"), text="Orthopnoea")),  # text only: no name match
    ],
    ids=["absent", "no-loinc", "no-snomed", "old", "resolved", "refuted", "text-only"],
)
def test_a_symptom_said_absent_resolved_old_or_uncoded_does_not_count(symptom: dict[str, Any]) -> None:
    assert run(NIV_REFERRAL, als(), symptom, fvc_percent(5, 70)) == []


def test_a_boolean_false_symptom_observation_does_not_count() -> None:
    obs = symptom_obs(ORTHOPNOEA_CODE, 10)
    obs["valueBoolean"] = False
    assert run(NIV_REFERRAL, als(), obs, fvc_percent(5, 70)) == []


@pytest.mark.parametrize(
    ("sex", "value", "fires"),
    [
        ("male", 64.9, True),
        ("male", 65, False),
        ("female", 64, False),
        ("female", 54.9, True),
        ("female", 55, False),
        ("unknown", 64, True),  # sex not recorded: the men's cut-off, and the card says so
    ],
)
def test_snip_with_symptoms_uses_the_sex_specific_cut_off(sex: str, value: float, fires: bool) -> None:
    found = run(NIV_REFERRAL, als(), orthopnoea(), snip(5, value), sex=sex)
    assert bool(found) is fires
    if fires:
        [finding] = found
        limit = "55" if sex == "female" else "65"
        assert finding.fields["criteria"] == f"SNIP < {limit} cmH2O with orthopnoea"
        if sex == "unknown":
            assert any("sex not recorded as male or female" in line for line in finding.evidence)


def test_snip_below_65_without_symptoms_is_silent() -> None:
    assert run(NIV_REFERRAL, als(), snip(5, 50)) == []


@pytest.mark.parametrize(
    ("earlier", "latest", "gap", "fires"),
    [
        (80, 69, 90, True),  # 11 cmH2O in 90 days
        (80, 70, 90, False),  # exactly 10: not more than 10
        (80, 69.5, 30, True),  # 10.5 within a month (not extrapolated, but more than 10)
        (80, 72, 30, False),  # 8 in a month: no extrapolation to 24 per 3 months
        (90, 68, 170, True),  # 22 in 170 days: 11.9 per 92 days
        (90, 72, 170, False),  # 18 in 170 days: 9.7 per 92 days
        (100, 70, 200, False),  # too far back to compare
        (80, 65, 0, False),  # the same day: repeated attempts, not repeated tests
    ],
)
def test_snip_falling_more_than_10_per_3_months(earlier: float, latest: float, gap: int, fires: bool) -> None:
    found = run(NIV_REFERRAL, als(), snip(5 + gap, earlier), snip(5, latest))
    assert bool(found) is fires
    if fires:
        [finding] = found
        assert finding.fields["criteria"] == "SNIP falling > 10 cmH2O in 3 months"
        assert any(f"in {gap} days" in line for line in finding.evidence)


def test_snip_fall_in_kpa_is_converted() -> None:
    # 7.8 kPa = 79.5 cmH2O; 6.7 kPa = 68.3 cmH2O: a fall of 11.2 cmH2O
    assert run(NIV_REFERRAL, als(), snip(60, 7.8, "kPa"), snip(5, 6.7, "kPa"))


def test_snip_fall_and_low_value_are_both_named() -> None:
    [finding] = run(
        NIV_REFERRAL,
        als(),
        snip(
            60,
            52,
        ),
        snip(5, 38),
    )
    assert finding.fields["criteria"] == "SNIP < 40 cmH2O, SNIP falling > 10 cmH2O in 3 months"


def test_an_old_low_snip_does_not_fall_from_a_stale_result() -> None:
    # Only the latest SNIP of the interval is compared; the old pair is history.
    assert run(NIV_REFERRAL, als(), snip(200, 80), snip(150, 60)) == []


def test_a_normal_spo2_does_not_fire_the_referral_card() -> None:
    assert run(NIV_REFERRAL, als(), orthopnoea(), spo2(5, 97)) == []


# -- already on NIV, or referred (finding 12 of the safety review) ------------------------------


@pytest.mark.parametrize(
    "on_niv",
    [
        niv_in_progress(),
        device(BIPAP),
        condition(NIV_DEPENDENT, onset=days_ago(100)),
    ],
    ids=["procedure-in-progress", "bipap-device", "dependence-problem"],
)
def test_the_referral_card_is_silent_for_a_person_already_using_niv(on_niv: dict[str, Any]) -> None:
    assert run(NIV_REFERRAL, als(), on_niv, fvc_percent(5, 40), spo2(5, 90)) == []


@pytest.mark.parametrize(
    "not_on_niv",
    [
        procedure(NIV_CODE, days_ago(300)),  # completed: a past episode
        procedure(NIV_CODE, days_ago(30), status="not-done"),
        device(BIPAP, status="inactive"),
        device(snomed("702172008", "Home continuous positive airway pressure unit")),  # CPAP is not NIV
        condition(NIV_DEPENDENT, clinical="resolved"),
    ],
    ids=["completed", "not-done", "inactive-device", "cpap", "resolved-dependence"],
)
def test_niv_that_is_not_in_use_does_not_silence_the_card(not_on_niv: dict[str, Any]) -> None:
    assert run(NIV_REFERRAL, als(), not_on_niv, fvc_percent(5, 40))


def test_hypercapnia_on_niv_says_so_instead_of_asking_for_a_referral() -> None:
    [finding] = run(HYPERCAPNIA, als(), niv_in_progress(90), paco2(3, 6.8))
    assert finding.variant == "on-niv"
    assert any("Non-invasive ventilation in progress since" in line for line in finding.evidence)
    body = render(finding)
    assert body["indicator"] == "warning" and "suggestions" not in body
    assert "while on NIV" in body["summary"]


def test_hypercapnia_on_a_bipap_device_says_so() -> None:
    [finding] = run(HYPERCAPNIA, als(), device(BIPAP), paco2(3, 6.8))
    assert finding.variant == "on-niv"


def test_referral_after_the_blood_gas_is_named_and_not_asked_again() -> None:
    [finding] = run(HYPERCAPNIA, als(), paco2(10, 6.8), referral(8))
    assert finding.variant == "referred"
    assert finding.fields["referral_date"] == days_ago(8).date().isoformat()
    body = render(finding)
    assert body["indicator"] == "warning" and "suggestions" not in body
    assert "within 1 week" in body["summary"]


def test_referral_before_the_blood_gas_does_not_count() -> None:
    [finding] = run(HYPERCAPNIA, als(), paco2(10, 6.8), referral(12))
    assert finding.variant is None
    assert render(finding)["indicator"] == "critical"


def test_niv_referral_card_names_a_referral_made_after_the_results() -> None:
    [finding] = run(NIV_REFERRAL, als(), fvc_percent(20, 45), referral(10))
    assert finding.variant == "referred"
    body = render(finding)
    assert body["indicator"] == "info" and "suggestions" not in body
    [gas] = run(NIV_REFERRAL, als(), spo2(20, 91), referral(10))
    assert gas.variant == "referred-blood-gas"
    body = render(gas)
    assert [s["label"] for s in body["suggestions"]] == ["Order an arterial or capillary blood gas"]


def test_niv_referral_card_ignores_a_referral_before_the_results() -> None:
    [finding] = run(NIV_REFERRAL, als(), fvc_percent(20, 45), referral(30))
    assert finding.variant is None


# -- respiratory-sleep-study (NG42 1.14.12, 1.14.14) ---------------------------------------------


def test_sleep_symptoms_with_normal_spo2_suggest_a_sleep_study() -> None:
    [finding] = run(SLEEP_STUDY_RULE, als(), condition(DISTURBED_SLEEP), spo2(5, 96))
    assert finding.variant is None and finding.fields["spo2_limit"] == "94"
    assert any("above 94 %" in line and "1.14.12" in line for line in finding.evidence)
    body = render(finding)
    assert body["indicator"] == "info"
    assert body["suggestions"][0]["actions"][0]["resource"]["subject"] == {"reference": f"Patient/{PID}"}


def test_lung_disease_moves_the_spo2_threshold_to_92() -> None:
    [finding] = run(SLEEP_STUDY_RULE, als(), copd(), orthopnoea(), spo2(5, 93))
    assert finding.fields["spo2_limit"] == "92"


def test_non_sleep_symptoms_alone_do_not_suggest_a_sleep_study_from_spo2() -> None:
    assert run(SLEEP_STUDY_RULE, als(), condition(DYSPNOEA_CODE), spo2(5, 96)) == []


def test_paco2_at_most_6_with_any_symptom_refers_for_a_sleep_study() -> None:
    [finding] = run(SLEEP_STUDY_RULE, als(), condition(DYSPNOEA_CODE), paco2(5, 5.9), spo2(6, 96))
    assert finding.variant == "blood-gas"
    assert render(finding)["indicator"] == "warning"


@pytest.mark.parametrize(
    "silencer",
    [
        procedure(POLYSOMNOGRAPHY, days_ago(20)),
        procedure(concept(coding("urn:oid:1.2.3.4", "OXI"), text="Overnight oximetry"), days_ago(20)),
        niv_in_progress(),
        fvc_percent(5, 45),  # the NIV-referral card asks for the ventilation service instead
        paco2(3, 6.5),  # so does the hypercapnia card
    ],
    ids=["polysomnography", "overnight-oximetry-by-name", "on-niv", "table-2", "hypercapnia"],
)
def test_the_sleep_study_card_stays_silent_when_done_or_covered(silencer: dict[str, Any]) -> None:
    assert run(SLEEP_STUDY_RULE, als(), orthopnoea(), spo2(6, 96), silencer) == []


def test_an_old_sleep_study_does_not_silence_the_card() -> None:
    assert run(SLEEP_STUDY_RULE, als(), orthopnoea(), spo2(6, 96), procedure(POLYSOMNOGRAPHY, days_ago(200)))


def test_no_symptoms_or_no_result_no_sleep_study_card() -> None:
    assert run(SLEEP_STUDY_RULE, als(), spo2(6, 96)) == []
    assert run(SLEEP_STUDY_RULE, als(), orthopnoea()) == []
    assert run(SLEEP_STUDY_RULE, als(), orthopnoea(), spo2(100, 96)) == []


def test_sleep_study_card_names_a_referral() -> None:
    [finding] = run(SLEEP_STUDY_RULE, als(), orthopnoea(), spo2(6, 96), referral(2))
    assert any("Referral to respiratory physician on" in line for line in finding.evidence)


# -- respiratory decline as an advance care planning trigger --------------------------------------


def test_respiratory_decline_dates_the_earliest_qualifying_result_of_the_interval() -> None:
    record = record_from(
        [patient(), als(), fvc_percent(80, 48), fvc_percent(40, 46), fvc_percent(5, 44), paco2(60, 6.4)],
        patient_id=PID,
    )
    when, words = respiratory_decline(record, RuleConfig())
    assert when == days_ago(80)
    assert words == "FVC < 50 % predicted, PaCO2 > 6 kPa"
    calm = record_from([patient(), als(), fvc_percent(5, 90)], patient_id=PID)
    assert respiratory_decline(calm, RuleConfig()) is None


# -- the ALS gate and profiles ----------------------------------------------------------------


@pytest.mark.parametrize(
    "condition_kwargs",
    [{"verification": "refuted"}, {"verification": "entered-in-error"}, {"clinical": "resolved"}],
)
def test_no_breathing_card_without_an_active_als_diagnosis(condition_kwargs: dict[str, str]) -> None:
    resources = (als(**condition_kwargs), fvc_percent(5, 30), spo2(5, 88), paco2(2, 8.0))
    for rule in (ASSESSMENT_DUE, NIV_REFERRAL, HYPERCAPNIA):
        assert run(rule, *resources) == []
    assert run(SLEEP_STUDY_RULE, als(**condition_kwargs), orthopnoea(), spo2(5, 97)) == []


def test_icd10_coded_mnd_passes_the_gate() -> None:
    mnd = condition(concept(coding(ICD10CM, "G12.21")), rid="als")
    assert run(HYPERCAPNIA, mnd, paco2(2, 8.0))


def test_profile_does_not_change_the_breathing_rules() -> None:
    resources = (als(), fvc_percent(5, 45), spo2(5, 93), paco2(2, 7.0))
    for rule in (ASSESSMENT_DUE, NIV_REFERRAL, HYPERCAPNIA):
        assert run(rule, *resources, config=RuleConfig(profile="us")) == run(rule, *resources)
    sleepy = (als(), orthopnoea(), spo2(5, 97))
    assert run(SLEEP_STUDY_RULE, *sleepy, config=RuleConfig(profile="us")) == run(SLEEP_STUDY_RULE, *sleepy)


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


def test_assessment_card_renders_with_a_draft_order_for_this_patient() -> None:
    [finding] = run(ASSESSMENT_DUE, als())
    body = render(finding)
    assert body["indicator"] == "info"
    resource = body["suggestions"][0]["actions"][0]["resource"]
    assert resource["status"] == "draft" and resource["subject"] == {"reference": f"Patient/{PID}"}
    assert resource["code"]["coding"][0]["code"] == "23426006"


def test_niv_cards_render_in_both_variants() -> None:
    [plain] = run(NIV_REFERRAL, als(), fvc_percent(5, 45))
    body = render(plain)
    assert body["indicator"] == "warning" and len(body["suggestions"]) == 1
    [gas] = run(NIV_REFERRAL, als(), fvc_percent(5, 45), vc_percent(5, 44), snip(5, 30), spo2(5, 90))
    body = render(gas)
    assert "arterial or capillary blood gas" in body["detail"]
    labels = [s["label"] for s in body["suggestions"]]
    assert labels == [
        "Order an arterial or capillary blood gas",
        "Refer to the respiratory ventilation service (NIV assessment)",
    ]


def test_hypercapnia_card_is_critical_and_urgent() -> None:
    [finding] = run(HYPERCAPNIA, als(), paco2(2, 7.0))
    body = render(finding)
    assert body["indicator"] == "critical"
    assert body["suggestions"][0]["actions"][0]["resource"]["priority"] == "urgent"


def test_longest_summaries_stay_under_140_characters() -> None:
    labels = [
        "FVC < 80 % predicted with orthopnoea",
        "VC < 80 % predicted with orthopnoea",
        "SNIP < 65 cmH2O with orthopnoea",
        "SNIP falling > 10 cmH2O in 3 months",
        "SpO2 ≤ 94 %",
    ]
    worst = {
        "respiratory-assessment-due": {
            "interval_days": "365",
            "last_assessment": "none in the data received",
        },
        "respiratory-niv-referral": {
            "criteria": _criteria_text(labels),
            "interval_days": "365",
            "referral_date": "2026-11-22",
        },
        "respiratory-hypercapnia": {
            "paco2": "99.99 kPa",
            "date": "2026-11-22",
            "referral_date": "2026-11-22",
        },
        "respiratory-sleep-study": {"spo2_limit": "94", "interval_days": "365"},
    }
    assert _criteria_text(labels) == "FVC < 80 % predicted with orthopnoea +4 more"
    assert _criteria_text(labels[3:]) == "SNIP falling > 10 cmH2O in 3 months, SpO2 ≤ 94 %"
    for rule_id, fields in worst.items():
        for variant in (None, *CATALOG[rule_id].variants):
            finding = Finding(
                rule_id, fields, (), variant=variant, bindings={"patient_reference": "Patient/x"}
            )
            assert len(cards.render(finding, CATALOG[rule_id]).summary) < 140, (rule_id, variant)


# -- fixtures ---------------------------------------------------------------------------------


def test_fixture_patients_get_exactly_the_expected_breathing_cards() -> None:
    expected = json.loads((FIXTURES / "expected" / "respiratory.json").read_text())
    assert {"respiratory-assessment-overdue", "respiratory-fvc-below-50", "respiratory-copd-stable"} <= set(
        expected
    )
    rules = list(RULES)
    for name, hooks in expected.items():
        record = record_from(patient_resources(name), patient_id=name)
        found = [f.rule_id for f in evaluate(rules, record, RuleConfig())]
        assert found == hooks["patient-view"], name
        assert hooks["order-select"] == hooks["order-sign"] == []


@pytest.mark.parametrize("reported_first", [True, False])
def test_a_reported_percent_predicted_wins_over_one_computed_at_the_same_instant(
    reported_first: bool,
) -> None:
    """Newest first; at the same instant the lab's own % predicted decides, whichever came first."""
    reported = fvc_percent(5, 45)  # < 50 %: the referral criterion
    computed = fvc_volume(5, 2.0, components=[component("19869-7", 3.3, "L")])  # 60.6 %: not
    resources = [reported, computed] if reported_first else [computed, reported]
    [finding] = run(NIV_REFERRAL, als(), *resources)
    assert finding.fields["criteria"] == "FVC < 50 % predicted"
    assert "FVC 45 % predicted on" in finding.evidence[0]
    assert "(computed)" not in finding.evidence[0]
