"""riluzole-lft-due: the SmPC 4.4 / NICE TA20 ALT schedule, at and around every boundary."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.riluzole import LFT_DUE, lft_due, months_between
from tests.support import NOW, patient_resources, record_from

PID = "p1"


def als(**extra: Any) -> dict[str, Any]:
    condition = {
        "resourceType": "Condition",
        "id": "als",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
        "subject": {"reference": f"Patient/{PID}"},
    }
    condition.update(extra)
    return condition


def riluzole(
    started: datetime | None, *, status: str = "active", rid: str = "ril", **medication: Any
) -> dict:
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{PID}"},
        "medicationCodeableConcept": medication
        or {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "199206"}]},
    }
    if started is not None:
        request["authoredOn"] = started.isoformat()
    return request


def alt(when: datetime, value: float = 30, *, oid: str | None = None, **extra: Any) -> dict[str, Any]:
    obs = {
        "resourceType": "Observation",
        "id": oid or f"alt-{when:%Y%m%d%H%M}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]},
        "subject": {"reference": f"Patient/{PID}"},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {
            "value": value,
            "unit": "U/L",
            "system": "http://unitsofmeasure.org",
            "code": "U/L",
        },
    }
    obs.update(extra)
    return obs


def run(*resources: dict[str, Any], config: RuleConfig | None = None) -> list:
    record = record_from(resources, patient_id=PID)
    return evaluate([LFT_DUE], record, config or RuleConfig())


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


# -- the schedule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start_days_ago", "alt_days_ago", "fires"),
    [
        (40, 31, False),  # month 2: monthly, last ALT exactly 31 days ago is in time
        (40, 32, True),  # month 2: 32 days is overdue
        (80, 31, False),  # month 3 still monthly
        (80, 32, True),
        (150, 92, False),  # month 5: every 3 months, 92 days in time
        (150, 93, True),
        (330, 92, False),  # month 11
        (330, 93, True),
        (500, 365, False),  # after the first year: yearly by default
        (500, 366, True),
    ],
)
def test_alt_schedule_boundaries(start_days_ago: int, alt_days_ago: int, fires: bool) -> None:
    findings = run(als(), riluzole(days_ago(start_days_ago)), alt(days_ago(alt_days_ago)))
    assert bool(findings) is fires


def test_month_three_boundary_switches_from_monthly_to_three_monthly() -> None:
    start = datetime(2026, 8, 22, 12, 0, tzinfo=NOW.tzinfo)  # exactly 3 calendar months before NOW
    assert months_between(start, NOW) == 3
    # 60 days since the last ALT is overdue on a monthly schedule but in time on a 3-monthly one.
    assert run(als(), riluzole(start), alt(days_ago(60))) == []
    assert run(als(), riluzole(start + timedelta(days=1)), alt(days_ago(60)))  # still month 3


def test_interval_after_first_year_is_configurable() -> None:
    resources = (als(), riluzole(days_ago(800)), alt(days_ago(200)))
    assert run(*resources) == []
    assert run(*resources, config=RuleConfig(riluzole_lft_interval_after_year1_days=180))


def test_no_alt_at_all_fires_and_says_so() -> None:
    [finding] = run(als(), riluzole(days_ago(10)))
    assert finding.fields["last_alt"] == "none in the data received"
    assert any("No dated ALT" in line for line in finding.evidence)


def test_baseline_alt_before_start_counts_in_first_month() -> None:
    assert run(als(), riluzole(days_ago(5)), alt(days_ago(20))) == []


def test_unknown_start_date_applies_the_monthly_schedule() -> None:
    [finding] = run(als(), riluzole(None), alt(days_ago(40)))
    assert finding.fields["window_days"] == "31"
    assert any("not recorded" in line for line in finding.evidence)


def test_completed_earlier_prescription_marks_the_start_of_the_course() -> None:
    # Renewed prescription authored 20 days ago, but the course began 2 years ago: yearly applies.
    resources = (
        als(),
        riluzole(days_ago(20), rid="renewal"),
        riluzole(days_ago(730), status="completed", rid="first"),
        alt(days_ago(100)),
    )
    assert run(*resources) == []


def test_stopped_course_before_a_restart_does_not_count_as_the_start() -> None:
    resources = (
        als(),
        riluzole(days_ago(20), rid="restart"),
        riluzole(days_ago(730), status="stopped", rid="old"),
        alt(days_ago(40)),
    )
    [finding] = run(*resources)
    assert finding.fields["window_days"] == "31"


# -- what counts as "on riluzole" and as an ALT result ------------------------------------------


@pytest.mark.parametrize("status", ["stopped", "cancelled", "completed", "entered-in-error", "draft"])
def test_no_card_when_riluzole_is_not_current(status: str) -> None:
    assert run(als(), riluzole(days_ago(400), status=status)) == []


def test_on_hold_riluzole_still_needs_monitoring() -> None:
    assert run(als(), riluzole(days_ago(400), status="on-hold"))


def test_product_level_and_oid_coded_riluzole_matches() -> None:
    coded = {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.88", "code": "2058147"}]}
    [finding] = run(als(), riluzole(days_ago(400), **coded))
    assert "named in free text" not in finding.evidence[0]  # matched by its product code


def test_riluzole_known_only_by_name_matches_and_the_card_says_so() -> None:
    by_name = {"coding": [{"system": "urn:oid:1.2.3.4", "code": "local-77"}], "text": "Rilutek 50mg tablets"}
    [finding] = run(als(), riluzole(days_ago(400), **by_name))
    assert "named in free text, no code" in finding.evidence[0]


def test_alt_result_without_a_date_does_not_count_as_recent() -> None:
    undated = alt(days_ago(1))
    del undated["effectiveDateTime"]
    assert run(als(), riluzole(days_ago(400)), undated)


def test_entered_in_error_and_cancelled_alt_results_do_not_count() -> None:
    for status in ("entered-in-error", "cancelled", "registered"):
        assert run(als(), riluzole(days_ago(400)), alt(days_ago(1), status=status)), status


def test_alt_under_another_loinc_code_counts() -> None:
    other = alt(days_ago(10), code={"coding": [{"system": "http://loinc.org", "code": "1744-2"}]})
    assert run(als(), riluzole(days_ago(400)), other) == []


def test_evidence_names_the_latest_alt_with_value_and_date() -> None:
    [finding] = run(als(), riluzole(days_ago(400)), alt(datetime(2025, 1, 10, 9, tzinfo=NOW.tzinfo), 38))
    assert "Latest ALT: 38 U/L on 2025-01-10" in " ".join(finding.evidence)
    assert finding.bindings["patient_reference"] == f"Patient/{PID}"


# -- the ALS gate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [
        als(verificationStatus={"coding": [{"code": "refuted"}]}),
        als(verificationStatus={"coding": [{"code": "entered-in-error"}]}),
        als(clinicalStatus={"coding": [{"code": "resolved"}]}),
        als(clinicalStatus={"coding": [{"code": "inactive"}]}),
        als(code={"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}),
    ],
)
def test_no_card_without_an_active_als_diagnosis(condition: dict[str, Any]) -> None:
    assert run(condition, riluzole(days_ago(400))) == []


@pytest.mark.parametrize(
    "coding",
    [
        {"system": "http://snomed.info/sct", "code": "37340000"},
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G12.21"},
        {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G1221"},
        {"system": "http://hl7.org/fhir/sid/icd-10", "code": "G12.2"},
        {"system": "urn:oid:2.16.840.1.113883.6.96", "code": "86044005"},
    ],
)
def test_als_diagnosis_recognised_in_every_coding(coding: dict[str, str]) -> None:
    condition = als(code={"coding": [{"system": "urn:oid:9.9.9", "code": "LOCAL-ALS"}, coding]})
    assert run(condition, riluzole(days_ago(400)))


def test_condition_without_clinical_status_counts_as_active() -> None:
    condition = als()
    del condition["clinicalStatus"]
    assert run(condition, riluzole(days_ago(400)))


def test_lft_due_is_a_pure_function_of_the_record() -> None:
    record = record_from(patient_resources("als-riluzole-lft-overdue"), patient_id="als-riluzole-lft-overdue")
    first = lft_due(record, RuleConfig())
    second = lft_due(record, RuleConfig())
    assert first == second and len(first) == 1


def test_fixture_patients_get_the_cards_their_data_call_for() -> None:
    expectations = {
        "als-riluzole-lft-overdue": 1,  # ALT last January 2025
        "no-als-on-riluzole": 0,  # ALS refuted
        "als-icd10-riluzole-by-name": 1,  # month 18, last ALT before start
        "als-riluzole-stopped": 0,
    }
    for name, count in expectations.items():
        record = record_from(patient_resources(name), patient_id=name)
        assert len(evaluate([LFT_DUE], record, RuleConfig())) == count, name
