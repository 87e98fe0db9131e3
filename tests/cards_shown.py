"""How tests name the cards of an answer now that reminders can come as one digest card (issue 12).

`shown_rules` lists each card's rule id (`source.topic.code`) in the order of the answer; a care
review digest is listed as `care-review-digest` followed by the rule of each of its items (named in
each suggestion's extension), so that an expectation still says which rules fired and how they
were shown.
"""

from __future__ import annotations

from typing import Any

from cds_service.digest import RULE_ID_EXTENSION

DIGEST = "care-review-digest"


def shown_rules(body: dict[str, Any]) -> list[str]:
    found = []
    for card in body["cards"]:
        found.append(card["source"]["topic"]["code"])
        if found[-1] == DIGEST:
            found += [s["extension"][RULE_ID_EXTENSION] for s in card["suggestions"]]
    return found


def fired_rules(body: dict[str, Any]) -> list[str]:
    """The rules behind the cards, digest items included, the digest itself not."""
    return [rule for rule in shown_rules(body) if rule != DIGEST]
