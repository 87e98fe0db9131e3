"""GET /metrics: what is counted, that no label carries patient data or a caller's free text, and
who may read it. In-process, one registry for the test session: each test compares a counter
before and after what it does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.faulty_fhir import FaultyFhirServer
from tests.support import NOW, hook_request

PATIENT = "als-riluzole-lft-overdue"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def failed_observations() -> float:
    """Observation fetches that failed: garbage is `incomplete`, or `too-costly` past the call's cap."""
    return sum(
        value("als_cds_fhir_fetch_failures_total", resource_type="Observation", reason=reason)
        for reason in ("incomplete", "too-costly")
    )


def exposition(client: TestClient, **headers: str) -> str:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_a_hook_call_counts_its_latency_its_cards_and_nothing_about_the_patient(client: TestClient) -> None:
    labels = {"endpoint": "hook", "service": "als-patient-view", "hook": "patient-view", "status": "200"}
    before = value("als_cds_request_duration_seconds_count", **labels)
    cards_before = value("als_cds_cards_total", rule_id="riluzole-lft-due", indicator="warning")

    response = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    )

    assert response.status_code == 200
    assert value("als_cds_request_duration_seconds_count", **labels) == before + 1
    assert value("als_cds_cards_total", rule_id="riluzole-lft-due", indicator="warning") == cards_before + 1
    text = exposition(client)
    for secret in (PATIENT, "Hartley", "1961-05-14", "opaque-test-access-token"):
        assert secret not in text


def test_a_hook_name_or_service_the_caller_made_up_is_counted_as_other(client: TestClient) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    request["hook"] = "made-up-hook-Hartley"
    client.post("/cds-services/als-patient-view", json=request)
    client.post("/cds-services/made-up-service-1961", json=request)

    # Names, labels and help texts, not the values: a `_created` timestamp such as
    # 1.7966195136419616e+09 holds "1961" by chance (a run of CI failed on exactly that).
    text = "\n".join(
        line if line.startswith("#") else line.rsplit(" ", 1)[0] for line in exposition(client).splitlines()
    )
    assert "made-up" not in text and "Hartley" not in text and "1961" not in text
    assert value(
        "als_cds_request_duration_seconds_count",
        endpoint="hook", service="als-patient-view", hook="other", status="400",
    ) >= 1  # fmt: skip


def test_repairs_and_drops_of_the_reader_are_counted_per_type_and_reason(client: TestClient) -> None:
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    conditions = request["prefetch"]["conditions"]["entry"]
    broken = copy.deepcopy(conditions[0]["resource"])
    broken["id"] = "broken-1"
    broken["code"]["coding"] = broken["code"]["coding"][0]  # one object where R4 wants a list
    conditions.append({"resource": broken})
    reason = "code.coding: one value where a list belongs"
    before = value(
        "als_cds_reader_resources_total", resource_type="Condition", outcome="repaired", reason=reason
    )

    assert client.post("/cds-services/als-patient-view", json=request).status_code == 200

    after = value(
        "als_cds_reader_resources_total", resource_type="Condition", outcome="repaired", reason=reason
    )
    assert after == before + 1


def test_feedback_is_counted_per_rule_and_outcome(client: TestClient) -> None:
    cards = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    ).json()["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "riluzole-lft-due")
    before = value("als_cds_feedback_total", rule_id="riluzole-lft-due", outcome="overridden")
    unknown = value("als_cds_feedback_total", rule_id="unknown", outcome="accepted")
    items = [
        {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": "not-applicable", "system": "urn:test"}},
            "outcomeTimestamp": "2026-11-22T12:00:00Z",
        },
        {
            "card": "never-issued",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "s-1"}],
            "outcomeTimestamp": "2026-11-22T12:00:00Z",
        },
    ]

    response = client.post("/cds-services/als-patient-view/feedback", json={"feedback": items})
    assert response.status_code == 200, response.text

    assert value("als_cds_feedback_total", rule_id="riluzole-lft-due", outcome="overridden") == before + 1
    assert value("als_cds_feedback_total", rule_id="unknown", outcome="accepted") == unknown + 1


def test_fhir_fetches_and_missing_prefetch_keys_are_counted_per_resource_type(client: TestClient) -> None:
    request = hook_request("patient-view-fetch-from-fhir-server")
    before = value("als_cds_fhir_fetch_duration_seconds_count", resource_type="Condition")
    missing = value("als_cds_prefetch_keys_missing_total", key="conditions", why="absent")
    failures = failed_observations()
    with FaultyFhirServer() as fhir:
        request["fhirServer"] = fhir.base("ok")
        assert client.post("/cds-services/als-patient-view", json=request).status_code == 200
        request["fhirServer"] = fhir.base("garbage")
        assert client.post("/cds-services/als-patient-view", json=request).status_code == 412

    assert value("als_cds_fhir_fetch_duration_seconds_count", resource_type="Condition") == before + 1
    assert value("als_cds_prefetch_keys_missing_total", key="conditions", why="absent") == missing + 2
    assert failed_observations() > failures
    assert "127.0.0.1" not in exposition(client)  # no origin, no URL


# ------------------------------------------------------------------------------------------------
# Who may read /metrics


@pytest.fixture
def authenticated(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    token = getattr(request, "param", None)
    clients = {"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks.json"}}
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'db'}",
        trusted_clients=clients,
        metrics_token=token,
    )
    with TestClient(create_app(settings, clock=lambda: NOW)) as test_client:
        yield test_client


def test_with_authentication_on_and_no_metrics_token_metrics_are_not_served(
    authenticated: TestClient,
) -> None:
    response = authenticated.get("/metrics")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("authenticated", ["scrape-token-4f1c"], indirect=True)
def test_with_a_metrics_token_only_a_scraper_presenting_it_reads_them(authenticated: TestClient) -> None:
    assert authenticated.get("/metrics").status_code == 401
    wrong = authenticated.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert "scrape-token" not in wrong.text
    text = exposition(authenticated, Authorization="Bearer scrape-token-4f1c")
    assert "als_cds_request_duration_seconds" in text


def test_jwt_rejections_are_counted_by_reason(authenticated: TestClient) -> None:
    before = value("als_cds_auth_rejections_total", reason="missing_token")
    response = authenticated.post("/cds-services/als-patient-view", json={})
    assert response.status_code == 401
    assert value("als_cds_auth_rejections_total", reason="missing_token") == before + 1


def test_the_grafana_dashboard_queries_only_metrics_the_service_exports(client: TestClient) -> None:
    import re

    from tests.support import ROOT

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "als-cds-dashboard.json").read_text())
    exported = {m.name for m in REGISTRY.collect()}
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"als_cds_[a-z_]+", target["expr"])
    }
    suffixes = ("_bucket", "_count", "_sum", "_total")
    bare = {next((n.removesuffix(s) for s in suffixes if n.endswith(s)), n) for n in queried}
    assert queried and bare <= exported, bare - exported
