"""The gate in front of every rule: every form of MND gets NG42 care, only the ALS form ALS rules,
and a suspected diagnosis nothing (issue: clinical safety review, finding 3)."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.record import Interest
from cds_service.rules import CATALOGUE, RuleConfig, evaluate
from cds_service.rules.base import Finding, Rule
from cds_service.settings import Settings
from tests.factories import ICD10CM, PID, SNOMED, als, coding, concept, condition, patient
from tests.support import record_from, service_interest

CONFIG = RuleConfig.from_settings(Settings(_env_file=None))


def _probe(scope: str) -> Rule:
    """A rule that always fires, to see what the gate lets through."""
    return Rule(
        id=f"probe-{scope}",
        title="probe",
        hooks=frozenset({"patient-view"}),
        reads=Interest({}),
        evaluate=lambda record, config: [Finding(rule_id=f"probe-{scope}", fields={}, evidence=())],
        trigger="always",
        scope=scope,  # type: ignore[arg-type]
    )


PROBES = (_probe("mnd"), _probe("als"))


def fired(*resources: dict[str, Any]) -> list[str]:
    record = record_from([patient(), *resources], patient_id=PID, interest=service_interest())
    return sorted(f.rule_id for f in evaluate(PROBES, record, CONFIG))


def icd(code: str) -> dict[str, Any]:
    return concept(coding(ICD10CM, code))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("G12.21", ["probe-als", "probe-mnd"]),  # amyotrophic lateral sclerosis
        ("G12.22", ["probe-als", "probe-mnd"]),  # progressive bulbar palsy counts as ALS (NICE TA20)
        ("G12.20", ["probe-als", "probe-mnd"]),  # unspecified MND: which form is not said
        ("G12.24", ["probe-als", "probe-mnd"]),  # familial MND: overwhelmingly familial ALS
        ("G12.23", ["probe-mnd"]),  # primary lateral sclerosis: NG42 care, not the ALS rules
        ("G12.25", ["probe-mnd"]),  # progressive spinal muscle atrophy
        ("G12.29", ["probe-mnd"]),  # other MND
        ("G12.0", []),  # infantile spinal muscular atrophy is not MND
    ],
)
def test_every_form_of_mnd_gets_ng42_care_and_only_the_als_form_the_als_rules(
    code: str, expected: list[str]
) -> None:
    assert fired(condition(icd(code))) == expected


def test_snomed_mnd_and_als_gate_in() -> None:
    assert fired(als()) == ["probe-als", "probe-mnd"]
    pbp = concept(coding(SNOMED, "54304004", "Progressive bulbar palsy"))  # counted as ALS (TA20)
    assert fired(condition(pbp)) == ["probe-als", "probe-mnd"]
    assert fired(condition(concept(coding(SNOMED, "37340000", "Motor neuron disease")))) == [
        "probe-als",
        "probe-mnd",
    ]


@pytest.mark.parametrize("status", ["provisional", "differential", "unconfirmed"])
def test_a_suspected_diagnosis_gets_no_card(status: str) -> None:
    assert fired(als(verification=status)) == []


@pytest.mark.parametrize("status", ["confirmed", None])
def test_a_confirmed_or_unstated_diagnosis_gates_in(status: str | None) -> None:
    assert fired(als(verification=status)) == ["probe-als", "probe-mnd"]


def test_a_suspected_als_beside_a_confirmed_pls_gets_only_mnd_care() -> None:
    assert fired(als(verification="provisional"), condition(icd("G12.23"), rid="pls")) == ["probe-mnd"]


def test_a_resolved_diagnosis_gets_no_card() -> None:
    assert fired(als(clinical="resolved")) == []


def test_the_catalogue_scopes_are_declared() -> None:
    assert {rule.scope for rule in CATALOGUE} <= {"mnd", "als"}
    assert [rule.id for rule in CATALOGUE if not rule.gated] == ["diagnosis-unreadable"]


def test_the_riluzole_offer_is_for_the_als_form_only() -> None:
    """Finding 9: riluzole-not-prescribed fired for non-ALS MND (NICE TA20: the ALS form of MND)."""
    offer = next(rule for rule in CATALOGUE if rule.id == "riluzole-not-prescribed")
    assert offer.scope == "als"
    pls = [patient(gender="male"), condition(icd("G12.23"), rid="pls")]
    als_chart = [patient(gender="male"), condition(icd("G12.21"), rid="als")]

    def offered(resources: list[dict[str, Any]]) -> bool:
        record = record_from(resources, patient_id=PID, interest=service_interest())
        return "riluzole-not-prescribed" in [f.rule_id for f in evaluate((offer,), record, CONFIG)]

    assert not offered(pls)
    assert offered(als_chart)
