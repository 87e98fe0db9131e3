"""Every fixture patient, through the API on every hook, gets exactly the cards its area expects.

`fhir_fixtures/expected/<module>.json` names, per fixture patient and hook, the rule ids of that
rules module expected at tests.support.NOW. Cards of other modules are not compared there: each
area states its own expectations, and every area's file is checked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service import rules as rules_package
from cds_service.bundles import request_from_bundle, split_bundle
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.cards_shown import fired_rules
from tests.support import FIXTURES, NOW

EXPECTED = sorted((FIXTURES / "expected").glob("*.json"))
SERVICES = {s.hook: s for s in build_services().values()}


def _module_rule_ids(module: str) -> set[str]:
    area = getattr(rules_package, module)
    return {rule.id for rule in area.RULES}


def _cases() -> list[Any]:
    cases = []
    for path in EXPECTED:
        for fixture, hooks in json.loads(path.read_text()).items():
            for hook, rule_ids in hooks.items():
                cases.append(
                    pytest.param(
                        path.stem, fixture, hook, sorted(rule_ids), id=f"{path.stem}:{fixture}:{hook}"
                    )
                )
    return cases


def test_every_expectation_file_is_named_for_a_rules_module() -> None:
    for path in EXPECTED:
        assert _module_rule_ids(path.stem), f"{path.name}: no rules module '{path.stem}' with rules"


def test_every_fixture_patient_has_expectations_somewhere() -> None:
    named = {fixture for path in EXPECTED for fixture in json.loads(path.read_text())}
    patients = {p.stem for p in (FIXTURES / "patients").glob("*.json")}
    assert patients <= named, f"fixture patients without expectations: {sorted(patients - named)}"


@pytest.mark.parametrize(("module", "fixture", "hook", "expected"), _cases())
def test_fixture_patient_gets_exactly_the_expected_cards(
    client: TestClient, module: str, fixture: str, hook: str, expected: list[str]
) -> None:
    bundle = json.loads((FIXTURES / "patients" / f"{fixture}.json").read_text())
    keys = list(SERVICES[hook].prefetch(Settings(_env_file=None), NOW.date()))
    if hook != "patient-view" and not split_bundle(bundle)[1]:
        assert expected == [], f"{fixture} has no draft orders, so no {hook} card can be expected"
        return
    request = request_from_bundle(bundle, hook, keys)
    response = client.post(f"/cds-services/{SERVICES[hook].id}", json=request)
    assert response.status_code == 200, response.text
    # The rules that fired: shown as cards of their own or as items of the care review digest.
    ids = fired_rules(response.json())
    assert sorted(i for i in ids if i in _module_rule_ids(module)) == expected


def test_expectation_files_name_only_rules_of_their_module() -> None:
    for path in EXPECTED:
        allowed = _module_rule_ids(path.stem)
        for fixture, hooks in json.loads(path.read_text()).items():
            for hook, rule_ids in hooks.items():
                assert set(rule_ids) <= allowed, f"{path.name} {fixture} {hook}: {set(rule_ids) - allowed}"


def test_every_rule_fires_for_some_fixture_and_stays_silent_for_another() -> None:
    """The catalogue's proof obligation: each rule has a fixture where it fires and one where it must not."""
    from cds_service.rules import CATALOGUE

    fires: dict[str, int] = {}
    silent: dict[str, int] = {}
    for path in EXPECTED:
        module_rules = {rule.id: rule for rule in getattr(rules_package, path.stem).RULES}
        for hooks in json.loads(path.read_text()).values():
            for rule_id, rule in module_rules.items():
                for hook in rule.hooks:
                    if hook not in hooks:
                        continue
                    if rule_id in hooks[hook]:
                        fires[rule_id] = fires.get(rule_id, 0) + 1
                    else:
                        silent[rule_id] = silent.get(rule_id, 0) + 1
    for rule in CATALOGUE:
        assert fires.get(rule.id), f"{rule.id}: no fixture patient where it fires"
        assert silent.get(rule.id), f"{rule.id}: no fixture patient where it must stay silent"


def _fixture_hooks() -> list[Any]:
    cases = []
    for path in sorted((FIXTURES / "patients").glob("*.json")):
        bundle = json.loads(path.read_text())
        for hook in SERVICES:
            if hook == "patient-view" or split_bundle(bundle)[1]:
                cases.append(pytest.param(path.stem, hook, id=f"{path.stem}:{hook}"))
    return cases


@pytest.mark.parametrize(("fixture", "hook"), _fixture_hooks())
def test_a_body_read_entry_by_entry_gets_the_same_cards_as_one_read_whole(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, fixture: str, hook: str
) -> None:
    """Bodies over 2 MB keep each prefetch resource in its bytes until the reader reaches it
    (wire.py, reader/lazy.py). Every fixture is sent both ways; the cards must be identical."""
    from cds_service import wire

    bundle = json.loads((FIXTURES / "patients" / f"{fixture}.json").read_text())
    keys = list(SERVICES[hook].prefetch(Settings(_env_file=None), NOW.date()))
    request = request_from_bundle(bundle, hook, keys)

    def answer() -> list[tuple[str, str, str, str]]:
        response = client.post(f"/cds-services/{SERVICES[hook].id}", json=request)
        assert response.status_code == 200, response.text
        return [
            (c["source"]["topic"]["code"], c["indicator"], c["summary"], c["detail"])
            for c in response.json()["cards"]
        ]

    whole = answer()
    monkeypatch.setattr(wire, "ALWAYS_WHOLE_BYTES", 0)
    monkeypatch.setattr(wire, "WHOLE_BODY_BYTES", 0)
    assert answer() == whole
