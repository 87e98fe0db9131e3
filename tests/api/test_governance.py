"""Governance per site: rules switched off by id, and the rule's id and card version on every card."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.cards import RULE_VERSION_EXTENSION, load_catalogue
from cds_service.catalogue_doc import render_catalogue
from cds_service.cli import main
from cds_service.settings import Settings
from tests.support import NOW, hook_request

OFF = ["advance-care-planning", "riluzole-lft-due"]


@pytest.fixture
def governed(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'als-cds.db'}",
        auth_required=False,
        disabled_rules=",".join(OFF),  # as the environment variable gives it
        digest_enabled=False,
    )
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        yield client


def test_a_switched_off_rule_gives_no_card(governed: TestClient) -> None:
    # The quickstart patient gets both rules' cards by default (tests/api/test_invocation.py).
    request = hook_request("patient-view-als-riluzole-lft-overdue")
    here = governed.post("/cds-services/als-patient-view", json=request).json()
    assert _rules(here) == {"respiratory-assessment-due", "mdt-review-overdue"}


def test_discovery_names_the_switched_off_rules_and_asks_only_for_what_the_others_read(
    governed: TestClient, client: TestClient
) -> None:
    catalogue = load_catalogue(Settings(_env_file=None).cards_dir)
    [view] = [s for s in governed.get("/cds-services").json()["services"] if s["id"] == "als-patient-view"]
    assert "Switched off at this site" in view["description"]
    for rule_id in OFF:
        assert catalogue[rule_id].title in view["description"]
    [select] = [s for s in governed.get("/cds-services").json()["services"] if s["id"] == "als-order-select"]
    assert "Switched off" not in select["description"]  # neither rule runs on order-select
    for service in client.get("/cds-services").json()["services"]:
        assert "Switched off" not in service["description"]


def test_an_unknown_rule_id_stops_the_command_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALS_CDS_DISABLED_RULES", "riluzole-lft-due,no-such-rule")
    assert main(["docs", "--output", "-"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ALS_CDS_DISABLED_RULES" in err and "no-such-rule" in err and "\n" not in err


def test_the_catalogue_marks_switched_off_rules_and_only_those() -> None:
    cards_dir = Settings(_env_file=None).cards_dir
    page = render_catalogue(cards_dir, OFF)
    assert page.count("**Switched off at this site**") == 2 * len(OFF)  # the table row and the section
    section = page.split("\n## advance-care-planning\n", 1)[1].split("\n## ", 1)[0]
    assert "**Switched off at this site**" in section
    assert "Switched off" not in render_catalogue(cards_dir)


def test_every_card_carries_its_rule_id_and_card_version_in_source_topic(client: TestClient) -> None:
    catalogue = load_catalogue(Settings(_env_file=None).cards_dir)
    body = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    ).json()
    assert body["cards"]
    for card in body["cards"]:
        topic = card["source"]["topic"]
        if topic["code"] in catalogue:
            assert topic["extension"] == {RULE_VERSION_EXTENSION: catalogue[topic["code"]].version}


def _rules(body: dict[str, Any]) -> set[str]:
    return {card["source"]["topic"]["code"] for card in body["cards"]}
