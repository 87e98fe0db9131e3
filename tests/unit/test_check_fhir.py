"""`als-cds check-fhir`: the report an integration engineer reads about their FHIR server."""

from __future__ import annotations

import httpx
import pytest
import respx

from cds_service.check_fhir import check_fhir_server, format_report
from cds_service.cli import main
from cds_service.prefetch import render_template
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.api.test_invocation import mock_fhir_server
from tests.support import NOW, patient_resources, searchset

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
    assert "ok      patient: 1 resource(s)" in text and "[WARNING] Order an ALT: due on riluzole" in text


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


# -- per service: each service's own queries, run once when shared, the cards from patient-view's ------


def rendered(service_id: str) -> dict[str, str]:
    service = build_services()[service_id]
    templates = service.prefetch(Settings(_env_file=None), NOW.date())
    return {
        key: render_template(t, service.hook, {"patientId": PATIENT}) or t for key, t in templates.items()
    }


def observation_codes(service_id: str) -> str:
    return str(httpx.URL("/x?" + rendered(service_id)["observations"].split("?", 1)[1]).params["code"])


def failing_observations(router: respx.MockRouter, service_id: str) -> None:
    """The server refuses the Observation search of one service (by its code list) and no other."""
    resources = patient_resources(PATIENT)
    refused = observation_codes(service_id)

    def search(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("code") == refused:
            return httpx.Response(500)
        return httpx.Response(200, json=searchset(r for r in resources if r["resourceType"] == "Observation"))

    router.get(url__startswith=f"{SERVER}/Observation?").mock(side_effect=search)


async def test_each_service_is_checked_with_its_own_queries_and_a_shared_query_runs_once() -> None:
    assert observation_codes("als-patient-view") != observation_codes("als-order-select")  # the premise
    with respx.mock(assert_all_called=False) as router:
        serve(router, capability())
        report = await check_fhir_server(SERVER, PATIENT, None, Settings(_env_file=None), now=NOW)
        requested = [
            str(call.request.url) for call in router.calls if "/metadata" not in str(call.request.url)
        ]
    assert [s.id for s in report.services] == ["als-patient-view", "als-order-select", "als-order-sign"]
    for service in report.services:
        assert {q.key: q.query for q in report.queries_of(service.id)} == rendered(service.id)
        assert [q.key for q in report.queries_of(service.id)] == list(rendered(service.id))
    observations = [q for q in report.queries if q.key == "observations"]
    assert [q.services for q in observations] == [
        ["als-patient-view"],
        ["als-order-select", "als-order-sign"],
    ]
    [patient] = [q for q in report.queries if q.key == "patient"]
    assert patient.services == ["als-patient-view", "als-order-select", "als-order-sign"]
    assert len(requested) == len(set(requested)) == len(report.queries)  # each distinct query once
    text = format_report(report)
    for service in report.services:
        assert f"Prefetch queries of {service.id} ({service.hook}): {len(rendered(service.id))}" in text
    assert "(the same query as for als-patient-view)" in text
    assert "Cards on patient-view, from its own queries: 2" in text  # the warning and the care review


async def test_a_failure_in_an_order_query_is_reported_there_and_leaves_patient_views_cards() -> None:
    with respx.mock(assert_all_called=False) as router:
        failing_observations(router, "als-order-select")
        serve(router, capability())
        report = await check_fhir_server(SERVER, PATIENT, None, Settings(_env_file=None), now=NOW)
    [failed] = [q for q in report.queries if q.outcome == "failed"]
    assert failed.key == "observations" and failed.services == ["als-order-select", "als-order-sign"]
    assert not report.ok
    assert report.cards_error is None
    assert "riluzole-lft-due" in [c["source"]["topic"]["code"] for c in report.cards]
    text = format_report(report)
    patient_view, order_services = text.split("Prefetch queries of als-order-select", 1)
    assert "FAILED" not in patient_view
    assert "FAILED  observations: FHIR server error (HTTP 500)" in order_services


async def test_a_failure_in_patient_views_queries_says_why_there_are_no_cards() -> None:
    with respx.mock(assert_all_called=False) as router:
        failing_observations(router, "als-patient-view")
        serve(router, capability())
        report = await check_fhir_server(SERVER, PATIENT, "tok", Settings(_env_file=None), now=NOW)
    assert report.cards == []
    assert report.cards_error == (
        "the service would answer 412 on patient-view: observations (FHIR server error (HTTP 500))"
    )
    text = format_report(report)
    assert "Cards on patient-view: not computed: the service would answer 412" in text
    assert "fhirServer" not in text  # the server was given: never "the request has no fhirServer"


async def test_a_patient_that_is_not_on_the_server_is_not_found_not_empty() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{SERVER}/Patient/someone-else").mock(return_value=httpx.Response(404))
        serve(router, capability())
        report = await check_fhir_server(SERVER, "someone-else", None, Settings(_env_file=None), now=NOW)
    [patient] = [q for q in report.queries if q.key == "patient"]
    assert patient.outcome == "failed"
    assert "not found (HTTP 404)" in patient.reason and "--patient" in patient.hint
    assert not report.ok and report.cards_error is not None and "patient (not found" in report.cards_error
    text = format_report(report)
    assert "FAILED  patient: not found (HTTP 404): the server has no Patient with this id" in text
    assert "empty   patient" not in text
