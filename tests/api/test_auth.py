"""JWT authentication of EHR calls, end to end: which calls need a token, what a refusal looks like
(a bare 401, the reason only in the log), replays across replicas, key sets fetched from URLs.

Each check in isolation is covered by tests/unit/test_security.py; here every refusal goes through
the app, so that the route wiring, the audience built from the request and the log are covered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service import security
from cds_service.app import create_app
from cds_service.settings import Settings, TrustedClient
from tests.support import NOW, hook_request

BASE = "http://testserver"  # TestClient's base URL: the audience when no public base URL is set
SERVICE = "/cds-services/als-patient-view"
FEEDBACK = SERVICE + "/feedback"
DISCOVERY = "/cds-services"

EHR = "https://ehr.example.org"  # static key set
EHR2 = "https://ehr2.example.org"  # key set from a URL
EHR2_KEYS = "https://ehr2.example.org/.well-known/jwks.json"
EPIC = "https://epic.example.org/api/FHIR/R4"  # Epic style: RS384, keys from an allowlisted jku
EPIC_JKU = "https://epic.example.org/api/epic/2019/Security/Open/PublicKeys/530013/530013"
TENANTED = "https://tenanted.example.org"
EVIL_JKU = "https://evil.example.org/jwks.json"

EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = ec.generate_private_key(ec.SECP384R1())
EPIC_KID = "j6Yv+Kp2Xw9q3ZcL8d0fTg=="  # Epic's kids are base64-like, with + and =


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    to_jwk = RSAAlgorithm.to_jwk if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm.to_jwk
    return {**to_jwk(private_key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": alg}


KEY_SET = {"keys": [public_jwk(EC_KEY, "ec-1", "ES384"), public_jwk(RSA_KEY, "rsa-1", "RS384")]}
EPIC_KEY_SET = {"keys": [public_jwk(RSA_KEY, EPIC_KID, "RS384")]}

TRUSTED: dict[str, Any] = {
    EHR: {"jwks": KEY_SET},
    EHR2: {"jwks_url": EHR2_KEYS},
    EPIC: {"jku": [EPIC_JKU]},
    TENANTED: {"jwks": KEY_SET, "tenant": "org-1"},
}

#: The one body every refusal gets, whatever the reason.
REFUSAL = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "login", "diagnostics": "authentication required"}],
}

REQUEST = hook_request("patient-view-als-riluzole-lft-overdue")
FEEDBACK_BODY = {
    "feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T11:59:00Z"}]
}


def token(
    path: str = SERVICE,
    *,
    key: Any = EC_KEY,
    alg: str = "ES384",
    kid: str | None = "ec-1",
    base: str = BASE,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A token for `base + path` issued at NOW by EHR; a claim set to None is left out."""
    payload: dict[str, Any] = {
        "iss": EHR,
        "aud": base + path,
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 300,
        "jti": str(uuid.uuid4()),
    }
    payload.update(claims)
    header = {"kid": kid} if kid is not None else {}
    header.update(headers or {})
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=alg, headers=header)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def settings_for(database_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "database_url": database_url,
        "auth_required": True,
        "trusted_clients": TRUSTED,
    }
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def auth_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """The service's log records. (`als-cds` in-process, e.g. in the CLI tests, configures the
    `cds_service` logger not to propagate; the records must reach caplog here.)"""
    monkeypatch.setattr(logging.getLogger("cds_service"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="cds_service")
    return caplog


@pytest.fixture
def mock_http() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Apps with authentication on, started and stopped around the test."""
    opened: list[TestClient] = []

    def make(database_url: str | None = None, **changes: Any) -> TestClient:
        url = database_url or f"sqlite:///{tmp_path / 'als-cds.db'}"
        client = TestClient(create_app(settings_for(url, **changes), clock=lambda: NOW))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.auth_failure for r in caplog.records if hasattr(r, "auth_failure")]


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == REFUSAL


# ------------------------------------------------------------------------------------------------
# Accepted calls


@pytest.mark.parametrize(("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1")])
def test_a_trusted_es384_or_rs384_token_gets_the_cards(
    client: TestClient, key: Any, alg: str, kid: str
) -> None:
    response = client.post(SERVICE, json=REQUEST, headers=bearer(token(key=key, alg=alg, kid=kid)))
    assert response.status_code == 200, response.text
    # The quickstart patient: the ALT warning and the care review of three reminders (the digest).
    assert [c["indicator"] for c in response.json()["cards"]] == ["warning", "info"]


def test_keys_from_a_jwks_url_are_fetched_once_and_cached(
    client: TestClient, mock_http: respx.MockRouter
) -> None:
    route = mock_http.get(EHR2_KEYS).respond(json=KEY_SET)
    for key, alg, kid in [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1"), (EC_KEY, "ES384", "ec-1")]:
        response = client.post(
            SERVICE, json=REQUEST, headers=bearer(token(key=key, alg=alg, kid=kid, iss=EHR2))
        )
        assert response.status_code == 200, response.text
    assert route.call_count == 1


def test_an_epic_style_token_with_an_allowlisted_jku_is_accepted(
    client: TestClient, mock_http: respx.MockRouter
) -> None:
    """RS384, keys at the jku the organisation gave us, `sub` = our client id, `nbf` five minutes
    before `iat`, a 15-minute lifetime, a kid with + and =."""
    route = mock_http.get(EPIC_JKU).respond(json=EPIC_KEY_SET)
    epic = token(
        key=RSA_KEY,
        alg="RS384",
        kid=EPIC_KID,
        headers={"jku": EPIC_JKU},
        iss=EPIC,
        sub="our-client-id",
        nbf=int(NOW.timestamp()) - 300,
        exp=int(NOW.timestamp()) + 900,
    )
    assert client.post(SERVICE, json=REQUEST, headers=bearer(epic)).status_code == 200
    assert route.call_count == 1


def test_a_jku_pinned_to_a_key_set_file_is_accepted_offline(
    make_client: Callable[..., TestClient],
    mock_http: respx.MockRouter,
    auth_log: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Where outbound calls are forbidden: the jku the EHR sends is pinned to a file of its public
    keys, so the URL is never fetched, on the service endpoint and on feedback alike."""
    keys_file = tmp_path / "epic-jwks.json"
    keys_file.write_text(json.dumps(EPIC_KEY_SET), encoding="utf-8")
    route = mock_http.get(EPIC_JKU).mock(side_effect=httpx.ConnectError("no outbound calls here"))
    client = make_client(trusted_clients={EPIC: {"jku_keys": {EPIC_JKU: str(keys_file)}}})
    for path, body in ((SERVICE, REQUEST), (FEEDBACK, FEEDBACK_BODY)):
        signed = token(path, key=RSA_KEY, alg="RS384", kid=EPIC_KID, headers={"jku": EPIC_JKU}, iss=EPIC)
        assert client.post(path, json=body, headers=bearer(signed)).status_code == 200
    assert_refused(
        client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=EPIC, headers={"jku": EVIL_JKU})))
    )
    assert failures(auth_log) == ["jku_not_allowed"]
    assert route.call_count == 0
    [started] = [r for r in auth_log.records if r.getMessage() == "authentication is on"]
    assert started.pinned_jku == [EPIC_JKU]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "aud",
    [[BASE + SERVICE], ["https://elsewhere.example.org/x", BASE + SERVICE], BASE + SERVICE + "/"],
    ids=["array", "array-of-two", "trailing-slash"],
)
def test_audience_as_an_array_or_with_a_trailing_slash_is_accepted(client: TestClient, aud: Any) -> None:
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(aud=aud))).status_code == 200


def test_feedback_is_accepted_with_a_token_for_the_feedback_url(client: TestClient) -> None:
    response = client.post(FEEDBACK, json=FEEDBACK_BODY, headers=bearer(token(FEEDBACK)))
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}


def test_behind_a_proxy_the_audience_is_built_from_the_public_base_url(
    make_client: Callable[..., TestClient], auth_log: pytest.LogCaptureFixture
) -> None:
    public = "https://cds.example.org/als"
    client = make_client(public_base_url=public + "/")
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(base=public))).status_code == 200
    assert (
        client.post(FEEDBACK, json=FEEDBACK_BODY, headers=bearer(token(FEEDBACK, base=public))).status_code
        == 200
    )
    # The internal URL the request arrived on is not the endpoint's public identity.
    assert_refused(client.post(SERVICE, json=REQUEST, headers=bearer(token())))
    assert failures(auth_log) == ["wrong_audience"]


def test_the_tenant_is_checked_for_an_issuer_that_has_one(client: TestClient) -> None:
    ok = client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=TENANTED, tenant="org-1")))
    assert ok.status_code == 200
    assert_refused(client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=TENANTED, tenant="org-2"))))


# ------------------------------------------------------------------------------------------------
# Refused calls: a bare 401, the reason in the log


def _hs256_with_public_key() -> dict[str, str]:
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {
        "iss": EHR,
        "aud": BASE + SERVICE,
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 300,
    }
    header = {"alg": "HS256", "typ": "JWT", "kid": "ec-1"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims | {'jti': 'x'}).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return bearer(f"{signing_input}.{b64(signature)}")


def _alg_none() -> dict[str, str]:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "ec-1"}).encode())
    payload = b64(json.dumps({"iss": EHR, "aud": BASE + SERVICE, "jti": "x"}).encode())
    return bearer(f"{header}.{payload}.")


T = int(NOW.timestamp())

REFUSALS: dict[str, tuple[Callable[[], dict[str, str]], str]] = {
    "no-header": (dict, "missing_token"),
    "basic-auth": (lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, "not_bearer"),
    "token-without-scheme": (lambda: {"Authorization": token()}, "not_bearer"),
    "malformed": (lambda: bearer("not-a-jwt"), "malformed"),
    "alg-none": (_alg_none, "alg_not_allowed"),
    "hs256-key-confusion": (_hs256_with_public_key, "alg_not_allowed"),
    "rs256-not-allowed": (lambda: bearer(token(key=RSA_KEY, alg="RS256", kid="rsa-1")), "alg_not_allowed"),
    "typ-missing": (lambda: bearer(token(headers={"typ": None})), "bad_typ"),
    "kid-missing": (lambda: bearer(token(kid=None)), "missing_kid"),
    "unknown-issuer": (lambda: bearer(token(iss="https://evil.example.org")), "unknown_issuer"),
    "jku-not-allowlisted": (lambda: bearer(token(headers={"jku": EVIL_JKU})), "jku_not_allowed"),
    "unknown-kid": (lambda: bearer(token(kid="ec-9")), "unknown_kid"),
    "bad-signature": (lambda: bearer(token(key=OTHER_KEY)), "bad_signature"),
    "discovery-token-on-a-service": (lambda: bearer(token(DISCOVERY)), "wrong_audience"),
    "feedback-token-on-a-service": (lambda: bearer(token(FEEDBACK)), "wrong_audience"),
    "other-service": (lambda: bearer(token("/cds-services/als-order-sign")), "wrong_audience"),
    "aud-unparsable": (
        lambda: bearer(token(aud="https://[::1/cds-services/als-patient-view")),
        "wrong_audience",
    ),
    "expired": (lambda: bearer(token(iat=T - 600, exp=T - 61)), "expired"),
    "iat-in-the-future": (lambda: bearer(token(iat=T + 61, exp=T + 600)), "iat_in_future"),
    "too-old": (lambda: bearer(token(iat=T - 3661, exp=T + 60)), "too_old"),
    "nbf-in-the-future": (lambda: bearer(token(nbf=T + 61)), "not_yet_valid"),
    "jti-missing": (lambda: bearer(token(jti=None)), "missing_claim"),
    "wrong-tenant": (lambda: bearer(token(iss=TENANTED, tenant="org-2")), "wrong_tenant"),
}


@pytest.mark.parametrize(("headers", "reason"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_every_refusal_is_the_same_bare_401_with_the_reason_only_in_the_log(
    client: TestClient,
    auth_log: pytest.LogCaptureFixture,
    mock_http: respx.MockRouter,
    headers: Callable[[], dict[str, str]],
    reason: str,
) -> None:
    evil = mock_http.get(EVIL_JKU).respond(json=KEY_SET)
    sent = {"Origin": "https://sandbox.cds-hooks.org", **headers()}

    response = client.post(SERVICE, json=REQUEST, headers=sent)

    assert_refused(response)
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    assert failures(auth_log) == [reason]
    assert reason not in response.text
    [record] = [r for r in auth_log.records if hasattr(r, "auth_failure")]
    assert record.levelno == logging.WARNING and record.endpoint == SERVICE
    presented = sent.get("Authorization", "").partition(" ")[2] or sent.get("Authorization")
    if presented:  # the token (or whatever stood in the header) is in neither the answer nor the log
        assert presented not in response.text
        assert presented not in auth_log.text
        assert all(presented not in str(v) for r in auth_log.records for v in r.__dict__.values())
    assert evil.call_count == 0  # a jku that is not allowlisted is never fetched
    assert client.app.state.als.store.feedback_rows() == []  # type: ignore[attr-defined]


def test_the_log_of_a_refusal_names_the_token_without_quoting_it(
    client: TestClient, auth_log: pytest.LogCaptureFixture
) -> None:
    expired = token(iat=T - 600, exp=T - 61, jti="jti-for-the-log")
    client.post(SERVICE, json=REQUEST, headers=bearer(expired))
    [record] = [r for r in auth_log.records if hasattr(r, "auth_failure")]
    assert (record.auth_failure, record.iss, record.kid, record.jti, record.alg) == (
        "expired", EHR, "ec-1", "jti-for-the-log", "ES384",
    )  # fmt: skip
    assert expired not in auth_log.text
    for segment in expired.split("."):
        assert segment not in auth_log.text


def test_the_call_and_feedback_log_lines_name_the_ehr_that_called(
    client: TestClient, auth_log: pytest.LogCaptureFixture
) -> None:
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token())).status_code == 200
    assert client.post(FEEDBACK, json=FEEDBACK_BODY, headers=bearer(token(FEEDBACK))).status_code == 200
    by_event = {r.getMessage(): r for r in auth_log.records if r.getMessage() in ("hook call", "feedback")}
    assert by_event["hook call"].issuer == EHR
    assert by_event["feedback"].issuer == EHR


def test_a_successful_call_logs_no_token_either(
    client: TestClient, auth_log: pytest.LogCaptureFixture
) -> None:
    good = token()
    assert client.post(SERVICE, json=REQUEST, headers=bearer(good)).status_code == 200
    assert failures(auth_log) == []
    assert good.split(".")[2] not in auth_log.text and good not in auth_log.text


def test_a_service_token_is_refused_on_the_feedback_endpoint(
    client: TestClient, auth_log: pytest.LogCaptureFixture
) -> None:
    assert_refused(client.post(FEEDBACK, json=FEEDBACK_BODY, headers=bearer(token(SERVICE))))
    assert_refused(client.post(FEEDBACK, json=FEEDBACK_BODY))
    assert failures(auth_log) == ["wrong_audience", "missing_token"]
    assert client.app.state.als.store.feedback_rows() == []  # type: ignore[attr-defined]


def test_the_token_is_checked_before_the_body_is_read(
    client: TestClient, auth_log: pytest.LogCaptureFixture
) -> None:
    # Without a token, a broken body or an unknown service is the same 401 as anything else...
    assert_refused(client.post(SERVICE, content=b"{not json", headers={"Content-Type": "application/json"}))
    assert_refused(client.post(SERVICE, json={"hook": "patient-view"}))
    assert_refused(client.post("/cds-services/no-such-service", json=REQUEST))
    assert failures(auth_log) == ["missing_token"] * 3
    # ...and with a valid token the usual answers come back.
    broken = client.post(
        SERVICE, content=b"{not json", headers={"Content-Type": "application/json", **bearer(token())}
    )
    assert broken.status_code == 400
    unknown = client.post(
        "/cds-services/no-such-service", json=REQUEST, headers=bearer(token("/cds-services/no-such-service"))
    )
    assert unknown.status_code == 404


# ------------------------------------------------------------------------------------------------
# What stays open


def test_discovery_and_health_need_no_token(client: TestClient, auth_log: pytest.LogCaptureFixture) -> None:
    assert client.get(DISCOVERY).status_code == 200
    assert client.get(DISCOVERY + "/").status_code == 200
    # The sandbox sends a JWT to discovery too; it is not looked at, whatever it holds.
    assert client.get(DISCOVERY, headers=bearer("garbage")).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert failures(auth_log) == []


@pytest.mark.parametrize("path", [SERVICE, FEEDBACK, DISCOVERY])
def test_a_cors_preflight_needs_no_token(
    client: TestClient, auth_log: pytest.LogCaptureFixture, path: str
) -> None:
    response = client.options(
        path,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert failures(auth_log) == []


# ------------------------------------------------------------------------------------------------
# Replays


def test_a_token_is_accepted_only_once(client: TestClient, auth_log: pytest.LogCaptureFixture) -> None:
    once = token()
    assert client.post(SERVICE, json=REQUEST, headers=bearer(once)).status_code == 200
    assert_refused(client.post(SERVICE, json=REQUEST, headers=bearer(once)))
    assert failures(auth_log) == ["replayed"]
    # Another token from the same client is fine.
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token())).status_code == 200


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_replay_to_another_replica_sharing_the_database_is_refused(
    make_client: Callable[..., TestClient],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    auth_log: pytest.LogCaptureFixture,
    database: str,
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'shared.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_db_url")
    )
    first, second = make_client(url), make_client(url)
    assert first.app is not second.app
    once = token()

    assert first.post(SERVICE, json=REQUEST, headers=bearer(once)).status_code == 200
    assert_refused(second.post(SERVICE, json=REQUEST, headers=bearer(once)))
    assert_refused(first.post(SERVICE, json=REQUEST, headers=bearer(once)))
    assert failures(auth_log) == ["replayed", "replayed"]


def test_expired_replay_entries_are_purged_by_the_service(client: TestClient) -> None:
    store = client.app.state.als.store  # type: ignore[attr-defined]
    store.record_jti(EHR, "long-gone", NOW.replace(year=2025), NOW.replace(year=2025))
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(jti="fresh"))).status_code == 200
    assert store.record_jti(EHR, "long-gone", NOW.replace(year=2027), NOW) is True  # the old row was gone
    assert store.record_jti(EHR, "fresh", NOW.replace(year=2027), NOW) is False


def test_an_unreachable_replay_cache_is_a_503_not_an_acceptance(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> bool:
        raise ConnectionError("database down")

    monkeypatch.setattr(client.app.state.als.store, "record_jti", broken)  # type: ignore[attr-defined]
    response = client.post(SERVICE, json=REQUEST, headers=bearer(token()))
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------------------------------------
# Key sets from URLs


def test_an_unknown_kid_refetches_once_then_is_rate_limited(
    client: TestClient, mock_http: respx.MockRouter, auth_log: pytest.LogCaptureFixture
) -> None:
    route = mock_http.get(EHR2_KEYS).respond(json=KEY_SET)
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=EHR2))).status_code == 200
    assert route.call_count == 1
    assert_refused(client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=EHR2, kid="new-1"))))
    assert route.call_count == 2
    assert_refused(client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=EHR2, kid="new-2"))))
    assert route.call_count == 2
    assert failures(auth_log) == ["unknown_kid", "unknown_kid"]


def _slow(request: httpx.Request) -> Any:
    async def respond() -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=KEY_SET)

    return respond()


JWKS_FAILURES: dict[str, Any] = {
    "down": httpx.Response(503),
    "refused": httpx.ConnectError("refused"),
    "slow": _slow,
    "oversized": httpx.Response(200, content=b'{"keys": [' + b" " * 70_000 + b"]}"),
    "not-json": httpx.Response(200, text="<html>maintenance</html>"),
}


@pytest.mark.parametrize("failure", list(JWKS_FAILURES.values()), ids=list(JWKS_FAILURES))
def test_a_key_set_endpoint_that_fails_means_401_never_500(
    make_client: Callable[..., TestClient],
    mock_http: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
    auth_log: pytest.LogCaptureFixture,
    failure: Any,
) -> None:
    monkeypatch.setattr(security, "JWKS_TIMEOUT_SECONDS", 0.3)
    client = make_client()
    route = mock_http.get(EHR2_KEYS)
    if isinstance(failure, httpx.Response):
        route.return_value = failure
    else:
        route.side_effect = failure

    assert_refused(client.post(SERVICE, json=REQUEST, headers=bearer(token(iss=EHR2))))
    assert failures(auth_log) == ["jwks_unavailable"]
    # The other clients are not affected.
    assert client.post(SERVICE, json=REQUEST, headers=bearer(token())).status_code == 200


# ------------------------------------------------------------------------------------------------
# Start-up


def test_authentication_on_without_trusted_clients_refuses_to_start(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite:///{tmp_path / 'db'}", trusted_clients={})
    app = create_app(settings, clock=lambda: NOW)
    with (
        pytest.raises(security.ConfigurationError, match="ALS_CDS_TRUSTED_CLIENTS is empty"),
        TestClient(app),
    ):
        pass
    assert not (tmp_path / "db").exists()  # refused before touching the database


def test_authentication_off_is_announced_loudly(tmp_path: Path, auth_log: pytest.LogCaptureFixture) -> None:
    settings = settings_for(f"sqlite:///{tmp_path / 'db'}", auth_required=False, trusted_clients={})
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        assert client.post(SERVICE, json=REQUEST).status_code == 200
    [warning] = [r for r in auth_log.records if "authentication is OFF" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == "authentication is OFF: do not expose this service"


def test_authentication_on_logs_the_trusted_issuers(
    auth_log: pytest.LogCaptureFixture, make_client: Callable[..., TestClient]
) -> None:
    make_client()
    [info] = [r for r in auth_log.records if r.getMessage() == "authentication is on"]
    assert info.trusted_issuers == sorted(TRUSTED)


def test_trusted_clients_from_the_environment_configure_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALS_CDS_AUTH_REQUIRED", "true")
    monkeypatch.setenv("ALS_CDS_TRUSTED_CLIENTS", json.dumps({EHR: {"jwks": KEY_SET}}))
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'db'}")
    assert settings.trusted_clients == {EHR: TrustedClient(jwks=KEY_SET)}
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        assert_refused(client.post(SERVICE, json=REQUEST))
        assert client.post(SERVICE, json=REQUEST, headers=bearer(token())).status_code == 200
