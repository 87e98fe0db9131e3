"""`--strict` reports: every deviation from R4, where it was and what was done, never a value."""

from __future__ import annotations

import json

import msgspec

from cds_service.reader import ReadOptions, build_record
from cds_service.reader.lazy import LazyResource
from cds_service.reader.strict import format_findings, strict_findings, validate_r4
from tests.support import NOW, service_interest

SECRET = "Jane Doe, seen at home"  # stands for patient data: must never be printed


def observation(**overrides: object) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}], "text": SECRET},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20T08:00:00Z",
        "valueQuantity": {"value": 40, "unit": "U/L"},
        **overrides,
    }


def test_a_valid_resource_has_no_finding() -> None:
    assert validate_r4(observation()) == []


def test_an_invalid_element_is_named_by_its_path_and_the_kind_of_error() -> None:
    [(path, what)] = validate_r4(observation(category={"coding": [{"code": "laboratory"}]}))
    assert path == "category"
    assert "list_type" in what


def test_an_unknown_resource_type_is_reported_as_such() -> None:
    assert validate_r4({"resourceType": "Banana"}) == [("resourceType", "not an R4 resource type")]


def test_a_custom_validator_message_is_replaced_by_its_kind_as_it_may_quote_the_value() -> None:
    findings = validate_r4(observation(effectiveDateTime=f"{SECRET} 2026"))
    assert findings
    assert all(SECRET not in what and "Jane" not in what for _, what in findings)


def test_reader_deviations_and_r4_errors_make_one_report_without_values() -> None:
    bent = observation(effectiveDateTime="2026-11-20T08:00:00", category={"coding": [{"code": "laboratory"}]})
    record = build_record(
        patient_id="p1",
        now=NOW,
        resources=[bent],
        interest=service_interest(),
        options=ReadOptions(keep_deviations=True),
    )
    findings = strict_findings(record.report.deviations, [bent])
    actions = {(f.action, f.path) for f in findings}
    assert ("repaired", "effectiveDateTime") in actions
    assert ("not valid R4", "category") in actions
    assert ("not valid R4", "effectiveDateTime") in actions  # R4: a time needs its zone
    text = "\n".join(format_findings(findings))
    assert text.startswith("Strict check: 1 repaired, 2 not valid R4")
    assert "Observation/o1" in text
    assert SECRET not in text and "2026-11-20" not in text


def test_a_resource_sent_twice_is_reported_once_and_lazy_resources_are_read() -> None:
    bent = observation(category={"coding": [{"code": "laboratory"}]})
    lazy = LazyResource.of(msgspec.Raw(json.dumps(bent).encode()))
    findings = strict_findings([], [bent, lazy])
    assert len(findings) == 1


def test_a_clean_report_says_so() -> None:
    clean = "Strict check: every resource is valid R4, and the reader repaired nothing."
    assert format_findings([]) == [clean]
