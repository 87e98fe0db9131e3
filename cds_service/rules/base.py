"""What a rule is: a small pure function over the patient record, plus the metadata behind it.

A rule never reads a clock, a setting, the network or the database. It gets the record (which
carries `now`) and a `RuleConfig` (the few settings rules depend on), and returns findings: which
card to show, the values its text needs, and the data that fired it, in words a clinician can check.

Every number a rule uses is a `RuleFact` naming the citation it comes from; the citation itself
(label, URL, verification status) lives with the card wording in `cards/<rule-id>.toml`, and a
test proves that every fact points at a citation that exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cds_service.hooks import Indicator
from cds_service.record import Interest, PatientRecord


@dataclass(frozen=True)
class RuleConfig:
    """The settings rules may depend on; passed in so that rules stay pure."""

    profile: Literal["nice", "us"] = "nice"
    riluzole_lft_interval_after_year1_days: int = 365


@dataclass(frozen=True)
class RuleFact:
    """A threshold, interval or drug fact the rule relies on, and where it comes from."""

    name: str
    value: str
    citation: str  # key of a citation in the rule's card file
    note: str = ""  # e.g. how a label's words became a number, or "UNVERIFIED: ..."


@dataclass(frozen=True)
class Finding:
    """One card's worth of conclusion. Text lives in `cards/`; the finding carries the values."""

    rule_id: str
    fields: Mapping[str, str]  # values for the card's templates
    evidence: tuple[str, ...]  # the data that fired it, one line each, shown on the card
    variant: str | None = None  # a named variant of the card text (e.g. 'stop' vs 'monitor')
    indicator: Indicator | None = None  # when the rule, not the card file, decides the severity
    bindings: Mapping[str, str] = field(default_factory=dict)  # $names used in suggestion resources


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    hooks: frozenset[str]
    reads: Interest  # what the rule needs from the chart: drives prefetch and parsing
    evaluate: Callable[[PatientRecord, RuleConfig], list[Finding]]
    trigger: str  # one sentence: when it fires (for the generated rule catalogue)
    facts: tuple[RuleFact, ...] = ()
