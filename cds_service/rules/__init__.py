"""The rule catalogue and the evaluator.

Each clinical area has its own module; this package lists their rules in `CATALOGUE` and runs
them. Evaluation is where the gate is applied (`als.py`): a patient without an MND diagnosis gets
no card from any rule, and a rule about the ALS form only none without an ALS diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

from cds_service.record import PatientRecord
from cds_service.rules import (
    als,
    care,
    communication,
    data,
    dmt,
    genetics,
    muscle,
    nutrition,
    physio,
    respiratory,
    riluzole,
    saliva,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact

__all__ = ["CATALOGUE", "Finding", "Rule", "RuleConfig", "RuleFact", "evaluate", "rules_for_hook"]

log = logging.getLogger(__name__)

#: Every rule, by clinical area. Each area module lists its rules in `RULES`.
CATALOGUE: tuple[Rule, ...] = (
    *riluzole.RULES,
    *dmt.RULES,
    *respiratory.RULES,
    *nutrition.RULES,
    *saliva.RULES,
    *muscle.RULES,
    *care.RULES,
    *physio.RULES,
    *genetics.RULES,
    *communication.RULES,
    *data.RULES,
)


def rules_for_hook(hook: str, catalogue: Iterable[Rule] = CATALOGUE) -> tuple[Rule, ...]:
    return tuple(rule for rule in catalogue if hook in rule.hooks)


def gate_open(record: PatientRecord) -> bool:
    """Whether any gated rule can run for this record: an MND diagnosis is on it. Asked by the
    reader once the patient and the diagnoses are read: when no, the rest of the chart is not read,
    which only the rules without the gate could miss, and they read the diagnoses and the draft
    orders alone (a test holds them to it)."""
    return als.has_mnd(record)


def evaluate(rules: Sequence[Rule], record: PatientRecord, config: RuleConfig) -> list[Finding]:
    """Run the rules on the record. One failing rule does not silence the others.

    A rule that raises is logged by its id and exception type (never the message, which could
    quote patient data) and contributes no card.
    """
    gate = als.has_mnd(record)
    als_form = gate and als.has_als(record)
    findings: list[Finding] = []
    for rule in rules:
        if (rule.gated and not gate) or (rule.scope == "als" and not als_form):
            continue
        try:
            findings.extend(rule.evaluate(record, config))
        except Exception as exc:
            log.error("rule failed", extra={"rule_id": rule.id, "error_type": type(exc).__name__})
    note = als.diagnosis_note(record) if gate else None
    if note is not None:
        # The diagnosis every card rests on was partly unreadable: each card says so.
        findings = [replace(f, evidence=(*f.evidence, note)) for f in findings]
    return findings
