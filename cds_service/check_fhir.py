"""`als-cds check-fhir`: will this FHIR server give the service what it needs?

An integration engineer points it at their FHIR server (or SMART sandbox) with a patient id and,
if the server needs one, an access token. It reads the CapabilityStatement, then, service by
service, runs every prefetch query that service would make for that patient (a query two services
share is run once and reported under both), says which succeed, which are empty and which fail and
why (missing scopes, unsupported search parameters, paging trouble, a patient that is not there),
and then prints the cards the patient would get on patient-view, answered by the same engine the
service uses from patient-view's own queries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx

from cds_service import cards as card_rendering
from cds_service.engine import Engine, RequestError
from cds_service.fhir_client import FHIR_JSON, FhirClient, FhirFetchError, new_http_client
from cds_service.fhir_http import FhirHttp
from cds_service.hooks import CDSRequest
from cds_service.prefetch import TYPE_BY_KEY, render_template
from cds_service.reader.strict import StrictFinding, format_findings, strict_findings
from cds_service.record import Deviation
from cds_service.services import build_services
from cds_service.settings import Settings

#: Search parameters the templates rely on that a CapabilityStatement may not list per type.
#: Parameters a CapabilityStatement lists apart from the type's search parameters (searchInclude).
_GENERAL_PARAMS = frozenset({"_sort", "_count", "_include"})

#: The service whose cards the check shows.
PATIENT_VIEW = "als-patient-view"


@dataclass
class QueryCheck:
    key: str
    query: str  # the template as filled for this patient
    outcome: str  # "ok", "empty" or "failed"
    resources: int = 0
    pages: int = 0
    reason: str = ""
    hint: str = ""
    #: The services whose prefetch asks exactly this query under this key (it is run once).
    services: list[str] = field(default_factory=list)


@dataclass
class ServiceCheck:
    id: str
    hook: str
    keys: list[str]  # its prefetch keys, in the order discovery lists them


@dataclass
class CheckReport:
    server: str
    fhir_version: str | None = None
    capability_problems: list[str] = field(default_factory=list)
    services: list[ServiceCheck] = field(default_factory=list)
    #: Each distinct query once, in the order first asked; `services` says who asks it.
    queries: list[QueryCheck] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    cards_error: str | None = None
    #: With --strict: every deviation from R4 in what the server returned (None: not asked for).
    strict: list[StrictFinding] | None = None

    @property
    def ok(self) -> bool:
        failed = any(q.outcome == "failed" for q in self.queries) or self.cards_error is not None
        return not failed and not self.strict

    def queries_of(self, service_id: str) -> list[QueryCheck]:
        """The queries one service makes, in its prefetch order."""
        asked = {q.key: q for q in self.queries if service_id in q.services}  # one query per key
        keys = next((s.keys for s in self.services if s.id == service_id), [])
        return [asked[key] for key in keys if key in asked]


def _hint(status: int | None, key: str) -> str:
    rtype = TYPE_BY_KEY.get(key, "?")
    if status in (401, 403):
        return (
            f"the token is missing, expired or lacks read access to {rtype} "
            f"(SMART scope patient/{rtype}.read or user/{rtype}.read)"
        )
    if status == 400:
        return "the server refused the search: a search parameter or the date/_sort syntax may be unsupported"
    if status == 404:
        return f"the server does not serve {rtype} (or the base URL is wrong)"
    return ""


async def _capability(http: FhirHttp, server: str, token: str | None, report: CheckReport) -> dict:
    headers = {"Accept": FHIR_JSON} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        response = await http.get(f"{server}/metadata", headers=headers)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        report.capability_problems.append(f"no CapabilityStatement at /metadata ({type(exc).__name__})")
        return {}
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        report.capability_problems.append(
            f"no CapabilityStatement at /metadata (HTTP {response.status_code})"
        )
        return {}
    report.fhir_version = body.get("fhirVersion")
    if report.fhir_version and not report.fhir_version.startswith("4."):
        report.capability_problems.append(f"FHIR {report.fhir_version}: this service reads FHIR R4 (4.0.x)")
    resources: dict[str, set[str]] = {}
    for rest in body.get("rest") or []:
        for resource in rest.get("resource") or []:
            params = {p.get("name") for p in resource.get("searchParam") or [] if isinstance(p, dict)}
            resources[resource.get("type", "")] = {p for p in params if p}
    return resources


def _check_params(query: str, capabilities: Mapping[str, set[str]], report: CheckReport) -> None:
    def problem(text: str) -> None:
        if text not in report.capability_problems:
            report.capability_problems.append(text)

    if not capabilities:
        return
    rtype, _, params = query.partition("?")
    rtype = rtype.split("/", 1)[0]
    if rtype not in capabilities:
        problem(f"{rtype} is not listed in the CapabilityStatement")
        return
    listed = capabilities[rtype]
    if not listed:
        return  # the statement lists the type without its parameters: nothing to compare
    for name, _ in parse_qsl(params):
        if name not in listed and name not in _GENERAL_PARAMS:
            problem(f"{rtype}: search parameter '{name}' is not listed as supported")


async def _run_query(
    fhir: FhirClient, server: str, key: str, query: str, token: str | None
) -> tuple[QueryCheck, list[Any]]:
    """One query: its check, and the resources it returned."""
    try:
        result = await fhir.get(server, query, token)
    except FhirFetchError as exc:
        return QueryCheck(key, query, "failed", reason=exc.reason, hint=_hint(exc.status, key)), []
    if "?" not in query and not result.resources:
        # A read that finds nothing (HTTP 404). The service takes it as "no data", like a null
        # prefetch; for a check it means the id or the base URL is wrong.
        rtype = query.split("/", 1)[0]
        return (
            QueryCheck(
                key,
                query,
                "failed",
                reason=f"not found (HTTP 404): the server has no {rtype} with this id",
                hint="check the id given with --patient, and that the base URL is the FHIR server's",
            ),
            [],
        )
    outcome = "ok" if result.resources else "empty"
    return QueryCheck(key, query, outcome, len(result.resources), result.pages), list(result.resources)


async def check_fhir_server(
    server: str,
    patient_id: str,
    token: str | None,
    settings: Settings,
    *,
    now: datetime | None = None,
    strict: bool = False,
) -> CheckReport:
    server = server.rstrip("/")
    now = now or datetime.now(UTC)
    report = CheckReport(server=server)
    http = new_http_client(max_connections=10, timeout_seconds=max(settings.fhir_budget_seconds, 10))
    try:
        capabilities = await _capability(http, server, token, report)
        fhir = FhirClient(http, max_pages=settings.fhir_max_pages)
        context = {"userId": "Practitioner/als-cds-check", "patientId": patient_id}
        checks: dict[tuple[str, str], QueryCheck] = {}
        returned: dict[tuple[str, str], list[Any]] = {}
        for service in build_services(disabled=settings.disabled_rules).values():
            templates = service.prefetch(settings, now.date())
            report.services.append(ServiceCheck(service.id, service.hook, list(templates)))
            for key, template in templates.items():
                query = render_template(template, service.hook, context) or template
                check = checks.get((key, query))
                if check is None:
                    _check_params(query, capabilities, report)
                    check, resources = await _run_query(fhir, server, key, query, token)
                    checks[(key, query)], returned[(key, query)] = check, resources
                    report.queries.append(check)
                check.services.append(service.id)
        own = {q.key: q for q in report.queries_of(PATIENT_VIEW)}
        deviations = await _cards(report, settings, fhir, own, returned, context, now, strict=strict)
        if strict:
            report.strict = strict_findings(deviations, [r for rs in returned.values() for r in rs])
    finally:
        await http.aclose()
    return report


def _as_prefetch(key: str, resources: list[Any]) -> Any:
    if TYPE_BY_KEY[key] == "Patient":
        return resources[0] if resources else None
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


async def _cards(
    report: CheckReport,
    settings: Settings,
    fhir: FhirClient,
    own: dict[str, QueryCheck],
    returned: dict[tuple[str, str], list[Any]],
    context: dict[str, str],
    now: datetime,
    *,
    strict: bool = False,
) -> list[Deviation] | None:
    """The patient-view cards into the report, from patient-view's own queries (`own`, by key);
    the reader's deviations when `strict`. Not computed when one of those queries failed: the
    service would then answer 412, and cards from part of the chart would mislead."""
    service = build_services(disabled=settings.disabled_rules)[PATIENT_VIEW]
    failed = [q for q in own.values() if q.outcome == "failed"]
    if failed:
        report.cards_error = f"the service would answer 412 on {service.hook}: " + "; ".join(
            f"{q.key} ({q.reason})" for q in failed
        )
        return None
    request = CDSRequest.model_validate(
        {
            "hook": service.hook,
            "hookInstance": "als-cds-check-fhir",
            "context": context,
            "prefetch": {key: _as_prefetch(key, returned[(key, q.query)]) for key, q in own.items()},
        }
    )
    engine = Engine(
        settings,
        card_rendering.load_catalogue(settings.cards_dir),
        fhir,
        lambda: now,
        keep_deviations=strict,
    )
    try:
        outcome = await engine.run(service, request)
    except RequestError as exc:
        report.cards_error = "; ".join(issue["diagnostics"] for issue in exc.issues)
        return None
    report.cards = [card.to_json() for card in outcome.cards]
    return outcome.record.report.deviations


def format_report(report: CheckReport) -> str:
    lines = [f"FHIR server {report.server} (FHIR {report.fhir_version or 'version unknown'})"]
    for problem in report.capability_problems:
        lines.append(f"  ! {problem}")
    shown: dict[int, str] = {}  # query (by identity) -> the first service it was shown under
    for service in report.services:
        queries = report.queries_of(service.id)
        lines.append("")
        lines.append(f"Prefetch queries of {service.id} ({service.hook}): {len(queries)}")
        for q in queries:
            if q.outcome == "failed":
                lines.append(f"  FAILED  {q.key}: {q.reason}" + (f" -> {q.hint}" if q.hint else ""))
            elif q.outcome == "empty":
                lines.append(f"  empty   {q.key}: no resources (the rules will treat this as no data)")
            else:
                lines.append(f"  ok      {q.key}: {q.resources} resource(s) in {q.pages} page(s)")
            first = shown.setdefault(id(q), service.id)
            where = q.query if first == service.id else f"(the same query as for {first})"
            lines.append(f"          {where}")
    lines.append("")
    if report.cards_error:
        lines.append(f"Cards on patient-view: not computed: {report.cards_error}")
    else:
        lines.append(f"Cards on patient-view, from its own queries: {len(report.cards)}")
        for card in report.cards:
            rule = card["source"].get("topic", {}).get("code", "?")
            lines.append(f"  [{card['indicator'].upper()}] {card['summary']} ({rule})")
    if report.strict is not None:
        lines.append("")
        lines.extend(format_findings(report.strict))
    return "\n".join(lines)


def run(
    server: str,
    patient_id: str,
    token: str | None,
    settings: Settings,
    now: datetime | None = None,
    *,
    strict: bool = False,
) -> CheckReport:
    return asyncio.run(check_fhir_server(server, patient_id, token, settings, now=now, strict=strict))
