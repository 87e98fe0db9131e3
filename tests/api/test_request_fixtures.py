"""Every bundled hook request gets exactly the cards `fhir_fixtures/requests/README.md` says it gets.

The README's table is the expectation file: a request added to the folder without a row, or a
change to the rules that changes what a bundled example shows, fails here until the table says so.
"""

from __future__ import annotations

import re

import pytest
import respx
from fastapi.testclient import TestClient

from tests.api.test_invocation import mock_fhir_server
from tests.cards_shown import shown_rules
from tests.support import FIXTURES, hook_request, patient_resources

REQUESTS = FIXTURES / "requests"
ROW = re.compile(r"^\| `(?P<file>[^`]+\.json)` \| `(?P<service>[^`]+)` \| (?P<cards>.+?) \|$", re.M)


def documented() -> dict[str, tuple[str, list[str]]]:
    """file name -> (service id, rule ids of its cards in order), from the README's table."""
    table = {}
    for row in ROW.finditer((REQUESTS / "README.md").read_text(encoding="utf-8")):
        cards = row["cards"].strip()
        table[row["file"]] = (row["service"], [] if cards == "none" else re.findall(r"`([^`]+)`", cards))
    return table


def test_every_request_in_the_folder_has_a_row_and_every_row_a_file() -> None:
    assert set(documented()) == {p.name for p in REQUESTS.glob("*.json")}


def test_the_order_examples_show_an_order_rule() -> None:
    for name, (_, rule_ids) in documented().items():
        if name.startswith(("order-", "sandbox-rx-")):
            assert any(rule.startswith("riluzole-order-") for rule in rule_ids), name


@pytest.mark.parametrize("name", sorted(documented()))
def test_a_bundled_request_gets_the_documented_cards(client: TestClient, name: str) -> None:
    service, expected = documented()[name]
    request = hook_request(name.removesuffix(".json"))
    with respx.mock(assert_all_called=False) as router:
        if "fhirServer" in request:
            patient = request["context"]["patientId"]
            mock_fhir_server(router, patient_resources(patient), base=request["fhirServer"])
        response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text
    assert shown_rules(response.json()) == expected
