"""Schemathesis against the app's own OpenAPI schema: no operation ever answers 500, and every
answer is JSON (an OperationOutcome for errors), whatever schemathesis sends.

Schemathesis generates valid and invalid bodies, path parameters and headers for every operation
(discovery, invoke, feedback, liveness, readiness) from `/openapi.json`, and calls the app in
process over ASGI. Its ASGI client runs the app's lifespan (card catalogue, database migration,
HTTP client) before the first call of each test, and its pytest plugin ends it after the test. The
apps run with authentication off, on in-memory SQLite databases; nothing goes over the network.

Two runs:

* `test_no_operation_answers_500_and_every_answer_is_json`: the schema as it is. Most service ids
  it makes up do not exist (404), so it mostly proves the request models and error handlers.
* `test_the_engine_path_never_answers_500`: the hook-call operations only, with the service id one
  of ours, `hook` one of the three hooks, mostly a well-formed `fhirServer`, and the context ids
  filled in (when schemathesis left them out), so that its bodies get past validation into
  prefetch resolution, fetching and the rules.

Every call runs under a respx mock that answers any FHIR fetch with a 503, so no fhirServer that
schemathesis writes is ever contacted.

The schema is loaded when the module is imported: schemathesis 4.32's lazy `from_fixture` loader
does not work with pytest 9 (it reads `Function._nodeid`, which pytest 9 removed).

Bounded and reproducible: at most 40 generated cases per operation and phase, a fixed seed, no
example database in the working tree.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import respx
import schemathesis
from hypothesis import event
from schemathesis.checks import not_a_server_error

from cds_service.app import create_app
from cds_service.services import build_services
from cds_service.settings import Settings
from tests.support import NOW

MAX_EXAMPLES = 40
SEED = 20261122
SERVER = "https://ehr.example.org/fhir"


def _config(**extra: Any) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "deterministic": True},
            **extra,
        }
    )


def _app() -> Any:
    settings = Settings(
        _env_file=None, database_url="sqlite://", auth_required=False, fhir_budget_seconds=1.0
    )
    return create_app(settings, clock=lambda: NOW)


def _check(case: schemathesis.Case) -> None:
    with respx.mock(assert_all_called=False) as fhir:  # whatever fhirServer it names: no network
        fhir.route().mock(return_value=httpx.Response(503))
        response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis: each header a list
    assert content_type.startswith("application/json"), response.text[:300]
    body = json.loads(response.text)
    issue = ""
    if response.status_code >= 400:
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"] and all(isinstance(i["diagnostics"], str) for i in body["issue"])
        issue = body["issue"][0]["diagnostics"][:50]
    event(f"{case.method} {case.path}: {response.status_code} {issue}")  # --hypothesis-show-statistics


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), config=_config())


@schema.parametrize()
def test_no_operation_answers_500_and_every_answer_is_json(case: schemathesis.Case) -> None:
    _check(case)


engine_schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    _app(),
    config=_config(
        dictionaries={
            "services": {"values": sorted(build_services())},
            "hooks": {"values": ["patient-view", "order-select", "order-sign"]},
            "servers": {"values": [SERVER]},
        },
        parameters={
            "path.service_id": {"dictionary": "services", "probability": 1.0},
            "body.hook": {"dictionary": "hooks", "probability": 0.9},  # then made the service's own
            "body.fhirServer": {"dictionary": "servers", "probability": 0.7},
        },
    ),
).include(path_regex=r"^/cds-services/\{service_id\}$")


HOOK_OF = {service.id: service.hook for service in build_services().values()}


@engine_schema.hook("map_case")
def _a_call_our_service_could_answer(
    _: schemathesis.HookContext, case: schemathesis.Case
) -> schemathesis.Case:
    """Mostly the service's own hook, and the context ids every hook needs where they are missing."""
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("hook"), str) and body["hook"] in HOOK_OF.values():
            body["hook"] = HOOK_OF[case.path_parameters["service_id"]]
        if isinstance(body.get("context"), dict):
            body["context"].setdefault("userId", "Practitioner/1")
            body["context"].setdefault("patientId", "p1")
    return case


@engine_schema.parametrize()
def test_the_engine_path_never_answers_500(case: schemathesis.Case) -> None:
    _check(case)
