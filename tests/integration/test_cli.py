"""The command line: `als-cds evaluate` and `als-cds docs`."""

from __future__ import annotations

import json

import pytest

from cds_service.catalogue_doc import render_catalogue
from cds_service.cli import main
from cds_service.settings import Settings
from tests.support import FIXTURES, ROOT

NOW = "2026-11-22T12:00:00+00:00"


def test_committed_rule_catalogue_page_matches_the_rules() -> None:
    committed = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert committed == render_catalogue(Settings(_env_file=None).cards_dir), (
        "docs/rules.md is out of date: run `als-cds docs`"
    )


def test_evaluate_a_patient_bundle_prints_its_cards(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", str(FIXTURES / "patients" / "als-riluzole-lft-overdue.json"), "--now", NOW])
    out = capsys.readouterr().out
    assert code == 0
    assert "als-patient-view (patient-view) at 2026-11-22" in out
    assert "rule: riluzole-lft-due" in out


def test_evaluate_a_hook_request_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "evaluate",
            str(FIXTURES / "requests" / "patient-view-no-als-on-riluzole.json"),
            "--now",
            NOW,
            "--json",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"cards": []}


def test_evaluate_reports_what_the_service_would_refuse(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    request = json.loads((FIXTURES / "requests" / "patient-view-als-riluzole-lft-overdue.json").read_text())
    del request["prefetch"]
    path = tmp_path / "no-prefetch.json"
    path.write_text(json.dumps(request))
    assert main(["evaluate", str(path), "--now", NOW]) == 1
    assert "HTTP 412" in capsys.readouterr().err


def test_evaluate_refuses_a_file_that_is_not_a_request_or_bundle(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"resourceType": "Patient"}')
    assert main(["evaluate", str(path)]) == 2
    assert "neither" in capsys.readouterr().err


def test_evaluate_strict_lists_each_deviation_with_what_was_done_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CDS Hooks sandbox's Rx View body: category sent as one object."""
    path = FIXTURES / "requests" / "sandbox-rx-view-order-select.json"
    code = main(["evaluate", str(path), "--now", NOW, "--strict"])
    out = capsys.readouterr().out
    assert code == 1
    assert "rule: riluzole-order-liver" in out  # the cards are still there
    assert "repaired         MedicationRequest/request-123 category: one value where a list belongs" in out
    assert "not valid R4     MedicationRequest/request-123 category: Input should be a valid list" in out


def test_evaluate_strict_on_clean_data_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "requests" / "patient-view-als-riluzole-lft-overdue.json"
    assert main(["evaluate", str(path), "--now", NOW, "--strict"]) == 0
    clean = "Strict check: every resource is valid R4, and the reader repaired nothing."
    assert clean in capsys.readouterr().out


def test_evaluate_strict_with_json_keeps_stdout_the_response(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "requests" / "sandbox-rx-view-order-select.json"
    assert main(["evaluate", str(path), "--now", NOW, "--strict", "--json"]) == 1
    captured = capsys.readouterr()
    assert "riluzole-order-liver" in [c["source"]["topic"]["code"] for c in json.loads(captured.out)["cards"]]
    assert "Strict check:" in captured.err
