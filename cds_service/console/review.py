"""The rule review page's data: every rule, from the same sources as the cards.

The rule metadata (`rules/`: trigger, hooks, scope, what it reads, its facts and thresholds) and
the card files the running service loaded (`cards/`: wording, indicator, suggestions, override
reasons, citations, review status) are put side by side, as `catalogue_doc.py` does for
docs/rules.md, whose helpers this reuses; nothing is written twice. Added for reviewers: the length
of each card's wording in words, and the fixture patients the tests expect to fire the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cds_service import catalogue_doc
from cds_service.cards import CardCatalogue, CardDef, SuggestionDef
from cds_service.catalogue_doc import word_count
from cds_service.rules import Rule


def _wording(summary: str, detail: str) -> dict[str, Any]:
    return {
        "summary": summary.strip(),
        "summaryWords": word_count(summary),
        "summaryChars": len(summary.strip()),
        "detail": detail.strip(),
        "detailWords": word_count(detail),
    }


def _suggestions(defs: Iterable[SuggestionDef]) -> list[dict[str, Any]]:
    return [
        {
            "label": s.label,
            "recommended": s.recommended,
            "actions": [{"type": a.type, "description": a.description} for a in s.actions],
        }
        for s in defs
    ]


def _facts(rule: Rule, card: CardDef) -> list[dict[str, Any]]:
    facts = []
    for fact in rule.facts:
        citation = card.citation(fact.citation)
        facts.append(
            {
                "name": fact.name,
                "value": fact.value,
                "note": fact.note,
                "citation": fact.citation,
                "source": citation.model_dump() if citation else None,
            }
        )
    return facts


def review(
    rules: Iterable[Rule], catalogue: CardCatalogue, fired: Mapping[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One entry per rule, in the order of docs/rules.md (by first hook, then id)."""
    hook_order = catalogue_doc._HOOK_ORDER  # the catalogue page's order, so both pages agree
    ordered = sorted(rules, key=lambda r: (min(hook_order.index(h) for h in r.hooks), r.id))
    entries = []
    for rule in ordered:
        card = catalogue[rule.id]
        variants = [
            {
                "name": name,
                "indicator": variant.indicator or card.indicator,
                **_wording(variant.summary or card.summary, variant.detail or card.detail),
                "suggestions": _suggestions(variant.suggestions) if variant.suggestions is not None else None,
            }
            for name, variant in card.variants.items()
        ]
        entries.append(
            {
                "id": rule.id,
                "title": card.title,
                "hooks": [h for h in hook_order if h in rule.hooks],
                "scope": catalogue_doc._scope(rule),
                "trigger": rule.trigger,
                "reads": catalogue_doc._reads(rule),
                "indicator": card.indicator,
                "indicators": sorted({card.indicator, *(v["indicator"] for v in variants)}),
                **_wording(card.summary, card.detail),
                "variants": variants,
                "profileNotes": dict(card.profile_notes),
                "suggestions": _suggestions(card.suggestions),
                "overrideReasons": [{"code": r.code, "display": r.display} for r in card.override_reasons],
                "links": [{"label": link.label, "url": link.url} for link in card.links],
                "source": card.source.model_dump(),
                "facts": _facts(rule, card),
                "citations": [c.model_dump() for c in card.citations],
                "reviewStatus": card.review_status,
                "version": card.version,
                "lastReviewed": card.last_reviewed.isoformat(),
                "firedBy": list(fired.get(rule.id, ())),
            }
        )
    return entries
