"""How rules word the data that fired a card: one phrasing for dates, conditions, drugs and orders.

Evidence lines are data, not clinical advice (that wording lives in `cards/`), but a clinician reads
them on every card, so they should say the same thing the same way whichever rule wrote them.
"""

from __future__ import annotations

from datetime import datetime

from cds_service.record import ConditionFact, DraftOrder, MedicationMatch, PatientRecord
from cds_service.terminology import Match, ValueSet


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut at a word boundary with an ellipsis, never mid-word
    (a drug name or a lab's comment cut in half reads as a different word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-(") + "…"


def day(when: datetime | None) -> str:
    """A date for a card: ISO, or plainly unknown."""
    return when.date().isoformat() if when is not None else "date not recorded"


def patient_reference(record: PatientRecord) -> str:
    """The patient as a suggested resource's subject."""
    return f"Patient/{record.patient_id}"


def caveat(match: Match | None) -> str:
    """'; named in free text, no code' when the match was by name only, else '': a suffix for the
    parenthesis of an evidence line. Codes themselves are not shown: they are machine text."""
    said = match.caveat if match is not None else None
    return f"; {said}" if said else ""


def condition_line(condition: ConditionFact, valueset: ValueSet, what: str) -> str:
    """'Dementia: Alzheimer's disease (since 2024-02-01).'"""
    when = condition.onset or condition.recorded
    since = f"since {day(when)}" if when is not None else "date not recorded"
    return f"{what}: {condition.concept.label} ({since}{caveat(valueset.match(condition.concept))})."


def medication_line(med: MedicationMatch, what: str) -> str:
    """'On amitriptyline: amitriptyline 10 mg (active, started 2026-01-03).'"""
    started = med.fact.started
    start = f", started {day(started)}" if started is not None else ""
    return f"{what}: {med.fact.concept.label} ({med.fact.status}{start}{caveat(med.match)})."


def order_line(order: DraftOrder, match: Match) -> str:
    """'Order: riluzole 50 mg tablet.' The order's id is left out: the clinician is writing it."""
    return f"Order: {order.concept.label}{aside(match)}."


def aside(match: Match | None) -> str:
    """' (named in free text, no code)' when the match was by name only, else ''."""
    said = match.caveat if match is not None else None
    return f" ({said})" if said else ""
