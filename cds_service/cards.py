"""Card definitions from `cards/`, and rendering findings into CDS Hooks cards.

Wording is data: one TOML file per rule id holds the summary and detail templates, indicator,
source, links, suggestions (with the FHIR resources they create), override reasons, citations and
review metadata. A clinician can review and edit it without reading Python. Loading is strict: a
card file that would render an invalid card, or that lacks its citations, stops the service at
start-up rather than failing on a patient.
"""

from __future__ import annotations

import copy
import logging
import os
import string
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import msgspec
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from cds_service.fatigue import FatigueDef
from cds_service.fatigue import check as fatigue_check
from cds_service.hooks import (
    INDICATOR_ORDER,
    Action,
    Card,
    Coding,
    Indicator,
    Link,
    OverrideReason,
    Source,
    Suggestion,
)
from cds_service.record import UNREAD_PREFIX
from cds_service.rules.base import Finding
from cds_service.rules.evidence import clip

log = logging.getLogger(__name__)

#: `source.topic.system`: the code system of our rule ids, so feedback and analytics can name rules.
RULE_ID_SYSTEM = "urn:als-cds:rule-id"
#: Key of `source.topic.extension` holding the card file's `version` (governance, analytics).
RULE_VERSION_EXTENSION = "urn:als-cds:rule-version"
OVERRIDE_REASON_SYSTEM = "urn:als-cds:override-reason"
#: A card summary's longest length: CDS Hooks 2.0 asks for "<140 characters".
SUMMARY_MAX = 139


class CardFileError(ValueError):
    """A card file is invalid. The message names the file and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CitationDef(_Model):
    key: str
    label: str
    url: str
    status: str = Field(pattern=r"^(verified|corroborated|unverified)$")
    checked: str


class SourceDef(_Model):
    label: str
    url: str | None = None


class LinkDef(_Model):
    label: str
    url: str
    type: str = "absolute"


class ActionDef(_Model):
    type: str
    description: str
    # A resource written out here (with "$name" placeholders), or "$name" for a whole resource the
    # rule builds (e.g. the draft order with its dose corrected).
    resource: dict[str, Any] | str | None = None
    resourceId: str | None = None
    # Order text this card adds to the resource as a FHIR Annotation (`note`), e.g. precautions
    # on a physiotherapy order: wording, so it lives here and not in the rule.
    add_note: str | None = None
    #: `resource` and `resourceId` compiled for binding (`_ResourceTemplate`), made on first use.
    _templates: dict[str, Any] = PrivateAttr(default_factory=dict)


class SuggestionDef(_Model):
    key: str
    label: str
    recommended: bool = False
    actions: list[ActionDef] = Field(min_length=1)


class OverrideReasonDef(_Model):
    code: str
    display: str
    system: str = OVERRIDE_REASON_SYSTEM


class VariantDef(_Model):
    """Overrides for a named variant of the card (e.g. profile `us`, or a 'stop' severity)."""

    indicator: Indicator | None = None
    summary: str | None = None
    detail: str | None = None
    suggestions: list[SuggestionDef] | None = None


class CardDef(_Model):
    #: Built by `_fixed_parts` on first use (a process-wide table keyed by identity would keep every
    #: catalogue ever loaded alive).
    _fixed: Any = PrivateAttr(default=None)

    rule_id: str
    title: str
    version: str
    last_reviewed: date
    review_status: str
    indicator: Indicator
    summary: str
    detail: str
    source: SourceDef
    links: list[LinkDef] = []
    suggestions: list[SuggestionDef] = []
    override_reasons: list[OverrideReasonDef] = []
    citations: list[CitationDef] = Field(min_length=1)
    variants: dict[str, VariantDef] = {}
    # A paragraph added to the detail under one guideline profile only (ALS_CDS_PROFILE), e.g.
    # whether a drug is licensed in the UK or the US.
    profile_notes: dict[Literal["nice", "us"], str] = {}
    # Digest item, snooze periods, standard override codes (issue 12; `fatigue.py`).
    fatigue: FatigueDef = FatigueDef()

    @model_validator(mode="after")
    def _citation_keys_unique(self) -> CardDef:
        keys = [c.key for c in self.citations]
        if len(keys) != len(set(keys)):
            raise ValueError("citation keys must be unique")
        return self

    @model_validator(mode="after")
    def _fatigue_fits_the_card(self) -> CardDef:
        indicators = {self.indicator, *(v.indicator for v in self.variants.values() if v.indicator)}
        fatigue_check(self.fatigue, indicators, [(r.code, r.display) for r in self.override_reasons])
        return self

    def citation(self, key: str) -> CitationDef | None:
        return next((c for c in self.citations if c.key == key), None)

    def placeholders(self) -> set[str]:
        """Every {name} the summary and detail templates (and their variants) use."""
        texts = [self.summary, self.detail]
        for variant in self.variants.values():
            texts += [t for t in (variant.summary, variant.detail) if t]
        names: set[str] = set()
        for text in texts:
            names |= {field for _, field, _, _ in string.Formatter().parse(text) if field}
        return names


@dataclass(frozen=True)
class CardCatalogue:
    definitions: Mapping[str, CardDef]

    def __getitem__(self, rule_id: str) -> CardDef:
        return self.definitions[rule_id]

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self.definitions


def load_catalogue(directory: Path) -> CardCatalogue:
    definitions: dict[str, CardDef] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            definition = CardDef.model_validate(raw)
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise CardFileError(f"{path.name}: {exc}") from exc
        if definition.rule_id != path.stem:
            raise CardFileError(f"{path.name}: rule_id {definition.rule_id!r} does not match the file name")
        definitions[definition.rule_id] = definition
    return CardCatalogue(definitions)


# --------------------------------------------------------------------------------------------
# Rendering


class _StrictFields(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise CardFileError(f"the card text uses {{{key}}}, which the rule does not provide")


def _fill(template: str, fields: Mapping[str, str]) -> str:
    return template.format_map(_StrictFields(fields)).strip()


@dataclass(frozen=True)
class _ResourceTemplate:
    """A card file's suggestion resource (or resource id), ready to bind: its fixed parts as JSON
    bytes (decoding them is a fresh copy, made in C: walking the template in Python to copy it was
    the largest single cost of rendering), and where each "$name" goes.

    Bound, it shares nothing with the card file or the finding: a bound container (a whole
    resource the rule built) is copied, since the finding may be rendered again or its resource
    edited (`add_note`)."""

    fixed: bytes
    holes: tuple[tuple[tuple[str | int, ...], str], ...]  # (path, name), in the template's order

    @staticmethod
    def of(template: Any) -> _ResourceTemplate:
        holes: list[tuple[tuple[str | int, ...], str]] = []

        def walk(value: Any, path: tuple[str | int, ...]) -> Any:
            if isinstance(value, str) and value.startswith("$"):
                holes.append((path, value[1:]))
                return None
            if isinstance(value, dict):
                return {k: walk(v, (*path, k)) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v, (*path, i)) for i, v in enumerate(value)]
            return value

        return _ResourceTemplate(msgspec.json.encode(walk(template, ())), tuple(holes))

    def bind(self, bindings: Mapping[str, Any]) -> Any:
        """The template with each "$name" replaced by the finding's value of that name."""
        value = _DECODE_JSON(self.fixed)
        for path, name in self.holes:
            if name not in bindings:
                raise CardFileError(f"a suggestion uses ${name}, which the rule does not provide")
            bound = bindings[name]
            if isinstance(bound, Mapping | list):
                bound = copy.deepcopy(bound)
            if not path:
                return bound
            target = value
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = bound
        return value


_DECODE_JSON = msgspec.json.Decoder().decode


def _bound(action: ActionDef, field_name: str, finding: Finding) -> Any:
    """The action's `resource` or `resourceId` with the finding's values in its "$name" places."""
    # Read through `__pydantic_private__`, the dict pydantic keeps private attributes in: reading
    # `action._templates` goes through BaseModel.__getattr__ (Python), some 2 us each time.
    templates = action.__pydantic_private__["_templates"]  # type: ignore[index]
    template = templates.get(field_name)
    if template is None:
        template = templates[field_name] = _ResourceTemplate.of(getattr(action, field_name))
    return template.bind(finding.bindings)


def _action_resource(action: ActionDef, finding: Finding) -> dict[str, Any] | None:
    if not action.resource:
        return None
    resource = _bound(action, "resource", finding)
    if action.add_note:
        if not isinstance(resource, dict):
            raise CardFileError("add_note needs the action's resource to be a FHIR resource")
        resource["note"] = [*resource.get("note", []), {"text": _fill(action.add_note, finding.fields)}]
    return resource


def _valid_resources(suggestion: Suggestion, rule_id: str) -> bool:
    """Strict in what we send: every resource in a suggestion must be valid R4 (fhir.resources R4B
    models read R4). An update built from a sender's order that is not is left out, and logged."""
    for action in suggestion.actions or ():
        resource = action.resource
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except (ValidationError, KeyError, ValueError) as exc:
            where = (
                sorted({".".join(map(str, e["loc"])) for e in exc.errors(include_input=False)})[:5]
                if isinstance(exc, ValidationError)
                else ["resourceType"]
            )
            log.warning(
                "suggestion left out: its resource is not valid R4",
                extra={"rule_id": rule_id, "invalid_at": where},
            )
            return False
    return True


#: At most this many lines of "data behind this card": the card is read in seconds, and the rest
#: of the record is one click away in the EHR (issue 10: "at most three evidence lines").
EVIDENCE_MAX_LINES = 3


def evidence_shown(evidence: Sequence[str]) -> tuple[list[str], int]:
    """The evidence lines a card shows, and how many there were in all.

    Lines about data that could not be read (`UNREAD_PREFIX`) are always kept, so that a card never
    looks better founded than it is; the rule's own lines fill the other places in the order the
    rule gave them, most telling first.
    """
    unread = [line for line in evidence if line.startswith(UNREAD_PREFIX)]
    rest = [line for line in evidence if not line.startswith(UNREAD_PREFIX)]
    room = max(EVIDENCE_MAX_LINES - len(unread), 0)
    return rest[:room] + unread, len(evidence)


def _detail(template: str, finding: Finding) -> str:
    """The card's text, then the data that fired it. Sources are not repeated here: the card's
    `source` and `links` carry them, and a list of references would double the card's height."""
    parts = [_fill(template, finding.fields)]
    if finding.evidence:
        shown, total = evidence_shown(finding.evidence)
        more = f" ({len(shown)} of {total} shown)" if len(shown) < total else ""
        parts.append(f"**Data behind this card:**{more}\n" + "\n".join(f"- {line}" for line in shown))
    return "\n\n".join(parts)


_random_pool = bytearray()
_random_lock = threading.Lock()


def new_uuid() -> str:
    """A UUID version 7 (RFC 9562): the millisecond it was made, then 74 random bits.

    Why not a random (version 4) UUID: a card's uuid is the key of `issued_cards` and an index of
    `issued_items`, written for every card. Random keys land on a different index page each, so
    every card dirtied pages all over two indexes, and the writer's commits wrote a WAL frame for
    each: a quarter of the writer thread's CPU once the tables held a few weeks of cards. Ordered
    by time, new keys go to the last pages. The spec asks only for a unique identifier; 74 random
    bits keep it unguessable, and the time it tells is when the EHR received the card.

    The random bits come from a pool of `os.urandom` filled 1 kB at a time (a system call and a
    UUID object per uuid were a twentieth of rendering's CPU), taken under a lock (a large chart's
    cards are rendered in a worker thread), and the pool is emptied in a forked child: no two
    threads or processes ever hand out the same bytes."""
    with _random_lock:
        if len(_random_pool) < 10:
            _random_pool[:0] = os.urandom(1024)
        taken = bytes(_random_pool[-10:])
        del _random_pool[-10:]
    random = int.from_bytes(taken, "big")  # 80 bits, of which 74 are used
    millis = time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF
    number = (
        millis << 80
        | 0x7 << 76  # version 7
        | (random >> 62 & 0xFFF) << 64  # rand_a
        | 0b10 << 62  # RFC 9562 variant
        | random & (1 << 62) - 1  # rand_b
    )
    text = f"{number:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


os.register_at_fork(after_in_child=_random_pool.clear)


def render(finding: Finding, definition: CardDef, profile: str | None = None) -> Card:
    """One finding → one card, with fresh UUIDs for the card and each suggestion."""
    variant = definition.variants.get(finding.variant) if finding.variant else None
    if finding.variant and variant is None:
        raise CardFileError(f"{definition.rule_id}: no variant {finding.variant!r} in the card file")
    summary = (variant and variant.summary) or definition.summary
    detail = (variant and variant.detail) or definition.detail
    suggestion_defs = (
        variant.suggestions if variant and variant.suggestions is not None else definition.suggestions
    )
    indicator = finding.indicator or (variant and variant.indicator) or definition.indicator

    suggestions = [
        Suggestion(
            label=s.label,
            uuid=new_uuid(),
            isRecommended=True if s.recommended else None,
            actions=[
                Action(
                    type=a.type,  # type: ignore[arg-type]
                    description=_fill(a.description, finding.fields),
                    resource=_action_resource(a, finding),
                    resourceId=_bound(a, "resourceId", finding) if a.resourceId else None,
                )
                for a in s.actions
            ],
        )
        for s in suggestion_defs
    ]
    if any(isinstance(value, Mapping) for value in finding.bindings.values()):
        # A resource built from the sender's data (an updated draft order) is validated before it
        # is sent; the card files' own resources are checked once, by the tests of the catalogue.
        suggestions = [s for s in suggestions if _valid_resources(s, definition.rule_id)]
    note = definition.profile_notes.get(profile) if profile else None  # type: ignore[call-overload]
    fixed = _fixed_parts(definition)
    return Card(
        uuid=new_uuid(),
        # CDS Hooks: under 140 characters. A long drug name can push a template over: shortened at
        # a word boundary rather than refused (which would cost the whole answer).
        summary=clip(_fill(summary, finding.fields), SUMMARY_MAX),
        detail=_detail(f"{detail.strip()}\n\n{note.strip()}" if note else detail, finding),
        indicator=indicator,
        source=fixed.source,
        suggestions=suggestions or None,
        # "any": Epic accepts only this value, and our suggestions never exclude each other.
        selectionBehavior="any" if suggestions else None,
        overrideReasons=fixed.override_reasons,
        links=fixed.links,
    )


@dataclass(frozen=True)
class _FixedParts:
    source: Source
    override_reasons: list[OverrideReason] | None
    links: list[Link] | None


def _fixed_parts(definition: CardDef) -> _FixedParts:
    """The parts of a card that depend only on its card file, built once per definition and kept
    on it: rebuilding and re-validating them was a tenth of a typical call's CPU."""
    private = definition.__pydantic_private__  # not `definition._fixed`: see `_bound`
    parts = private["_fixed"]  # type: ignore[index]
    if parts is None:
        parts = _FixedParts(
            source=Source(
                label=definition.source.label,
                url=definition.source.url,
                topic=Coding(
                    system=RULE_ID_SYSTEM,
                    code=definition.rule_id,
                    display=definition.title,
                    # The card file's version, so feedback and analytics can tell wordings apart. CDS
                    # Hooks' Coding has no `version` (2.0 and the 3.0 ballot): an extension carries it.
                    extension={RULE_VERSION_EXTENSION: definition.version},
                ),
            ),
            override_reasons=[
                OverrideReason(system=r.system, code=r.code, display=r.display)
                for r in definition.override_reasons
            ]
            or None,
            links=[Link(label=lk.label, url=lk.url, type=lk.type) for lk in definition.links] or None,  # type: ignore[arg-type]
        )
        private["_fixed"] = parts  # type: ignore[index]
    return parts


def render_all(
    findings: Iterable[Finding], catalogue: CardCatalogue, profile: str | None = None
) -> list[Card]:
    """Cards for all findings, most severe first (critical, warning, info); stable otherwise."""
    cards = [render(f, catalogue[f.rule_id], profile) for f in findings]
    cards.sort(key=lambda c: INDICATOR_ORDER[c.indicator])
    return cards
