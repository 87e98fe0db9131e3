"""Prefetch: the templates the service asks for, and getting the data each key stands for.

Per key, CDS Hooks 2.0 gives the request four possible states, and each has one meaning here:

=====================================  ==========================================================
the key in `request.prefetch`          what the service does
=====================================  ==========================================================
a resource, or a Bundle                use it; a Bundle's `next` pages are fetched from fhirServer
`null`                                 the EHR queried and found nothing: no data, not an error
an OperationOutcome (or a Bundle       the EHR could not run the query: fetch it from fhirServer
holding an error OperationOutcome)
absent                                 the EHR chose not to: fetch it from fhirServer
=====================================  ==========================================================

Every fetch of one hook call runs concurrently, under one time budget. A key whose data cannot
be had (no fhirServer, the server refused, timed out or answered garbage) is *unavailable*; the
caller answers 412 naming those keys rather than guess from partial data.

Templates use only what CDS Hooks 2.0 allows: `{{context.patientId}}`-style tokens for the hook's
tokenisable context fields and the four `{{userXxxId}}` tokens. 2.0 has no relative-date token,
so the Observation date window is written as a literal date computed when the templates are
served, rounded down to the first of the month: a copy that goes stale in an EHR's configuration
only ever asks for more history, never less.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from cds_service import metrics
from cds_service.fhir_client import (
    CallBudget,
    FetchResult,
    FhirClient,
    FhirFetchError,
    operation_outcome_is_error,
)
from cds_service.hooks import PREFETCH_CONTEXT_TOKENS, USER_TOKENS, CDSRequest
from cds_service.reader import resources_from_bundle
from cds_service.reader.lazy import LazyResource, UnreadableResource, materialise
from cds_service.reader.medications import MedicationIndex, reference_id, unresolved_reference
from cds_service.record import Interest
from cds_service.settings import Settings
from cds_service.terminology import ValueSet

#: Prefetch key per resource type, in the order discovery lists them.
KEY_BY_TYPE: dict[str, str] = {
    "Patient": "patient",
    "Condition": "conditions",
    "MedicationRequest": "medications",
    "Observation": "observations",
    "AllergyIntolerance": "allergies",
    "Procedure": "procedures",
    "Encounter": "encounters",
    "Device": "devices",
    "DocumentReference": "documents",
    "Consent": "consents",
}


def prefetch_templates(interest: Interest, settings: Settings, today: date) -> dict[str, str]:
    """The prefetch templates for what `interest` reads. The Patient is always asked for."""
    patient = "patient={{context.patientId}}"
    templates = {"patient": "Patient/{{context.patientId}}"}
    for rtype, key in KEY_BY_TYPE.items():
        if rtype == "Patient" or not interest.wants_type(rtype):
            continue
        query = [patient]
        if rtype == "Observation":
            templates.update(_observation_templates(interest.by_type[rtype], settings, today))
            continue
        if rtype == "Encounter":
            since = (today - timedelta(days=settings.encounter_lookback_days)).replace(day=1)
            query += [f"date=ge{since.isoformat()}", "_sort=-date", "_count=100"]
        if rtype == "MedicationRequest":
            # A request may name its drug by reference to a Medication: have it in the same answer
            # rather than read it afterwards (one round trip less). Servers without _include
            # ignore it, and the references are then read one by one (`fetch_medications`).
            query.append("_include=MedicationRequest:medication")
        templates[key] = f"{rtype}?{'&'.join(query)}"
    return templates


#: The prefetch key for Observations that stay relevant for life (genetic results), fetched
#: without a date window; see ValueSet.full_history.
OBSERVATION_HISTORY_KEY = "observation-history"

#: The resource type each prefetch key holds.
TYPE_BY_KEY: dict[str, str] = {key: rtype for rtype, key in KEY_BY_TYPE.items()} | {
    OBSERVATION_HISTORY_KEY: "Observation"
}


def _observation_templates(
    valuesets: tuple[ValueSet, ...] | None, settings: Settings, today: date
) -> dict[str, str]:
    """Observations by code: recent results in a date window, lifelong results (if any) without one."""
    base = "Observation?patient={{context.patientId}}"
    since = (today - timedelta(days=settings.observation_lookback_days)).replace(day=1)
    window = f"date=ge{since.isoformat()}&_sort=-date&_count=100"
    if valuesets is None:
        return {"observations": f"{base}&{window}"}

    def codes(sets: list[ValueSet]) -> str:
        return ",".join(sorted({f"{system}|{code}" for vs in sets for system, code in vs.codes}))

    templates = {}
    recent = [vs for vs in valuesets if not vs.full_history and vs.codes]
    lifelong = [vs for vs in valuesets if vs.full_history and vs.codes]
    if recent:
        templates["observations"] = f"{base}&code={codes(recent)}&{window}"
    if lifelong:
        templates[OBSERVATION_HISTORY_KEY] = f"{base}&code={codes(lifelong)}&_sort=-date&_count=100"
    return templates


# --------------------------------------------------------------------------------------------
# Template tokens

_TOKEN = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


class _Unfillable(Exception):
    pass


def _segment(value: str) -> str:
    """`value` percent-encoded as one path segment or query value.

    `.` and `..` are refused: quote() leaves them as they are, and URL normalisation (httpx
    applies it) would turn `Patient/..` into the FHIR base itself, or climb above it.
    """
    if not value or value in (".", ".."):
        raise _Unfillable
    return quote(value, safe="")


def render_template(template: str, hook: str, context: Mapping[str, Any]) -> str | None:
    """Fill a template's tokens from the context; None when a token cannot be filled.

    Values are percent-encoded: a context value can never add path segments or query parameters
    to a request that carries the EHR's access token.
    """

    def substitute(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            name = token.removeprefix("context.")
            value = context.get(name)
            if name not in PREFETCH_CONTEXT_TOKENS.get(hook, ()) or not isinstance(value, str) or not value:
                raise _Unfillable
            if name == "userId":  # `Type/id`: exactly two segments, each encoded
                parts = value.split("/")
                if len(parts) != 2:
                    raise _Unfillable
                return "/".join(_segment(part) for part in parts)
            return _segment(value)
        if token in USER_TOKENS:
            user = context.get("userId")
            if isinstance(user, str) and user.count("/") == 1:
                user_type, user_id = user.split("/")
                if user_type == USER_TOKENS[token]:
                    return _segment(user_id)
        raise _Unfillable

    try:
        return _TOKEN.sub(substitute, template)
    except _Unfillable:
        return None


# --------------------------------------------------------------------------------------------
# Resolution


class PrefetchInvalid(ValueError):
    """The EHR sent a prefetch value that cannot be read as FHIR: a client error (400)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class KeyData:
    key: str
    origin: str  # 'prefetch', 'prefetch-null', 'prefetch+pages', 'fetched'
    resources: list[Mapping[str, Any]]


@dataclass(frozen=True)
class Unavailable:
    key: str
    reason: str  # safe to log and to return: no PHI, no token, no URL
    issue_code: str = "incomplete"  # FHIR OperationOutcome issue type


@dataclass
class DataResolution:
    data: dict[str, KeyData] = field(default_factory=dict)
    unavailable: dict[str, Unavailable] = field(default_factory=dict)

    def resources(self) -> list[Mapping[str, Any]]:
        return [r for item in self.data.values() for r in item.resources]


_MISSING = object()

#: How long after the deadline the safety net of `_run_jobs` cuts fetches off.
_GRACE_SECONDS = 0.2


async def resolve(
    request: CDSRequest,
    templates: Mapping[str, str],
    fhir: FhirClient,
    *,
    budget_seconds: float | None = None,
    budget: CallBudget | None = None,
) -> DataResolution:
    """Get the data for every template key, from prefetch where it is usable, else from FHIR.

    `budget`: the call's FHIR budget (deadline and bytes), shared with `fetch_medications`; or
    `budget_seconds` for a budget of this resolution's own.
    """
    if budget is None:
        budget = CallBudget(budget_seconds if budget_seconds is not None else 4.0)
    result = DataResolution()
    server = request.fhirServer
    token = request.fhirAuthorization.access_token.get_secret_value() if request.fhirAuthorization else None
    provided_all = request.prefetch or {}
    # Started only once every key has been checked: a PrefetchInvalid raised for a later key must
    # not leave coroutines behind that were created but never awaited.
    jobs: dict[str, Callable[[], Awaitable[FetchResult]]] = {}
    origins: dict[str, str] = {}

    for key, template in templates.items():
        provided = provided_all.get(key, _MISSING)
        why_fetch: str
        if provided is None:
            result.data[key] = KeyData(key, "prefetch-null", [])
            continue
        if provided is _MISSING:
            why_fetch = "not in prefetch"
            metrics.PREFETCH_MISSING.labels(key, "absent").inc()  # keys are the service's own
        else:
            if not isinstance(provided, Mapping) or not isinstance(provided.get("resourceType"), str):
                raise PrefetchInvalid(key, f"prefetch.{key} must be a FHIR resource, a Bundle or null")
            rtype = provided["resourceType"]
            if rtype == "OperationOutcome" or (rtype == "Bundle" and _bundle_has_error(provided)):
                why_fetch = "the EHR reported an error for this key"
                metrics.PREFETCH_MISSING.labels(key, "error").inc()
            elif rtype == "Bundle" and _has_next(provided):
                metrics.PREFETCH_MISSING.labels(key, "more pages").inc()
                if server is None:
                    result.unavailable[key] = Unavailable(
                        key,
                        "the prefetched Bundle has more pages, and there is no fhirServer to fetch them from",
                    )
                    continue
                rtype_of_key = TYPE_BY_KEY.get(key, "other")
                jobs[key] = functools.partial(
                    fhir.complete_bundle, server, provided, token, budget=budget, rtype=rtype_of_key
                )
                origins[key] = "prefetch+pages"
                continue
            else:
                _check_patient(key, provided, request)
                resources = resources_from_bundle(provided) if rtype == "Bundle" else [provided]
                result.data[key] = KeyData(key, "prefetch", resources)
                continue

        if server is None:
            result.unavailable[key] = Unavailable(key, f"{why_fetch}, and the request has no fhirServer")
            continue
        url = render_template(template, request.hook, request.context)
        if url is None:
            result.unavailable[key] = Unavailable(
                key, f"{why_fetch}, and the context cannot fill its template"
            )
            continue
        jobs[key] = functools.partial(fhir.get, server, url, token, budget=budget)
        origins[key] = "fetched"

    if jobs:
        await _run_jobs(jobs, origins, result, budget)
    return result


async def _run_jobs(
    jobs: Mapping[str, Callable[[], Awaitable[FetchResult]]],
    origins: Mapping[str, str],
    result: DataResolution,
    budget: CallBudget,
) -> None:
    tasks = {asyncio.ensure_future(job()): key for key, job in jobs.items()}
    # The fetches keep the deadline themselves (FhirClient); this wait is only a safety net, a
    # little later, for whatever might not.
    done, pending = await asyncio.wait(tasks, timeout=max(budget.remaining(), 0) + _GRACE_SECONDS)
    for task in pending:
        task.cancel()
        key = tasks[task]
        timed_out = budget.timed_out()
        result.unavailable[key] = Unavailable(key, timed_out.reason, timed_out.issue_code)
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        key = tasks[task]
        exc = task.exception()  # retrieved for every task, so none is left "never retrieved"
        if exc is None:
            result.data[key] = KeyData(key, origins[key], task.result().resources)
        elif isinstance(exc, FhirFetchError):
            result.unavailable[key] = Unavailable(key, exc.reason, exc.issue_code)
        else:
            # Whatever a broken or hostile server's answer made go wrong, the key is unavailable:
            # its data cannot be trusted. Only the type is kept: the message may quote the answer.
            result.unavailable[key] = Unavailable(
                key, f"the FHIR server's answer could not be read ({type(exc).__name__})"
            )


def _list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (a hostile or broken value) as no items."""
    return value if isinstance(value, list) else []


def _bundle_has_error(bundle: Mapping[str, Any]) -> bool:
    # On the event loop, over every entry of what may be a 50,000-entry Bundle: exact type checks
    # first (an isinstance check against the Mapping ABC costs a microsecond each).
    for entry in _list(bundle.get("entry")):
        if type(entry) is not dict and not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if type(resource) is LazyResource:
            if resource.resource_type != "OperationOutcome":
                continue
        elif not isinstance(resource, Mapping) or resource.get("resourceType") != "OperationOutcome":
            continue
        try:
            if operation_outcome_is_error(materialise(resource)):
                return True
        except UnreadableResource:
            return True  # an outcome that cannot be read cannot vouch for the data
    return False


def _has_next(bundle: Mapping[str, Any]) -> bool:
    return any(
        isinstance(link, Mapping) and link.get("relation") == "next" for link in _list(bundle.get("link"))
    )


def _check_patient(key: str, resource: Mapping[str, Any], request: CDSRequest) -> None:
    """A prefetched Patient that is not the patient in context is a client error, not data."""
    if resource.get("resourceType") == "Patient":
        patient_id = request.context.get("patientId")
        if resource.get("id") is not None and resource.get("id") != patient_id:
            raise PrefetchInvalid(key, f"prefetch.{key} is a different Patient from context.patientId")


# --------------------------------------------------------------------------------------------
# Medications behind references


async def fetch_medications(
    request: CDSRequest,
    resources: Sequence[Mapping[str, Any]],
    draft_orders: Mapping[str, Any] | None,
    fhir: FhirClient,
    *,
    budget_seconds: float | None = None,
    budget: CallBudget | None = None,
) -> list[Mapping[str, Any]]:
    """Medications that requests point at and nothing in the call holds, read from fhirServer.

    Within what is left of the call's budget, concurrently, at most `MAX_MEDICATION_READS`. A read
    that fails leaves that reference unresolved: the drug is then unknown (and an unreadable draft
    order says so on a card), which is not a reason to refuse the whole call.
    """
    index = MedicationIndex()
    index.add_all(resources)
    requests: list[Mapping[str, Any]] = []
    for raw in resources:
        if raw.get("resourceType") == "MedicationRequest":
            try:
                requests.append(materialise(raw))
            except UnreadableResource:
                continue  # counted by the reader, which meets it again
    if draft_orders:
        for raw in resources_from_bundle(draft_orders):
            if raw.get("resourceType") == "Medication":
                index.add(raw)
            elif raw.get("resourceType") == "MedicationRequest":
                requests.append(raw)
    wanted: dict[str, str] = {}
    for raw in requests:
        target = unresolved_reference(raw, index)
        med_id = reference_id(target, "Medication") if target else None
        if med_id and med_id not in (".", ".."):
            wanted.setdefault(med_id, target or "")
    server = request.fhirServer
    if budget is None:
        budget = CallBudget(budget_seconds if budget_seconds is not None else 4.0)
    if not wanted or server is None or budget.remaining() <= 0:
        return []
    token = request.fhirAuthorization.access_token.get_secret_value() if request.fhirAuthorization else None
    ids = list(wanted)[:MAX_MEDICATION_READS]
    tasks = [
        asyncio.ensure_future(fhir.get(server, f"Medication/{_segment(i)}", token, budget=budget))
        for i in ids
    ]
    done, pending = await asyncio.wait(tasks, timeout=max(budget.remaining(), 0) + _GRACE_SECONDS)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    found: list[Mapping[str, Any]] = []
    for task in done:
        if task.exception() is None:
            found.extend(r for r in task.result().resources if r.get("resourceType") == "Medication")
    return found


#: Most Medications read by reference for one call: a chart's distinct drugs, with room to spare.
MAX_MEDICATION_READS = 50
