"""`als-cds check-fhir`: the report an integration engineer reads about their FHIR server."""

from __future__ import annotations

import httpx
import pytest
import respx

from cds_service.check_fhir import check_fhir_server, format_report
from cds_service.cli import main
from cds_service.settings import Settings
from tests.api.test_invocation import mock_fhir_server
from tests.support import NOW, patient_resources

SERVER = "https://fhir.example.org/r4"
PATIENT = "als-riluzole-lft-overdue"


def capability(
    version: str = "4.0.1", observation_params: tuple[str, ...] = ("patient", "code", "date")
) -> dict:
    types = [
        "Patient",
        "Condition",
        "MedicationRequest",
        "AllergyIntolerance",
        "Procedure",
        "Encounter",
        "Device",
        "DocumentReference",
        "Consent",
    ]
    resources = [{"type": t, "searchParam": [{"name": "patient"}, {"name": "date"}]} for t in types]
    resources.append({"type": "Observation", "searchParam": [{"name": p} for p in observation_params]})
    return {"resourceType": "CapabilityStatement", "fhirVersion": version, "rest": [{"resource": resources}]}


def serve(router: respx.MockRouter, metadata: dict) -> None:
    router.get(f"{SERVER}/metadata").mock(return_value=httpx.Response(200, json=metadata))
    mock_fhir_server(router, patient_resources(PATIENT), base=SERVER)


async def test_a_complete_server_passes_and_the_patients_cards_are_shown() -> None:
    with respx.mock(assert_all_called=False) as router:
        serve(router, capability())
        report = await check_fhir_server(SERVER, PATIENT, "tok", Settings(_env_file=None), now=NOW)
    assert report.ok and report.fhir_version == "4.0.1"
    assert report.capability_problems == []
    assert {q.outcome for q in report.queries} <= {"ok", "empty"}
    assert "riluzole-lft-due" in [c["source"]["topic"]["code"] for c in report.cards]
    text = format_report(report)
    assert "ok      patient: 1 resource(s)" in text and "[WARNING] Riluzole: ALT check due" in text


async def test_a_refused_query_names_the_missing_scope_and_no_cards_are_pretended() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(url__startswith=f"{SERVER}/MedicationRequest").mock(return_value=httpx.Response(403))
        serve(router, capability())
        report = await check_fhir_server(SERVER, PATIENT, "tok", Settings(_env_file=None), now=NOW)
    [failed] = [q for q in report.queries if q.outcome == "failed"]
    assert failed.key == "medications"
    assert "patient/MedicationRequest.read" in failed.hint
    assert not report.ok and report.cards_error is not None and "medications" in report.cards_error


async def test_unsupported_search_parameters_and_versions_are_reported() -> None:
    with respx.mock(assert_all_called=False) as router:
        serve(router, capability(version="3.0.2", observation_params=("patient", "code")))
        report = await check_fhir_server(SERVER, PATIENT, None, Settings(_env_file=None), now=NOW)
    problems = " ".join(report.capability_problems)
    assert "FHIR 3.0.2" in problems
    assert "Observation: search parameter 'date' is not listed" in problems


async def test_a_server_without_metadata_is_reported_not_fatal() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{SERVER}/metadata").mock(return_value=httpx.Response(404))
        mock_fhir_server(router, patient_resources(PATIENT), base=SERVER)
        report = await check_fhir_server(SERVER, PATIENT, None, Settings(_env_file=None), now=NOW)
    assert "no CapabilityStatement" in report.capability_problems[0]
    assert report.queries and report.cards


def test_the_command_exits_non_zero_when_a_query_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(url__startswith=f"{SERVER}/Condition").mock(return_value=httpx.Response(401))
        serve(router, capability())
        code = main(
            [
                "check-fhir",
                SERVER,
                "--patient",
                PATIENT,
                "--token",
                "SECRET-TOKEN-9f8e",
                "--now",
                NOW.isoformat(),
            ]
        )
        sent = {call.request.headers.get("Authorization") for call in router.calls}
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED  conditions: FHIR server refused access (HTTP 401)" in captured.out
    assert sent == {"Bearer SECRET-TOKEN-9f8e"}
    assert "SECRET-TOKEN-9f8e" not in captured.out + captured.err  # used, never printed


async def test_strict_lists_what_the_server_sent_that_is_not_r4_and_fails_the_check() -> None:
    resources = patient_resources(PATIENT)
    for resource in resources:
        if resource["resourceType"] == "MedicationRequest":
            resource["category"] = {"coding": [{"code": "outpatient"}]}  # one object: R4 wants a list
        if resource["resourceType"] == "Observation" and "effectiveDateTime" in resource:
            resource["effectiveDateTime"] = resource["effectiveDateTime"][:19]  # a time without its zone
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{SERVER}/metadata").mock(return_value=httpx.Response(200, json=capability()))
        mock_fhir_server(router, resources, base=SERVER)
        settings = Settings(_env_file=None)
        plain = await check_fhir_server(SERVER, PATIENT, None, settings, now=NOW)
        strict = await check_fhir_server(SERVER, PATIENT, None, settings, now=NOW, strict=True)
    assert plain.ok and plain.strict is None
    assert not strict.ok
    assert strict.strict is not None
    found = {(f.action, f.path) for f in strict.strict}
    assert found >= {
        ("not valid R4", "category"),
        ("not valid R4", "effectiveDateTime"),
        ("repaired", "effectiveDateTime"),  # the reader read it in the site's zone
    }
    text = format_report(strict)
    assert "Strict check:" in text and "effectiveDateTime: no time zone (read in the site's zone)" in text
    rule_ids = [[c["source"]["topic"]["code"] for c in r.cards] for r in (plain, strict)]
    assert rule_ids[0] == rule_ids[1]  # the cards do not change


async def test_strict_on_a_clean_server_passes() -> None:
    with respx.mock(assert_all_called=False) as router:
        serve(router, capability())
        settings = Settings(_env_file=None)
        report = await check_fhir_server(SERVER, PATIENT, None, settings, now=NOW, strict=True)
    assert report.strict == [] and report.ok
