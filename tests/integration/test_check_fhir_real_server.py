"""`als-cds check-fhir` against a real FHIR server (Medplum, loaded with the fixture patients)."""

from __future__ import annotations

from datetime import UTC, datetime

from cds_service.check_fhir import check_fhir_server
from cds_service.settings import Settings
from tests.cards_shown import shown_rules
from tests.integration.conftest import FhirTestServer

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PATIENT = "als-riluzole-lft-overdue"


async def test_every_query_succeeds_and_the_patients_cards_are_those_of_the_service(
    fhir: FhirTestServer,
) -> None:
    report = await check_fhir_server(
        fhir.base(PATIENT), PATIENT, fhir.token, Settings(_env_file=None), now=NOW
    )
    assert report.ok, report
    assert report.fhir_version and report.fhir_version.startswith("4.")
    assert {q.outcome for q in report.queries} <= {"ok", "empty"}
    outcomes = {q.key: q.outcome for q in report.queries}
    assert outcomes["patient"] == outcomes["conditions"] == outcomes["medications"] == "ok"
    assert outcomes["observation-history"] == "ok"  # the 2025 ALT, outside the recent window
    assert shown_rules({"cards": report.cards}) == [
        "riluzole-lft-due",
        "care-review-digest",  # the reminders as one card (issue 12), then its items
        "respiratory-assessment-due",
        "mdt-review-overdue",
        "advance-care-planning",
    ]


async def test_a_wrong_token_is_reported_per_query_with_the_scope_to_grant(fhir: FhirTestServer) -> None:
    report = await check_fhir_server(
        fhir.base(PATIENT), PATIENT, "not-the-token", Settings(_env_file=None), now=NOW
    )
    assert not report.ok
    failed = [q for q in report.queries if q.outcome == "failed"]
    assert failed and all("HTTP 401" in q.reason and "read access" in q.hint for q in failed)
    assert report.cards == [] and report.cards_error is not None
