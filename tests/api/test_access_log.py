"""The access log: one line per call, whatever its outcome, so that a misconfiguration shows.

Why: the CDS Hooks sandbox shows "All clear" after a 401, a 400 or a CORS refusal just as after a
call that found nothing, so the service's log is where an integration engineer must see what went
wrong. Every call, refused or not, gets exactly one line with its status and a duration that
includes authentication and any JWK Set fetch (`cds_service/access_log.py`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from cds_service import engine as engine_module
from cds_service import security
from cds_service.app import create_app
from cds_service.logs import JsonFormatter
from cds_service.settings import DEFAULT_CORS_ORIGINS, Settings
from tests.support import NOW, ROOT, hook_request

BASE = "http://testserver"
SERVICE = "/cds-services/als-patient-view"
FEEDBACK = SERVICE + "/feedback"
EHR = "https://ehr.example.org"  # a static key set
SLOW_EHR = "https://slow-ehr.example.org"  # a key set from a URL that takes its time
SLOW_KEYS = "https://slow-ehr.example.org/jwks.json"
ALLOWED_ORIGIN = "https://sandbox.cds-hooks.org"
SANDBOX_README = (
    ROOT.parent / "shared" / "clients" / "cds-hooks-sandbox" / "README.md"
)  # beside the clone, when there

KEY = ec.generate_private_key(ec.SECP384R1())
KEY_SET = {"keys": [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k-1", "alg": "ES384"}]}

REQUEST = hook_request("patient-view-als-riluzole-lft-overdue")
PATIENT_ID = REQUEST["context"]["patientId"]
FEEDBACK_BODY = {
    "feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T11:59:00Z"}]
}


def token(path: str = SERVICE, iss: str = EHR, **claims: Any) -> str:
    payload = {
        "iss": iss,
        "aud": BASE + path,
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 300,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    return jwt.encode(payload, KEY, algorithm="ES384", headers={"kid": "k-1"})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """Every record of the service's loggers, the debug level included. (The CLI's logging
    configuration, left behind by tests that run `main`, stops `cds_service` propagating.)"""
    monkeypatch.setattr(logging.getLogger("cds_service"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="cds_service")
    return caplog


@pytest.fixture
def mock_http() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    opened: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        values: dict[str, Any] = {
            "_env_file": None,
            "database_url": f"sqlite:///{tmp_path / 'als-cds.db'}",
            "auth_required": True,
            "trusted_clients": {EHR: {"jwks": KEY_SET}, SLOW_EHR: {"jwks_url": SLOW_KEYS}},
            "cors_origins": ALLOWED_ORIGIN,
            "max_body_bytes": 50_000,
            **changes,
        }
        client = TestClient(create_app(Settings(**values), clock=lambda: NOW), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cds_service.access"]


def as_json(record: logging.LogRecord) -> dict[str, Any]:
    """The line exactly as the service writes it (logs.py)."""
    return json.loads(JsonFormatter().format(record))


def _unobtainable() -> dict[str, Any]:
    """A call whose data can be had neither from prefetch nor from a FHIR server: 412."""
    request = copy.deepcopy(REQUEST)
    request.pop("prefetch", None)
    request.pop("fhirServer", None)
    return request


def _wrong_hook() -> dict[str, Any]:
    request = copy.deepcopy(REQUEST)
    request["hook"] = "order-sign"
    return request


#: Each outcome a call can have: (method, path, headers, body) → the status the client gets.
CALLS: dict[str, tuple[Callable[[], dict[str, Any]], int]] = {
    "hook-call": (lambda: {"json": REQUEST, "headers": bearer(token())}, 200),
    "feedback": (lambda: {"url": FEEDBACK, "json": FEEDBACK_BODY, "headers": bearer(token(FEEDBACK))}, 200),
    "discovery": (lambda: {"method": "GET", "url": "/cds-services"}, 200),
    "preflight": (
        lambda: {
            "method": "OPTIONS",
            "headers": {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
        },
        200,
    ),
    "preflight-from-an-origin-not-allowed": (
        lambda: {
            "method": "OPTIONS",
            "headers": {"Origin": "http://127.0.0.1:1234", "Access-Control-Request-Method": "POST"},
        },
        400,
    ),
    "body-not-json": (
        lambda: {"content": b"{not json", "headers": {"Content-Type": "application/json", **bearer(token())}},
        400,
    ),
    "wrong-hook": (lambda: {"json": _wrong_hook(), "headers": bearer(token())}, 400),
    "feedback-body-invalid": (lambda: {"url": FEEDBACK, "json": {}, "headers": bearer(token(FEEDBACK))}, 400),
    "no-token": (lambda: {"json": REQUEST}, 401),
    "no-token-and-a-broken-body": (lambda: {"content": b"{not json"}, 401),
    "expired-token": (
        lambda: {
            "json": REQUEST,
            "headers": bearer(token(iat=int(NOW.timestamp()) - 900, exp=int(NOW.timestamp()) - 600)),
        },
        401,
    ),
    "key-set-unavailable": (lambda: {"json": REQUEST, "headers": bearer(token(iss=SLOW_EHR))}, 401),
    "unknown-service": (
        lambda: {
            "url": "/cds-services/nope",
            "json": REQUEST,
            "headers": bearer(token("/cds-services/nope")),
        },
        404,
    ),
    "unknown-path": (lambda: {"method": "GET", "url": "/Patient/als-riluzole-lft-overdue"}, 404),
    "wrong-method": (lambda: {"method": "GET"}, 405),
    "data-unobtainable": (lambda: {"json": _unobtainable(), "headers": bearer(token())}, 412),
    "body-too-large": (lambda: {"content": b"{" + b" " * 60_000 + b"}", "headers": bearer(token())}, 413),
    "not-json-content-type": (
        lambda: {"content": b"x", "headers": {"Content-Type": "text/plain", **bearer(token())}},
        415,
    ),
    "unexpected-error": (lambda: {"json": REQUEST, "headers": bearer(token())}, 500),
    "replay-cache-down": (lambda: {"json": REQUEST, "headers": bearer(token())}, 503),
}


def test_every_call_gets_exactly_one_access_line_whatever_its_outcome(
    make_client: Callable[..., TestClient],
    records: pytest.LogCaptureFixture,
    mock_http: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mock_http.get(SLOW_KEYS).respond(503)
    client = make_client()
    state = client.app.state.als  # type: ignore[attr-defined]
    sent: Counter[int] = Counter()
    tokens: list[str] = []
    for name, (make_call, expected) in CALLS.items():
        call = {"method": "POST", "url": SERVICE, **make_call()}
        tokens.append(call.get("headers", {}).get("Authorization", ""))
        with monkeypatch.context() as patch:
            if name == "unexpected-error":
                patch.setattr(engine_module, "build_record", _explode)
            if name == "replay-cache-down":
                patch.setattr(state.store, "record_jti", _explode)
            before = len(access_lines(records))
            response = client.request(**call)
        assert response.status_code == expected, (name, response.text)
        sent[expected] += 1
        new = access_lines(records)[before:]
        assert len(new) == 1, (name, [r.getMessage() for r in new])
        line = as_json(new[0])
        assert line["status"] == expected, name
        assert line["request_id"] == response.headers["x-request-id"], name
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["method"] == call["method"]

    assert Counter(as_json(r)["status"] for r in access_lines(records)) == sent
    assert len({as_json(r)["request_id"] for r in access_lines(records)}) == len(CALLS)
    text = "\n".join(JsonFormatter().format(r) for r in records.records)
    for presented in filter(None, tokens):
        assert presented.removeprefix("Bearer ") not in text
    assert PATIENT_ID not in text  # not even the path of the unknown-path call


def _explode(*args: Any, **kwargs: Any) -> Any:
    raise ConnectionError("Margaret Hartley, born 1961-05-14")


def test_the_access_line_says_what_the_call_was(
    make_client: Callable[..., TestClient], records: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token())).status_code == 200
    assert client.post(FEEDBACK, json=FEEDBACK_BODY, headers=bearer(token(FEEDBACK))).status_code == 200
    assert client.post(SERVICE, json=REQUEST).status_code == 401
    assert (
        client.post(
            "/cds-services/nope", json=REQUEST, headers=bearer(token("/cds-services/nope"))
        ).status_code
        == 404
    )
    assert client.get("/cds-services").status_code == 200
    call, feedback, refused, unknown, discovery = (as_json(r) for r in access_lines(records))

    assert call["event"] == "hook call" and call["level"] == "info"
    assert (call["path"], call["service"], call["issuer"], call["hook"]) == (
        "/cds-services/{service_id}", "als-patient-view", EHR, "patient-view",
    )  # fmt: skip
    assert call["hook_instance"] == REQUEST["hookInstance"]
    # Two cards: the riluzole warning and the care review digest of three reminders, which the
    # line names after it (issue 12).
    assert call["cards"] == 2 and "riluzole-lft-due" in call["rule_ids"]
    assert call["rule_ids"][1:] == [
        "care-review-digest", "respiratory-assessment-due", "mdt-review-overdue", "advance-care-planning",
    ]  # fmt: skip
    assert feedback["event"] == "feedback" and feedback["path"] == "/cds-services/{service_id}/feedback"
    assert (feedback["service"], feedback["issuer"], feedback["stored"], feedback["unknown_cards"]) == (
        "als-patient-view", EHR, 1, 1,
    )  # fmt: skip
    assert refused["event"] == "hook call" and refused["status"] == 401
    assert "issuer" not in refused and "hook" not in refused and refused["service"] == "als-patient-view"
    assert unknown["status"] == 404 and unknown["service"] is None  # the caller's path is not echoed
    assert discovery["event"] == "request" and discovery["path"] == "/cds-services"


def test_a_refusal_and_its_access_line_share_a_request_id(
    make_client: Callable[..., TestClient], records: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    response = client.post(SERVICE, json=REQUEST, headers=bearer(token(aud=BASE + FEEDBACK)))
    assert response.status_code == 401
    [refusal] = [r for r in records.records if r.getMessage() == "authentication failed"]
    [line] = access_lines(records)
    assert refusal.auth_failure == "wrong_audience"  # type: ignore[attr-defined]
    assert refusal.request_id == line.request_id == response.headers["x-request-id"]  # type: ignore[attr-defined]


def test_the_duration_includes_authentication_and_the_key_set_fetch(
    make_client: Callable[..., TestClient],
    records: pytest.LogCaptureFixture,
    mock_http: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.4)
        return httpx.Response(200, json=KEY_SET)

    route = mock_http.get(SLOW_KEYS).mock(side_effect=slow)
    client = make_client()
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=SLOW_EHR))).status_code == 200
    # A refusal after a fetch that timed out costs its time as well.
    monkeypatch.setattr(security, "JWKS_TIMEOUT_SECONDS", 0.3)
    slow_to_fail = make_client(trusted_clients={SLOW_EHR: {"jwks_url": SLOW_KEYS}})
    assert slow_to_fail.post(SERVICE, json=REQUEST, headers=bearer(token(iss=SLOW_EHR))).status_code == 401
    accepted, refused = (as_json(r) for r in access_lines(records))
    assert route.called
    assert accepted["status"] == 200 and accepted["duration_ms"] >= 400
    assert refused["status"] == 401 and refused["duration_ms"] >= 300


def test_a_cors_refusal_is_a_warning_naming_the_origin(
    make_client: Callable[..., TestClient], records: pytest.LogCaptureFixture
) -> None:
    """What the browser hides (it drops an answer its page may not read) the log says."""
    client = make_client()
    page = "http://127.0.0.1:1234"
    preflight = client.options(SERVICE, headers={"Origin": page, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 400
    # A request that skipped the preflight is answered, but the page cannot read the answer.
    direct = client.post(SERVICE, json=REQUEST, headers={"Origin": page, **bearer(token())})
    assert direct.status_code == 200 and "access-control-allow-origin" not in direct.headers
    allowed = client.post(SERVICE, json=REQUEST, headers={"Origin": ALLOWED_ORIGIN, **bearer(token())})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    first, second, third = (as_json(r) for r in access_lines(records))
    assert (first["event"], first["status"], first["origin"], first["cors"], first["level"]) == (
        "cors preflight", 400, page, "refused", "warning",
    )  # fmt: skip
    assert (second["event"], second["status"], second["cors"], second["level"]) == (
        "hook call", 200, "refused", "warning",
    )  # fmt: skip
    assert (third["cors"], third["level"]) == ("allowed", "info")


def test_health_probes_that_succeed_are_logged_at_debug_level(
    make_client: Callable[..., TestClient], records: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    client.get("/healthz")
    client.get("/readyz")
    assert [(as_json(r)["path"], r.levelno) for r in access_lines(records)] == [
        ("/healthz", logging.DEBUG), ("/readyz", logging.DEBUG),
    ]  # fmt: skip


def test_the_default_origins_cover_the_public_and_a_locally_served_sandbox(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(
        cors_origins=Settings.model_fields["cors_origins"].get_default(call_default_factory=True)
    )
    for origin in ("https://sandbox.cds-hooks.org", "http://127.0.0.1:8090", "http://localhost:8090"):
        response = client.options(
            SERVICE, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert response.status_code == 200, origin
        assert response.headers["access-control-allow-origin"] == origin
    # The sandbox build's README serves it on a port of its own: that origin must be a default.
    if SANDBOX_README.is_file():
        served = re.findall(
            r"http\.server (\d+) --bind 127\.0\.0\.1", SANDBOX_README.read_text(encoding="utf-8")
        )
        assert served, "the sandbox README no longer says how it is served"
        assert {f"http://127.0.0.1:{port}" for port in served} <= set(DEFAULT_CORS_ORIGINS)
