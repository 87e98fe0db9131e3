"""What a card file says about alert fatigue: the `[fatigue]` table of `cards/<rule-id>.toml`.

Against alert fatigue (issue 12), three things are data, next to the card's wording, so that a
clinician decides them and not the code:

* `digest = true`: the card is an info-level "due" reminder, folded with the others of the same call
  into one care review card (`digest.py`);
* `[fatigue.snooze]`: override reasons (by code) that keep this card away for this patient, and for
  how many days (`suppression.py`). Each is a reason the card offers whose display starts with
  "Snooze" and says the period, or a "patient declined" reason (one coded `patient-refuses` below);
* `[fatigue.standard_reasons]`: the card's own override reason codes in the CDS Hooks 3.0 ballot's
  non-adherence code system, where one fits, so that overrides compare across sites and services.

Checked when the card files load (`check`), like the rest of a card file: a critical card can never
be snoozed or be a digest item, whatever its file says.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The CDS Hooks 3.0.0-ballot code system of reasons a CDS recommendation is not followed, from the
#: AHRQ CDSiC override taxonomy. Read in HL7/cds-hooks at fb10ca7 (2026-06-24),
#: input/vocabulary/CodeSystem-non-adherence-reason-codes.json (last changed in 834505c, 2025-12-09);
#: trial use, so re-check when the ballot is published.
NON_ADHERENCE_SYSTEM = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"

#: Every code of that system (the six categories and their sub-codes), with its display.
NON_ADHERENCE_CODES: dict[str, str] = {
    "cds-not-applicable": "PC CDS does not apply to patient",
    "patient-ineligible": "Patient does not meet eligibility for recommended action",
    "indication-order-exists": "Patient has indication/order for intended action",
    "action-completed": "Recommended action was already completed",
    "action-unsuccessful": "Recommended action was previously unsuccessful",
    "action-performed-no-adverse-effect": "Intended action was performed previously without adverse effect",
    "action-not-priority": "Recommended action is not relevant or a priority in current state of health",
    "cds-suboptimal-context": "PC CDS delivered in suboptimal context",
    "limited-time": "Could not address recommended action due to limited time",
    "wrong-time-workflow": "PC CDS delivered at wrong time in workflow or patient lifecycle",
    "inappropriate-recipient": "PC CDS delivered to inappropriate recipient/role",
    "need-more-info": "Could not address recommended action due to need for more information/pending "
    "results/pending consult",
    "recipient-disagrees-evidence": "Recipient disagrees with recommendation because of issues with the "
    "evidence",
    "does-not-align-latest-evidence": "Recommended action does not align with the latest evidence",
    "expert-contradicts": "Advice from expert contradicts the recommended action",
    "policy-contradicts": "Institutional policy/guideline contradicts the recommended action",
    "recipient-does-not-trust": "Recipient does not agree with or trust the recommended action",
    "recipient-concerns-outcomes": "Recipient has concerns regarding potential health outcomes",
    "risk-benefit-ratio": "Recipient assessment of risk/benefit ratio",
    "mitigate-risk-negative-outcome": "Action taken to mitigate risk of negative outcome",
    "likely-negative-health-outcomes": "Recommended action likely to have negative health outcomes",
    "patient-contraindication": "Patient has contraindication to recommended action",
    "does-not-align-preferences": "Recommendation does not align with patient preferences or values",
    "patient-fears-discomfort": "Patient fears discomfort from complying with recommended action",
    "patient-does-not-want-change": "Patient does not want to change behavior or believes the change is "
    "unnecessary",
    "cultural-religious-reason": "Patient has a cultural or religious reason for not following recommended "
    "action",
    "prefers-alternative": "Patient prefers an alternative approach or treatment",
    "patient-refuses": "Patient refuses/declines (no context given)",
    "not-convenient-feasible": "Recommendation is not convenient or feasible",
    "inadequate-support": "Patient has inadequate caregiver/social support",
    "service-not-available": "Treatment or service is not practically available",
    "implementation-challenges": "Recommended action cannot be implemented due to technology/challenges",
    "too-costly-uncovered": "Recommended action is too costly or not covered by insurance",
    "recipient-does-not-understand": "Recipient does not understand the recommended action or know how to "
    "perform the recommended action",
    "comorbidity-disability": "Patient has co-morbidity or disability that hinders them from completing "
    "recommended action",
}

#: The ballot's code for a patient who declines: an override with such a reason may snooze a card.
PATIENT_DECLINED = "patient-refuses"

#: Longest snooze a card file may set: a year, after which the reminder must be seen again.
MAX_SNOOZE_DAYS = 365


class FatigueDef(BaseModel):
    """The `[fatigue]` table of a card file; empty (nothing snoozed, no digest) when absent."""

    model_config = ConfigDict(extra="forbid")

    digest: bool = False
    snooze: dict[str, int] = Field(default_factory=dict)
    standard_reasons: dict[str, str] = Field(default_factory=dict)


def check(
    fatigue: FatigueDef,
    indicators: Iterable[str],
    reasons: Iterable[tuple[str, str]],
) -> None:
    """Raise ValueError when the `[fatigue]` table does not fit its card.

    `indicators`: every indicator the card can have (its own and its variants'); `reasons`: its
    override reasons as (code, display).
    """
    own = dict(reasons)
    can_be = set(indicators)
    if fatigue.snooze and "critical" in can_be:
        raise ValueError("a card that can be critical is never snoozed: remove [fatigue.snooze]")
    if fatigue.digest and can_be != {"info"}:
        raise ValueError("only info cards are digest items: this card can be " + ", ".join(sorted(can_be)))
    for code, standard in fatigue.standard_reasons.items():
        if code not in own:
            raise ValueError(
                f"[fatigue.standard_reasons] names {code!r}, not an override reason of this card"
            )
        if standard not in NON_ADHERENCE_CODES:
            raise ValueError(
                f"[fatigue.standard_reasons] {code!r}: {standard!r} is not a code of {NON_ADHERENCE_SYSTEM}"
            )
    for code, days in fatigue.snooze.items():
        if code not in own:
            raise ValueError(f"[fatigue.snooze] names {code!r}, not an override reason of this card")
        if not 1 <= days <= MAX_SNOOZE_DAYS:
            raise ValueError(f"[fatigue.snooze] {code!r}: {days} days; give 1 to {MAX_SNOOZE_DAYS}")
        declined = fatigue.standard_reasons.get(code) == PATIENT_DECLINED
        if not (own[code].startswith("Snooze ") or declined):
            raise ValueError(
                f"[fatigue.snooze] {code!r}: only a reason whose display starts with 'Snooze' (and says the "
                f"period) or a patient-declined reason (standard code {PATIENT_DECLINED!r}) may snooze"
            )
    for code, display in own.items():
        if display.startswith("Snooze") and code not in fatigue.snooze:
            raise ValueError(
                f"override reason {code!r} says {display!r} but [fatigue.snooze] gives no period"
            )


def describe(fatigue: FatigueDef) -> dict[str, Any]:
    """For the catalogue and the console: what the card file says, in plain values."""
    return {
        "digest": fatigue.digest,
        "snooze": dict(fatigue.snooze),
        "standardReasons": dict(fatigue.standard_reasons),
    }
