"""Genetics: offer ALS genetic testing when no result for C9orf72, SOD1, FUS or TARDBP is on record.

Every test goes through `evaluate`, so the gate (MND) and the rule's scope (the ALS form) are
exercised. The rule reads no medications and does not differ between the 'nice' and 'us' profiles
(tested once).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card
from cds_service.rules import RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.rules.genetics import GENETIC_TESTING_OFFER, genetic_testing_offer
from cds_service.services import build_services
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
    loinc,
    observation,
    patient,
    procedure,
)
from tests.support import FIXTURES, NOW, patient_resources, record_from

PID = "p1"
CATALOG = cards.load_catalogue(Settings().cards_dir)
HGNC = "http://www.genenames.org/geneId"
RULE_ID = "genetic-testing-offer"


def run(*resources: dict[str, Any], config: RuleConfig | None = None) -> list[Finding]:
    record = record_from([patient("male"), *resources], patient_id=PID)
    return evaluate([GENETIC_TESTING_OFFER], record, config or RuleConfig())


def gene(code: str | None, symbol: str) -> dict[str, Any]:
    """A 'Gene studied [ID]' component: the HGNC id when given, else the symbol as text."""
    value = concept(coding(HGNC, code, symbol)) if code else concept(text=symbol)
    return {"code": loinc("48018-6", "Gene studied [ID]"), "valueCodeableConcept": value}


def variant(*genes: dict[str, Any], answer: str = "LA9633-4", when: datetime | None = None) -> dict[str, Any]:
    """A Genomics Reporting IG variant Observation (69548-6) naming its genes in components."""
    return observation(
        loinc("69548-6", "Genetic variant assessment"),
        when or days_ago(200),
        value_concept=concept(coding(LOINC, answer)),
        components=list(genes),
    )


def genetic_test(text: str, status: str = "completed", when: datetime | None = None) -> dict[str, Any]:
    code = concept(coding(SNOMED, "405825005", "Molecular genetic test (procedure)"), text=text)
    return procedure(code, when or days_ago(90), status=status)


# -- fires ------------------------------------------------------------------------------------


def test_als_without_any_genetic_result_fires_with_one_evidence_line() -> None:
    [finding] = run(als())
    assert finding.rule_id == RULE_ID and finding.fields == {}
    assert finding.evidence == (
        "No genetic result or genetic test naming C9orf72, SOD1, FUS or TARDBP in the data received.",
    )
    assert finding.bindings == {"patient_reference": f"Patient/{PID}"}


def test_a_genetic_test_for_other_genes_is_named_but_does_not_count() -> None:
    [finding] = run(
        als(),
        genetic_test("Hereditary breast and ovarian cancer panel (BRCA1, BRCA2)", when=days_ago(400)),
        variant(gene(None, "BRCA1"), answer="LA9634-2"),
    )
    assert len(finding.evidence) == 2
    assert finding.evidence[1].startswith("Genetic tests on record for other genes (not counted): ")
    assert "Hereditary breast and ovarian cancer panel" in finding.evidence[1]
    assert "Genetic variant assessment of BRCA1" in finding.evidence[1]


def test_more_than_two_other_genetic_tests_are_counted_not_listed() -> None:
    tests = [genetic_test(f"Cardiac gene panel {n}") for n in range(4)]
    [finding] = run(als(), *tests)
    assert finding.evidence[1].endswith("; and 2 more.")
    assert len(finding.evidence) <= 3


@pytest.mark.parametrize(
    "not_a_test",
    [
        # 'FUS' is also focused ultrasound: naming the gene symbol does not make a procedure a genetic test.
        procedure(concept(text="MRgFUS thalamotomy (FUS)"), days_ago(30)),
        genetic_test("ALS gene panel: C9orf72, SOD1, FUS, TARDBP", status="not-done"),
        genetic_test("ALS gene panel: C9orf72, SOD1, FUS, TARDBP", status="entered-in-error"),
    ],
    ids=["focused-ultrasound", "not-done", "entered-in-error"],
)
def test_procedures_that_are_not_an_als_genetic_test_done_do_not_silence_the_card(
    not_a_test: dict[str, Any],
) -> None:
    [finding] = run(als(), not_a_test)
    assert len(finding.evidence) == 1


def test_a_result_dated_in_the_future_is_not_a_result_and_the_card_says_so() -> None:
    # As for tofersen-sod1: a date beyond the clock-skew allowance is a data error, not a result.
    [finding] = run(als(), variant(gene("HGNC:28337", "C9orf72"), when=days_ago(-60)))
    assert any(line.startswith("Data that could not be read") for line in finding.evidence)


# -- silent: a result of any kind is on record ------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [
        variant(gene("HGNC:11179", "SOD1")),  # SOD1 variant present
        variant(gene("HGNC:11179", "SOD1"), answer="LA9634-2"),  # SOD1 negative
        variant(gene("HGNC:11179", "SOD1"), answer="LA26333-7"),  # SOD1 uncertain significance
        observation(concept(coding("urn:oid:1.2.3.4", "SOD1SEQ"), text="SOD1 gene sequencing"), days_ago(50)),
        variant(gene("HGNC:28337", "C9orf72")),
        variant(gene(None, "C9ORF72"), answer="LA9634-2"),
        variant(gene("HGNC:4010", "FUS"), answer="LA9634-2"),
        variant(gene("HGNC:11571", "TARDBP"), answer="LA9634-2"),
        observation(
            loinc("48018-6", "Gene studied [ID]"),
            days_ago(80),
            value_concept=concept(coding(HGNC, "HGNC:11571", "TARDBP")),
        ),
        observation(concept(coding("urn:oid:1.2.3.4", "FUSSEQ"), text="FUS gene sequencing"), days_ago(50)),
        variant(gene(None, "BRCA1"), gene("HGNC:4010", "FUS")),  # a panel result that includes FUS
    ],
    ids=[
        "sod1-present",
        "sod1-absent",
        "sod1-vus",
        "sod1-local-single-gene-test",
        "c9orf72-hgnc",
        "c9orf72-symbol-text",
        "fus-hgnc",
        "tardbp-hgnc",
        "tardbp-gene-studied-value",
        "fus-local-test",
        "panel-with-fus",
    ],
)
def test_any_result_for_an_als_gene_silences_the_card_whatever_it_found(result: dict[str, Any]) -> None:
    assert run(als(), result) == []


def test_a_result_ten_years_old_still_counts() -> None:
    assert run(als(), variant(gene("HGNC:28337", "C9orf72"), when=days_ago(3650))) == []


@pytest.mark.parametrize("status", ["completed", "in-progress"])
def test_a_genetic_test_naming_an_als_gene_done_or_in_progress_silences_the_card(status: str) -> None:
    assert run(als(), genetic_test("ALS gene panel: C9orf72, SOD1, FUS, TARDBP", status=status)) == []


def test_a_genetic_test_named_only_in_its_text_counts_when_it_names_an_als_gene() -> None:
    local = procedure(concept(coding("urn:oid:1.2.3.4", "GEN-77"), text="Gene panel: SOD1"), days_ago(20))
    assert run(als(), local) == []


# -- the gate and the ALS scope ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fires"),
    [
        ("G12.21", True),  # ALS
        ("G12.22", True),  # progressive bulbar palsy counts as ALS (gate value set)
        ("G12.23", False),  # primary lateral sclerosis: MND, not the ALS form
        ("G12.25", False),  # progressive spinal muscle atrophy
    ],
)
def test_the_card_is_for_the_als_form_only(code: str, fires: bool) -> None:
    diagnosis = condition(concept(coding(ICD10CM, code)), rid="dx")
    assert bool(run(diagnosis)) is fires


@pytest.mark.parametrize(
    "kwargs", [{"verification": "provisional"}, {"verification": "refuted"}, {"clinical": "resolved"}]
)
def test_no_card_without_an_active_confirmed_als_diagnosis(kwargs: dict[str, str]) -> None:
    assert run(als(**kwargs)) == []


def test_profile_does_not_change_the_rule() -> None:
    assert run(als(), config=RuleConfig(profile="us")) == run(als())


def test_an_empty_record_never_raises() -> None:
    """`evaluate` hides a crash as 'no card'; call the rule directly to prove there is none."""
    record = record_from([patient(), als(), observation(loinc("69548-6"), None)], patient_id=PID)
    assert [f.rule_id for f in genetic_testing_offer(record, RuleConfig())] == [RULE_ID]


def test_patient_view_prefetch_asks_for_every_als_gene_without_a_date_window() -> None:
    service = build_services()["als-patient-view"]
    lifelong = service.prefetch(Settings(_env_file=None), NOW.date())["observation-history"]
    for hgnc in ("HGNC:28337", "HGNC:11179", "HGNC:4010", "HGNC:11571"):
        assert hgnc in lifelong
    assert "http://loinc.org|69548-6" in lifelong and "date=" not in lifelong
    assert service.interest.wants_type("Procedure")


# -- the card ---------------------------------------------------------------------------------


def render(finding: Finding) -> dict[str, Any]:
    definition = CATALOG[finding.rule_id]
    assert definition.placeholders() <= set(finding.fields)
    body = cards.render(finding, definition).to_json()
    Card.model_validate(body)
    return body


def test_card_leads_with_the_action_and_offers_counselling_and_a_test_order() -> None:
    [finding] = run(als())
    body = render(finding)
    assert body["indicator"] == "info"
    assert body["summary"].startswith("Offer ALS genetic testing")
    assert len(body["summary"]) < 140 and "matched by" not in body["summary"]
    codes = [s["actions"][0]["resource"]["code"]["coding"][0]["code"] for s in body["suggestions"]]
    assert codes == ["306250006", "405825005"]
    for suggestion in body["suggestions"]:
        resource = suggestion["actions"][0]["resource"]
        assert resource["status"] == "draft" and resource["subject"] == {"reference": f"Patient/{PID}"}
    assert "tofersen" in body["detail"] and "matched by" not in body["detail"]


def test_card_detail_is_short() -> None:
    definition = CATALOG[RULE_ID]
    assert len(definition.detail.split()) < 120
    assert definition.indicator == "info"


# -- fixtures ---------------------------------------------------------------------------------


def test_fixture_patients_get_exactly_the_expected_genetics_cards() -> None:
    expected = json.loads((FIXTURES / "expected" / "genetics.json").read_text())
    assert {"genetics-no-result", "genetics-c9orf72-expansion", "genetics-pls-no-result"} <= set(expected)
    for name, hooks in expected.items():
        record = record_from(patient_resources(name), patient_id=name)
        found = [f.rule_id for f in evaluate([GENETIC_TESTING_OFFER], record, RuleConfig())]
        assert found == hooks["patient-view"], name
        assert hooks["order-select"] == hooks["order-sign"] == []
