"""Authentication of EHR calls: the client JWT of CDS Hooks 2.0 (§Trusting CDS Clients).

Every service call and feedback call carries `Authorization: Bearer <JWT>`, signed by the CDS client
(the EHR) with its private key. `Authenticator.authenticate` accepts the call or answers a bare 401;
the reason goes to the log only. The checks, in order (the first that fails decides the reason code
logged as `auth_failure`):

 1. exactly one `Authorization` header, scheme `Bearer`, a compact JWS of sane size
    (`missing_token`, `not_bearer`, `malformed`);
 2. header: `alg` on the configured allowlist, never `none` or HMAC (`alg_not_allowed`); `typ` is
    `JWT`, and required, as the spec says (`bad_typ`); a `kid` (`missing_kid`); no `crit`
    extensions (`unsupported_header`);
 3. `iss` (read before the signature is checked, only to choose the keys) is a trusted client
    (`unknown_issuer`);
 4. the key: a `jku` header pinned by that issuer's `jku_keys` is verified with the local key set
    it is pinned to, and never fetched; otherwise it must be on the issuer's `jku` allowlist, and
    is then where the keys come from, and else it is never fetched (`jku_not_allowed`); a token
    without `jku` uses the issuer's static `jwks` or its `jwks_url` (`no_key_source` when it only
    trusts `jku` and the token has none); the key is the one with the header's `kid`
    (`unknown_kid`, `jwks_unavailable`) and must suit `alg` (`key_mismatch`: key type, curve, the
    key's own `alg`);
 5. the signature, with PyJWT and exactly that one algorithm (`bad_signature`);
 6. claims: `aud` is the URL of the endpoint invoked, a string or an array holding it
    (`wrong_audience`); `exp` not passed, `iat` not in the future and not older than the maximum
    age, `nbf` (if present) reached, all with the configured leeway (`expired`, `iat_in_future`,
    `too_old`, `not_yet_valid`); `jti` present (`missing_claim`, `bad_claim`); the issuer's
    `tenant`, if configured (`wrong_tenant`). `sub` is not required;
 7. the (`iss`, `jti`) pair has not been accepted before (`replayed`): recorded in the database, so
    the check holds across every replica.

Keys fetched from URLs (`jwks_url`, an allowlisted `jku`) are cached per URL for
`jwks_cache_seconds`. An unknown `kid` triggers one early refetch (the client may have rotated its
keys), at most once per `JWKS_MIN_REFETCH_SECONDS` per URL, so a stream of made-up `kid`s cannot
make the service fetch on every request. A fetch is bounded in time and size, follows no redirect,
and any failure (down, slow, too large, not JSON, no usable key) is a 401, never a 500; keys from
an earlier successful fetch stay usable for one more cache period while the URL keeps failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cds_service import access_log, metrics
from cds_service.settings import Settings, TrustedClient
from cds_service.store import Store

log = logging.getLogger("cds_service.security")

Clock = Callable[[], datetime]

#: Largest JWK Set accepted from a URL. Real ones are a few kB; this bounds memory per fetch.
JWKS_MAX_BYTES = 64 * 1024
#: Total time allowed for one JWK Set fetch (connect, headers and body together).
JWKS_TIMEOUT_SECONDS = 3.0
#: Least time between two refetches of one URL prompted by an unknown `kid`.
JWKS_MIN_REFETCH_SECONDS = 60.0
#: After a failed fetch, the URL is not tried again for this long (the failure is remembered).
JWKS_RETRY_AFTER_FAILURE_SECONDS = 30.0
#: Longest Authorization token accepted. Epic's are about 1 kB, the sandbox's under 1 kB.
MAX_TOKEN_BYTES = 16 * 1024
#: Longest `jti` accepted, in UTF-8 bytes (the replay cache's column).
MAX_JTI_BYTES = 255
#: Smallest RSA key accepted in a key set.
MIN_RSA_BITS = 2048
#: How often one process deletes expired rows of the replay cache.
REPLAY_PURGE_INTERVAL_SECONDS = 300.0
#: Longest unverified value (iss, kid, jti) written to a log line.
_LOG_VALUE_CHARS = 200

_KEY_TYPE = {"ES256": "EC", "ES384": "EC", "RS256": "RSA", "RS384": "RSA"}
_CURVE = {"ES256": "P-256", "ES384": "P-384"}
_TYP = {"jwt", "application/jwt"}
_DEFAULT_PORTS = {"https": 443, "http": 80}

# -- errors and configuration -------------------------------------------------------------------


class AuthFailure(Exception):
    """A call that is not authenticated. `reason` is a short code for the log, never for the client."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


class ConfigurationError(RuntimeError):
    """The authentication settings cannot work; the service refuses to start."""


class JwksError(Exception):
    """A JWK Set could not be had from a URL, or held no usable key. `reason` names no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AuthConfig:
    """What authentication needs from the settings (tests build it directly)."""

    required: bool
    clients: Mapping[str, TrustedClient] = field(default_factory=dict)
    algorithms: tuple[str, ...] = ("ES384", "RS384")
    leeway_seconds: float = 60
    max_age_seconds: float = 3600
    jwks_cache_seconds: float = 3600
    public_base_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthConfig:
        return cls(
            required=settings.auth_required,
            clients=dict(settings.trusted_clients),
            algorithms=tuple(settings.jwt_algorithms),
            leeway_seconds=settings.jwt_leeway_seconds,
            max_age_seconds=settings.jwt_max_age_seconds,
            jwks_cache_seconds=settings.jwks_cache_seconds,
            public_base_url=settings.public_base_url,
        )


def check_configuration(config: AuthConfig) -> None:
    """Refuse a configuration under which no EHR could ever call the service."""
    if config.required and not config.clients:
        raise ConfigurationError(
            "ALS_CDS_AUTH_REQUIRED is true but ALS_CDS_TRUSTED_CLIENTS is empty, so every call would "
            "be refused. Name the EHRs allowed to call this service (README, Authentication), or set "
            "ALS_CDS_AUTH_REQUIRED=false for local development only."
        )


# -- key sets -----------------------------------------------------------------------------------


def parse_key_set(document: Any) -> dict[str, dict[str, Any]]:
    """The usable signing keys of a JWK Set, by `kid`.

    A key is used when it has a `kid`, is an EC or RSA key (never a symmetric `oct` key), is meant
    for signatures (`use` absent or `sig`), loads with PyJWT, and (RSA) has at least 2048 bits.
    Other keys are skipped, as RFC 7517 §5 asks; a set with no usable key at all is an error. On a
    repeated `kid` the first key wins.
    """
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise JwksError("not a JWK Set")
    usable: dict[str, dict[str, Any]] = {}
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kid"), str) or not key["kid"]:
            continue
        if key.get("kty") not in ("EC", "RSA") or key.get("use", "sig") != "sig" or key["kid"] in usable:
            continue
        try:
            loaded = jwt.PyJWK(key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        if key["kty"] == "RSA" and getattr(loaded.key, "key_size", 0) < MIN_RSA_BITS:
            continue
        usable[key["kid"]] = key
    if not usable:
        raise JwksError("no usable signing key")
    return usable


@dataclass
class _CachedSet:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None  # monotonic time of the last successful fetch
    failed_at: float | None = None  # monotonic time of the last failed fetch, cleared on success
    refetched_at: float = -math.inf  # monotonic time of the last refetch for an unknown kid


class JwksCache:
    """Key sets fetched from URLs with one shared HTTP client, cached per URL.

    Only URLs from the configuration reach this class (`jwks_url`s and allowlisted `jku`s), so the
    number of entries is bounded by the configuration.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        ttl_seconds: float,
        timeout_seconds: float | None = None,
        max_bytes: int | None = None,
        min_refetch_seconds: float | None = None,
        retry_after_failure_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._ttl = ttl_seconds
        # Read at construction, not at import, so that tests can shorten them.
        self._timeout = timeout_seconds if timeout_seconds is not None else JWKS_TIMEOUT_SECONDS
        self._max_bytes = max_bytes if max_bytes is not None else JWKS_MAX_BYTES
        self._min_refetch = (
            min_refetch_seconds if min_refetch_seconds is not None else JWKS_MIN_REFETCH_SECONDS
        )
        self._retry_after_failure = (
            retry_after_failure_seconds
            if retry_after_failure_seconds is not None
            else JWKS_RETRY_AFTER_FAILURE_SECONDS
        )
        self._monotonic = monotonic
        self._sets: dict[str, _CachedSet] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _fresh(self, cached: _CachedSet, now: float) -> bool:
        return cached.fetched_at is not None and now - cached.fetched_at < self._ttl

    async def key(self, url: str, kid: str) -> dict[str, Any]:
        """The JWK with `kid` from the set at `url`; raises `AuthFailure` when there is none."""
        cached = self._sets.get(url)
        if cached is not None and self._fresh(cached, self._monotonic()) and kid in cached.keys:
            return cached.keys[kid]
        # One fetch per URL at a time: concurrent callers wait for it and then use its result.
        async with self._locks.setdefault(url, asyncio.Lock()):
            cached = self._sets.setdefault(url, _CachedSet())
            now = self._monotonic()
            if self._fresh(cached, now):
                if kid in cached.keys:
                    return cached.keys[kid]
                if now - cached.refetched_at < self._min_refetch:
                    raise AuthFailure("unknown_kid")  # refetched for an unknown kid a moment ago
                cached.refetched_at = now
            elif cached.failed_at is not None and now - cached.failed_at < self._retry_after_failure:
                return self._stale_key(cached, kid, now)
            try:
                keys = await self._fetch(url)
            except JwksError as exc:
                cached.failed_at = now
                log.warning("JWK Set fetch failed", extra={"jwks_url": url, "jwks_error": exc.reason})
                return self._stale_key(cached, kid, now)
            cached.keys, cached.fetched_at, cached.failed_at = keys, now, None
            if kid not in keys:
                raise AuthFailure("unknown_kid")
            return keys[kid]

    def _stale_key(self, cached: _CachedSet, kid: str, now: float) -> dict[str, Any]:
        """While a URL fails, keys fetched less than two cache periods ago are still used."""
        usable = cached.fetched_at is not None and now - cached.fetched_at < 2 * self._ttl
        if usable and kid in cached.keys:
            return cached.keys[kid]
        raise AuthFailure("jwks_unavailable")

    async def _fetch(self, url: str) -> dict[str, dict[str, Any]]:
        body = bytearray()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.stream(
                    "GET",
                    url,
                    # identity: a compressed body could expand far beyond the limit in a single chunk
                    headers={
                        "Accept": "application/json, application/jwk-set+json",
                        "Accept-Encoding": "identity",
                    },
                ) as response:
                    if response.status_code != 200:
                        raise JwksError(f"HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self._max_bytes:
                        raise JwksError("too large")
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise JwksError("too large")
        except JwksError:
            raise
        except TimeoutError:
            raise JwksError("timeout") from None
        except Exception as exc:  # any failure to get the keys (transport, TLS, protocol) is just that
            raise JwksError(type(exc).__name__) from None
        try:
            document = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise JwksError("not JSON") from None
        return parse_key_set(document)


# -- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedToken:
    """A client JWT that passed every check but the replay check."""

    issuer: str
    kid: str
    jti: str
    tenant: str | None
    #: After this instant the token fails its time checks, so its `jti` need not be remembered.
    replay_until: datetime


def _loggable(value: Any) -> Any:
    """An unverified header or claim value, made safe to log: short strings only."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return value[:_LOG_VALUE_CHARS]


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim: a finite number (NaN or Infinity would slip past every comparison)."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthFailure("bad_claim", claim=name)
    return float(value)


def normalise_url(url: str) -> str:
    """A URL compared as an audience: case-insensitive scheme and host, no default port, no
    repeated or trailing slash in the path. A URL with user info is left as it is (never equal)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # e.g. an unclosed IPv6 bracket, a port out of range
        return url
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if parts.username is not None or not host:
        return url
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    path = re.sub(r"/{2,}", "/", parts.path).rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))


def audience_matches(aud: Any, expected: str) -> bool:
    """`aud` (a string, or an array of strings) names the expected endpoint URL."""
    target = normalise_url(expected)
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return any(isinstance(v, str) and normalise_url(v) == target for v in values)


class TokenVerifier:
    """Steps 2 to 6 of the module docstring: everything about one token except replay."""

    def __init__(self, config: AuthConfig, jwks: JwksCache, clock: Clock) -> None:
        self._config = config
        self._jwks = jwks
        self._clock = clock
        self._static: dict[str, dict[str, dict[str, Any]]] = {}
        #: issuer → pinned jku URL → its keys by kid
        self._pinned: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        for issuer, client in config.clients.items():
            if client.jwks is not None:
                try:
                    self._static[issuer] = parse_key_set(client.jwks)
                except JwksError as exc:
                    raise ConfigurationError(
                        f"ALS_CDS_TRUSTED_CLIENTS: the jwks of {issuer!r} has {exc.reason}"
                    ) from None
            for jku, key_set in client.jku_keys.items():
                try:
                    self._pinned.setdefault(issuer, {})[jku] = parse_key_set(key_set)
                except JwksError as exc:
                    raise ConfigurationError(
                        f"ALS_CDS_TRUSTED_CLIENTS: the key set pinned for jku {jku!r} (jku_keys) of "
                        f"{issuer!r} has {exc.reason}: give the client's public JWK Set, e.g. an EC "
                        f"P-384 key with kty, crv, kid, x and y"
                    ) from None

    async def verify(self, token: str, audience: str) -> VerifiedToken:
        seen: dict[str, Any] = {}
        try:
            return await self._verify(token, audience, seen)
        except AuthFailure as failure:
            failure.details = {**seen, **failure.details}
            raise

    async def _verify(self, token: str, audience: str, seen: dict[str, Any]) -> VerifiedToken:
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise AuthFailure("malformed")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthFailure("malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        seen.update(
            alg=_loggable(alg), kid=_loggable(kid), iss=_loggable(unverified.get("iss")),
            jti=_loggable(unverified.get("jti")),
        )  # fmt: skip

        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise AuthFailure("alg_not_allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYP:
            raise AuthFailure("bad_typ")
        if not isinstance(kid, str) or not kid:
            raise AuthFailure("missing_kid")
        if "crit" in header:
            raise AuthFailure("unsupported_header")

        issuer = unverified.get("iss")
        client = self._config.clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise AuthFailure("unknown_issuer")
        assert isinstance(issuer, str)  # for the type checker: client is only found for a str

        jwk = await self._key(issuer, client, header, kid)
        if (
            jwk.get("alg", alg) != alg
            or jwk.get("kty") != _KEY_TYPE[alg]
            or (alg in _CURVE and jwk.get("crv") != _CURVE[alg])
        ):
            raise AuthFailure("key_mismatch")
        try:
            claims = jwt.decode(
                token,
                key=jwt.PyJWK(jwk, algorithm=alg),
                algorithms=[alg],
                # Claims are checked below, against the injected clock and with our own rules.
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthFailure("bad_signature") from None
        except (jwt.InvalidKeyError, jwt.PyJWKError):
            raise AuthFailure("key_mismatch") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthFailure("malformed") from None
        return self._check_claims(claims, issuer, client, kid, audience)

    async def _key(
        self, issuer: str, client: TrustedClient, header: Mapping[str, Any], kid: str
    ) -> dict[str, Any]:
        jku = header.get("jku")
        if jku is not None:
            if not isinstance(jku, str):
                raise AuthFailure("jku_not_allowed", jku=_loggable(jku))
            pinned = self._pinned.get(issuer, {}).get(jku)
            if pinned is not None:  # the keys were agreed out of band: never fetched
                key = pinned.get(kid)
                if key is None:
                    raise AuthFailure("unknown_kid", jku=_loggable(jku))
                return key
            if jku not in client.jku:
                raise AuthFailure("jku_not_allowed", jku=_loggable(jku))
            return await self._jwks.key(jku, kid)
        if issuer in self._static:
            key = self._static[issuer].get(kid)
            if key is None:
                raise AuthFailure("unknown_kid")
            return key
        if client.jwks_url is not None:
            return await self._jwks.key(client.jwks_url, kid)
        raise AuthFailure("no_key_source")  # this issuer's keys are only reachable through a jku

    def _check_claims(
        self, claims: Mapping[str, Any], issuer: str, client: TrustedClient, kid: str, audience: str
    ) -> VerifiedToken:
        config = self._config
        leeway = config.leeway_seconds
        now = self._clock().timestamp()

        if "aud" not in claims:
            raise AuthFailure("missing_claim", claim="aud")
        if not audience_matches(claims["aud"], audience):
            raise AuthFailure("wrong_audience", aud=_loggable(claims["aud"]), expected_aud=audience)
        exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
        if exp is None:
            raise AuthFailure("missing_claim", claim="exp")
        if iat is None:
            raise AuthFailure("missing_claim", claim="iat")
        if now > exp + leeway:
            raise AuthFailure("expired")
        if iat > now + leeway:
            raise AuthFailure("iat_in_future")
        if now - iat > config.max_age_seconds + leeway:
            raise AuthFailure("too_old")
        if nbf is not None and nbf > now + leeway:
            raise AuthFailure("not_yet_valid")
        jti = claims.get("jti")
        if jti is None or jti == "":
            raise AuthFailure("missing_claim", claim="jti")
        if not isinstance(jti, str) or len(jti.encode("utf-8")) > MAX_JTI_BYTES:
            raise AuthFailure("bad_claim", claim="jti")
        tenant = claims.get("tenant")
        if client.tenant is not None and tenant != client.tenant:
            raise AuthFailure("wrong_tenant", tenant=_loggable(tenant))

        horizon = min(exp, iat + config.max_age_seconds) + leeway
        return VerifiedToken(
            issuer=issuer,
            kid=kid,
            jti=jti,
            tenant=tenant if isinstance(tenant, str) else None,
            replay_until=datetime.fromtimestamp(horizon, UTC),
        )


# -- requests -----------------------------------------------------------------------------------


def bearer_token(request: Request) -> str:
    """The token of the request's single `Authorization: Bearer` header."""
    values = request.headers.getlist("authorization")
    if not values:
        raise AuthFailure("missing_token")
    if len(values) > 1:
        raise AuthFailure("malformed")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthFailure("not_bearer")
    token = token.strip()
    if not token or " " in token:
        raise AuthFailure("malformed")
    return token


def unauthorized() -> Response:
    """The one answer to every authentication failure: it says nothing about the reason."""
    return JSONResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "authentication required"}],
        },
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _unavailable() -> Response:
    return JSONResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "transient", "diagnostics": "try again later"}],
        },
        status_code=503,
    )


def new_jwks_http_client() -> httpx.AsyncClient:
    """The process-wide client for key sets: no redirects (a redirect could lead anywhere)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(JWKS_TIMEOUT_SECONDS),
        limits=httpx.Limits(max_connections=10, max_keepalive_connections=10),
        follow_redirects=False,
        headers={"User-Agent": "als-cds"},
    )


class Authenticator:
    """Checks the client JWT of a service or feedback call (or nothing, when authentication is off)."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        store: Store,
        clock: Clock,
        http: httpx.AsyncClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        check_configuration(config)
        self.config = config
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._last_purge = -math.inf
        self.jwks: JwksCache | None = None
        self._verifier: TokenVerifier | None = None
        if config.required:
            if http is None:
                raise ConfigurationError("authentication needs an HTTP client for key sets")
            self.jwks = JwksCache(http, ttl_seconds=config.jwks_cache_seconds, monotonic=monotonic)
            self._verifier = TokenVerifier(config, self.jwks, clock)

    def expected_audience(self, request: Request, endpoint_path: str) -> str:
        """The URL of the endpoint invoked, as the client must have named it in `aud`."""
        base = self.config.public_base_url or str(request.base_url)
        return base.rstrip("/") + endpoint_path

    async def authenticate(self, request: Request, endpoint_path: str) -> Response | None:
        """None when the call may proceed; otherwise the response to send instead (401, or 503
        when the replay cache cannot be reached: without it a replay could not be ruled out)."""
        if self._verifier is None:
            return None
        try:
            token = bearer_token(request)
            verified = await self._verifier.verify(token, self.expected_audience(request, endpoint_path))
            now = self._clock()
            try:
                fresh = await run_in_threadpool(
                    self._store.record_jti, verified.issuer, verified.jti, verified.replay_until, now
                )
            except Exception as exc:  # the database, not the client, failed: not a 401
                log.error("JWT replay cache unavailable", extra={"error_type": type(exc).__name__})
                return _unavailable()
            if not fresh:
                raise AuthFailure("replayed", iss=verified.issuer, kid=verified.kid, jti=verified.jti)
        except AuthFailure as failure:
            metrics.AUTH_REJECTIONS.labels(failure.reason[:40]).inc()  # one of this module's codes
            log.warning(
                "authentication failed",
                extra={
                    "auth_failure": failure.reason,
                    "endpoint": endpoint_path[:_LOG_VALUE_CHARS],
                    "request_id": access_log.request_id(request),  # the call's access line
                    **failure.details,
                },
            )
            return unauthorized()
        request.state.ehr_client = verified
        await self._purge_now_and_then(now)
        return None

    async def _purge_now_and_then(self, now: datetime) -> None:
        if self._monotonic() - self._last_purge < REPLAY_PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = self._monotonic()
        try:
            purged = await run_in_threadpool(self._store.purge_expired_jtis, now)
        except Exception as exc:  # housekeeping: never fails a call
            log.warning("could not purge the JWT replay cache", extra={"error_type": type(exc).__name__})
            return
        log.debug("JWT replay cache purged", extra={"purged": purged})
