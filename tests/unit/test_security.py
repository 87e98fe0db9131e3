"""The client JWT checks of security.py, one by one, with real keys and an injected clock.

Keys are generated here (EC P-384, P-256 and RSA 2048), except for two published vectors: the
expired ES384 example of the CDS Hooks 2.0.1 specification and the CDS Hooks sandbox's key set
(tests/spec_examples/, see PROVENANCE.md). Key-set URLs are served by respx; a test that must
prove that nothing was fetched checks the route's call count.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError
from starlette.datastructures import Headers

from cds_service import security
from cds_service.security import (
    AuthConfig,
    AuthFailure,
    ConfigurationError,
    JwksCache,
    JwksError,
    TokenVerifier,
    audience_matches,
    bearer_token,
    normalise_url,
    parse_key_set,
)
from cds_service.settings import Settings, TrustedClient

EXAMPLES = Path(__file__).resolve().parents[1] / "spec_examples"
SPEC = json.loads((EXAMPLES / "jwt-example-cds-hooks-2.0.1.json").read_text(encoding="utf-8"))
SANDBOX_JWKS = json.loads((EXAMPLES / "jwks-cds-hooks-sandbox.json").read_text(encoding="utf-8"))
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ISS = "https://ehr.example.org"
KEYS_URL = "https://ehr.example.org/.well-known/jwks.json"
SERVICE_URL = "https://cds.example.org/cds-services/als-patient-view"
FEEDBACK_URL = SERVICE_URL + "/feedback"
DISCOVERY_URL = "https://cds.example.org/cds-services"

EC_KEY = ec.generate_private_key(ec.SECP384R1())
EC256_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())


def public_jwk(private_key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    to_jwk = RSAAlgorithm.to_jwk if isinstance(private_key, rsa.RSAPrivateKey) else ECAlgorithm.to_jwk
    jwk: dict[str, Any] = to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    if alg:
        jwk["alg"] = alg
    return jwk


KEY_SET = {
    "keys": [
        public_jwk(EC_KEY, "ec-1", "ES384"),
        public_jwk(RSA_KEY, "rsa-1", "RS384"),
        public_jwk(EC256_KEY, "ec256-1", "ES256"),
    ]
}


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for SERVICE_URL at NOW; a change to None removes the claim."""
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": SERVICE_URL,
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 300,
        "jti": str(uuid.uuid4()),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def mint(
    key: Any = EC_KEY,
    alg: str = "ES384",
    kid: str | None = "ec-1",
    headers: dict[str, Any] | None = None,
    **changes: Any,
) -> str:
    header: dict[str, Any] = {"kid": kid} if kid is not None else {}
    header.update(headers or {})
    return jwt.encode(claims(**changes), key, algorithm=alg, headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def config(**changes: Any) -> AuthConfig:
    values: dict[str, Any] = {
        "required": True,
        "clients": {ISS: TrustedClient(jwks=KEY_SET)},
        "algorithms": ("ES384", "RS384"),
        "leeway_seconds": 60,
        "max_age_seconds": 3600,
        "jwks_cache_seconds": 3600,
    }
    values.update(changes)
    return AuthConfig(**values)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def mock_http() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def verifier(
    http: httpx.AsyncClient, monotonic: FakeMonotonic | None = None, *, at: datetime = NOW, **changes: Any
) -> TokenVerifier:
    cfg = config(**changes)
    cache = JwksCache(http, ttl_seconds=cfg.jwks_cache_seconds, monotonic=monotonic or FakeMonotonic())
    return TokenVerifier(cfg, cache, lambda: at)


async def reason(verify: TokenVerifier, token: str, audience: str = SERVICE_URL) -> str:
    with pytest.raises(AuthFailure) as failure:
        await verify.verify(token, audience)
    return failure.value.reason


# ------------------------------------------------------------------------------------------------
# The CDS Hooks 2.0.1 example token (ES384, expired in 2015) and the sandbox's key set


SPEC_ISS = SPEC["payload"]["iss"]
SPEC_JKU = SPEC["header"]["jku"]
SPEC_AUD = SPEC["payload"]["aud"]


def spec_verifier(http: httpx.AsyncClient, at: datetime, **client: Any) -> TokenVerifier:
    trusted = {SPEC_ISS: TrustedClient(jku=(SPEC_JKU,), **client)}
    # The example was issued years before it expires: only a huge maximum age lets it through.
    return verifier(http, at=at, clients=trusted, max_age_seconds=10**9)


async def test_the_spec_example_token_is_rejected_as_expired(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    mock_http.get(SPEC_JKU).respond(json=SPEC["jwks"])
    assert await reason(spec_verifier(http, datetime.now(UTC)), SPEC["compact"], SPEC_AUD) == "expired"


async def test_the_spec_example_token_verifies_before_its_expiry(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    route = mock_http.get(SPEC_JKU).respond(json=SPEC["jwks"])
    before_exp = datetime.fromtimestamp(SPEC["payload"]["exp"] - 60, UTC)
    tenant = SPEC["payload"]["tenant"]

    token = await spec_verifier(http, before_exp, tenant=tenant).verify(SPEC["compact"], SPEC_AUD)

    assert (token.issuer, token.kid, token.jti, token.tenant) == (
        SPEC_ISS, "example-kid", SPEC["payload"]["jti"], tenant,
    )  # fmt: skip
    assert route.call_count == 1  # the key came from the allowlisted jku


async def test_the_spec_example_token_with_another_signature_is_rejected(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    mock_http.get(SPEC_JKU).respond(json=SPEC["jwks"])
    header, payload, _ = SPEC["compact"].split(".")
    forged = jwt.encode(SPEC["payload"], OTHER_EC_KEY, algorithm="ES384", headers=SPEC["header"])
    tampered = f"{header}.{payload}.{forged.split('.')[2]}"
    before_exp = datetime.fromtimestamp(SPEC["payload"]["exp"] - 60, UTC)
    assert await reason(spec_verifier(http, before_exp), tampered, SPEC_AUD) == "bad_signature"


async def test_the_spec_example_with_another_tenant_is_rejected(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    mock_http.get(SPEC_JKU).respond(json=SPEC["jwks"])
    before_exp = datetime.fromtimestamp(SPEC["payload"]["exp"] - 60, UTC)
    verify = spec_verifier(http, before_exp, tenant="another-organisation")
    assert await reason(verify, SPEC["compact"], SPEC_AUD) == "wrong_tenant"


def test_the_sandbox_key_set_loads_as_one_es384_key() -> None:
    keys = parse_key_set(SANDBOX_JWKS)
    assert list(keys) == [SANDBOX_KID]
    loaded = jwt.PyJWK(keys[SANDBOX_KID])
    assert loaded.algorithm_name == "ES384"
    assert isinstance(loaded.key, ec.EllipticCurvePublicKey) and loaded.key.curve.name == "secp384r1"


async def test_a_sandbox_token_selects_the_sandbox_key_by_kid(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    route = mock_http.get(SANDBOX_JKU).respond(json=SANDBOX_JWKS)
    cache = JwksCache(http, ttl_seconds=3600)

    assert (await cache.key(SANDBOX_JKU, SANDBOX_KID))["x"] == SANDBOX_JWKS["keys"][0]["x"]

    # A token shaped like the sandbox's (its header, kid and jku) but signed with another key: the
    # sandbox key is found by its kid, and the signature then fails against it.
    trusted = {SANDBOX_ISS: TrustedClient(jku=(SANDBOX_JKU,))}
    token = mint(OTHER_EC_KEY, kid=SANDBOX_KID, headers={"jku": SANDBOX_JKU}, iss=SANDBOX_ISS)
    assert await reason(verifier(http, clients=trusted), token) == "bad_signature"
    assert route.call_count == 2  # once for each of the two caches


# ------------------------------------------------------------------------------------------------
# Acceptance


@pytest.mark.parametrize(("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1")])
async def test_es384_and_rs384_from_a_static_key_set_are_accepted(
    http: httpx.AsyncClient, key: Any, alg: str, kid: str
) -> None:
    token = await verifier(http).verify(mint(key, alg, kid, jti="j-1"), SERVICE_URL)
    assert (token.issuer, token.kid, token.jti, token.tenant) == (ISS, kid, "j-1", None)
    # Remembered until the token could no longer be accepted anyway: exp plus the leeway.
    assert token.replay_until == NOW + timedelta(seconds=300 + 60)


@pytest.mark.parametrize(("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1")])
async def test_es384_and_rs384_from_a_jwks_url_are_accepted(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, key: Any, alg: str, kid: str
) -> None:
    route = mock_http.get(KEYS_URL).respond(json=KEY_SET)
    verify = verifier(http, clients={ISS: TrustedClient(jwks_url=KEYS_URL)})
    assert (await verify.verify(mint(key, alg, kid), SERVICE_URL)).kid == kid
    await verify.verify(mint(key, alg, kid), SERVICE_URL)
    assert route.call_count == 1  # cached


async def test_a_jku_on_the_issuers_allowlist_is_where_the_keys_come_from(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    jku = "https://ehr.example.org/keys/2026"
    route = mock_http.get(jku).respond(json=KEY_SET)
    verify = verifier(http, clients={ISS: TrustedClient(jwks_url=KEYS_URL, jku=(jku,))})
    assert (await verify.verify(mint(headers={"jku": jku}), SERVICE_URL)).issuer == ISS
    assert route.call_count == 1


async def test_es256_is_accepted_only_when_configured(http: httpx.AsyncClient) -> None:
    token = mint(EC256_KEY, "ES256", "ec256-1")
    assert await reason(verifier(http), token) == "alg_not_allowed"
    allowing = verifier(http, algorithms=("ES384", "RS384", "ES256"))
    assert (await allowing.verify(token, SERVICE_URL)).kid == "ec256-1"


@pytest.mark.parametrize(
    "aud",
    [
        [SERVICE_URL],
        ["https://other.example.org/cds-services/x", SERVICE_URL],
        SERVICE_URL + "/",
        "HTTPS://CDS.Example.org:443/cds-services/als-patient-view",
    ],
    ids=["array", "array-of-two", "trailing-slash", "case-and-default-port"],
)
async def test_audience_forms_that_name_the_endpoint_are_accepted(http: httpx.AsyncClient, aud: Any) -> None:
    assert (await verifier(http).verify(mint(aud=aud), SERVICE_URL)).issuer == ISS


async def test_the_expected_audience_may_itself_end_in_a_slash(http: httpx.AsyncClient) -> None:
    assert (await verifier(http).verify(mint(), SERVICE_URL + "/")).issuer == ISS


async def test_sub_is_not_required_and_any_sub_is_fine(http: httpx.AsyncClient) -> None:
    await verifier(http).verify(mint(sub=None), SERVICE_URL)
    await verifier(http).verify(mint(sub="epic-client-id"), SERVICE_URL)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt"])
async def test_typ_jwt_in_any_case_is_accepted(http: httpx.AsyncClient, typ: str) -> None:
    await verifier(http).verify(mint(headers={"typ": typ}), SERVICE_URL)


async def test_time_checks_allow_the_configured_leeway(http: httpx.AsyncClient) -> None:
    t = int(NOW.timestamp())
    verify = verifier(http)
    await verify.verify(mint(exp=t - 59, iat=t - 300), SERVICE_URL)  # expired 59 s ago
    await verify.verify(mint(iat=t + 59, exp=t + 300), SERVICE_URL)  # issued 59 s "in the future"
    await verify.verify(mint(nbf=t + 59), SERVICE_URL)
    await verify.verify(mint(iat=t - 3600 - 59, exp=t + 10), SERVICE_URL)  # max age plus leeway


async def test_the_tenant_is_checked_only_when_configured(http: httpx.AsyncClient) -> None:
    await verifier(http).verify(mint(tenant="any"), SERVICE_URL)
    pinned = verifier(http, clients={ISS: TrustedClient(jwks=KEY_SET, tenant="t-1")})
    assert (await pinned.verify(mint(tenant="t-1"), SERVICE_URL)).tenant == "t-1"


# ------------------------------------------------------------------------------------------------
# Rejection, one reason at a time


def hs256_signed_with(secret: bytes, payload: dict[str, Any]) -> str:
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": "ec-1"}, payload)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_alg_none_is_rejected(http: httpx.AsyncClient) -> None:
    token = unsigned({"alg": "none", "typ": "JWT", "kid": "ec-1"}, claims()) + "."
    assert await reason(verifier(http), token) == "alg_not_allowed"


async def test_hs256_is_rejected(http: httpx.AsyncClient) -> None:
    assert await reason(verifier(http), hs256_signed_with(b"shared secret", claims())) == "alg_not_allowed"


async def test_the_key_confusion_attack_hs256_signed_with_the_public_key_is_rejected(
    http: httpx.AsyncClient,
) -> None:
    """The classic attack: HMAC-sign with the (public) verification key, hoping that a verifier
    passes its public key to HMAC as the secret. The algorithm allowlist stops it first."""
    for key in (EC_KEY, RSA_KEY):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert await reason(verifier(http), hs256_signed_with(pem, claims())) == "alg_not_allowed"


async def test_an_algorithm_outside_the_allowlist_is_rejected(http: httpx.AsyncClient) -> None:
    assert await reason(verifier(http), mint(RSA_KEY, "RS256", "rsa-1")) == "alg_not_allowed"
    assert await reason(verifier(http), mint(RSA_KEY, "PS384", "rsa-1")) == "alg_not_allowed"
    only_rsa = verifier(http, algorithms=("RS384",))
    assert await reason(only_rsa, mint()) == "alg_not_allowed"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"typ": None}, "bad_typ"),
        ({"typ": "at+jwt"}, "bad_typ"),
        ({"typ": 7}, "bad_typ"),
        ({"crit": ["exp"], "exp": 1}, "malformed"),  # PyJWT refuses extensions it does not know
        ({"crit": ["b64"], "b64": True}, "unsupported_header"),  # one it knows, refused by us
    ],
    ids=["typ-missing", "typ-access-token", "typ-not-a-string", "crit-unknown", "crit-b64"],
)
async def test_header_problems_are_rejected(http: httpx.AsyncClient, headers: dict, expected: str) -> None:
    if "crit" in headers:  # PyJWT refuses to encode a crit it does not know: build the token by hand
        header = {"alg": "ES384", "typ": "JWT", "kid": "ec-1", **headers}
        signing_input = unsigned(header, claims())
        signature = jwt.get_algorithm_by_name("ES384").sign(signing_input.encode(), EC_KEY)
        token = f"{signing_input}.{b64(signature)}"
    else:
        token = mint(headers=headers)
    assert await reason(verifier(http), token) == expected


@pytest.mark.parametrize("kid", [None, ""], ids=["absent", "empty"])
async def test_a_token_without_kid_is_rejected(http: httpx.AsyncClient, kid: str | None) -> None:
    assert await reason(verifier(http), mint(kid=kid)) == "missing_kid"


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c.d", "!!!.###.$$$", "W10.e30.", "e30.W10.", "x" * 20_000 + ".a.b"],
)
async def test_malformed_tokens_are_rejected(http: httpx.AsyncClient, token: str) -> None:
    assert await reason(verifier(http), token) == "malformed"


@pytest.mark.parametrize("iss", ["https://evil.example.org", ISS + "/", None, 42])
async def test_an_untrusted_issuer_is_rejected(http: httpx.AsyncClient, iss: Any) -> None:
    # Built by hand: PyJWT will not encode a non-string iss. The signature is never reached.
    token = f"{unsigned({'alg': 'ES384', 'typ': 'JWT', 'kid': 'ec-1'}, claims(iss=iss))}.{b64(b'sig')}"
    assert await reason(verifier(http), token) == "unknown_issuer"


async def test_a_jku_not_on_the_allowlist_is_rejected_and_never_fetched(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    evil = mock_http.get("https://evil.example.org/jwks.json").respond(json=KEY_SET)
    keys = mock_http.get(KEYS_URL).respond(json=KEY_SET)
    allowed = "https://ehr.example.org/keys/2026"
    verify = verifier(http, clients={ISS: TrustedClient(jwks_url=KEYS_URL, jku=(allowed,))})

    token = mint(headers={"jku": "https://evil.example.org/jwks.json"})
    failure = await reason(verify, token)
    near_miss = await reason(verify, mint(headers={"jku": allowed + "/"}))
    static = await reason(verifier(http), mint(headers={"jku": KEYS_URL}))  # no jku allowlist at all

    assert (failure, near_miss, static) == ("jku_not_allowed",) * 3
    assert evil.call_count == 0 and keys.call_count == 0
    assert len(mock_http.calls) == 0


async def test_an_issuer_trusted_only_by_jku_needs_a_jku(http: httpx.AsyncClient) -> None:
    verify = verifier(http, clients={ISS: TrustedClient(jku=("https://ehr.example.org/keys",))})
    assert await reason(verify, mint()) == "no_key_source"


async def test_an_unknown_kid_in_a_static_key_set_is_rejected(http: httpx.AsyncClient) -> None:
    assert await reason(verifier(http), mint(kid="nope")) == "unknown_kid"


async def test_a_bad_signature_is_rejected(http: httpx.AsyncClient) -> None:
    assert await reason(verifier(http), mint(OTHER_EC_KEY)) == "bad_signature"
    header, _, signature = mint().split(".")
    other_claims = b64(json.dumps(claims(iss=ISS, jti="forged")).encode())
    assert await reason(verifier(http), f"{header}.{other_claims}.{signature}") == "bad_signature"


async def test_a_key_that_does_not_suit_the_algorithm_is_rejected(http: httpx.AsyncClient) -> None:
    # ES384 header naming an RSA key; RS384 header naming an EC key; an ES384 header naming a P-256 key.
    assert await reason(verifier(http), mint(kid="rsa-1")) == "key_mismatch"
    assert await reason(verifier(http), mint(RSA_KEY, "RS384", "ec-1")) == "key_mismatch"
    assert await reason(verifier(http), mint(EC_KEY, kid="ec256-1")) == "key_mismatch"
    # A key published for RS256 is not used for RS384.
    pinned = {"keys": [public_jwk(RSA_KEY, "rsa-1", "RS256")]}
    verify = verifier(http, clients={ISS: TrustedClient(jwks=pinned)})
    assert await reason(verify, mint(RSA_KEY, "RS384", "rsa-1")) == "key_mismatch"


@pytest.mark.parametrize(
    ("aud", "expected_url"),
    [
        (DISCOVERY_URL, SERVICE_URL),  # a discovery token used on a service
        (SERVICE_URL, FEEDBACK_URL),  # a service token used on its feedback endpoint
        (FEEDBACK_URL, SERVICE_URL),
        ("https://cds.example.org/cds-services/als-order-sign", SERVICE_URL),
        ("http://cds.example.org/cds-services/als-patient-view", SERVICE_URL),  # other scheme
        ("https://cds.example.org:8443/cds-services/als-patient-view", SERVICE_URL),  # other port
        ("https://user@cds.example.org/cds-services/als-patient-view", SERVICE_URL),
        ([], SERVICE_URL),
        ([DISCOVERY_URL], SERVICE_URL),
        (42, SERVICE_URL),
    ],
)
async def test_a_token_for_another_endpoint_is_rejected(
    http: httpx.AsyncClient, aud: Any, expected_url: str
) -> None:
    assert await reason(verifier(http), mint(aud=aud), expected_url) == "wrong_audience"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"exp": int(NOW.timestamp()) - 61, "iat": int(NOW.timestamp()) - 600}, "expired"),
        ({"iat": int(NOW.timestamp()) + 61, "exp": int(NOW.timestamp()) + 600}, "iat_in_future"),
        ({"iat": int(NOW.timestamp()) - 3600 - 61}, "too_old"),
        ({"nbf": int(NOW.timestamp()) + 61}, "not_yet_valid"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
        ({"jti": None}, "missing_claim"),
        ({"jti": ""}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"jti": 12345}, "bad_claim"),
        ({"jti": "j" * 256}, "bad_claim"),
        ({"exp": "tomorrow"}, "bad_claim"),
        ({"exp": True}, "bad_claim"),
        ({"exp": math.nan}, "bad_claim"),
        ({"iat": math.inf}, "bad_claim"),
        ({"nbf": math.nan}, "bad_claim"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={str(x)[:12]}" for k, x in v.items()),
)
async def test_claim_problems_are_rejected(http: httpx.AsyncClient, changes: dict, expected: str) -> None:
    assert await reason(verifier(http), mint(**changes)) == expected


async def test_a_missing_tenant_is_rejected_when_one_is_configured(http: httpx.AsyncClient) -> None:
    pinned = verifier(http, clients={ISS: TrustedClient(jwks=KEY_SET, tenant="t-1")})
    assert await reason(pinned, mint()) == "wrong_tenant"
    assert await reason(pinned, mint(tenant="t-2")) == "wrong_tenant"


async def test_failures_carry_loggable_details_but_never_the_token(http: httpx.AsyncClient) -> None:
    token = mint(exp=int(NOW.timestamp()) - 3600, iat=int(NOW.timestamp()) - 3700, jti="jti-7")
    with pytest.raises(AuthFailure) as failure:
        await verifier(http).verify(token, SERVICE_URL)
    assert failure.value.reason == "expired"
    assert failure.value.details == {"alg": "ES384", "kid": "ec-1", "iss": ISS, "jti": "jti-7"}
    assert token not in repr(failure.value.details)


# ------------------------------------------------------------------------------------------------
# A jku pinned to a local key set (jku_keys): verified offline, never fetched

PINNED_JKU = "https://ehr.example.org/keys/2026"
T = int(NOW.timestamp())


def pinned(key_set: Any = KEY_SET, **client: Any) -> dict[str, TrustedClient]:
    return {ISS: TrustedClient(jku_keys={PINNED_JKU: key_set}, **client)}


@pytest.mark.parametrize(("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1")])
async def test_a_pinned_jku_is_verified_with_its_local_keys_and_never_fetched(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, key: Any, alg: str, kid: str
) -> None:
    route = mock_http.get(PINNED_JKU).respond(json={"keys": [public_jwk(OTHER_EC_KEY, kid, alg)]})
    verify = verifier(http, clients=pinned())
    token = mint(key, alg, kid, headers={"jku": PINNED_JKU}, jti="p-1")
    assert (await verify.verify(token, SERVICE_URL)).jti == "p-1"
    assert route.call_count == 0 and len(mock_http.calls) == 0


async def test_a_pinned_jku_wins_over_the_same_url_in_the_fetched_allowlist(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    """A pin added to an issuer that already lists the URL in `jku`: the URL is never fetched again,
    and a key only the URL would serve is not used."""
    route = mock_http.get(PINNED_JKU).respond(json={"keys": [public_jwk(OTHER_EC_KEY, "ec-2", "ES384")]})
    verify = verifier(http, clients=pinned(jku=(PINNED_JKU,)))
    await verify.verify(mint(headers={"jku": PINNED_JKU}), SERVICE_URL)
    assert await reason(verify, mint(OTHER_EC_KEY, kid="ec-2", headers={"jku": PINNED_JKU})) == "unknown_kid"
    assert route.call_count == 0


async def test_a_pinned_jku_from_a_file_is_read_at_start_up(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, tmp_path: Path
) -> None:
    keys_file = tmp_path / "ehr-jwks.json"
    keys_file.write_text(json.dumps(KEY_SET), encoding="utf-8")
    for location in (str(keys_file), keys_file.as_uri()):
        verify = verifier(http, clients={ISS: TrustedClient(jku_keys={PINNED_JKU: location})})
        keys_file.write_text("changed after start-up: not read again", encoding="utf-8")
        await verify.verify(mint(headers={"jku": PINNED_JKU}), SERVICE_URL)
        keys_file.write_text(json.dumps(KEY_SET), encoding="utf-8")
    assert len(mock_http.calls) == 0


async def test_the_sandbox_jku_pinned_to_its_published_key_set_is_never_fetched(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    """The offline sandbox configuration: its key is found by kid in the pinned set and the
    signature is checked against it (here one made with another key, so it fails), with no fetch."""
    route = mock_http.get(SANDBOX_JKU).respond(json=SANDBOX_JWKS)
    trusted = {SANDBOX_ISS: TrustedClient(jku_keys={SANDBOX_JKU: SANDBOX_JWKS})}
    token = mint(OTHER_EC_KEY, kid=SANDBOX_KID, headers={"jku": SANDBOX_JKU}, iss=SANDBOX_ISS)
    assert await reason(verifier(http, clients=trusted), token) == "bad_signature"
    assert route.call_count == 0


async def test_a_pinned_jku_is_refused_where_it_is_not_pinned(
    http: httpx.AsyncClient, mock_http: respx.MockRouter
) -> None:
    """A pin belongs to one issuer and one URL; any other jku is refused and never fetched."""
    other_iss = "https://other-ehr.example.org"
    trusted = {**pinned(), other_iss: TrustedClient(jwks=KEY_SET)}
    verify = verifier(http, clients=trusted)
    assert await reason(verify, mint(headers={"jku": PINNED_JKU}, iss=other_iss)) == "jku_not_allowed"
    assert await reason(verify, mint(headers={"jku": PINNED_JKU + "/"})) == "jku_not_allowed"
    assert await reason(verify, mint(headers={"jku": KEYS_URL})) == "jku_not_allowed"
    assert await reason(verify, mint()) == "no_key_source"  # pinned only: a token must name its jku
    assert len(mock_http.calls) == 0


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (lambda: mint(headers={"jku": PINNED_JKU}, kid="nope"), "unknown_kid"),
        (lambda: mint(OTHER_EC_KEY, headers={"jku": PINNED_JKU}), "bad_signature"),
        (lambda: mint(RSA_KEY, "RS256", "rsa-1", headers={"jku": PINNED_JKU}), "alg_not_allowed"),
        (lambda: mint(headers={"jku": PINNED_JKU}, kid="rsa-1"), "key_mismatch"),
        (lambda: mint(headers={"jku": PINNED_JKU, "typ": None}), "bad_typ"),
        (lambda: mint(headers={"jku": PINNED_JKU}, aud=DISCOVERY_URL), "wrong_audience"),
        (lambda: mint(headers={"jku": PINNED_JKU}, exp=T - 61, iat=T - 600), "expired"),
        (lambda: mint(headers={"jku": PINNED_JKU}, jti=None), "missing_claim"),
        (lambda: mint(headers={"jku": PINNED_JKU}, tenant="t-2"), "wrong_tenant"),
        (lambda: mint(headers={"jku": 42}), "jku_not_allowed"),
    ],
    ids=[
        "unknown-kid", "bad-signature", "alg-not-allowed", "key-mismatch", "typ-missing",
        "wrong-audience", "expired", "jti-missing", "wrong-tenant", "jku-not-a-string",
    ],
)  # fmt: skip
async def test_every_other_check_still_applies_to_a_pinned_jku(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, token: Any, expected: str
) -> None:
    verify = verifier(http, clients=pinned(tenant="t-1"))
    assert await reason(verify, token()) == expected
    assert len(mock_http.calls) == 0


async def test_the_log_of_a_pinned_jku_refusal_names_the_jku_not_the_token(http: httpx.AsyncClient) -> None:
    token = mint(headers={"jku": PINNED_JKU}, kid="nope", jti="jti-9")
    with pytest.raises(AuthFailure) as failure:
        await verifier(http, clients=pinned()).verify(token, SERVICE_URL)
    assert failure.value.details == {
        "alg": "ES384",
        "kid": "nope",
        "iss": ISS,
        "jti": "jti-9",
        "jku": PINNED_JKU,
    }
    assert token not in repr(failure.value.details)


def test_a_pinned_key_set_without_a_usable_key_stops_the_start(http: httpx.AsyncClient) -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigurationError, match=r"pinned for jku .*jku_keys.* no usable signing key"):
        verifier(http, clients=pinned({"keys": [public_jwk(small_rsa, "short", "RS384")]}))


# ------------------------------------------------------------------------------------------------
# Key sets from URLs: caching, rotation, rate limit, failures


async def test_an_unknown_kid_refetches_once_then_the_rate_limit_applies(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, monotonic: FakeMonotonic
) -> None:
    route = mock_http.get(KEYS_URL).respond(json=KEY_SET)
    verify = verifier(http, monotonic, clients={ISS: TrustedClient(jwks_url=KEYS_URL)})
    await verify.verify(mint(), SERVICE_URL)
    assert route.call_count == 1

    assert await reason(verify, mint(kid="rotated-1")) == "unknown_kid"
    assert route.call_count == 2  # refetched once: the client may have rotated its keys
    assert await reason(verify, mint(kid="rotated-2")) == "unknown_kid"
    assert await reason(verify, mint(kid="rotated-1")) == "unknown_kid"
    assert route.call_count == 2  # within the rate limit: no fetch per made-up kid

    monotonic.now += security.JWKS_MIN_REFETCH_SECONDS
    assert await reason(verify, mint(kid="rotated-3")) == "unknown_kid"
    assert route.call_count == 3


async def test_a_rotated_key_is_found_by_refetching(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, monotonic: FakeMonotonic
) -> None:
    rotated = {"keys": [*KEY_SET["keys"], public_jwk(OTHER_EC_KEY, "ec-2", "ES384")]}
    route = mock_http.get(KEYS_URL)
    route.side_effect = [httpx.Response(200, json=KEY_SET), httpx.Response(200, json=rotated)]
    verify = verifier(http, monotonic, clients={ISS: TrustedClient(jwks_url=KEYS_URL)})
    await verify.verify(mint(), SERVICE_URL)
    assert (await verify.verify(mint(OTHER_EC_KEY, kid="ec-2"), SERVICE_URL)).kid == "ec-2"
    assert route.call_count == 2


async def test_the_key_set_is_fetched_again_after_the_cache_period(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, monotonic: FakeMonotonic
) -> None:
    route = mock_http.get(KEYS_URL).respond(json=KEY_SET)
    verify = verifier(
        http, monotonic, clients={ISS: TrustedClient(jwks_url=KEYS_URL)}, jwks_cache_seconds=600
    )
    await verify.verify(mint(), SERVICE_URL)
    monotonic.now += 599
    await verify.verify(mint(), SERVICE_URL)
    assert route.call_count == 1
    monotonic.now += 1
    await verify.verify(mint(), SERVICE_URL)
    assert route.call_count == 2


async def test_concurrent_calls_share_one_fetch(http: httpx.AsyncClient, mock_http: respx.MockRouter) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json=KEY_SET)

    route = mock_http.get(KEYS_URL).mock(side_effect=slow)
    verify = verifier(http, clients={ISS: TrustedClient(jwks_url=KEYS_URL)})
    await asyncio.gather(*(verify.verify(mint(), SERVICE_URL) for _ in range(10)))
    assert route.call_count == 1


def _slow_response(seconds: float) -> Any:
    async def respond(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(seconds)
        return httpx.Response(200, json=KEY_SET)

    return respond


async def _chunks() -> AsyncIterator[bytes]:
    yield b'{"keys": ['
    for _ in range(200):
        yield b" " * 1000
    yield b"]}"


JWKS_FAILURES: dict[str, Any] = {
    "http-500": httpx.Response(500, json={"error": "down"}),
    "http-404": httpx.Response(404),
    "redirect": httpx.Response(302, headers={"Location": "https://elsewhere.example.org/jwks"}),
    "connection-refused": httpx.ConnectError("refused"),
    "read-timeout": httpx.ReadTimeout("slow"),
    "slow": _slow_response(5),
    "oversized-declared": httpx.Response(200, content=b"{" + b" " * 70_000 + b"}"),
    "oversized-streamed": httpx.Response(200, content=_chunks()),
    "not-json": httpx.Response(200, text="<html>maintenance</html>"),
    "json-not-a-key-set": httpx.Response(200, json=["keys"]),
    "only-a-symmetric-key": httpx.Response(
        200, json={"keys": [{"kty": "oct", "kid": "ec-1", "k": "c2VjcmV0"}]}
    ),
    "deeply-nested": httpx.Response(200, content=b"[" * 50_000),
}


@pytest.mark.parametrize("failure", list(JWKS_FAILURES.values()), ids=list(JWKS_FAILURES))
async def test_a_key_set_that_cannot_be_had_is_a_rejection_not_an_error(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, failure: Any
) -> None:
    route = mock_http.get(KEYS_URL)
    if isinstance(failure, httpx.Response):
        route.return_value = failure
    else:
        route.side_effect = failure
    elsewhere = mock_http.get("https://elsewhere.example.org/jwks").respond(json=KEY_SET)
    cfg = config(clients={ISS: TrustedClient(jwks_url=KEYS_URL)})
    cache = JwksCache(http, ttl_seconds=3600, timeout_seconds=0.2)
    verify = TokenVerifier(cfg, cache, lambda: NOW)

    started = asyncio.get_running_loop().time()
    assert await reason(verify, mint()) == "jwks_unavailable"
    assert asyncio.get_running_loop().time() - started < 2  # bounded in time
    assert elsewhere.call_count == 0  # redirects are not followed


async def test_after_a_failed_fetch_the_url_is_left_alone_for_a_while(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, monotonic: FakeMonotonic
) -> None:
    route = mock_http.get(KEYS_URL).respond(503)
    verify = verifier(http, monotonic, clients={ISS: TrustedClient(jwks_url=KEYS_URL)})
    assert await reason(verify, mint()) == "jwks_unavailable"
    assert await reason(verify, mint()) == "jwks_unavailable"
    assert route.call_count == 1
    monotonic.now += security.JWKS_RETRY_AFTER_FAILURE_SECONDS
    route.respond(json=KEY_SET)
    await verify.verify(mint(), SERVICE_URL)
    assert route.call_count == 2


async def test_keys_already_fetched_outlive_an_outage_by_one_cache_period(
    http: httpx.AsyncClient, mock_http: respx.MockRouter, monotonic: FakeMonotonic
) -> None:
    route = mock_http.get(KEYS_URL).respond(json=KEY_SET)
    verify = verifier(
        http, monotonic, clients={ISS: TrustedClient(jwks_url=KEYS_URL)}, jwks_cache_seconds=600
    )
    await verify.verify(mint(), SERVICE_URL)
    route.respond(503)
    monotonic.now += 601  # stale: fetched again, which fails; the old keys still serve
    await verify.verify(mint(), SERVICE_URL)
    assert route.call_count == 2
    monotonic.now += 600  # two cache periods after the last good fetch: no longer
    assert await reason(verify, mint()) == "jwks_unavailable"


# ------------------------------------------------------------------------------------------------
# Key sets, URLs, the Authorization header


def test_parse_key_set_keeps_usable_signing_keys_only() -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    encryption = {**public_jwk(RSA_KEY, "enc-1"), "use": "enc"}
    document = {
        "keys": [
            public_jwk(EC_KEY, "ec-1", "ES384"),
            public_jwk(small_rsa, "rsa-1024", "RS384"),  # too short
            encryption,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "broken", "crv": "P-384", "x": "AA", "y": "AA"},
            {**public_jwk(RSA_KEY, "no-kid")} | {"kid": None},
            "not an object",
            public_jwk(OTHER_EC_KEY, "ec-1", "ES384"),  # repeated kid: the first wins
            public_jwk(RSA_KEY, "rsa-no-alg"),
        ]
    }
    keys = parse_key_set(document)
    assert sorted(keys) == ["ec-1", "rsa-no-alg"]
    assert keys["ec-1"]["x"] == public_jwk(EC_KEY, "ec-1")["x"]


@pytest.mark.parametrize("document", [None, [], {}, {"keys": {}}, {"keys": []}, {"keys": [{"kty": "oct"}]}])
def test_a_document_without_usable_keys_is_refused(document: Any) -> None:
    with pytest.raises(JwksError):
        parse_key_set(document)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://cds.example.org/cds-services/x/", "https://cds.example.org/cds-services/x"),
        ("HTTPS://CDS.EXAMPLE.ORG:443/cds-services/x", "https://cds.example.org/cds-services/x"),
        ("http://localhost:80/a", "http://localhost/a"),
        ("http://localhost:8080/a", "http://localhost:8080/a"),
        ("https://cds.example.org/cds-services//x", "https://cds.example.org/cds-services/x"),
        ("https://cds.example.org/Cds-Services/x", "https://cds.example.org/Cds-Services/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_normalise_url(url: str, normalised: str) -> None:
    assert normalise_url(url) == normalised


def test_audience_matching_never_matches_odd_values() -> None:
    assert not audience_matches(None, SERVICE_URL)
    assert not audience_matches({"url": SERVICE_URL}, SERVICE_URL)
    assert not audience_matches([None, 3], SERVICE_URL)
    assert not audience_matches("https://cds.example.org:99999/cds-services/als-patient-view", SERVICE_URL)
    assert not audience_matches("https://[::1/cds-services/als-patient-view", SERVICE_URL)
    assert normalise_url("https://[::1/x") == "https://[::1/x"


class _Request:
    def __init__(self, *values: str) -> None:
        self.headers = Headers(raw=[(b"authorization", v.encode()) for v in values])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), "missing_token"),
        (("Basic dXNlcjpwYXNz",), "not_bearer"),
        (("Token abc",), "not_bearer"),
        (("abc.def.ghi",), "not_bearer"),
        (("Bearer",), "malformed"),
        (("Bearer ",), "malformed"),
        (("Bearer a.b.c d.e.f",), "malformed"),
        (("Bearer a.b.c", "Bearer d.e.f"), "malformed"),
    ],
)
def test_the_authorization_header_must_hold_one_bearer_token(values: tuple[str, ...], expected: str) -> None:
    with pytest.raises(AuthFailure) as failure:
        bearer_token(_Request(*values))  # type: ignore[arg-type]
    assert failure.value.reason == expected


@pytest.mark.parametrize("value", ["Bearer a.b.c", "bearer a.b.c", "BEARER  a.b.c "])
def test_the_bearer_scheme_is_case_insensitive(value: str) -> None:
    assert bearer_token(_Request(value)) == "a.b.c"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Configuration


def test_auth_required_without_trusted_clients_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="ALS_CDS_TRUSTED_CLIENTS is empty"):
        security.check_configuration(AuthConfig(required=True))
    security.check_configuration(AuthConfig(required=False))  # auth off: nothing to check


def test_a_static_key_set_without_a_usable_key_stops_the_start(http: httpx.AsyncClient) -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    unusable = {"keys": [public_jwk(small_rsa, "short", "RS384")]}
    with pytest.raises(ConfigurationError, match="no usable signing key"):
        verifier(http, clients={ISS: TrustedClient(jwks=unusable)})


def test_settings_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.auth_required is True
    assert settings.trusted_clients == {}
    assert settings.jwt_algorithms == ["ES384", "RS384"]
    assert settings.jwt_leeway_seconds == 60
    assert settings.jwt_max_age_seconds == settings.jwks_cache_seconds == 3600
    assert settings.public_base_url is None


def test_trusted_clients_are_read_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ALS_CDS_TRUSTED_CLIENTS",
        json.dumps(
            {
                SANDBOX_ISS: {"jku": [SANDBOX_JKU]},
                ISS: {"jwks_url": KEYS_URL, "tenant": "t-1"},
                "https://static.example.org": {"jwks": KEY_SET},
            }
        ),
    )
    monkeypatch.setenv("ALS_CDS_JWT_ALGORITHMS", "ES384, RS384, ES256")
    monkeypatch.setenv("ALS_CDS_PUBLIC_BASE_URL", "https://cds.example.org/als/")
    settings = Settings(_env_file=None)
    assert settings.trusted_clients[SANDBOX_ISS].jku == (SANDBOX_JKU,)
    assert settings.trusted_clients[ISS] == TrustedClient(jwks_url=KEYS_URL, tenant="t-1")
    assert settings.jwt_algorithms == ["ES384", "RS384", "ES256"]
    assert settings.public_base_url == "https://cds.example.org/als"
    auth = AuthConfig.from_settings(settings)
    assert auth.algorithms == ("ES384", "RS384", "ES256")
    assert set(auth.clients) == set(settings.trusted_clients)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({ISS: {}}, "jwks_url, jwks or a jku allowlist"),
        ({ISS: {"jwks_url": KEYS_URL, "jwks": KEY_SET}}, "not both"),
        ({ISS: {"jwks_uri": KEYS_URL}}, "jwks_uri"),
        ({ISS: {"jwks_url": "http://ehr.example.org/jwks"}}, "https"),
        ({ISS: {"jku": ["ftp://ehr.example.org/jwks"]}}, "https"),
        ({ISS: {"jwks": {"keys": []}}}, "at least one key"),
        ({ISS: {"jwks": {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}}}, "EC or RSA"),
        ({ISS: {"jwks": {"keys": [{**public_jwk(EC_KEY, "x"), "kid": ""}]}}}, "kid"),
        ({ISS: {"jwks": {"keys": [{**public_jwk(EC_KEY, "x"), "d": "secret"}]}}}, "private key"),
        ({ISS: {"jwks_url": KEYS_URL, "tenant": ""}}, "at least 1 character"),
        ({"": {"jwks_url": KEYS_URL}}, "non-empty"),
        ({"x" * 600: {"jwks_url": KEYS_URL}}, "512 bytes"),
    ],
)
def test_invalid_trusted_clients_fail_with_a_clear_message(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, trusted_clients=value)


def test_pinned_jku_keys_are_read_from_json_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The two offline forms of the sandbox entry: the key set inline, or a file beside the service."""
    keys_file = tmp_path / "sandbox-jwks.json"
    keys_file.write_text(json.dumps(SANDBOX_JWKS), encoding="utf-8")
    for pin in (SANDBOX_JWKS, str(keys_file), keys_file.as_uri()):
        monkeypatch.setenv(
            "ALS_CDS_TRUSTED_CLIENTS", json.dumps({SANDBOX_ISS: {"jku_keys": {SANDBOX_JKU: pin}}})
        )
        client = Settings(_env_file=None).trusted_clients[SANDBOX_ISS]
        assert client.jku_keys == {SANDBOX_JKU: SANDBOX_JWKS}
        assert client.jku == () and client.jwks is None and client.jwks_url is None


def _pin_problems(tmp_path: Path) -> dict[str, tuple[Any, str]]:
    """Wrong `jku_keys` values, each with what its message must say."""
    (tmp_path / "not-json.json").write_text("{keys", encoding="utf-8")
    (tmp_path / "huge.json").write_text(" " * 70_000, encoding="utf-8")
    (tmp_path / "private.json").write_text(
        json.dumps({"keys": [{**public_jwk(EC_KEY, "x"), "d": "secret"}]}), encoding="utf-8"
    )
    return {
        "not-an-object": ([SANDBOX_JWKS], "jku_keys must be a JSON object"),
        "fetched-url": ("https://sandbox.cds-hooks.org/.well-known/jwks.json", "never fetched"),
        "relative-path": ("sandbox-jwks.json", "absolute path"),
        "missing-file": (str(tmp_path / "absent.json"), "is not a file"),
        "a-folder": (str(tmp_path), "is not a file"),
        "remote-file-url": ("file://host.example.org/jwks.json", "not a local file URL"),
        "not-json": (str(tmp_path / "not-json.json"), "is not JSON"),
        "too-large": (str(tmp_path / "huge.json"), "larger than 64 kB"),
        "private-key-in-a-file": (str(tmp_path / "private.json"), "is a private key"),
        "private-key-inline": ({"keys": [{**public_jwk(EC_KEY, "x"), "d": "secret"}]}, "is a private key"),
        "symmetric-key": ({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}, "EC or RSA"),
        "no-keys": ({"keys": []}, "at least one key"),
        "a-number": (42, "JWK Set or the absolute path"),
    }


PIN_PROBLEM_IDS = [
    "not-an-object", "fetched-url", "relative-path", "missing-file", "a-folder", "remote-file-url",
    "not-json", "too-large", "private-key-in-a-file", "private-key-inline", "symmetric-key", "no-keys",
    "a-number",
]  # fmt: skip


@pytest.mark.parametrize("problem", PIN_PROBLEM_IDS)
def test_a_wrong_pinned_key_set_fails_with_a_message_naming_it_and_an_example(
    tmp_path: Path, problem: str
) -> None:
    value, message = _pin_problems(tmp_path)[problem]
    jku_keys = value if problem == "not-an-object" else {SANDBOX_JKU: value}
    with pytest.raises(ValidationError, match=message) as error:
        Settings(_env_file=None, trusted_clients={SANDBOX_ISS: {"jku_keys": jku_keys}})
    [detail] = error.value.errors()
    assert detail["loc"] == ("trusted_clients", SANDBOX_ISS, "jku_keys")
    if problem not in (
        "too-large",
        "not-json",
        "private-key-in-a-file",
        "private-key-inline",
        "symmetric-key",
    ):
        assert "e.g." in detail["msg"] or "at least one key" in detail["msg"], detail["msg"]
    assert "secret" not in detail["msg"]  # the message never quotes a private key back


@pytest.mark.parametrize(
    "url",
    ["http://ehr.example.org/jwks.json", "ftp://ehr.example.org/jwks.json", "https://ehr.example.org/j#k"],
)
def test_a_pinned_jku_url_must_be_https(url: str) -> None:
    with pytest.raises(ValidationError, match="each jku_keys URL must be an https URL"):
        TrustedClient(jku_keys={url: KEY_SET})
    assert TrustedClient(jku_keys={"http://localhost:9000/jwks": KEY_SET}).jku_keys


def test_a_trusted_clients_value_that_is_not_json_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALS_CDS_TRUSTED_CLIENTS", "https://ehr.example.org")
    with pytest.raises(Exception, match="trusted_clients"):
        Settings(_env_file=None)


def test_http_key_set_urls_are_allowed_on_localhost_only() -> None:
    assert TrustedClient(jwks_url="http://localhost:9000/jwks").jwks_url == "http://localhost:9000/jwks"
    with pytest.raises(ValidationError):
        TrustedClient(jwks_url="http://10.0.0.1/jwks")


@pytest.mark.parametrize("algorithms", ["none", "HS256", "hs384", "ES384,HS512", "RS512", "EdDSA", ""])
def test_forbidden_or_unsupported_algorithms_are_refused(algorithms: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, jwt_algorithms=algorithms)


@pytest.mark.parametrize("url", ["ftp://cds.example.org", "cds.example.org", "https://cds.example.org/?a=1"])
def test_a_public_base_url_must_be_a_plain_http_url(url: str) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, public_base_url=url)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("jwt_leeway_seconds", -1),
        ("jwt_leeway_seconds", 301),
        ("jwt_max_age_seconds", 10),
        ("jwks_cache_seconds", 1),
    ],
)
def test_time_settings_are_bounded(field: str, value: int) -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, **{field: value})
