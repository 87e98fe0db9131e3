"""One hook call, from a validated request to cards, without HTTP.

The web app (`app.py`) and the command line (`als-cds evaluate`) both answer hook calls through
`Engine.run`, so what a developer sees on the command line is what an EHR gets:

    hook and context checked → data resolved from prefetch or the FHIR server (`prefetch.py`)
    → patient record (`record.py`) → rules (`rules/`) → cards (`cards.py`)

Errors the caller made raise `RequestError` with the HTTP status and FHIR OperationOutcome issues
that say what was wrong and where; they never quote patient data.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from cds_service import cards as card_rendering
from cds_service import digest, prefetch
from cds_service.fhir_client import CallBudget, FhirClient
from cds_service.hooks import HOOK_CONTEXTS, Card, CDSRequest, OrderSelectContext, OrderSignContext
from cds_service.reader import ReadOptions, build_record, resources_from_bundle
from cds_service.record import PatientRecord
from cds_service.rules import RuleConfig, evaluate, gate_open
from cds_service.services import ServiceDefinition
from cds_service.settings import Settings
from cds_service.suppression import CardPolicy, HookCall, IssuedRows, draft_entries, without_drafts

Clock = Callable[[], datetime]

#: Up to this many resources, the record is read and the rules run on the event loop (some 15 to 30
#: µs a resource); more in a worker thread. As `wire.HANDOFF_BODY_BYTES` (about a resource a kB),
#: whose comment has the measurements: below this the hand-off costs more than the loop gives up.
INLINE_READ_RESOURCES = 500


def issue(diagnostics: str, *, where: Sequence[str] = (), code: str = "invalid") -> dict[str, Any]:
    """One OperationOutcome issue."""
    found: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if where:
        found["expression"] = list(where)
    return found


def validation_issues(errors: Sequence[Any], prefix: str = "") -> list[dict[str, Any]]:
    """pydantic errors → OperationOutcome issues. Only locations and messages: inputs are PHI."""
    issues = []
    for error in errors:
        raw_loc = list(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "invalid JSON")
            position = raw_loc[-1] if raw_loc and isinstance(raw_loc[-1], int) else None
            at = f" at character {position}" if position is not None else ""
            issues.append(issue(f"The request body is not valid JSON{at}: {detail}", code="structure"))
            continue
        loc = [str(p) for p in raw_loc if p != "body"]
        where = ".".join(([prefix] if prefix else []) + loc)
        message = error.get("msg", "invalid value")
        if not where:
            message = f"The request body: {message}"
        issues.append(issue(message, where=[where] if where else ()))
    return issues or [issue("invalid request")]


class RequestError(Exception):
    """A request the client got wrong, answered with `status` and OperationOutcome `issues`."""

    def __init__(self, status: int, issues: list[dict[str, Any]]) -> None:
        super().__init__(issues[0]["diagnostics"])
        self.status = status
        self.issues = issues

    @classmethod
    def single(
        cls, status: int, diagnostics: str, *, where: Sequence[str] = (), code: str = "invalid"
    ) -> RequestError:
        return cls(status, [issue(diagnostics, where=where, code=code)])


@dataclass(frozen=True)
class HookOutcome:
    cards: list[Card]
    record: PatientRecord
    now: datetime
    #: Every resource the call read (prefetch or FHIR server, Medications behind references, draft
    #: orders), as it arrived: for `--strict` reports.
    resources: Sequence[Any] = ()
    #: Issue 12's issued items and order session marks, when the policy leaves writing them to the
    #: caller (with the call's issued cards, as one record: store/writer.py).
    issued_rows: IssuedRows = ((), ())  # type: ignore[assignment]


@dataclass
class Engine:
    settings: Settings
    catalogue: card_rendering.CardCatalogue
    fhir: FhirClient
    clock: Clock
    #: List every deviation the reader meets (`--strict` reports), not only count them.
    keep_deviations: bool = False
    #: Snoozes, the order session and our own suggestions (`suppression.py`): needs the store, so
    #: the service has one and `als-cds evaluate` none (it shows every card the rules find).
    policy: CardPolicy | None = None
    # The templates depend only on the service, the settings and the day; computing them is a
    # millisecond of value-set merging that every call would otherwise repeat. Holds one day.
    _templates: dict[tuple[str, date], dict[str, str]] = field(default_factory=dict, init=False, repr=False)

    @cached_property
    def rule_config(self) -> RuleConfig:
        return RuleConfig.from_settings(self.settings)

    @cached_property
    def read_options(self) -> ReadOptions:
        return ReadOptions(
            site_tz=self.settings.site_tz,
            clock_skew=timedelta(seconds=self.settings.clock_skew_seconds),
            keep_deviations=self.keep_deviations,
        )

    def prefetch_templates(self, service: ServiceDefinition, today: date) -> dict[str, str]:
        key = (service.id, today)
        if key not in self._templates:
            if any(day != today for _, day in self._templates):
                self._templates.clear()
            self._templates[key] = service.prefetch(self.settings, today)
        return self._templates[key]

    async def run(
        self,
        service: ServiceDefinition,
        request: CDSRequest,
        *,
        issuer: str | None = None,
        large_body: bool = False,
    ) -> HookOutcome:
        """Answer one hook call. Raises RequestError (400, 412) for what the caller must fix.
        `issuer`: the EHR that called (its JWT's `iss`), which snoozes are kept per. `large_body`:
        the body was decoded in a worker thread (`wire.HANDOFF_BODY_BYTES`), so the record is read
        in one too, whatever its size: data built in one thread and read on the loop costs the
        hand-off without its benefit."""
        if request.hook != service.hook:
            raise RequestError.single(
                400,
                f"service '{service.id}' answers the '{service.hook}' hook, not '{request.hook}'",
                where=["hook"],
            )
        context = validate_context(request)
        now = self.clock()
        templates = self.prefetch_templates(service, now.date())
        # One budget for every FHIR fetch of the call: a hard deadline and a byte allowance.
        budget = CallBudget(self.settings.fhir_budget_seconds, self.settings.fhir_max_call_bytes)
        try:
            data = await prefetch.resolve(request, templates, self.fhir, budget=budget)
        except prefetch.PrefetchInvalid as exc:
            raise RequestError.single(400, exc.message, where=[f"prefetch.{exc.key}"]) from exc
        if data.unavailable:
            order = list(templates)
            raise RequestError(
                412,
                [
                    issue(
                        f"prefetch key '{u.key}' ({templates[u.key]}) could not be obtained: {u.reason}",
                        where=[f"prefetch.{u.key}"],
                        code=u.issue_code,
                    )
                    for u in sorted(data.unavailable.values(), key=lambda u: order.index(u.key))
                ],
            )
        resources = data.resources()
        draft_orders = context.draftOrders.model_dump() if isinstance(context, OrderSignContext) else None
        medications = await prefetch.fetch_medications(
            request,
            resources,
            draft_orders,
            self.fhir,
            budget=budget,
        )
        read = functools.partial(
            build_record,
            patient_id=context.patientId,
            now=now,
            resources=resources,
            interest=service.interest,
            draft_orders=draft_orders,
            selections=context.selections if isinstance(context, OrderSelectContext) else (),
            options=self.read_options,
            medications=medications,
            gate=gate_open,
        )

        def decide(drafts: Any = draft_orders) -> tuple[PatientRecord, list[Card]]:
            record = read(draft_orders=drafts)
            findings = evaluate(service.rules, record, self.rule_config)
            return record, card_rendering.render_all(findings, self.catalogue, self.settings.profile)

        # Reading a large chart, and the rules over it, is CPU work: off the event loop, so the
        # process keeps answering. Up to a few hundred resources, less than the hand-off costs.
        if large_body or len(resources) > INLINE_READ_RESOURCES:
            record, cards = await asyncio.to_thread(decide)
        else:
            record, cards = decide()
        cards, rows = await self._against_fatigue(
            service, request, context, now, issuer, draft_orders, cards, decide
        )
        orders = resources_from_bundle(draft_orders) if draft_orders else []
        return HookOutcome(cards, record, now, [*resources, *medications, *orders], rows)

    async def _against_fatigue(
        self,
        service: ServiceDefinition,
        request: CDSRequest,
        context: Any,
        now: datetime,
        issuer: str | None,
        draft_orders: Any,
        cards: list[Card],
        decide: Callable[[Any], tuple[PatientRecord, list[Card]]],
    ) -> tuple[list[Card], IssuedRows]:
        """Snoozes and the order session (with a policy), then the reminders' digest (issue 12)."""
        call = None
        if self.policy is not None:
            drafts = draft_entries(draft_orders)
            call = HookCall(service.id, request.hook, issuer or "", context.patientId, now, drafts)
            cards = await self.policy.select(
                call, cards, lambda excluded: decide(without_drafts(draft_orders, excluded))[1]
            )
        if self.settings.digest_enabled:
            cards = digest.fold(cards, self.catalogue, digest.load_wording(self.settings.cards_dir))
        rows: IssuedRows = ([], [])
        if self.policy is not None and call is not None:
            rows = await self.policy.record(call, cards)
        return cards, rows


def validate_context(request: CDSRequest) -> Any:
    model = HOOK_CONTEXTS.get(request.hook)
    if model is None:
        raise RequestError.single(400, f"unsupported hook '{request.hook}'", where=["hook"])
    try:
        return model.model_validate(request.context)
    except ValidationError as exc:
        raise RequestError(400, validation_issues(exc.errors(include_input=False), prefix="context")) from exc
