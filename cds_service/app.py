"""The ASGI application: routes, middleware and the resources one process shares.

One hook call, in order:
    request in (validated by `hooks.py`) → service definition (`services.py`) → data resolved from
    prefetch or the FHIR server (`prefetch.py`) → patient record (`record.py`) → rules
    (`rules/`) → cards (`cards.py`) → issued cards recorded (`store/`) → response out.

Service and feedback calls are authenticated first (`security.py`: the EHR's JWT), before the
body is read; discovery, /healthz and /readyz are open, and CORS preflights never reach a route.
Every call, whatever its outcome, gets one access log line (`access_log.py`), written once the
answer has gone; routes add their fields to it with `access_log.note`.

This module wires; it holds no clinical knowledge. Every error the client can cause is answered
with a 4xx and a FHIR OperationOutcome that says what was wrong and where (forward compatible with
CDS Hooks 3.0, which recommends exactly that), never a stack trace and never patient data.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cds_service import access_log, analytics, console, digest, metrics, security, server, wire
from cds_service import cards as card_rendering
from cds_service.engine import Engine, HookOutcome, RequestError, issue, validation_issues
from cds_service.fhir_client import BreakerPolicy, FhirClient, new_http_client
from cds_service.hooks import CDSRequest, CDSResponse, DiscoveryResponse, FeedbackRequest
from cds_service.limits import LoadShedding, RequestLimits
from cds_service.services import ServiceDefinition, build_services
from cds_service.settings import Settings
from cds_service.store import IssuedCard, Store
from cds_service.store.writer import IssueWriter
from cds_service.suppression import CardPolicy

log = logging.getLogger("cds_service")

#: Allocations (less deallocations) of container objects between two collections of the youngest
#: generation, in the served app (Python's default: 700). Why: in `create_app`'s lifespan.
GC_THRESHOLD = 100_000

#: On a graceful shutdown, how long the queued issued-card records may take to be written.
SHUTDOWN_FLUSH_SECONDS = 10.0
#: Feedback on a card whose record this process still queues: how long to wait for its write.
FEEDBACK_FLUSH_SECONDS = 5.0
#: Beyond the write delay, how long feedback waits for an unknown card's record from another
#: worker or replica (one batch write), and how often it looks meanwhile.
FEEDBACK_WAIT_MARGIN_SECONDS = 0.25
FEEDBACK_WAIT_STEP_SECONDS = 0.05
#: The longest feedback waits so, whatever the write delay: the EHR is waiting for its answer.
FEEDBACK_WAIT_MAX_SECONDS = 5.0

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppState:
    """What one process shares across requests, created in the lifespan."""

    settings: Settings
    services: dict[str, ServiceDefinition]
    engine: Engine
    store: Store
    clock: Clock
    authenticator: security.Authenticator
    #: Issued-card records, written behind the answers (store/writer.py).
    issued: IssueWriter


def operation_outcome(
    status: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"resourceType": "OperationOutcome", "issue": issues},
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, freeze_gc: bool = False
) -> FastAPI:
    """The ASGI app. `freeze_gc`: for the served app (`app` below), one process per app."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.die_with_parent()  # a worker of `als-cds serve` never outlives its master
        auth = security.AuthConfig.from_settings(settings)
        security.check_configuration(auth)  # before anything else: a misconfiguration stops here
        catalogue = card_rendering.load_catalogue(settings.cards_dir)
        services = build_services(disabled=settings.disabled_rules)
        if settings.disabled_rules:  # governance: what this site does not check, said once at start-up
            log.info("rules switched off", extra={"disabled_rules": settings.disabled_rules})
        missing = sorted({r.id for s in services.values() for r in s.rules if r.id not in catalogue})
        if missing:
            raise card_rendering.CardFileError(
                f"rules without a card file in {settings.cards_dir}: {missing}"
            )
        store = Store(settings.database_url)
        if settings.migrate_on_start:
            await run_in_threadpool(store.migrate)
        issued = IssueWriter(
            store,
            linger_seconds=settings.issued_write_delay_ms / 1000,
            max_pending_calls=settings.issued_queue_calls,
            on_drop=lambda reason, calls: metrics.ISSUED_DROPPED.labels(reason).inc(calls),
        )
        issued.start()
        fhir = FhirClient(
            # A pool per FHIR origin, each made once and reused (a bulkhead: fhir_client.py).
            new_pool=functools.partial(
                new_http_client,
                max_connections=settings.fhir_max_connections,
                timeout_seconds=settings.fhir_budget_seconds,
            ),
            max_pages=settings.fhir_max_pages,
            max_in_flight=settings.fhir_max_connections,
            max_response_bytes=settings.fhir_max_response_bytes,
            breaker=BreakerPolicy(settings.fhir_breaker_failures, settings.fhir_breaker_open_seconds),
        )
        jwks_http = security.new_jwks_http_client()
        now = clock or _utc_now
        app.state.als = AppState(
            settings=settings,
            services=services,
            engine=Engine(
                settings,
                catalogue,
                fhir,
                now,
                # Snoozes and the order session, from the shared store (suppression.py).
                policy=CardPolicy(store, settings, catalogue, writer=issued),
            ),
            store=store,
            clock=now,
            authenticator=security.Authenticator(auth, store=store, clock=now, http=jwks_http),
            issued=issued,
        )
        if auth.required:
            pinned = sorted({jku for client in auth.clients.values() for jku in client.jku_keys})
            log.info(
                "authentication is on",
                extra={"trusted_issuers": sorted(auth.clients), "pinned_jku": pinned},
            )
        else:
            log.warning("authentication is OFF: do not expose this service", extra={"auth_required": False})
        if settings.console_served:  # only ever with authentication off (settings.py)
            log.info("the console is on at /console", extra={"console": True})
        if freeze_gc:
            # What start-up built (modules, models, value sets, card files: some 130,000 objects)
            # lives as long as the process. Frozen, every full garbage collection skips it: such a
            # collection holds the GIL, and walking all of it stalled the worker for ~80 ms each
            # time a large chart was read. Only in the served app: a process that creates many
            # apps (the tests) would keep each one's cyclic garbage forever.
            gc.collect()
            gc.freeze()
            # A hook call leaves some 700 container objects alive for a while (its issued-card
            # record waits up to 50 ms for the writer thread), just past the default threshold of
            # 700 allocations: nearly one collection a call, with a full collection every ~150
            # calls, some 150-200 us a call (7 %, measured with gc.callbacks; docs/performance.md).
            # A thousand results decoded whole (wire.py) are some 40,000 containers alive until the
            # call ends: at 10,000 that was four collections a call, each walking all of them
            # again (4 ms of a 40 ms call by gc.callbacks); at 100,000 none, as they are freed
            # before the count is reached. Typical calls see a collection every few thousand
            # calls; the cyclic garbage waiting for it is bounded by the count, and memory stays
            # flat. The largest bodies are read resource by resource (reader/lazy.py), so no call
            # comes near the count with its own objects alone.
            gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            # After uvicorn has answered the calls in flight (graceful shutdown): their records too.
            await run_in_threadpool(issued.close, SHUTDOWN_FLUSH_SECONDS)
            await jwks_http.aclose()
            await fhir.aclose()
            store.close()

    app = FastAPI(
        title="als-cds",
        summary="CDS Hooks 2.0 service for guideline-based ALS/MND care",
        version="0.1.0",
        lifespan=lifespan,
        **_framework_telemetry(),
    )
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    # Outside the body checks, inside CORS (a browser can read the 503) and the access log.
    app.add_middleware(
        LoadShedding,
        max_in_flight=settings.max_in_flight_calls,
        retry_after_seconds=settings.retry_after_seconds,
    )
    origins = settings.cors_origins  # CORS is added last so that it wraps every answer, 4xx too
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if "*" in origins else origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )
    # Outermost, so that every answer gets its line: CORS refusals, 413s, 401s and 500s too.
    app.add_middleware(access_log.AccessLog, cors_origins=origins, routes=app.router.routes)
    _install_error_handlers(app)
    _add_routes(app)
    # GET /analytics/rules, only when its token is set (analytics.py): its own credential, not the EHR's.
    analytics.install(
        app,
        settings,
        lambda: operation_outcome(
            401, [issue("a valid analytics token is required", code="login")], {"WWW-Authenticate": "Bearer"}
        ),
    )
    console.install(app, settings)  # /console, when the settings serve it (console/__init__.py)
    _document_request_body(app)
    return app


def _framework_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry (0.165 and later), once an operator configures a provider,
    records request validation failures and unhandled exceptions as log records, with the
    exceptions' messages and stack traces ("logs"). Either can quote what a request carried, and
    this service never logs patient data (its own lines name exception types only): off. FastAPI's
    spans and metrics (route, method, status, duration) stay the operator's to enable. An older
    FastAPI has no such option."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"logs": False}}


def _document_request_body(app: FastAPI) -> None:
    """The invoke route reads its body itself (`wire.py`), so FastAPI does not see the CDSRequest
    model: put its schema into the OpenAPI components that the route's requestBody refers to."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            request_schema = CDSRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["CDSRequest"] = request_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return operation_outcome(400, validation_issues(exc.errors()))

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return operation_outcome(exc.status, exc.issues)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "not-supported", 413: "too-long", 415: "not-supported"}.get(
            exc.status_code, "processing"
        )
        return operation_outcome(
            exc.status_code, [issue(str(exc.detail), code=code)], getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The message of an unexpected exception may quote data: log only its type.
        request_id = access_log.request_id(request)
        log.error(
            "unhandled error",
            extra={"error_type": type(exc).__name__, "request_id": request_id},
            exc_info=False,
        )
        # Answered outside the access log middleware, which cannot add its header here.
        headers = {"X-Request-Id": request_id} if request_id else None
        return operation_outcome(500, [issue("internal error", code="exception")], headers)


def _state(request: Request) -> AppState:
    return request.app.state.als


def _service(state: AppState, service_id: str) -> ServiceDefinition:
    service = state.services.get(service_id)
    if service is None:
        raise RequestError.single(404, f"no CDS service with id '{service_id}'", code="not-found")
    return service


class _EhrAuthenticatedRoute(APIRoute):
    """A route only a trusted EHR may call: its JWT is checked before the body is even read, so an
    unauthenticated caller gets the same bare 401 whatever it sent (`security.py`)."""

    #: The endpoint reads its own body and takes only (service_id, request): called directly, not
    #: through FastAPI's parameter solving, which cost ~5 % of a typical hook call's CPU for a path
    #: parameter that is always a string (the endpoint's signature still documents the route).
    direct: bool = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler() if not self.direct else self._direct_handler()
        path_format = self.path_format  # e.g. /cds-services/{service_id}/feedback
        event = "feedback" if path_format.endswith("/feedback") else "hook call"

        async def authenticated(request: Request) -> Response:
            state = _state(request)
            service_id = request.path_params.get("service_id")
            # The access line names the service only when it is one of ours (the path is the caller's).
            access_log.note(
                request, event=event, service=service_id if service_id in state.services else None
            )
            endpoint = path_format.format(**request.path_params)
            refusal = await state.authenticator.authenticate(request, endpoint)
            if refusal is not None:
                return refusal
            access_log.note(request, issuer=_ehr_issuer(request))
            return await handler(request)

        return authenticated

    def _direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request.path_params["service_id"], request)
            return response

        return handler


class _EhrHookRoute(_EhrAuthenticatedRoute):
    """The hook-call route: `invoke` reads and validates its own body (`wire.py`)."""

    direct = True


def _add_routes(app: FastAPI) -> None:
    def ehr_post(
        path: str, route_class: type[_EhrAuthenticatedRoute] = _EhrAuthenticatedRoute, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Like `app.post`, for a route only a trusted EHR may call (`_EhrAuthenticatedRoute`)."""

        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            responses = {401: {"description": "no valid client JWT"}, **options.pop("responses", {})}
            app.router.add_api_route(
                path,
                endpoint,
                methods=["POST"],
                responses=responses,
                route_class_override=route_class,
                **options,
            )
            return endpoint

        return register

    @app.get("/cds-services", summary="CDS Hooks discovery")
    @app.get("/cds-services/", include_in_schema=False)
    async def discovery(request: Request) -> dict[str, Any]:
        state = _state(request)
        today = state.clock().date()
        services = [s.descriptor(state.settings, today) for s in state.services.values()]
        return DiscoveryResponse(services=services).to_json()

    @ehr_post(
        "/cds-services/{service_id}",
        _EhrHookRoute,
        summary="Invoke a CDS service",
        response_model=CDSResponse,
        responses={400: {}, 404: {}, 412: {"description": "required FHIR data could not be obtained"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CDSRequest"}}},
            }
        },
    )
    async def invoke(service_id: str, request: Request) -> Response:
        state = _state(request)
        service = _service(state, service_id)
        raw = await request.body()
        # Decoded whole or entry by entry as the process's budget allows, held for the whole call
        # (wire.py); a large body in a worker thread, so this worker keeps serving other calls
        # meanwhile; a smaller one costs less than the hand-off (wire.HANDOFF_BODY_BYTES).
        with wire.room_to_decode(len(raw)) as whole:
            large = len(raw) > wire.HANDOFF_BODY_BYTES
            if large:
                body = await asyncio.to_thread(wire.read_request, raw, whole=whole)
            else:
                body = wire.read_request(raw, whole=whole)
            access_log.note(request, hook=body.hook, hook_instance=body.hookInstance)
            outcome = await state.engine.run(service, body, issuer=_ehr_issuer(request), large_body=large)
        _record_issued(state, service, body, outcome)
        access_log.note(
            request,
            cards=len(outcome.cards),
            rule_ids=digest.shown_rule_ids(outcome.cards),
            ingest=outcome.record.report.summary(),
        )
        metrics.observe_cards(outcome.cards)
        metrics.observe_reader(outcome.record.report)
        # Sent as bytes: the cards were validated when they were built, and FastAPI's own check of
        # a returned dict (then json.dumps) cost more than a tenth of a typical call's CPU.
        return Response(
            CDSResponse(cards=outcome.cards).to_json_bytes(),
            media_type="application/json",
            # The body and the record are freed once the answer is sent, not before: freeing the
            # objects of a large chart is a twentieth of its call, and the EHR need not wait for it.
            # (When the answer cannot be sent, the task never runs and they are freed with it. The
            # room to decode went back a send earlier: the answer is a few kB, sent at once.)
            background=BackgroundTask(_freed_after_sending, body, outcome),
        )

    @ehr_post("/cds-services/{service_id}/feedback", summary="Feedback on cards (accepted / overridden)")
    async def feedback(service_id: str, body: FeedbackRequest, request: Request) -> dict[str, Any]:
        state = _state(request)
        service = _service(state, service_id)
        await _issued_records_of(state, {item.card for item in body.feedback})
        result = await run_in_threadpool(state.store.save_feedback, service.id, body.feedback, state.clock())
        if state.engine.policy is not None:  # what it means per rule, and the snoozes it sets
            await state.engine.policy.after_feedback(service.id, body.feedback, state.clock())
        await run_in_threadpool(_count_feedback, state.store, body.feedback)
        access_log.note(
            request,
            items=len(body.feedback),
            stored=result.stored,
            duplicates=result.duplicates,
            unknown_cards=result.unknown_cards,
        )
        return {
            "stored": result.stored,
            "duplicates": result.duplicates,
            "unknownCards": result.unknown_cards,
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus exposition (metrics.py); who may read it: README, Metrics."""
        settings = _state(request).settings
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        allowed = metrics.allowed(token, settings.auth_required, request.headers)
        if allowed is None:
            return operation_outcome(404, [issue("Not Found", code="not-found")])
        if not allowed:
            return operation_outcome(
                401,
                [issue("a valid metrics token is required", code="login")],
                {"WWW-Authenticate": "Bearer"},
            )
        body, content_type = await run_in_threadpool(metrics.render)
        return Response(body, media_type=content_type)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the database answers")
    async def readyz(request: Request) -> JSONResponse:
        ok = await run_in_threadpool(_state(request).store.ping)
        return JSONResponse(
            {"status": "ok" if ok else "database unavailable"}, status_code=200 if ok else 503
        )


async def _freed_after_sending(*_held: object) -> None:
    """Nothing to do: holding the call's objects until the answer is sent is the point (`invoke`).
    A coroutine, so Starlette awaits it in place rather than handing it to a worker thread."""


def _record_issued(
    state: AppState, service: ServiceDefinition, body: CDSRequest, outcome: HookOutcome
) -> None:
    """Remember which rule issued each card, so feedback can name the rule, with issue 12's items
    and marks (`outcome.issued_rows`): one record, queued for the writer thread, so the EHR does
    not wait for the database (store/writer.py). Never fails the call: cards matter more to the
    clinician than our analytics."""
    cards, now = outcome.cards, outcome.now
    if not cards:
        return
    issued = [
        IssuedCard(
            card_uuid=card.uuid,
            rule_id=card.source.topic.code,
            service_id=service.id,
            hook=body.hook,
            hook_instance=body.hookInstance,
            indicator=card.indicator,
            suggestion_uuids=tuple(s.uuid for s in card.suggestions or ()),
            issued_at=now,
        )
        for card in cards
    ]
    items, marks = outcome.issued_rows
    state.issued.submit(cards=issued, items=items, marks=marks)  # a drop: counted and logged there


async def _issued_records_of(state: AppState, card_uuids: set[str]) -> None:
    """Before feedback looks its cards up: their records written, as far as they will be soon.

    A card of this process whose record is still queued: the queue is written now. A card no
    worker has recorded yet may be one another worker or replica answered a moment ago, whose
    record comes within its write delay and one write: wait that long for it (5 s at most), no
    longer. Whatever is still unknown then is stored flagged `unknown_card`, as before.
    """
    if state.issued.holds(card_uuids):
        await run_in_threadpool(state.issued.flush, FEEDBACK_FLUSH_SECONDS)
    try:
        missing = card_uuids - await run_in_threadpool(state.store.issued_card_uuids, card_uuids)
        delay = state.settings.issued_write_delay_ms / 1000
        bound = min(delay + FEEDBACK_WAIT_MARGIN_SECONDS, FEEDBACK_WAIT_MAX_SECONDS)
        deadline = time.monotonic() + bound
        while missing and time.monotonic() < deadline:
            await asyncio.sleep(FEEDBACK_WAIT_STEP_SECONDS)
            missing -= await run_in_threadpool(state.store.issued_card_uuids, missing)
    except Exception as exc:  # the store is down: saving the feedback will say so
        log.error("could not look up issued cards", extra={"error_type": type(exc).__name__})


def _count_feedback(store: Store, items: Sequence[Any]) -> None:
    """Feedback outcomes per rule, for metrics: the rule that issued each card (None: unknown card)."""
    for item in items:
        rule = store.issued_card_rule(item.card)
        outcome = metrics.one_of(item.outcome, metrics.OUTCOMES)
        metrics.FEEDBACK.labels(metrics.rule_label(rule), outcome).inc()


def _ehr_issuer(request: Request) -> str | None:
    """The `iss` of the EHR's verified JWT (None with authentication off): which EHR called."""
    verified = getattr(request.state, "ehr_client", None)
    return verified.issuer if verified is not None else None


app = create_app(freeze_gc=True)
