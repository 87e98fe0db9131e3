"""Issued-card records written behind the answer (store/writer.py), over HTTP, on SQLite and PostgreSQL.

A write delay of ten minutes holds every record in the queue until something flushes it, so these tests
see exactly the moment the brief worries about: the EHR has its cards, their records are not in the
database yet, and feedback (or order-sign) arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.settings import Settings
from cds_service.store import Store
from tests.cards_shown import shown_rules
from tests.support import NOW, hook_request

VIEW = "/cds-services/als-patient-view"
QUICKSTART = "patient-view-als-riluzole-lft-overdue"
HELD_MS = 600_000  # ten minutes (the most allowed): nothing is written unless flushed


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'als-cds.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    yield opened
    opened.close()


def make(database_url: str, **settings: Any) -> TestClient:
    values = {"database_url": database_url, "auth_required": False} | settings
    return TestClient(create_app(Settings(_env_file=None, **values), clock=lambda: NOW))


def feedback_on(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "other"}},
                "outcomeTimestamp": "2026-11-22T12:01:00Z",
            }
        ]
    }


def test_feedback_on_a_card_whose_record_is_still_queued_is_linked_to_its_rule(
    database_url: str, store: Store
) -> None:
    with make(database_url, issued_write_delay_ms=HELD_MS) as client:
        cards = client.post(VIEW, json=hook_request(QUICKSTART)).json()["cards"]
        uuids = {card["uuid"] for card in cards}
        assert store.issued_card_uuids(uuids) == set(), "the answer went before its records"
        answer = client.post(f"{VIEW}/feedback", json=feedback_on(cards[0])).json()
        assert answer == {"stored": 1, "duplicates": 0, "unknownCards": 0}
        [row] = store.feedback_rows()
        assert row["rule_id"] == cards[0]["source"]["topic"]["code"]
        assert row["unknown_card"] is False


def test_order_sign_sees_the_order_select_cards_still_queued(database_url: str) -> None:
    with make(database_url, issued_write_delay_ms=HELD_MS) as client:
        select_body = client.post(
            "/cds-services/als-order-select", json=hook_request("order-select-riluzole")
        )
        assert shown_rules(select_body.json()) == ["riluzole-order-dose", "riluzole-order-monitoring"]
        sign = client.post("/cds-services/als-order-sign", json=hook_request("order-sign-riluzole"))
        assert shown_rules(sign.json()) == []


def test_a_graceful_shutdown_writes_the_records_still_queued(database_url: str, store: Store) -> None:
    with make(database_url, issued_write_delay_ms=HELD_MS) as client:
        cards = client.post(VIEW, json=hook_request(QUICKSTART)).json()["cards"]
        uuids = {card["uuid"] for card in cards}
        assert store.issued_card_uuids(uuids) == set()
    # The app's lifespan has ended, as on SIGTERM once the calls in flight are answered.
    assert store.issued_card_uuids(uuids) == uuids
    assert {store.issued_card_rule(card["uuid"]) for card in cards} == {
        card["source"]["topic"]["code"] for card in cards
    }


def test_feedback_waits_for_the_record_of_a_card_another_worker_answered(
    database_url: str, store: Store
) -> None:
    # Two workers on one database: one answers and writes its records a second later, the other
    # gets the feedback at once and, finding the card unknown, waits up to its own write delay
    # (four seconds here) for the record. Without that wait the item would be stored unknown.
    with (
        make(database_url, issued_write_delay_ms=1000) as answering,
        make(database_url, issued_write_delay_ms=4000) as receiving,
    ):
        cards = answering.post(VIEW, json=hook_request(QUICKSTART)).json()["cards"]
        answer = receiving.post(f"{VIEW}/feedback", json=feedback_on(cards[0])).json()
    assert answer == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    assert store.feedback_rows()[0]["rule_id"] == cards[0]["source"]["topic"]["code"]


def test_beyond_the_queue_bound_the_newest_records_are_dropped_counted_and_logged_without_patient_data(
    database_url: str, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    request = hook_request(QUICKSTART)
    patient = request["context"]["patientId"]
    with make(database_url, issued_write_delay_ms=HELD_MS, issued_queue_calls=1) as client:
        before = _dropped_metric(client)
        # One call queues two entries (its cards, and issue 12's items and marks): with room for
        # one, the first call's cards are kept and everything after is dropped.
        with caplog.at_level(logging.WARNING, logger="cds_service.store.writer"):
            kept = client.post(VIEW, json=request).json()["cards"]
            dropped = client.post(VIEW, json=request).json()["cards"]
        assert kept and dropped, "the cards go out whatever happens to their records"
        assert _dropped_metric(client) > before
        lost = client.post(f"{VIEW}/feedback", json=feedback_on(dropped[0])).json()
        linked = client.post(f"{VIEW}/feedback", json=feedback_on(kept[0])).json()
    assert lost == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    assert linked == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    assert store.issued_card_uuids(card["uuid"] for card in kept + dropped) == {c["uuid"] for c in kept}
    lines = [r for r in caplog.records if r.getMessage() == "issued-card records dropped"]
    assert lines and {getattr(r, "reason", None) for r in lines} == {"queue-full"}
    for record in lines:
        assert patient not in str(vars(record))
        assert not any(card["uuid"] in str(vars(record)) for card in dropped)


def _dropped_metric(client: TestClient) -> float:
    """als_cds_issued_records_dropped_total{reason="queue-full"} (0 before the first drop)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('als_cds_issued_records_dropped_total{reason="queue-full"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
