"""The console: fire hooks and review the rules in a browser, without an EHR and offline.

Served at `/console` only when `Settings.console_served` (ALS_CDS_CONSOLE_ENABLED: `auto`, the
default, serves it exactly when authentication is off, as in the README's quickstart; `true` with
authentication on is refused at start-up). When it is not served, none of its routes exist: /console
is a 404 and nothing of it is in the OpenAPI document.

Why only with authentication off: the page calls the service's own hook and feedback endpoints,
exactly as an EHR does (the same route, access log line, issued-card record and feedback rows), and
it has no JWT to send. Giving it one would mean a signing key in a web page, or a second way into the
engine that skips EHR authentication; it gets neither. Its own endpoints read files of this
repository (the fixture patients, their expectations), the loaded card files and, for the analytics
page, the aggregate counts per rule that `GET /analytics/rules` serves (no patient data).

* `GET /console`: fire patient-view, order-select or order-sign for a fixture patient, for a patient
  on a FHIR server (the service fetches the data), or for a pasted hook request; the cards rendered
  as an EHR renders them, with real feedback (`static/index.html`, `static/console.js`);
* `GET /console/rules`: the rule review page (`static/rules.html`, `static/rules.js`);
* `GET /console/analytics`: per rule and period, what became of the cards, with a CSV export: the
  figures of `GET /analytics/rules` (`analytics.py`; `static/analytics.html`, `static/analytics.js`);
* `GET /console/api/fixtures`, `POST /console/api/request`, `GET /console/api/rules`,
  `GET /console/api/analytics`: the data behind the pages (`fixtures.py`, `review.py`,
  `analytics.py`).

No build chain: plain HTML, CSS and small ES modules in `static/`, nothing fetched from elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from cds_service import analytics
from cds_service.console import fixtures as fixture_data
from cds_service.console import review
from cds_service.rules import CATALOGUE
from cds_service.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: The pages load only their own files and call only this service.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class ConsoleOrderPick(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        min_length=1,
        max_length=300,
        description="A draft order of the fixtures: `fixture/ResourceType/id`, as GET /console/api/fixtures "
        "lists them.",
    )
    selected: bool = Field(
        True, description="order-select: among the selections; order-sign: signed (else left out)."
    )


class ConsoleRequestSpec(BaseModel):
    """What to build: a hook, and a fixture patient or a FHIR server and patient id."""

    model_config = ConfigDict(extra="forbid")

    hook: Literal["patient-view", "order-select", "order-sign"]
    patient: str | None = Field(None, max_length=200, description="A fixture patient (file name).")
    fhirServer: str | None = Field(None, max_length=2000, description="A FHIR server base URL.")
    patientId: str | None = Field(None, max_length=200, description="A patient id on that FHIR server.")
    orders: list[ConsoleOrderPick] = Field(default_factory=list, max_length=50)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the console's routes to the app, if the settings serve it."""
    if not settings.console_served:
        return
    router = APIRouter(prefix="/console", tags=["console"])

    @router.get("", include_in_schema=False)
    async def console_page() -> FileResponse:
        return _page("index.html")

    @router.get("/rules", include_in_schema=False)
    async def rules_page() -> FileResponse:
        return _page("rules.html")

    @router.get("/analytics", include_in_schema=False)
    async def analytics_page() -> FileResponse:
        return _page("analytics.html")

    @router.get("/api/fixtures", summary="Console: the fixture patients and the draft order library")
    async def fixtures_list() -> dict[str, Any]:
        found = fixture_data.load()
        return {
            "expectedAt": fixture_data.EXPECTATIONS_DATE.isoformat(),
            "patients": [p.describe() for p in found.patients.values()],
            "orderLibrary": [o.describe() for o in found.library],
        }

    @router.post("/api/request", summary="Console: the hook request for a fixture patient or a FHIR server")
    async def build_request(spec: ConsoleRequestSpec, request: Request) -> dict[str, Any]:
        state = request.app.state.als
        service = next(s for s in state.services.values() if s.hook == spec.hook)
        keys = list(state.engine.prefetch_templates(service, state.clock().date()))
        built = fixture_data.build_request(
            fixture_data.load(),
            hook=spec.hook,
            prefetch_keys=keys,
            picks=[fixture_data.OrderPick(o.key, o.selected) for o in spec.orders],
            fixture=spec.patient,
            fhir_server=spec.fhirServer,
            patient_id=spec.patientId,
        )
        return {"service": service.id, "request": built}

    @router.get("/api/rules", summary="Console: every rule with its card, sources and firing fixtures")
    async def rules_review(request: Request) -> dict[str, Any]:
        state = request.app.state.als
        found = fixture_data.load()
        rules = review.review(CATALOGUE, state.engine.catalogue, found.rules_fired())
        return {
            "expectedAt": fixture_data.EXPECTATIONS_DATE.isoformat(),
            "profile": state.settings.profile,
            "fixturePatients": len(found.patients),
            "rules": rules,
        }

    @router.get(
        "/api/analytics",
        summary="Console: per rule and period, what GET /analytics/rules answers (JSON or CSV)",
    )
    async def analytics_figures(
        request: Request,
        since: str | None = None,
        until: str | None = None,
        period: str | None = None,
        rule: str | None = None,
        format: str | None = None,
    ) -> Response:
        # No analytics token here: the console exists only with authentication off, when every
        # endpoint is open anyway. The parameters are read and checked by analytics.py.
        state = request.app.state.als
        return await analytics.answer(request, state.store, state.engine.catalogue, state.clock())

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
