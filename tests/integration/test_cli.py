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
