"""Prefetch: the templates the services declare, filling them, and resolving every key of a request.

The EHR's FHIR server is mocked with respx at https://ehr.example.org/fhir; respx refuses any request
no route matches, so an unexpected fetch fails the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import re
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx

from cds_service.fhir_client import FhirClient, new_http_client
from cds_service.hooks import CDSRequest
from cds_service.prefetch import (
    OBSERVATION_HISTORY_KEY,
    TYPE_BY_KEY,
    DataResolution,
    PrefetchInvalid,
    prefetch_templates,
    render_template,
    resolve,
)
from cds_service.record import Interest
from cds_service.rules import als, riluzole
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.support import NOW, SPEC_ALLOWED_TOKENS, searchset

BASE = "https://ehr.example.org/fhir"
TODAY = NOW.date()  # 2026-11-22
PID = "pid-zq8x7-4711"
TOKEN = "tok-SECRET-9f8e7d6c5b4a"
USER = "Practitioner/neuro-1"

ALLOWED_TOKENS = SPEC_ALLOWED_TOKENS
TOKEN_RE = re.compile(r"\{\{(.*?)\}\}")


def services_templates(settings: Settings | None = None) -> dict[str, dict[str, str]]:
    settings = settings or Settings()
    return {sid: service.prefetch(settings, TODAY) for sid, service in build_services().items()}


# The resolution tests run against a fixed set of templates (the ALS gate and riluzole-lft-due),
# so that new rules in the catalogue do not change what these tests fetch.
# ALT is a lifelong value set in production (fetched without a date window); these tests need a
# windowed Observation value set, so they use ALT as if it were one.
_WINDOWED_ALT = dataclasses.replace(riluzole.ALT, full_history=False)
INTEREST = Interest.merge(
    [als.READS, Interest({"MedicationRequest": (riluzole.RILUZOLE,), "Observation": (_WINDOWED_ALT,)})]
)
TEMPLATES = prefetch_templates(INTEREST, Settings(), TODAY)
ALL_TEMPLATES = [
    pytest.param(hook_templates[key], id=f"{sid}:{key}")
    for sid, hook_templates in services_templates().items()
    for key in hook_templates
]


# --------------------------------------------------------------------------------------------
# prefetch_templates()


def test_every_service_asks_for_the_patient_by_a_read() -> None:
    for sid, templates in services_templates().items():
        assert templates["patient"] == "Patient/{{context.patientId}}", sid


def test_the_riluzole_rule_and_the_gate_ask_for_exactly_their_data() -> None:
    assert list(TEMPLATES) == ["patient", "conditions", "medications", "observations"]
    assert TEMPLATES["conditions"] == "Condition?patient={{context.patientId}}"
    assert TEMPLATES["medications"] == (
        "MedicationRequest?patient={{context.patientId}}&_include=MedicationRequest:medication"
    )


@pytest.mark.parametrize("service", build_services().values(), ids=lambda s: s.id)
def test_each_service_has_a_key_for_every_type_its_rules_read_and_no_other(service: Any) -> None:
    templates = service.prefetch(Settings(), TODAY)
    types_read = {"Patient", *service.interest.by_type}
    assert {TYPE_BY_KEY[key] for key in templates} == types_read


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_templates_use_only_the_tokens_cds_hooks_2_0_allows(template: str) -> None:
    tokens = TOKEN_RE.findall(template)
    assert tokens, "every template is about the patient in context"
    assert set(tokens) <= ALLOWED_TOKENS
    # no malformed or nested token is left once the valid ones are taken out
    assert "{" not in TOKEN_RE.sub("", template)
    assert "}" not in TOKEN_RE.sub("", template)


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_templates_use_only_the_search_parameters_of_the_recommended_subset(template: str) -> None:
    path, _, query = template.partition("?")
    rtype, _, read_id = path.partition("/")
    assert re.fullmatch(r"[A-Z][A-Za-z]+", rtype)
    if read_id:  # instance-level read: Type/{{token}}, nothing else
        assert TOKEN_RE.fullmatch(read_id)
        assert not query
        return
    params = [p.split("=", 1) for p in query.split("&")]
    assert all(len(p) == 2 for p in params), "every parameter has a value"
    names = [name for name, _ in params]
    assert len(names) == len(set(names)), "no parameter is repeated"
    for name, value in params:
        if name == "patient":  # resource reference
            assert value == "{{context.patientId}}"
        elif name == "code":  # token, equality only (no modifier: the name carries no ':')
            assert all(re.fullmatch(r"[^|,{}]+\|[^|,{}]+", code) for code in value.split(","))
        elif name == "date":
            assert re.fullmatch(r"(ge|le|gt|lt|eq)\d{4}-\d{2}-\d{2}", value)
        elif name == "_count":
            assert re.fullmatch(r"[1-9]\d*", value)
        elif name == "_sort":
            assert re.fullmatch(r"-?[a-z][a-z-]*(,-?[a-z][a-z-]*)*", value)
        elif name == "_include":
            # The one deliberate step outside the subset the spec RECOMMENDS (not requires): the
            # Medications that requests reference, in the same answer instead of one read each.
            assert (rtype, value) == ("MedicationRequest", "MedicationRequest:medication")
        else:
            pytest.fail(f"search parameter {name!r} is outside the CDS Hooks 2.0 recommended subset")


def observation_params(templates: dict[str, str]) -> dict[str, str]:
    path, _, query = templates["observations"].partition("?")
    assert path == "Observation"
    return dict(p.split("=", 1) for p in query.split("&"))


def test_the_observation_template_carries_the_loinc_codes_of_the_value_sets() -> None:
    valuesets = INTEREST.by_type["Observation"]
    assert valuesets, "the patient-view rules read Observations through value sets"
    expected = {f"{system}|{code}" for vs in valuesets for system, code in vs.codes}

    codes = observation_params(TEMPLATES)["code"].split(",")

    assert set(codes) == expected
    assert len(codes) == len(expected)
    assert all(code.startswith("http://loinc.org|") for code in codes)
    assert "http://loinc.org|1742-6" in codes  # ALT, the riluzole liver-function test


def test_the_observation_template_has_a_first_of_month_date_window_from_the_settings() -> None:
    settings = Settings()
    params = observation_params(TEMPLATES)

    since = date.fromisoformat(params["date"].removeprefix("ge"))

    assert params["date"].startswith("ge")
    assert since.day == 1
    assert since <= TODAY - timedelta(days=settings.observation_lookback_days)
    assert since > TODAY - timedelta(days=settings.observation_lookback_days + 31)
    assert params["_sort"] == "-date"


def test_the_observation_date_window_for_the_default_yearly_interval() -> None:
    templates = prefetch_templates(INTEREST, Settings(riluzole_lft_interval_after_year1_days=365), TODAY)

    # 365 + 31 days before 2026-11-22 is 2025-10-22, rounded down to the first of that month
    assert observation_params(templates)["date"] == "ge2025-10-01"


def test_the_observation_date_window_grows_with_the_yearly_interval() -> None:
    yearly = prefetch_templates(INTEREST, Settings(riluzole_lft_interval_after_year1_days=365), TODAY)
    two_yearly = prefetch_templates(INTEREST, Settings(riluzole_lft_interval_after_year1_days=730), TODAY)

    assert observation_params(two_yearly)["date"] == "ge2024-10-01"
    assert observation_params(two_yearly)["date"] < observation_params(yearly)["date"]


def test_the_observation_window_moves_with_the_date_the_templates_are_served() -> None:
    interest = INTEREST
    settings = Settings(riluzole_lft_interval_after_year1_days=365)

    later = prefetch_templates(interest, settings, TODAY + timedelta(days=40))

    assert observation_params(later)["date"] == "ge2025-12-01"  # 2027-01-01 - 396 days


def test_an_observation_interest_without_value_sets_asks_for_every_code() -> None:
    templates = prefetch_templates(Interest({"Observation": None}), Settings(), TODAY)

    assert set(templates) == {"patient", "observations"}
    assert "code" not in observation_params(templates)
    assert observation_params(templates)["_sort"] == "-date"


def test_templates_are_only_declared_for_types_the_rules_read() -> None:
    templates = prefetch_templates(Interest({"Condition": None, "Encounter": None}), Settings(), TODAY)

    since = (TODAY - timedelta(days=Settings().encounter_lookback_days)).replace(day=1)
    assert templates == {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}",
        # Encounters only matter for the MDT interval: a literal date window, newest first.
        "encounters": "Encounter?patient={{context.patientId}}"
        + f"&date=ge{since.isoformat()}&_sort=-date&_count=100",
    }


# --------------------------------------------------------------------------------------------
# render_template()

CONTEXT = {"userId": USER, "patientId": "123", "encounterId": "enc-9"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Patient/{{context.patientId}}", "Patient/123"),
        ("Condition?patient={{context.patientId}}", "Condition?patient=123"),
        ("Encounter/{{context.encounterId}}", "Encounter/enc-9"),
        ("{{context.userId}}", "Practitioner/neuro-1"),
        ("Practitioner/{{userPractitionerId}}", "Practitioner/neuro-1"),
        (
            "Observation?patient={{context.patientId}}&encounter={{context.encounterId}}",
            "Observation?patient=123&encounter=enc-9",
        ),
        ("Patient/{{ context.patientId }}", "Patient/123"),
        ("metadata", "metadata"),
    ],
)
def test_render_fills_context_and_user_tokens(template: str, expected: str) -> None:
    assert render_template(template, "patient-view", CONTEXT) == expected


@pytest.mark.parametrize(
    ("token", "user_id", "expected"),
    [
        ("userPractitionerId", "Practitioner/123", "123"),
        ("userPractitionerRoleId", "PractitionerRole/x", "x"),
        ("userPatientId", "Patient/p-7", "p-7"),
        ("userRelatedPersonId", "RelatedPerson/rp1", "rp1"),
        ("userPractitionerId", "PractitionerRole/x", None),  # a prefix of the type is not the type
        ("userPractitionerRoleId", "Practitioner/123", None),
        ("userPatientId", "Practitioner/123", None),
        ("userRelatedPersonId", "Patient/p-7", None),
        ("userPractitionerId", "Practitioner/", None),
        ("userPractitionerId", "123", None),
        ("userPractitionerId", "Practitioner/1/_history/2", None),
    ],
)
def test_user_tokens_come_from_a_user_id_of_the_matching_type(
    token: str, user_id: str, expected: str | None
) -> None:
    context = {"userId": user_id, "patientId": "123"}
    rendered = render_template(f"X/{{{{{token}}}}}", "order-sign", context)
    assert rendered == (None if expected is None else f"X/{expected}")


@pytest.mark.parametrize("encounter", ["absent", None, ""])
def test_a_missing_optional_encounter_id_leaves_the_template_unfilled(encounter: Any) -> None:
    context: dict[str, Any] = {"userId": USER, "patientId": "123"}
    if encounter != "absent":
        context["encounterId"] = encounter

    assert render_template("Encounter/{{context.encounterId}}", "patient-view", context) is None


@pytest.mark.parametrize(
    ("hook", "template"),
    [
        ("order-select", "MedicationRequest/{{context.selections}}"),
        ("order-sign", "X?q={{context.draftOrders}}"),
        ("patient-view", "X?q={{context.somethingElse}}"),
        ("patient-view", "Patient/{{patient}}"),
        ("patient-view", "Patient/{{Patient.id}}"),  # pre-1.0 syntax
        ("patient-view", "Patient/{{user}}"),
        ("no-such-hook", "Patient/{{context.patientId}}"),
    ],
)
def test_tokens_the_hook_does_not_allow_leave_the_template_unfilled(hook: str, template: str) -> None:
    context = {**CONTEXT, "selections": ["MedicationRequest/1"], "draftOrders": "x", "somethingElse": "y"}
    assert render_template(template, hook, context) is None


@pytest.mark.parametrize("value", [42, ["123"], {"id": "123"}, None])
def test_a_context_value_that_is_not_a_string_leaves_the_template_unfilled(value: Any) -> None:
    assert render_template("Patient/{{context.patientId}}", "patient-view", {"patientId": value}) is None


def test_a_hostile_patient_id_cannot_add_path_segments() -> None:
    hostile = "123/../../Patient?_id=x"

    rendered = render_template("Patient/{{context.patientId}}", "patient-view", {"patientId": hostile})

    assert rendered is not None
    url = httpx.URL(f"{BASE}/{rendered}")
    assert url.host == "ehr.example.org"
    assert url.raw_path.decode().split("/") == ["", "fhir", "Patient", "123%2F..%2F..%2FPatient%3F_id%3Dx"]
    assert url.query == b""
    assert unquote(rendered.removeprefix("Patient/")) == hostile


@pytest.mark.parametrize("hostile", ["1&code=2", "1&_id=2#frag", "1 2", "1?_count=1000", "é/1"])
def test_a_hostile_patient_id_cannot_add_query_parameters(hostile: str) -> None:
    rendered = render_template(
        "Condition?patient={{context.patientId}}", "patient-view", {"patientId": hostile}
    )

    assert rendered is not None
    url = httpx.URL(f"{BASE}/{rendered}")
    assert url.path == "/fhir/Condition"
    assert url.params.multi_items() == [("patient", hostile)]
    assert url.fragment == ""


@pytest.mark.parametrize("template", ["Patient/{{context.patientId}}", "Patient/{{userPatientId}}"])
@pytest.mark.parametrize("dots", [".", ".."])
def test_a_dot_segment_id_cannot_move_the_request_to_another_path(template: str, dots: str) -> None:
    """httpx resolves `Patient/..` to the FHIR base itself, so such a value must not be filled in."""
    context = {"patientId": dots, "userId": f"Patient/{dots}"}

    assert render_template(template, "patient-view", context) is None


@pytest.mark.parametrize(
    "user_id", ["Practitioner/../../admin", "Practitioner/1/../../../x", "../Practitioner", "Practitioner/.."]
)
def test_a_hostile_user_id_cannot_add_path_segments(user_id: str) -> None:
    rendered = render_template("{{context.userId}}", "patient-view", {"userId": user_id, "patientId": "1"})

    if rendered is not None:  # refused outright, or kept to a single Type/id read under the base
        url = httpx.URL(f"{BASE}/{rendered}")
        assert url.path.startswith("/fhir/")
        assert len(url.raw_path.split(b"/")) == 4
    assert rendered is None


def test_a_user_id_read_keeps_its_type_and_encodes_its_id() -> None:
    rendered = render_template(
        "{{context.userId}}", "patient-view", {"userId": "Practitioner/a?b=c", "patientId": "1"}
    )

    assert rendered == "Practitioner/a%3Fb%3Dc"


# --------------------------------------------------------------------------------------------
# resolve(): helpers and fixtures

_ABSENT: Any = object()


def cds_request(
    prefetch: Any = _ABSENT,
    *,
    server: str | None = BASE,
    token: str | None = TOKEN,
    context: dict[str, Any] | None = None,
    hook: str = "patient-view",
) -> CDSRequest:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context or {"userId": USER, "patientId": PID},
    }
    if server is not None:
        body["fhirServer"] = server
    if token is not None:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "als-cds",
        }
    if prefetch is not _ABSENT:
        body["prefetch"] = prefetch
    return CDSRequest.model_validate(body)


def patient(pid: str = PID) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1961-05-14"}


def condition(cid: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{PID}"}}


def medication(mid: str) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": mid, "status": "active", "intent": "order"}


def observation(oid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final"}


def outcome(severity: str, code: str = "processing") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code}]}


def full_prefetch() -> dict[str, Any]:
    return {
        "patient": patient(),
        "conditions": searchset([condition("c1")]),
        "medications": searchset([medication("m1")]),
        "observations": searchset([observation("o1"), observation("o2")]),
    }


def without(prefetch: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in prefetch.items() if k not in keys}


#: The URL each patient-view template renders to for PID (the exact queries the server must see).
URLS = {
    key: f"{BASE}/{render_template(t, 'patient-view', {'patientId': PID, 'userId': USER})}"
    for key, t in TEMPLATES.items()
}
SERVER_DATA = {
    "patient": patient(),
    "conditions": searchset([condition("srv-c1"), condition("srv-c2")]),
    "medications": searchset([medication("srv-m1")]),
    "observations": searchset([observation("srv-o1")]),
}


def ids(resolution: DataResolution, key: str) -> list[str]:
    return [r["id"] for r in resolution.data[key].resources]


@pytest.fixture
def server() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def fhir() -> AsyncIterator[FhirClient]:
    async with new_http_client(max_connections=10, timeout_seconds=5) as http:
        yield FhirClient(http, max_pages=5)


def serve(server: respx.MockRouter, *keys: str) -> dict[str, respx.Route]:
    return {key: server.get(URLS[key]).respond(200, json=SERVER_DATA[key]) for key in keys}


# --------------------------------------------------------------------------------------------
# resolve(): the four states of a key


def test_the_rendered_urls_are_the_expected_queries() -> None:
    since = observation_params(TEMPLATES)["date"]
    assert URLS["patient"] == f"{BASE}/Patient/{PID}"
    assert URLS["conditions"] == f"{BASE}/Condition?patient={PID}"
    obs = httpx.URL(URLS["observations"])
    assert obs.path == "/fhir/Observation"
    assert [name for name, _ in obs.params.multi_items()] == ["patient", "code", "date", "_sort", "_count"]
    assert obs.params["patient"] == PID
    assert obs.params["date"] == since
    assert obs.params["_sort"] == "-date"


async def test_a_complete_prefetch_is_used_without_any_fetch(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    result = await resolve(cds_request(full_prefetch()), TEMPLATES, fhir, budget_seconds=2)

    assert result.unavailable == {}
    assert {key: item.origin for key, item in result.data.items()} == dict.fromkeys(TEMPLATES, "prefetch")
    assert ids(result, "patient") == [PID]
    assert ids(result, "observations") == ["o1", "o2"]
    assert len(server.calls) == 0


async def test_a_null_value_means_no_data_without_a_fetch(server: respx.MockRouter, fhir: FhirClient) -> None:
    prefetch = {**full_prefetch(), "observations": None, "patient": None}

    result = await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert result.data["observations"].origin == "prefetch-null"
    assert result.data["observations"].resources == []
    assert result.data["patient"].resources == []
    assert "observations" not in result.unavailable
    assert result.unavailable == {}
    assert len(server.calls) == 0


async def test_a_null_value_needs_no_fhir_server(server: respx.MockRouter, fhir: FhirClient) -> None:
    prefetch = dict.fromkeys(TEMPLATES)

    result = await resolve(cds_request(prefetch, server=None, token=None), TEMPLATES, fhir, budget_seconds=2)

    assert result.unavailable == {}
    assert result.resources() == []


async def test_a_missing_key_is_fetched_from_the_fhir_server_with_the_token(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    routes = serve(server, "observations")

    result = await resolve(
        cds_request(without(full_prefetch(), "observations")), TEMPLATES, fhir, budget_seconds=2
    )

    assert result.unavailable == {}
    assert result.data["observations"].origin == "fetched"
    assert ids(result, "observations") == ["srv-o1"]
    assert result.data["conditions"].origin == "prefetch"
    assert routes["observations"].call_count == 1
    assert len(server.calls) == 1
    request = routes["observations"].calls.last.request
    assert str(request.url) == URLS["observations"]
    assert request.url.params["patient"] == PID
    assert request.url.params["date"] == observation_params(TEMPLATES)["date"]
    assert request.url.params["_sort"] == "-date"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/fhir+json"


async def test_a_missing_patient_key_is_read_from_the_fhir_server(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    routes = serve(server, "patient")

    result = await resolve(
        cds_request(without(full_prefetch(), "patient")), TEMPLATES, fhir, budget_seconds=2
    )

    assert result.data["patient"].origin == "fetched"
    assert result.data["patient"].resources == [patient()]
    assert str(routes["patient"].calls.last.request.url) == f"{BASE}/Patient/{PID}"


async def test_no_prefetch_at_all_fetches_every_key(server: respx.MockRouter, fhir: FhirClient) -> None:
    routes = serve(server, *TEMPLATES)

    result = await resolve(cds_request(), TEMPLATES, fhir, budget_seconds=2)

    assert result.unavailable == {}
    assert {key: item.origin for key, item in result.data.items()} == dict.fromkeys(TEMPLATES, "fetched")
    assert ids(result, "conditions") == ["srv-c1", "srv-c2"]
    assert all(route.call_count == 1 for route in routes.values())


async def test_a_missing_key_is_fetched_without_a_token_from_an_open_server(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    routes = serve(server, "conditions")

    result = await resolve(
        cds_request(without(full_prefetch(), "conditions"), token=None), TEMPLATES, fhir, budget_seconds=2
    )

    assert result.data["conditions"].origin == "fetched"
    assert "Authorization" not in routes["conditions"].calls.last.request.headers


async def test_a_missing_read_the_server_answers_404_is_no_data_not_unavailable(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    server.get(URLS["patient"]).respond(404)

    result = await resolve(
        cds_request(without(full_prefetch(), "patient")), TEMPLATES, fhir, budget_seconds=2
    )

    assert result.data["patient"].origin == "fetched"
    assert result.data["patient"].resources == []
    assert result.unavailable == {}


async def test_a_missing_key_without_a_fhir_server_is_unavailable(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    request = cds_request(without(full_prefetch(), "medications"), server=None, token=None)

    result = await resolve(request, TEMPLATES, fhir, budget_seconds=2)

    assert set(result.unavailable) == {"medications"}
    assert "no fhirServer" in result.unavailable["medications"].reason
    assert result.unavailable["medications"].issue_code == "incomplete"
    assert "medications" not in result.data
    assert set(result.data) == {"patient", "conditions", "observations"}
    assert len(server.calls) == 0


async def test_a_template_the_context_cannot_fill_is_unavailable_without_a_fetch(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    templates = {"encounter": "Encounter/{{context.encounterId}}"}

    result = await resolve(cds_request({}), templates, fhir, budget_seconds=2)

    assert "cannot fill" in result.unavailable["encounter"].reason
    assert len(server.calls) == 0


async def test_prefetch_keys_the_service_did_not_ask_for_are_ignored(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    prefetch = {**full_prefetch(), "extra": "not even a resource", "other": [1, 2]}

    result = await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert set(result.data) == set(TEMPLATES)
    assert len(server.calls) == 0


# --------------------------------------------------------------------------------------------
# resolve(): OperationOutcomes


async def test_an_operation_outcome_value_is_refetched_from_the_server(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    routes = serve(server, "conditions")
    prefetch = {**full_prefetch(), "conditions": outcome("error", "timeout")}

    result = await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert routes["conditions"].call_count == 1
    assert result.data["conditions"].origin == "fetched"
    assert ids(result, "conditions") == ["srv-c1", "srv-c2"]
    assert result.unavailable == {}


async def test_an_operation_outcome_value_without_a_server_is_unavailable(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    prefetch = {**full_prefetch(), "conditions": outcome("error", "timeout")}

    result = await resolve(cds_request(prefetch, server=None, token=None), TEMPLATES, fhir, budget_seconds=2)

    assert set(result.unavailable) == {"conditions"}
    assert "error" in result.unavailable["conditions"].reason
    assert len(server.calls) == 0


@pytest.mark.parametrize("severity", ["error", "fatal"])
async def test_a_bundle_holding_an_error_outcome_is_refetched(
    server: respx.MockRouter, fhir: FhirClient, severity: str
) -> None:
    routes = serve(server, "observations")
    failed = searchset([observation("partial")])
    failed["entry"].append({"resource": outcome(severity), "search": {"mode": "outcome"}})
    prefetch = {**full_prefetch(), "observations": failed}

    result = await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert routes["observations"].call_count == 1
    assert result.data["observations"].origin == "fetched"
    assert ids(result, "observations") == ["srv-o1"]


@pytest.mark.parametrize("severity", ["information", "warning"])
async def test_a_bundle_holding_only_an_informational_outcome_is_used_as_is(
    server: respx.MockRouter, fhir: FhirClient, severity: str
) -> None:
    epic_no_results = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "entry": [
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": severity,
                            "code": "informational",
                            "details": {"text": "No results were found."},
                        }
                    ],
                },
                "search": {"mode": "outcome"},
            }
        ],
    }
    prefetch = {**full_prefetch(), "observations": epic_no_results}

    result = await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert result.data["observations"].origin == "prefetch"
    assert result.data["observations"].resources == []
    assert result.unavailable == {}
    assert len(server.calls) == 0


# --------------------------------------------------------------------------------------------
# resolve(): paginated prefetch


async def test_a_prefetched_bundle_with_a_next_link_gets_its_pages_from_the_server(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    page2_url = f"{URLS['observations']}&_page=2"
    first = searchset([observation("o1")])
    first["link"] = [{"relation": "next", "url": page2_url}]
    page2 = searchset([observation("o2")])
    page2["link"] = [{"relation": "next", "url": f"Observation?patient={PID}&_page=3"}]
    route2 = server.get(page2_url).respond(200, json=page2)
    route3 = server.get(f"{BASE}/Observation?patient={PID}&_page=3").respond(
        200, json=searchset([observation("o3")])
    )

    result = await resolve(
        cds_request({**full_prefetch(), "observations": first}), TEMPLATES, fhir, budget_seconds=2
    )

    assert result.data["observations"].origin == "prefetch+pages"
    assert ids(result, "observations") == ["o1", "o2", "o3"]
    assert route2.call_count == 1
    assert route3.call_count == 1
    assert len(server.calls) == 2
    assert route2.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_a_prefetched_bundle_with_a_next_link_and_no_server_is_unavailable(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    first = searchset([observation("o1")])
    first["link"] = [{"relation": "next", "url": f"{BASE}/Observation?patient={PID}&_page=2"}]

    result = await resolve(
        cds_request({**full_prefetch(), "observations": first}, server=None, token=None),
        TEMPLATES,
        fhir,
        budget_seconds=2,
    )

    assert set(result.unavailable) == {"observations"}
    assert "more pages" in result.unavailable["observations"].reason
    assert "observations" not in result.data
    assert len(server.calls) == 0


async def test_a_prefetched_next_link_off_the_server_origin_is_unavailable_and_not_requested(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    first = searchset([observation("o1")])
    first["link"] = [{"relation": "next", "url": "https://evil.example.com/fhir/Observation?_page=2"}]
    elsewhere = server.route().respond(200, json=searchset([]))

    result = await resolve(
        cds_request({**full_prefetch(), "observations": first}), TEMPLATES, fhir, budget_seconds=2
    )

    assert set(result.unavailable) == {"observations"}
    assert not elsewhere.called


# --------------------------------------------------------------------------------------------
# resolve(): concurrency and the time budget


async def test_all_missing_keys_are_fetched_concurrently(server: respx.MockRouter, fhir: FhirClient) -> None:
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.5)
        finally:
            in_flight -= 1
        key = next(k for k, url in URLS.items() if url == str(request.url))
        return httpx.Response(200, json=SERVER_DATA[key])

    server.route(host="ehr.example.org").mock(side_effect=slow)

    started = time.monotonic()
    result = await resolve(cds_request({}), TEMPLATES, fhir, budget_seconds=10)
    elapsed = time.monotonic() - started

    assert len(TEMPLATES) == 4
    assert result.unavailable == {}
    assert set(result.data) == set(TEMPLATES)
    assert peak == 4
    assert elapsed < 1.5, f"4 keys x 0.5 s took {elapsed:.2f} s: not concurrent"


async def test_keys_the_server_does_not_answer_within_the_budget_time_out(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=SERVER_DATA["observations"])

    server.get(URLS["observations"]).mock(side_effect=never)
    server.get(URLS["medications"]).mock(side_effect=never)
    routes = serve(server, "patient", "conditions")

    started = time.monotonic()
    result = await resolve(cds_request({}), TEMPLATES, fhir, budget_seconds=0.5)
    elapsed = time.monotonic() - started

    assert elapsed < 1.5, f"resolve took {elapsed:.2f} s with a 0.5 s budget"
    assert set(result.unavailable) == {"observations", "medications"}
    assert all(u.issue_code == "timeout" for u in result.unavailable.values())
    assert "budget" in result.unavailable["observations"].reason
    assert result.data["patient"].resources == [patient()]
    assert ids(result, "conditions") == ["srv-c1", "srv-c2"]
    assert routes["patient"].called
    assert routes["conditions"].called


# --------------------------------------------------------------------------------------------
# resolve(): failures of the server


@pytest.mark.parametrize(
    ("response", "issue_code"),
    [
        (httpx.Response(401), "security"),
        (httpx.Response(403), "security"),
        (httpx.Response(500), "incomplete"),
        (httpx.Response(503, text="Service Unavailable"), "incomplete"),
        (httpx.Response(200, text="<html>login</html>"), "incomplete"),
        (httpx.Response(200, json={"not": "fhir"}), "incomplete"),
        (httpx.Response(302, headers={"Location": "https://evil.example.com/"}), "incomplete"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "incomplete"),
    ],
    ids=["401", "403", "500", "503", "html", "not-fhir", "redirect", "read-timeout", "connect-error"],
)
async def test_a_failing_server_makes_the_key_unavailable_with_an_issue_code(
    server: respx.MockRouter, fhir: FhirClient, response: httpx.Response | Exception, issue_code: str
) -> None:
    route = server.get(URLS["conditions"])
    if isinstance(response, Exception):
        route.mock(side_effect=response)
    else:
        route.mock(return_value=response)

    result = await resolve(
        cds_request(without(full_prefetch(), "conditions")), TEMPLATES, fhir, budget_seconds=2
    )

    assert set(result.unavailable) == {"conditions"}
    assert result.unavailable["conditions"].issue_code == issue_code
    assert result.unavailable["conditions"].reason
    assert "conditions" not in result.data
    assert set(result.data) == {"patient", "medications", "observations"}


async def test_the_access_token_never_appears_in_any_unavailable_reason(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    server.get(URLS["patient"]).respond(401, text=f"invalid token {TOKEN}")
    server.get(URLS["conditions"]).respond(500, text=f"error for {PID} with {TOKEN}")
    server.get(URLS["medications"]).respond(200, text=f"<html>{TOKEN}</html>")
    server.get(URLS["observations"]).mock(side_effect=never)
    server.get(f"{BASE}/Procedure?patient={PID}").mock(side_effect=httpx.ConnectError(f"refused {TOKEN}"))
    templates = {
        **TEMPLATES,
        "procedures": "Procedure?patient={{context.patientId}}",
        "paged": "Encounter?patient={{context.patientId}}",
        "encounter": "Encounter/{{context.encounterId}}",
    }
    paged = searchset([])
    paged["link"] = [{"relation": "next", "url": f"https://evil.example.com/?token={TOKEN}&patient={PID}"}]

    result = await resolve(cds_request({"paged": paged}), templates, fhir, budget_seconds=0.5)

    assert set(result.unavailable) == set(templates)
    for unavailable in result.unavailable.values():
        assert TOKEN not in unavailable.reason
        assert PID not in unavailable.reason
        assert "ehr.example.org" not in unavailable.reason


# --------------------------------------------------------------------------------------------
# resolve(): invalid prefetch


@pytest.mark.parametrize(
    "value",
    [[], [searchset([])], "Condition?patient=1", "", 42, 0, True, {"entry": []}, {"resourceType": 7}],
    ids=["empty-list", "list", "string", "empty-string", "number", "zero", "bool", "no-type", "numeric-type"],
)
async def test_a_prefetch_value_that_is_not_a_resource_is_invalid_and_names_its_key(
    server: respx.MockRouter, fhir: FhirClient, value: Any
) -> None:
    prefetch = {**full_prefetch(), "conditions": value}

    with pytest.raises(PrefetchInvalid) as caught:
        await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert caught.value.key == "conditions"
    assert "conditions" in caught.value.message
    assert len(server.calls) == 0


async def test_an_invalid_value_after_a_missing_key_leaves_no_fetch_behind(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    """The fetch of the earlier, missing key is neither made nor left as a never-awaited coroutine."""
    serve(server, *TEMPLATES)
    prefetch = {**without(full_prefetch(), "patient", "conditions"), "observations": ["not", "a", "bundle"]}

    key = None
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        try:
            await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)
        except PrefetchInvalid as exc:  # caught here, not by pytest.raises, so its frames are freed
            key = exc.key
        gc.collect()

    assert key == "observations"
    assert len(server.calls) == 0
    assert not [w for w in caught_warnings if "never awaited" in str(w.message)]


async def test_a_prefetched_patient_other_than_the_context_patient_is_invalid(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    prefetch = {**full_prefetch(), "patient": patient("someone-else")}

    with pytest.raises(PrefetchInvalid) as caught:
        await resolve(cds_request(prefetch), TEMPLATES, fhir, budget_seconds=2)

    assert caught.value.key == "patient"
    assert "someone-else" not in caught.value.message
    assert len(server.calls) == 0


async def test_a_prefetched_patient_matching_the_context_is_used(
    server: respx.MockRouter, fhir: FhirClient
) -> None:
    result = await resolve(cds_request(full_prefetch()), TEMPLATES, fhir, budget_seconds=2)

    assert result.data["patient"].resources == [patient()]


def test_lifelong_results_are_fetched_without_a_date_window() -> None:
    """A SOD1 result from years ago still counts: its value sets are asked for with no date limit."""
    from cds_service import terminology

    sod1 = terminology.load("sod1")
    alt = terminology.load("alt")
    weight = terminology.load("body-weight")
    assert sod1.full_history and alt.full_history and not weight.full_history
    templates = prefetch_templates(Interest({"Observation": (alt, sod1, weight)}), Settings(), TODAY)
    recent = templates["observations"]
    lifelong = templates[OBSERVATION_HISTORY_KEY]
    assert "date=ge" in recent and "29463-7" in recent and "1742-6" not in recent
    assert "date=" not in lifelong and "29463-7" not in lifelong and "1742-6" in lifelong
    assert all(f"{system}|{code}" in lifelong for system, code in sod1.codes)


def test_tofersen_order_services_ask_for_genetic_results_without_a_window() -> None:
    for service_id in ("als-order-select", "als-order-sign"):
        templates = build_services()[service_id].prefetch(Settings(), TODAY)
        assert "date=" not in templates[OBSERVATION_HISTORY_KEY]
