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
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from cds_service.hooks import Indicator
from cds_service.record import Interest, PatientRecord


@dataclass(frozen=True)
class RuleConfig:
    """The settings rules may depend on; passed in so that rules stay pure.

    Field names are those of `Settings` (the app copies them over by name); the defaults here are
    the settings' defaults, so tests can build a RuleConfig without a Settings object.
    """

    profile: Literal["nice", "us"] = "nice"
    riluzole_lft_interval_after_year1_days: int = 365
    alt_uln_default_male: float = 33
    alt_uln_default_female: float = 25
    neutrophil_lower_limit: float = 1.5
    mdt_interval_days: int = 92
    mdt_encounter_codes: tuple[str, ...] = ()
    respiratory_interval_days: int = 92

    @classmethod
    def from_settings(cls, settings: object) -> RuleConfig:
        values = {f.name: getattr(settings, f.name) for f in fields(cls)}
        values["mdt_encounter_codes"] = tuple(values["mdt_encounter_codes"])
        return cls(**values)


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
    # $names used in suggestion actions: strings (a reference) or whole resources (an updated order)
    bindings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    hooks: frozenset[str]
    reads: Interest  # what the rule needs from the chart: drives prefetch and parsing
    evaluate: Callable[[PatientRecord, RuleConfig], list[Finding]]
    trigger: str  # one sentence: when it fires (for the generated rule catalogue)
    facts: tuple[RuleFact, ...] = ()
    #: Runs only for a patient with MND (`rules.als.has_mnd`). The one exception is a rule about the
    #: gate itself: a diagnosis that could not be read may have been the MND one.
    gated: bool = True
    #: 'mnd': every form of MND (NICE NG42 care, and the safety of drugs already given);
    #: 'als': the ALS form only (`rules.als.has_als`), e.g. offering riluzole (NICE TA20).
    scope: Literal["mnd", "als"] = "mnd"
