"""One card for the reminders: the info-level "due" reminders of one call folded into a care review.

Measured on the bundled charts, most cards were a handful of routine reminders (advance care
planning, MDT review, breathing assessment, riluzole not prescribed), each a card of its own on every
chart open. Here the reminders of one call (the card files with `[fatigue] digest = true`) become one
card, "ALS care review: N items due", with one suggestion per item: each item's recommended (else
first) suggestion, keeping its uuid, and naming its rule in the suggestion's `extension`
(`RULE_ID_EXTENSION`), so that feedback on a suggestion is traced to its own rule
(`suppression.py`, `issued_items`).

Never folded: a card that is not info (a warning or critical card always stands alone), a card
without a suggestion, and a single reminder (a digest of one only hides its text). The digest comes
after every other card. `ALS_CDS_DIGEST_ENABLED=false` turns it off.

Its wording is data, `cards/digest/care-review-digest.toml`, like every card's.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cds_service.cards import (
    RULE_ID_SYSTEM,
    RULE_VERSION_EXTENSION,
    SUMMARY_MAX,
    CardCatalogue,
    CardFileError,
    SourceDef,
    new_uuid,
)
from cds_service.hooks import Card, Coding, OverrideReason, Source, Suggestion
from cds_service.record import UNREAD_PREFIX

#: Key of a digest suggestion's `extension` naming the rule the item comes from.
RULE_ID_EXTENSION = "urn:als-cds:rule-id"
#: Where the digest's wording lives, inside the card folder (not a rule's card file).
WORDING_FILE = Path("digest") / "care-review-digest.toml"


class DigestDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    digest_id: str
    title: str
    version: str
    last_reviewed: date
    review_status: str
    summary: str
    detail: str
    source: SourceDef


@functools.cache
def load_wording(cards_dir: Path) -> DigestDef:
    path = cards_dir / WORDING_FILE
    try:
        wording = DigestDef.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise CardFileError(f"{WORDING_FILE}: {exc}") from exc
    for name in ("{count}",):
        if name not in wording.summary:
            raise CardFileError(f"{WORDING_FILE}: the summary must say {name}")
    if "{items}" not in wording.detail:
        raise CardFileError(f"{WORDING_FILE}: the detail must list the {{items}}")
    return wording


def item_rule(card: Card) -> str:
    """The rule a card stands for: its topic code."""
    return card.source.topic.code if card.source.topic else ""


def is_digest(card: Card, wording: DigestDef) -> bool:
    return item_rule(card) == wording.digest_id


def suggestion_rule(suggestion: Suggestion) -> str | None:
    """The rule a digest suggestion comes from (None for a suggestion of an ordinary card)."""
    value = (suggestion.extension or {}).get(RULE_ID_EXTENSION)
    return value if isinstance(value, str) else None


def fold(cards: Sequence[Card], catalogue: CardCatalogue, wording: DigestDef) -> list[Card]:
    """The cards with the reminders among them folded into one digest card, placed last."""
    items = [
        card
        for card in cards
        if card.indicator == "info"
        and card.suggestions
        and item_rule(card) in catalogue
        and catalogue[item_rule(card)].fatigue.digest
    ]
    if len(items) < 2:
        return list(cards)
    folded = {id(card) for card in items}
    suggestions = []
    for card in items:
        chosen = next((s for s in card.suggestions or () if s.isRecommended), (card.suggestions or [])[0])
        suggestions.append(
            chosen.model_copy(
                update={"extension": {**(chosen.extension or {}), RULE_ID_EXTENSION: item_rule(card)}}
            )
        )
    lines = "\n".join(_item_lines(card) for card in items)
    summary = wording.summary.format(count=len(items)).strip()
    digest = Card(
        uuid=new_uuid(),
        summary=summary[:SUMMARY_MAX],
        detail=wording.detail.format(items=lines).strip(),
        indicator="info",
        source=Source(
            label=wording.source.label,
            url=wording.source.url,
            topic=Coding(
                system=RULE_ID_SYSTEM,
                code=wording.digest_id,
                display=wording.title,
                extension={RULE_VERSION_EXTENSION: wording.version},
            ),
        ),
        suggestions=suggestions,
        selectionBehavior="any",
        overrideReasons=_shared_snooze_reasons(items, catalogue) or None,
    )
    return [card for card in cards if id(card) not in folded] + [digest]


def _item_lines(card: Card) -> str:
    """An item: its summary, which already names the data that made it due, and under it only the
    notes on data that could not be read (an unreadable diagnosis or date must stay in sight; the
    item's other data lines would make the review as long as the cards it replaces)."""
    detail = card.detail or ""
    unread = [line.strip() for line in detail.splitlines() if line.strip().startswith(f"- {UNREAD_PREFIX}")]
    return "\n".join([f"- {card.summary}", *(f"  {line}" for line in unread)])


def _shared_snooze_reasons(items: Sequence[Card], catalogue: CardCatalogue) -> list[OverrideReason]:
    """The snooze reasons every item offers (same code and display): snoozing the review snoozes
    each item for its own card file's period. Reasons about one item (e.g. "seen elsewhere") would
    be wrong for the others, so they are not offered on the digest."""
    shared: list[OverrideReason] | None = None
    for card in items:
        snooze = catalogue[item_rule(card)].fatigue.snooze
        offered = [
            r for r in card.overrideReasons or () if r.code in snooze and r.display.startswith("Snooze")
        ]
        if shared is None:
            shared = offered
        else:
            keys = {(r.system, r.code, r.display) for r in offered}
            shared = [r for r in shared if (r.system, r.code, r.display) in keys]
    return shared or []


def shown_rule_ids(cards: Sequence[Card]) -> list[str]:
    """Each card's rule id, a digest followed by its items' rules: what the access log names."""
    found = []
    for card in cards:
        found.append(item_rule(card))
        found += [rule for s in card.suggestions or () if (rule := suggestion_rule(s))]
    return found
