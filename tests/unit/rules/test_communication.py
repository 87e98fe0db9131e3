"""Communication: SLT and AAC assessment when bulbar involvement is recorded (NICE NG42 1.11).

Every test goes through `evaluate`, so the MND gate is exercised. The rule reads no medications and
does not differ between the 'nice' and 'us' profiles (tested once).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.rules.communication import COMMUNICATION_SLT_AAC, communication_slt_aac
from cds_service.settings import Settings
from tests.factories import (
    ICD10CM,
    LOINC,
    SNOMED,
    als,
    coding,
    concept,
    condition,
    days_ago,
    device,
    document,
    encounter,
    observation,
    patient,
    procedure,
    snomed,
)
from tests.support import FIXTURES, patient_resources, record_from

PID = "p1"
CATALOG = cards.load_catalogue(Settings().cards_dir)
RULE_ID = "communication-slt-aac"
NO_SLT = (
    "No speech and language therapy assessment, therapy or referral, SLT consult note, AAC assessment or "
    "communication aid in the data received."
)


def run(*resources: dict[str, Any], config: RuleConfig | None = None) -> list[Finding]:
    record = record_from([patient("female"), *resources], patient_id=PID)
    return evaluate([COMMUNICATION_SLT_AAC], record, config or RuleConfig())


def problem(*codings: dict[str, str], text: str | None = None, **kw: Any) -> dict[str, Any]:
    return condition(concept(*codings, text=text), onset=days_ago(120), **kw)


def dysarthria(**kw: Any) -> dict[str, Any]:
    return problem(coding(SNOMED, "8011004", "Dysarthria (finding)"), text="Dysarthria", **kw)


# -- fires ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codings",
    [
        (coding(SNOMED, "8011004"),),
        (coding(ICD10CM, "R47.1"),),
        (coding(ICD10CM, "R471"),),
        (coding(SNOMED, "54304004"),),  # progressive bulbar palsy
        (coding(SNOMED, "249892007"),),  # progressive pseudobulbar palsy
        (coding(SNOMED, "40739000"),),  # dysphagia
        (coding(ICD10CM, "R13.12"),),  # oropharyngeal dysphagia
    ],
    ids=["dysarthria", "r47.1", "r471-undotted", "pbp-snomed", "pseudobulbar", "dysphagia", "r13.12"],
)
def test_coded_bulbar_involvement_without_slt_fires(codings: tuple[dict[str, str], ...]) -> None:
    [finding] = run(als(), problem(*codings))
    assert finding.fields == {}
    assert finding.evidence[-1] == NO_SLT
    assert "(recognised by its wording" not in finding.evidence[0]
    assert finding.bindings == {"patient_reference": f"Patient/{PID}"}


def test_progressive_bulbar_palsy_as_the_diagnosis_is_itself_bulbar_involvement() -> None:
    [finding] = run(condition(concept(coding(ICD10CM, "G12.22"), text="Progressive bulbar palsy"), rid="dx"))
    assert finding.evidence[0].startswith("Progressive bulbar palsy on the problem list")


@pytest.mark.parametrize("text", ["Bulbar onset", "Bulbar dysfunction", "Slurred speech - dysarthria"])
def test_bulbar_involvement_named_only_in_the_text_fires_and_says_so(text: str) -> None:
    [finding] = run(als(), problem(coding("urn:oid:1.2.3", "LOCAL-1"), text=text))
    assert finding.evidence[0].endswith("(named in free text, no code).")


def test_evidence_names_two_problems_and_counts_the_rest() -> None:
    problems = [
        problem(coding(SNOMED, "40739000"), text="Dysphagia"),
        dysarthria(),
        problem(text="Bulbar weakness"),
    ]
    [finding] = run(als(), *problems)
    assert len(finding.evidence) == 3
    assert finding.evidence[0].startswith("Dysphagia on the problem list since")
    assert finding.evidence[1].endswith("; and 1 more bulbar problem(s).")


def test_every_form_of_mnd_is_covered_not_only_als() -> None:
    pls = condition(concept(coding(ICD10CM, "G12.23")), rid="pls")
    assert run(pls, dysarthria())


# -- silent -----------------------------------------------------------------------------------


def test_mnd_without_bulbar_involvement_gets_no_card() -> None:
    assert run(als()) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"clinical": "resolved"}, {"verification": "refuted"}, {"verification": "provisional"}],
)
def test_resolved_refuted_or_suspected_dysarthria_does_not_fire(kwargs: dict[str, str]) -> None:
    assert run(als(), dysarthria(**kwargs)) == []


def test_pseudobulbar_affect_is_not_bulbar_weakness() -> None:
    assert run(als(), problem(coding("urn:oid:1.2.3", "PBA"), text="Pseudobulbar affect")) == []


def test_no_card_without_an_mnd_diagnosis() -> None:
    assert run(dysarthria()) == []
    assert run(als(verification="refuted"), dysarthria()) == []


@pytest.mark.parametrize(
    "slt",
    [
        procedure(snomed("410161005", "Speech therapy assessment"), days_ago(30)),
        procedure(snomed("5154007", "Speech therapy"), days_ago(30), status="in-progress"),
        procedure(snomed("308452008", "Referral to speech and language therapist"), days_ago(30)),
        procedure(snomed("306360000"), days_ago(30)),
        # A UK GP record carries the referral as a coded Observation (GP2GP).
        observation(snomed("308452008", "Referral to speech and language therapist"), days_ago(40)),
        encounter([snomed("410161005", "Speech therapy assessment")], days_ago(20)),
        encounter(
            [concept(coding("urn:oid:1.2.3", "OP"))],
            days_ago(20),
            service_type=concept(text="Speech and language therapy"),
        ),
        device(concept(text="Communication aid (alphabet board)")),
        device(concept(text="Speech generating device")),
        document(concept(coding(LOINC, "83984-5", "Speech-language pathology Consult note")), days_ago(60)),
        procedure(concept(text="AAC assessment"), days_ago(15)),
        # No look-back: NG42 1.11 gives no interval, so an assessment five years ago still counts.
        procedure(snomed("410161005"), days_ago(5 * 365)),
    ],
    ids=[
        "slt-assessment",
        "speech-therapy-in-progress",
        "slt-referral-procedure",
        "community-slt-referral",
        "slt-referral-observation",
        "slt-encounter-type",
        "slt-service-type-by-name",
        "communication-aid",
        "speech-generating-device",
        "slp-consult-note",
        "aac-assessment-by-name",
        "five-years-old",
    ],
)
def test_slt_or_aac_on_record_silences_the_card(slt: dict[str, Any]) -> None:
    assert run(als(), dysarthria(), slt) == []


@pytest.mark.parametrize(
    "not_slt",
    [
        procedure(snomed("410161005"), days_ago(30), status="not-done"),
        procedure(snomed("410161005"), days_ago(30), status="entered-in-error"),
        device(concept(text="Communication aid"), status="inactive"),
        # 'SLT' alone is also selective laser trabeculoplasty: not read as speech and language therapy.
        procedure(concept(text="SLT right eye"), days_ago(30)),
    ],
    ids=["not-done", "entered-in-error", "device-inactive", "bare-slt"],
)
def test_what_is_not_slt_or_aac_does_not_silence_the_card(not_slt: dict[str, Any]) -> None:
    assert run(als(), dysarthria(), not_slt)


def test_profile_does_not_change_the_rule() -> None:
    resources = (als(), dysarthria())
    assert run(*resources, config=RuleConfig(profile="us")) == run(*resources)


def test_messy_records_never_raise() -> None:
    """`evaluate` hides a crash as 'no card'; call the rule directly to prove there is none."""
    undated = dysarthria()
    undated.pop("onsetDateTime")
    record = record_from([patient(), als(), undated, observation(snomed("308452008"), None)], patient_id=PID)
    assert communication_slt_aac(record, RuleConfig()) == []
    record = record_from([patient(), als(), undated], patient_id=PID)
    [finding] = communication_slt_aac(record, RuleConfig())
    assert finding.evidence[0] == "Dysarthria on the problem list."


# -- the card ---------------------------------------------------------------------------------


def test_card_leads_with_the_referral_and_suggests_it() -> None:
    [finding] = run(als(), dysarthria())
    definition = CATALOG[RULE_ID]
    assert definition.placeholders() <= set(finding.fields)
    body = cards.render(finding, definition).to_json()
    Card.model_validate(body)
    assert body["indicator"] == "info"
    assert body["summary"].startswith("Refer to speech and language therapy")
    assert len(body["summary"]) < 140 and "matched by" not in body["summary"]
    [suggestion] = body["suggestions"]
    resource = suggestion["actions"][0]["resource"]
    assert resource["code"]["coding"][0]["code"] == "308452008"
    assert resource["status"] == "draft" and resource["subject"] == {"reference": f"Patient/{PID}"}
    assert "matched by" not in body["detail"]


def test_card_detail_is_short_and_cites_ng42_1_11() -> None:
    definition = CATALOG[RULE_ID]
    assert len(definition.detail.split()) < 120
    assert "1.11.1" in definition.detail and "1.11.2" in definition.detail


# -- fixtures ---------------------------------------------------------------------------------


def test_fixture_patients_get_exactly_the_expected_communication_cards() -> None:
    expected = json.loads((FIXTURES / "expected" / "communication.json").read_text())
    assert {"communication-dysarthria-no-slt", "communication-dysarthria-slt-referred"} <= set(expected)
    for name, hooks in expected.items():
        record = record_from(patient_resources(name), patient_id=name)
        found = [f.rule_id for f in evaluate([COMMUNICATION_SLT_AAC], record, RuleConfig())]
        assert found == hooks["patient-view"], name
        assert hooks["order-select"] == hooks["order-sign"] == []
