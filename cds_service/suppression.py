"""Feedback that changes the next card: snoozes, the order session, our own suggestions.

Three reasons a card the rules found is not shown (issue 12), each logged as `card suppressed` with
the rule id, the reason, the service and the hook (never patient data) and counted per rule in
`suppressed_cards` for the analytics:

* `snoozed`: the clinician overrode the rule's card for this patient with a snooze reason (a reason
  whose display starts with "Snooze", or a patient-declined reason, with a period in the card file's
  `[fatigue.snooze]`). Until the period ends the rule shows no card for that patient, on any replica
  (the snooze is a row in the shared database); then it returns by itself. Each process keeps what
  it read of a subject's snooze for ALS_CDS_SNOOZE_CACHE_SECONDS (reading it was a tenth of a
  typical call's CPU): a snooze set through this process counts at once, one set through another
  worker or replica at most that long later; the end of a snooze is exact.
* `duplicate`: on order-sign, a card with the very same text (so about the same, unchanged order)
  was shown on order-select for the same patient within the order session
  (ALS_CDS_ORDER_SESSION_MINUTES).
* `own-suggestion`: on the order hooks, a card that is only there because of a draft order matching
  a create suggestion of ours (same resource type and code, same patient, within the order session):
  the cards are worked out again without those drafts, and what disappears is not shown. This ends
  the loop the CDC opioid pilots hit (a suggested order firing the card that suggested it); cards
  about other orders, and anything the rules still find, are shown.

Whatever the reason, a **critical card is never suppressed**: not snoozed (a card file cannot even
offer it: `fatigue.check`), not deduplicated, not taken for our own suggestion's echo. If the store
cannot be read, every card is shown: a reminder twice is better than a warning lost.

Patients appear only as keyed hashes (HMAC-SHA256 with the pseudonym key): of the EHR (the JWT's
issuer), the patient id and the rule, so no stored value links one patient's rows across rules.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool

from cds_service import digest as digest_cards
from cds_service import metrics
from cds_service.cards import OVERRIDE_REASON_SYSTEM, CardCatalogue
from cds_service.fatigue import NON_ADHERENCE_CODES, NON_ADHERENCE_SYSTEM
from cds_service.hooks import Card, FeedbackItem
from cds_service.settings import Settings
from cds_service.store import Store, feedback_dedupe_key
from cds_service.store import fatigue as stored
from cds_service.store.writer import IssueWriter

log = logging.getLogger(__name__)

ORDER_HOOKS = frozenset({"order-select", "order-sign"})

#: Issued items and order session marks of one call, for the writer (`CardPolicy.record`).
IssuedRows = tuple[list[stored.IssuedItem], list[stored.Mark]]

#: Most subjects whose snooze a process remembers (some 200 bytes each); beyond, the oldest half goes.
SNOOZE_CACHE_ENTRIES = 50_000

#: Re-evaluate the call without some draft orders (their indices in draftOrders.entry): the cards.
Rerun = Callable[[Collection[int]], list[Card]]


@dataclass(frozen=True)
class HookCall:
    """What of one hook call the policy needs; the patient id never leaves this object unhashed."""

    service_id: str
    hook: str
    issuer: str
    patient_id: str
    now: datetime
    #: draftOrders.entry[i].resource, by i (order hooks).
    drafts: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)


def draft_entries(draft_orders: Mapping[str, Any] | None) -> dict[int, Mapping[str, Any]]:
    entries = (draft_orders or {}).get("entry") or []
    return {
        i: entry["resource"]
        for i, entry in enumerate(entries)
        if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping)
    }


def without_drafts(draft_orders: Mapping[str, Any], excluded: Collection[int]) -> dict[str, Any]:
    """The draftOrders Bundle without the entries at `excluded`."""
    entries = draft_orders.get("entry") or []
    return {**draft_orders, "entry": [e for i, e in enumerate(entries) if i not in excluded]}


def ordered_codes(resource: Mapping[str, Any]) -> set[str]:
    """`system|code` of what an order orders: `code` (ServiceRequest and most orders) and
    `medicationCodeableConcept` (MedicationRequest)."""
    found = set()
    for element in ("code", "medicationCodeableConcept"):
        concept = resource.get(element)
        codings = concept.get("coding") if isinstance(concept, Mapping) else None
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, Mapping) and coding.get("system") and coding.get("code"):
                found.add(f"{coding['system']}|{coding['code']}")
    return found


class CardPolicy:
    """Applies snoozes and the order session to a call's cards, and records what was issued."""

    def __init__(
        self, store: Store, settings: Settings, catalogue: CardCatalogue, writer: IssueWriter | None = None
    ) -> None:
        self.store = store
        #: Issued items and marks are written behind the answer (store/writer.py); None: at once.
        self.writer = writer
        self.settings = settings
        self.catalogue = catalogue
        self.session = timedelta(minutes=settings.order_session_minutes)
        self.snooze_cache_seconds = float(settings.snooze_cache_seconds)
        # subject key → (monotonic time the entry stops being trusted, end of its snooze or None).
        self._snooze_cache: dict[str, tuple[float, datetime | None]] = {}
        configured = settings.pseudonym_key
        self._key: bytes | None = configured.get_secret_value().encode() if configured else None
        self._keyed: tuple[bytes, hmac.HMAC] | None = None

    async def key(self, now: datetime) -> bytes:
        if self._key is None:
            self._key = (await run_in_threadpool(stored.pseudonym_key, self.store, now)).encode()
        return self._key

    def _hash(self, key: bytes, *parts: str) -> str:
        # The unit separator cannot occur in an id we hash, so ("a", "bc") and ("ab", "c") differ.
        keyed = self._keyed
        if keyed is None or keyed[0] != key:
            keyed = self._keyed = (key, hmac.new(key, digestmod=hashlib.sha256))
        # A copy of the keyed state: OpenSSL 3 sets up a new HMAC context slowly (hmac.digest
        # took 3.5 us, a copy and one update 2.4 us; a call hashes some ten ids).
        mac = keyed[1].copy()
        mac.update("\x1f".join(parts).encode("utf-8"))
        return mac.hexdigest()

    def subject_key(self, key: bytes, call: HookCall, rule_id: str) -> str:
        return self._hash(key, "subject", call.issuer, call.patient_id, rule_id)

    def _shown_mark(self, key: bytes, call: HookCall, card: Card) -> str:
        rule = digest_cards.item_rule(card)
        return self._hash(
            key, "shown", call.issuer, call.patient_id, rule, card.indicator, card.summary, card.detail or ""
        )

    def _created_marks(self, key: bytes, call: HookCall, resource: Mapping[str, Any]) -> set[str]:
        rtype = str(resource.get("resourceType", ""))
        return {
            self._hash(key, "created", call.issuer, call.patient_id, rtype, code)
            for code in ordered_codes(resource)
        }

    # -- before the cards go out -----------------------------------------------------------------

    async def select(self, call: HookCall, cards: list[Card], rerun: Rerun) -> list[Card]:
        """The cards to show: those not snoozed, not a repeat, not our own suggestion's echo."""
        if not cards:
            return cards
        try:
            dropped = await self._dropped(call, cards, rerun)
        except Exception as exc:  # the store is down: show everything (see the module docstring)
            log.error(
                "could not check snoozes and the order session", extra={"error_type": type(exc).__name__}
            )
            return cards
        if not dropped:
            return cards
        rows = []
        for i, reason in sorted(dropped.items()):
            rule = digest_cards.item_rule(cards[i])
            log.info(
                "card suppressed",
                extra={"rule_id": rule, "reason": reason, "service": call.service_id, "hook": call.hook},
            )
            why = metrics.one_of(reason, metrics.SUPPRESSION_REASONS)
            metrics.SUPPRESSED.labels(metrics.rule_label(rule), why).inc()
            rows.append(stored.Suppressed(rule, reason, call.service_id, call.hook, call.now))
        try:
            await run_in_threadpool(stored.record_suppressed, self.store, rows)
        except Exception as exc:
            log.error("could not record suppressed cards", extra={"error_type": type(exc).__name__})
        return [card for i, card in enumerate(cards) if i not in dropped]

    async def _dropped(self, call: HookCall, cards: list[Card], rerun: Rerun) -> dict[int, str]:
        key = await self.key(call.now)
        open_ = {i for i, card in enumerate(cards) if card.indicator != "critical"}
        dropped: dict[int, str] = {}

        subjects = {
            i: self.subject_key(key, call, digest_cards.item_rule(cards[i]))
            for i in open_
            if (definition := self.catalogue.definitions.get(digest_cards.item_rule(cards[i])))
            and definition.fatigue.snooze
        }
        if subjects:
            active = await self._snoozed(set(subjects.values()), call.now)
            dropped |= {i: "snoozed" for i, subject in subjects.items() if subject in active}

        since = call.now - self.session
        if call.hook == "order-sign":
            marks = {i: self._shown_mark(key, call, cards[i]) for i in open_ - dropped.keys()}
            seen = await self._marked(marks.values(), "shown", since)
            dropped |= {i: "duplicate" for i, mark in marks.items() if mark in seen}

        if call.hook in ORDER_HOOKS and call.drafts and open_ - dropped.keys():
            by_draft = {i: self._created_marks(key, call, resource) for i, resource in call.drafts.items()}
            every = set().union(*by_draft.values())
            ours = await self._marked(every, "created", since)
            own = {i for i, marks in by_draft.items() if marks & ours.keys()}
            if own:
                still = {_identity(card) for card in await asyncio.to_thread(rerun, own)}
                dropped |= {
                    i: "own-suggestion" for i in open_ - dropped.keys() if _identity(cards[i]) not in still
                }
        return dropped

    async def _snoozed(self, subject_keys: set[str], now: datetime) -> set[str]:
        """The subject keys snoozed at `now`: from the cache where fresh, else from the store."""
        clock = time.monotonic()
        active: set[str] = set()
        unknown: list[str] = []
        for subject in subject_keys:
            cached = self._snooze_cache.get(subject)
            if cached is None or cached[0] <= clock:
                unknown.append(subject)
            elif cached[1] is not None and cached[1] > now:
                active.add(subject)
        if unknown:
            ends = await run_in_threadpool(stored.snooze_ends, self.store, unknown, now)
            active.update(ends)
            if self.snooze_cache_seconds > 0:
                for subject in unknown:
                    self._remember_snooze(subject, ends.get(subject), clock)
        return active

    def _remember_snooze(self, subject: str, until: datetime | None, clock: float) -> None:
        if len(self._snooze_cache) >= SNOOZE_CACHE_ENTRIES:
            for old in list(self._snooze_cache)[: SNOOZE_CACHE_ENTRIES // 2]:  # oldest first
                del self._snooze_cache[old]
        self._snooze_cache[subject] = (clock + self.snooze_cache_seconds, until)

    async def _marked(self, marks: Collection[str], kind: str, since: datetime) -> dict[str, set[str]]:
        """Marks stored, and those of this process's calls still queued for the writer."""
        found = await run_in_threadpool(stored.marked, self.store, marks, kind, since)
        if self.writer is not None:
            for mark, rules in self.writer.pending_marks(marks, kind, since).items():
                found.setdefault(mark, set()).update(rules)
        return found

    # -- once the cards are final ----------------------------------------------------------------

    async def record(self, call: HookCall, cards: Sequence[Card]) -> IssuedRows:
        """What was issued, per rule (`issued_items`), and the order session's marks. With a writer
        they are returned, for the caller to queue with the call's issued cards as one record
        (store/writer.py); without, written now. Never fails the call: the cards matter more than
        our records."""
        if not cards:
            return [], []
        try:
            key = await self.key(call.now)
            items, marks = self._issued(key, call, cards)
            if self.writer is not None:
                return items, marks
            await run_in_threadpool(stored.record_issue, self.store, items, marks)
        except Exception as exc:
            log.error("could not record issued items", extra={"error_type": type(exc).__name__})
        return [], []

    def _issued(
        self, key: bytes, call: HookCall, cards: Sequence[Card]
    ) -> tuple[list[stored.IssuedItem], list[stored.Mark]]:
        items: list[stored.IssuedItem] = []
        marks: list[stored.Mark] = []
        for card in cards:
            card_rule = digest_cards.item_rule(card)
            by_rule: dict[str, dict[str, str]] = {}
            for suggestion in card.suggestions or ():
                rule = digest_cards.suggestion_rule(suggestion) or card_rule
                by_rule.setdefault(rule, {})[suggestion.uuid or ""] = suggestion.label
                for action in suggestion.actions or ():
                    if action.type == "create" and action.resource:
                        marks += [
                            stored.Mark(mark, "created", rule, call.now)
                            for mark in self._created_marks(key, call, action.resource)
                        ]
            if card_rule in self.catalogue:
                by_rule.setdefault(card_rule, {})
            for rule, suggestions in by_rule.items():
                definition = self.catalogue.definitions.get(rule)
                items.append(
                    stored.IssuedItem(
                        card_uuid=card.uuid or "",
                        rule_id=rule,
                        rule_version=definition.version if definition else "",
                        service_id=call.service_id,
                        hook=call.hook,
                        indicator=card.indicator,
                        subject_key=self.subject_key(key, call, rule),
                        suggestions=suggestions,
                        issued_at=call.now,
                    )
                )
            if call.hook == "order-select" and card.indicator != "critical":
                marks.append(stored.Mark(self._shown_mark(key, call, card), "shown", card_rule, call.now))
        return items, marks

    # -- feedback ----------------------------------------------------------------------------------

    async def after_feedback(self, service_id: str, items: Sequence[FeedbackItem], now: datetime) -> None:
        """What each feedback item means per rule (a digest's suggestion for its own rule; an
        override's reason with its system and standard code), and the snoozes it sets."""
        try:
            issued = await run_in_threadpool(stored.items_of, self.store, service_id, {i.card for i in items})
            rows, snoozes = self._meaning(service_id, items, issued, now)
            await run_in_threadpool(stored.save_feedback_rules, self.store, rows, snoozes, now)
            # Counted at once in this process: forgotten, so the next call reads the store's end
            # (the later of this one and any set elsewhere).
            for subject, _rule, _until in snoozes:
                self._snooze_cache.pop(subject, None)
        except Exception as exc:
            log.error("could not apply feedback to snoozes", extra={"error_type": type(exc).__name__})

    def _meaning(
        self,
        service_id: str,
        items: Iterable[FeedbackItem],
        issued: Mapping[str, list[Any]],
        now: datetime,
    ) -> tuple[list[stored.FeedbackRule], list[tuple[str, str, datetime]]]:
        rows: list[stored.FeedbackRule] = []
        snoozes: list[tuple[str, str, datetime]] = []
        for item in items:
            parts = issued.get(item.card)
            if not parts:
                continue  # a card we never issued: stored and flagged by the store, nothing to apply
            dedupe = feedback_dedupe_key(service_id, item)
            row = functools.partial(_feedback_rule, dedupe, service_id, item, now)
            if item.outcome == "accepted":
                for accepted in item.acceptedSuggestions or ():
                    for part in parts:
                        if accepted.id in part.suggestions:
                            rows.append(
                                row(
                                    part,
                                    suggestion_uuid=accepted.id,
                                    suggestion_label=part.suggestions[accepted.id],
                                )
                            )
                continue
            reasons = item.reasons()
            coding = reasons[0].reason if reasons else None
            code, system = (coding.code, coding.system) if coding else (None, None)
            for part in parts:
                resolved, standard, days = self._reason(part, code, system)
                until = None
                if days and part.indicator != "critical":
                    # From when the clinician overrode (never later than now: a repeat of the same
                    # item, or a clock ahead, must not stretch the snooze).
                    until = min(item.outcomeTimestamp, now) + timedelta(days=days)
                    snoozes.append((part.subject_key, part.rule_id, until))
                rows.append(
                    row(
                        part,
                        reason_system=resolved,
                        reason_code=code,
                        standard_code=standard,
                        snooze_until=until,
                    )
                )
        return rows, snoozes

    def _reason(
        self, part: Any, code: str | None, system: str | None
    ) -> tuple[str | None, str | None, int | None]:
        """(system, standard code, snooze days) of an override reason on one rule's card. A reason
        without a system (the sandbox sends none) is the card's own when its code is one of them."""
        if code is None:
            return system, None, None
        if system == NON_ADHERENCE_SYSTEM:
            return system, code if code in NON_ADHERENCE_CODES else None, None
        definition = self.catalogue.definitions.get(part.rule_id)
        own = {r.code: r for r in definition.override_reasons} if definition else {}
        reason = own.get(code)
        if reason is None or system not in (None, reason.system):
            return system, None, None
        assert definition is not None
        return (
            reason.system or OVERRIDE_REASON_SYSTEM,
            definition.fatigue.standard_reasons.get(code),
            definition.fatigue.snooze.get(code),
        )


def _feedback_rule(
    dedupe: str, service_id: str, item: FeedbackItem, now: datetime, part: Any, **values: Any
) -> stored.FeedbackRule:
    """One `feedback_rules` row: the feedback item `item` as it concerns the issued item `part`."""
    base: dict[str, Any] = {
        "suggestion_uuid": "",
        "suggestion_label": None,
        "reason_system": None,
        "reason_code": None,
        "standard_code": None,
        "snooze_until": None,
    }
    return stored.FeedbackRule(
        dedupe_key=dedupe,
        service_id=service_id,
        card_uuid=item.card,
        rule_id=part.rule_id,
        outcome=item.outcome,
        received_at=now,
        **(base | values),
    )


def _identity(card: Card) -> tuple[str, str, str]:
    """What makes two renderings the same card (their uuids differ)."""
    return digest_cards.item_rule(card), card.indicator, card.summary
