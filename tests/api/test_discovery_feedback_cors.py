"""Discovery, feedback, CORS and health endpoints."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import SPEC_ALLOWED_TOKENS, hook_request
from tests.unit.test_cards import no_empty_values

# -- discovery --------------------------------------------------------------------------------


def test_discovery_lists_the_three_services(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.json()
    assert no_empty_values(body) == []
    services = {s["id"]: s for s in body["services"]}
    assert {sid: s["hook"] for sid, s in services.items()} == {
        "als-patient-view": "patient-view",
        "als-order-select": "order-select",
        "als-order-sign": "order-sign",
    }
    for service in services.values():
        assert service["title"] and service["description"]
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_discovery_prefetch_uses_only_tokens_the_spec_allows(client: TestClient) -> None:
    for service in client.get("/cds-services").json()["services"]:
        for template in service["prefetch"].values():
            tokens = set(re.findall(r"\{\{\s*(.*?)\s*\}\}", template))
            assert tokens <= SPEC_ALLOWED_TOKENS, template


def test_each_service_asks_for_what_its_rules_read(client: TestClient) -> None:
    from cds_service.prefetch import TYPE_BY_KEY
    from cds_service.services import build_services

    definitions = build_services()
    for service in client.get("/cds-services").json()["services"]:
        types = {TYPE_BY_KEY[key] for key in service["prefetch"]}
        assert types == {"Patient", *definitions[service["id"]].interest.by_type}, service["id"]
    [pv] = [s for s in client.get("/cds-services").json()["services"] if s["id"] == "als-patient-view"]
    obs = pv["prefetch"]["observations"]
    assert "http://loinc.org|29463-7" in obs and "_sort=-date" in obs  # body weight: recent results
    assert re.search(r"date=ge\d{4}-\d{2}-01", obs)  # a literal window: 2.0 has no date tokens
    lifelong = pv["prefetch"]["observation-history"]
    assert "http://loinc.org|1742-6" in lifelong and "date=" not in lifelong  # the last ALT, however old


def test_discovery_tolerates_a_trailing_slash(client: TestClient) -> None:
    assert client.get("/cds-services/").json() == client.get("/cds-services").json()


# -- feedback ---------------------------------------------------------------------------------


def issue_card(client: TestClient) -> dict[str, Any]:
    """Have the service issue the riluzole card (it has a suggestion) and return it."""
    body = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    ).json()
    return next(c for c in body["cards"] if c["source"]["topic"]["code"] == "riluzole-lft-due")


def accepted(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-11-22T12:05:00Z",
    }


def overridden(card_uuid: str) -> dict[str, Any]:
    return {
        "card": card_uuid,
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "alt-done-elsewhere"}, "userComment": "done at the GP"},
        "outcomeTimestamp": "2026-11-22T12:06:00Z",
    }


def test_feedback_is_stored_and_linked_to_the_rule(store_client: TestClient) -> None:
    card = issue_card(store_client)
    response = store_client.post(
        "/cds-services/als-patient-view/feedback", json={"feedback": [accepted(card)]}
    )
    assert response.status_code == 200
    assert response.json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    [row] = store_client.app.state.als.store.feedback_rows("als-patient-view")  # type: ignore[attr-defined]
    assert row["rule_id"] == "riluzole-lft-due" and row["outcome"] == "accepted"


def test_repeated_feedback_is_not_a_second_row(store_client: TestClient) -> None:
    card = issue_card(store_client)
    body = {"feedback": [overridden(card["uuid"])]}
    first = store_client.post("/cds-services/als-patient-view/feedback", json=body).json()
    again = store_client.post("/cds-services/als-patient-view/feedback", json=body).json()
    assert first["stored"] == 1 and again == {"stored": 0, "duplicates": 1, "unknownCards": 0}
    assert len(store_client.app.state.als.store.feedback_rows()) == 1  # type: ignore[attr-defined]


def test_feedback_for_an_unknown_card_is_stored_and_flagged(store_client: TestClient) -> None:
    response = store_client.post(
        "/cds-services/als-patient-view/feedback", json={"feedback": [overridden("never-issued")]}
    )
    assert response.status_code == 200 and response.json()["unknownCards"] == 1
    [row] = store_client.app.state.als.store.feedback_rows()  # type: ignore[attr-defined]
    assert row["unknown_card"] is True and row["rule_id"] is None


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"feedback": []}, "feedback"),
        ({}, "feedback"),
        ({"feedback": [{"card": "x", "outcomeTimestamp": "2026-11-22T12:00:00Z"}]}, "feedback.0.outcome"),
        (
            {"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": "2026-11-22T12:00:00Z"}]},
            "feedback.0.outcome",
        ),
        (
            {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-22T12:00:00Z"}]},
            "feedback.0",
        ),
        (
            {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
            "feedback.0.outcomeTimestamp",
        ),
    ],
)
def test_malformed_feedback_is_400_naming_the_field(store_client: TestClient, body: Any, where: str) -> None:
    response = store_client.post("/cds-services/als-patient-view/feedback", json=body)
    assert response.status_code == 400
    expressions = [i.get("expression", [""])[0] for i in response.json()["issue"]]
    assert where in expressions, expressions
    assert store_client.app.state.als.store.feedback_rows() == []  # type: ignore[attr-defined]


def test_feedback_to_an_unknown_service_is_404(store_client: TestClient) -> None:
    response = store_client.post("/cds-services/nope/feedback", json={"feedback": [overridden("x")]})
    assert response.status_code == 404


def test_oversized_feedback_batch_is_400_and_nothing_is_stored(store_client: TestClient) -> None:
    from cds_service.hooks import MAX_FEEDBACK_ITEMS

    items = [overridden(f"card-{i}") for i in range(MAX_FEEDBACK_ITEMS + 1)]
    response = store_client.post("/cds-services/als-patient-view/feedback", json={"feedback": items})
    assert response.status_code == 400
    assert store_client.app.state.als.store.feedback_rows() == []  # type: ignore[attr-defined]


# -- CORS and health --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/cds-services"),
        ("POST", "/cds-services/als-patient-view"),
        ("POST", "/cds-services/als-patient-view/feedback"),
    ],
)
def test_preflight_needs_no_token_and_allows_the_sandbox(client: TestClient, method: str, path: str) -> None:
    response = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_cors_headers_on_the_service_call_itself(client: TestClient) -> None:
    response = client.post(
        "/cds-services/als-patient-view",
        json=hook_request("patient-view-als-riluzole-lft-overdue"),
        headers={"Origin": "https://sandbox.cds-hooks.org"},
    )
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"


def test_other_origins_are_not_allowed(client: TestClient) -> None:
    response = client.get("/cds-services", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in response.headers


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_readiness_fails_when_the_database_is_gone(client: TestClient) -> None:
    client.app.state.als.store.close()  # type: ignore[attr-defined]
    from cds_service.store import Store

    client.app.state.als.store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 503


def test_each_service_states_the_read_scopes_its_prefetch_needs(client: TestClient) -> None:
    from cds_service.prefetch import TYPE_BY_KEY

    for service in client.get("/cds-services").json()["services"]:
        requirements = service["usageRequirements"]
        for key in service["prefetch"]:
            assert f"patient/{TYPE_BY_KEY[key]}.read" in requirements, (service["id"], key)
