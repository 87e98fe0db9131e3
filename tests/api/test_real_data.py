"""Real EHR data is not quite valid R4: each deviation seen in real clients, and the card it must give.

Each case starts from a bundled patient whose card is known, bends one field the way a real sender
does (the CDS Hooks sandbox, EHR feeds without time zones, labs that report text), and checks the
answer through the HTTP API: the card a clinician must see, never a silent "All clear".
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from cds_service import wire
from cds_service.app import create_app
from cds_service.bundles import request_from_bundle
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.cards_shown import shown_rules
from tests.support import NOW, hook_request, patient_bundle

SERVICES = {s.hook: s for s in build_services().values()}
SERVER = "https://ehr.example.org/fhir"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'als-cds.db'}",
        auth_required=False,
        fhir_budget_seconds=2.0,
        **overrides,
    )


@pytest.fixture(params=["read whole", "read entry by entry"])
def api(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """Each case twice: as a typical body (decoded in one pass) and as a large one (each prefetch
    resource kept in its bytes until read, wire.py): the deviations must be read the same way."""
    if request.param == "read entry by entry":
        monkeypatch.setattr(wire, "ALWAYS_WHOLE_BYTES", 0)
        monkeypatch.setattr(wire, "WHOLE_BODY_BYTES", 0)
    with TestClient(create_app(_settings(tmp_path), clock=lambda: NOW), raise_server_exceptions=False) as c:
        yield c


def request_for(fixture: str, hook: str = "patient-view") -> dict[str, Any]:
    keys = list(SERVICES[hook].prefetch(Settings(_env_file=None), NOW.date()))
    return request_from_bundle(patient_bundle(fixture), hook, keys)


def cards(api: TestClient, request: dict[str, Any]) -> list[dict[str, Any]]:
    response = api.post(f"/cds-services/{SERVICES[request['hook']].id}", json=request)
    assert response.status_code == 200, response.text
    return response.json()["cards"]


def card(found: list[dict[str, Any]], rule_id: str) -> dict[str, Any]:
    # A reminder may be an item of the care review digest (issue 12): then the digest shows it.
    matching = [c for c in found if c["source"]["topic"]["code"] == rule_id] or [
        c for c in found if rule_id in shown_rules({"cards": [c]})
    ]
    assert matching, f"no {rule_id} card among {[c['source']['topic']['code'] for c in found]}"
    return matching[0]


def resources(request: dict[str, Any], rtype: str) -> Iterator[dict[str, Any]]:
    for value in request["prefetch"].values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for entry in value.get("entry", []):
                if entry["resource"]["resourceType"] == rtype:
                    yield entry["resource"]


def latest_alt(request: dict[str, Any]) -> dict[str, Any]:
    alts = [r for r in resources(request, "Observation") if r["code"]["coding"][0]["code"] == "1742-6"]
    return max(alts, key=lambda r: r["effectiveDateTime"])


# -- the CDS Hooks sandbox's Rx View and Rx Sign (captured bodies, fhir_fixtures/requests/) ------


@pytest.mark.parametrize("fixture", ["sandbox-rx-view-order-select", "sandbox-rx-sign-order-sign"])
def test_the_sandbox_riluzole_order_with_liver_disease_gets_the_critical_card(
    api: TestClient, fixture: str
) -> None:
    """Category as one object, dose `1 {pill}`, date-only authoredOn, a draftOrders Bundle without type."""
    request = hook_request(fixture)
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert isinstance(order["category"], dict) and "type" not in request["context"]["draftOrders"]
    liver = card(cards(api, request), "riluzole-order-liver")
    assert liver["indicator"] == "critical"


def test_an_update_suggestion_for_a_sandbox_order_sends_category_back_as_a_list(api: TestClient) -> None:
    request = hook_request("sandbox-rx-view-order-select")
    for found in cards(api, request):
        for suggestion in found.get("suggestions", []):
            for action in suggestion.get("actions", []):
                resource = action.get("resource")
                if (
                    resource
                    and resource.get("resourceType") == "MedicationRequest"
                    and "category" in resource
                ):
                    assert isinstance(resource["category"], list)


# -- the ALS diagnosis itself ----------------------------------------------------------------


def test_an_als_diagnosis_whose_code_cannot_be_read_gets_a_card_saying_the_checks_may_not_have_run(
    api: TestClient,
) -> None:
    request = request_for("als-riluzole-lft-overdue")
    for condition in resources(request, "Condition"):
        condition["code"] = {"coding": "86044005"}  # a bare string where R4 wants a list of Codings
    found = cards(api, request)
    assert [c["source"]["topic"]["code"] for c in found] == ["diagnosis-unreadable"]
    assert "could not be read" in found[0]["summary"]


def test_an_als_diagnosis_whose_status_cannot_be_read_gates_in_and_every_card_says_so(
    api: TestClient,
) -> None:
    request = request_for("als-riluzole-lft-overdue")
    for condition in resources(request, "Condition"):
        condition["clinicalStatus"] = 1  # neither a CodeableConcept nor text
    found = cards(api, request)
    assert card(found, "riluzole-lft-due")
    for each in found:
        assert "the MND diagnosis record's clinical status (taken as active)" in each["detail"]


def test_a_readable_als_diagnosis_beside_an_unreadable_condition_gets_no_unreadable_card(
    api: TestClient,
) -> None:
    request = request_for("als-riluzole-lft-overdue")
    bundle = request["prefetch"]["conditions"]
    other = copy.deepcopy(bundle["entry"][0]["resource"])
    other["id"] = "unreadable-1"
    other["code"] = {"coding": 12}
    bundle["entry"].append({"resource": other})
    found = cards(api, request)
    assert "diagnosis-unreadable" not in [c["source"]["topic"]["code"] for c in found]
    assert all("diagnosis record's" not in c["detail"] for c in found)


def test_a_breathing_result_whose_date_cannot_be_read_is_named_on_the_assessment_due_card(
    api: TestClient,
) -> None:
    request = request_for("respiratory-assessment-overdue")
    for observation in resources(request, "Observation"):
        if observation["id"] == "fvc-r1-1":
            observation["effectiveDateTime"] = "last Tuesday"
    detail = card(cards(api, request), "respiratory-assessment-due")["detail"]
    assert "Data that could not be read: 1 respiratory result(s) had a date or value" in detail
    assert "last Tuesday" not in detail


# -- dates without a zone, and clocks a little ahead -----------------------------------------


def test_an_als_diagnosis_whose_onset_has_no_time_zone_still_gates_in(api: TestClient) -> None:
    request = request_for("als-riluzole-lft-overdue")
    for condition in resources(request, "Condition"):
        condition["onsetDateTime"] = "2024-03-01T10:30:00"
    assert card(cards(api, request), "riluzole-lft-due")


def test_an_alt_at_8_times_uln_with_a_local_time_and_no_zone_gets_the_stop_card(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    latest_alt(request)["effectiveDateTime"] = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
    stop = card(cards(api, request), "riluzole-alt-raised")
    assert stop["indicator"] == "critical" and stop["summary"].startswith("Stop riluzole")


def test_a_result_an_hour_ahead_of_the_clock_counts(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    latest_alt(request)["effectiveDateTime"] = (NOW + timedelta(hours=1)).isoformat()
    assert card(cards(api, request), "riluzole-alt-raised")["indicator"] == "critical"


def test_a_result_a_month_ahead_is_not_trusted_as_recent(api: TestClient) -> None:
    request = request_for("als-riluzole-lft-overdue")
    latest_alt(request)["effectiveDateTime"] = (NOW + timedelta(days=30)).isoformat()
    due = card(cards(api, request), "riluzole-lft-due")
    assert "could not be read" in due["detail"]


# -- values and ranges as labs send them ------------------------------------------------------


def test_a_reference_range_given_only_as_text_is_the_uln(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    alt = latest_alt(request)
    alt["valueQuantity"] = {"value": 200, "unit": "U/L", "system": "http://unitsofmeasure.org", "code": "U/L"}
    alt["referenceRange"] = [{"text": "7-56"}]
    raised = card(cards(api, request), "riluzole-alt-raised")
    # 200 / 56 = 3.57: 'measure more often'; the default ULN (33 U/L, male) would have said 6.06, 'stop'.
    assert raised["indicator"] == "warning" and "3.5 × ULN" in raised["summary"]
    assert "ULN from the lab's reference range" in raised["detail"]


def test_a_value_string_over_1000_flagged_hh_is_raised(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    alt = latest_alt(request)
    alt.pop("valueQuantity", None)
    alt["valueString"] = ">1000"
    alt["referenceRange"] = [{"text": "7-56"}]
    alt["interpretation"] = [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "HH"}
            ]
        }
    ]
    flagged = card(cards(api, request), "riluzole-alt-raised")
    assert flagged["indicator"] == "critical"
    assert "flagged HH" in flagged["summary"]


def test_a_value_string_over_1000_with_a_unit_in_its_range_is_read_as_at_least_1000(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    alt = latest_alt(request)
    alt.pop("valueQuantity", None)
    alt["valueString"] = ">1000"
    alt["referenceRange"] = [{"high": {"value": 56, "unit": "U/L"}}]
    stop = card(cards(api, request), "riluzole-alt-raised")
    assert stop["indicator"] == "critical" and "17.8 × ULN" in stop["summary"]


def test_a_number_sent_as_text_is_a_number(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    latest_alt(request)["valueQuantity"]["value"] = "400"
    assert card(cards(api, request), "riluzole-alt-raised")["indicator"] == "critical"


# -- medications behind references ------------------------------------------------------------


def _riluzole_by_reference(request: dict[str, Any]) -> dict[str, Any]:
    [riluzole] = [r for r in resources(request, "MedicationRequest") if r["status"] == "active"]
    medication = {
        "resourceType": "Medication",
        "id": "rilu-50",
        "code": riluzole.pop("medicationCodeableConcept"),
    }
    riluzole["medicationReference"] = {"reference": "Medication/rilu-50"}
    return medication


def test_a_medication_only_on_the_fhir_server_is_read_and_riluzole_seen(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    medication = _riluzole_by_reference(request)
    request["fhirServer"] = SERVER
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{SERVER}/Medication/rilu-50").mock(return_value=httpx.Response(200, json=medication))
        found = cards(api, request)
    assert card(found, "riluzole-alt-raised")["indicator"] == "critical"


def test_a_medication_included_in_the_prefetch_bundle_needs_no_fetch(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    medication = _riluzole_by_reference(request)
    request["prefetch"]["medications"]["entry"].append(
        {"resource": medication, "search": {"mode": "include"}}
    )
    with respx.mock(assert_all_called=False) as mock:  # any FHIR call would fail the test
        found = cards(api, request)
        assert not mock.calls
    assert card(found, "riluzole-alt-raised")["indicator"] == "critical"


def test_a_contained_medication_is_read(api: TestClient) -> None:
    request = request_for("riluzole-alt-stop")
    medication = _riluzole_by_reference(request)
    [riluzole] = [r for r in resources(request, "MedicationRequest") if r["status"] == "active"]
    riluzole["contained"] = [{**medication, "id": "m"}]
    riluzole["medicationReference"] = {"reference": "#m"}
    assert card(cards(api, request), "riluzole-alt-raised")


# -- never a silent "All clear" ---------------------------------------------------------------


def test_a_draft_order_that_cannot_be_read_gets_a_card_saying_so(api: TestClient) -> None:
    request = request_for("riluzole-naive-eligible", "order-select")
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "Medication/not-anywhere"}
    found = cards(api, request)
    unread = card(found, "order-unreadable")
    assert unread["indicator"] == "warning"
    assert "not-anywhere" not in unread["detail"]  # general terms only: nothing the sender wrote


def test_repairs_and_drops_are_counted_in_the_call_log(
    api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    request = copy.deepcopy(hook_request("sandbox-rx-view-order-select"))
    with caplog.at_level("INFO", logger="cds_service"):
        cards(api, request)
    [line] = [r for r in caplog.records if r.getMessage() == "hook call"]
    assert line.ingest["repaired"]["MedicationRequest.category: one value where a list belongs"] == 1  # type: ignore[attr-defined]
