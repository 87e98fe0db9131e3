"""Every setting of the service, read from `ALS_CDS_*` environment variables (or a `.env` file).

The defaults are the embedded quickstart: a SQLite file in the working directory, the card data and
fixtures bundled in this repository, CORS open to the CDS Hooks sandbox. Production deployments
override them; the README lists each one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent

#: Client JWT algorithms the service can be configured to accept. All asymmetric: CDS Hooks forbids
#: `none` and every symmetric (HMAC) algorithm, and an HMAC "key" would be the client's public key.
SUPPORTED_JWT_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384", "ES256", "RS256")

#: Hosts for which a plain-http key set URL is tolerated (a local EHR simulator in development).
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: Browser origins allowed by default: the public CDS Hooks sandbox, the sandbox run from its source
#: (`http://localhost:8080`), and its static build served locally on port 8090 as its README does
#: (`python3 -m http.server 8090 --bind 127.0.0.1`), by address or by name.
DEFAULT_CORS_ORIGINS: tuple[str, ...] = (
    "https://sandbox.cds-hooks.org",
    "http://localhost:8080",
    "http://127.0.0.1:8090",
    "http://localhost:8090",
)

#: Longest issuer accepted in the configuration, in UTF-8 bytes (it is a key of the replay cache).
MAX_ISSUER_BYTES = 512


def _key_set_url(value: str, what: str) -> str:
    """An https URL (http only on a loopback host), without a fragment."""
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS)
    if secure and parts.hostname and not parts.fragment:
        return value
    raise ValueError(f"{what} must be an https URL (http only for localhost), got {value!r}")


#: Largest JWK Set file accepted for a pinned `jku` (the same bound as a key set fetched from a URL).
MAX_KEY_SET_FILE_BYTES = 64 * 1024

_PIN_EXAMPLE = (
    '{"https://sandbox.cds-hooks.org/.well-known/jwks.json": "/etc/als-cds/sandbox-jwks.json"} '
    'or {"https://sandbox.cds-hooks.org/.well-known/jwks.json": {"keys": [{"kty": "EC", ...}]}}'
)


def _check_key_set_shape(value: Any, what: str) -> dict[str, Any]:
    """A JWK Set of public EC or RSA keys, each with a `kid`: its shape only (`security.py` parses
    the keys themselves when the service starts)."""
    keys = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) for k in keys):
        raise ValueError(f'{what} must be a JWK Set: {{"keys": [ {{...}}, ... ]}} with at least one key')
    for key in keys:
        if key.get("kty") not in ("EC", "RSA"):
            raise ValueError(f"{what} keys must be EC or RSA public keys, got kty {key.get('kty')!r}")
        if not isinstance(key.get("kid"), str) or not key["kid"]:
            raise ValueError(f"every key in {what} needs a kid (the JWT header names its key by kid)")
        if "d" in key:
            raise ValueError(f"{what} key {key['kid']!r} is a private key: configure the public key only")
    return value


def _read_key_set_file(location: str, what: str) -> Any:
    """The JSON document in a local file named by an absolute path or a `file://` URL."""
    parts = urlsplit(location)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError(f"{what}: {location!r} is not a local file URL; e.g. {_PIN_EXAMPLE}")
        path = Path(unquote(parts.path))
    elif parts.scheme in ("http", "https"):
        raise ValueError(
            f"{what} must be a local key set (inline, or a file), not the URL {location!r}: a pinned jku "
            f"is never fetched (list it in jku to have it fetched); e.g. {_PIN_EXAMPLE}"
        )
    else:
        path = Path(location)
    if not path.is_absolute():
        raise ValueError(
            f"{what}: the file must be named by an absolute path, got {location!r}; e.g. {_PIN_EXAMPLE}"
        )
    try:
        if not path.is_file():
            raise ValueError(f"{what}: {str(path)!r} is not a file; e.g. {_PIN_EXAMPLE}")
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_SET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(
            f"{what}: cannot read {str(path)!r} ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > MAX_KEY_SET_FILE_BYTES:
        raise ValueError(
            f"{what}: {str(path)!r} is larger than {MAX_KEY_SET_FILE_BYTES // 1024} kB; a JWK Set is a few kB"
        )
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError(
            f'{what}: {str(path)!r} is not JSON; it must hold a JWK Set, {{"keys": [...]}}'
        ) from None


class TrustedClient(BaseModel):
    """How to verify the JWTs of one CDS client (EHR), named by its `iss`.

    Keys come from `jwks_url` (fetched and cached) or a static `jwks`, or, for a token whose header
    carries `jku`, from that URL when it is listed in `jku`, or from the local key set `jku_keys`
    pins it to (then it is never fetched). At least one of the four is needed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    jwks_url: str | None = Field(None, description="URL of the client's JWK Set.")
    jwks: dict[str, Any] | None = Field(None, description="The client's JWK Set itself (static keys).")
    jku: tuple[str, ...] = Field((), description="`jku` header values honoured for this issuer (fetched).")
    jku_keys: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="`jku` header values honoured for this issuer, each pinned to a local JWK Set: the set "
        "itself, or the absolute path (or file:// URL) of a JSON file holding it, read at start-up. A "
        "token with a pinned jku is verified with those keys only; the URL is never fetched.",
    )
    tenant: str | None = Field(None, min_length=1, description="Required `tenant` claim, if any.")

    @field_validator("jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        return None if value is None else _key_set_url(value, "jwks_url")

    @field_validator("jku")
    @classmethod
    def _check_jku(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_key_set_url(url, "each jku") for url in value)

    @field_validator("jwks")
    @classmethod
    def _check_jwks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _check_key_set_shape(value, "jwks")

    @field_validator("jku_keys", mode="before")
    @classmethod
    def _load_jku_keys(cls, value: Any) -> Any:
        """Each pinned key set, inline or read from its file, checked like `jwks`."""
        if not isinstance(value, dict):
            raise ValueError(f"jku_keys must be a JSON object, jku URL -> key set; e.g. {_PIN_EXAMPLE}")
        pinned: dict[str, dict[str, Any]] = {}
        for url, keys in value.items():
            if not isinstance(url, str):
                raise ValueError(f"jku_keys: each key must be a jku URL; e.g. {_PIN_EXAMPLE}")
            _key_set_url(url, "each jku_keys URL")
            what = f"jku_keys[{url!r}]"
            if isinstance(keys, str):
                keys = _read_key_set_file(keys.strip(), what)
            elif not isinstance(keys, dict):
                raise ValueError(
                    f"{what} must be a JWK Set or the absolute path of a JSON file holding one, "
                    f"got {type(keys).__name__}; e.g. {_PIN_EXAMPLE}"
                )
            pinned[url] = _check_key_set_shape(keys, what)
        return pinned

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedClient:
        if self.jwks_url is not None and self.jwks is not None:
            raise ValueError("give jwks_url or jwks, not both")
        if self.jwks_url is None and self.jwks is None and not self.jku and not self.jku_keys:
            raise ValueError(
                "give jwks_url, jwks or a jku allowlist (jku, fetched; or jku_keys, pinned to local keys): "
                "the client's keys must come from one"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALS_CDS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # -- serving ---------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `als-cds serve` binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port `als-cds serve` listens on.")
    workers: int = Field(1, ge=1, description="Uvicorn worker processes for `als-cds serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    ssl_certfile: Path | None = Field(
        None,
        examples=["./cert.pem"],
        description="PEM certificate (chain) for `als-cds serve` to answer HTTPS itself, e.g. for a local "
        "trial with the public CDS Hooks sandbox; give `ssl_keyfile` with it. Unset: plain HTTP (behind "
        "a TLS-terminating proxy in production).",
    )
    ssl_keyfile: Path | None = Field(
        None,
        examples=["./key.pem"],
        description="The unencrypted PEM private key of `ssl_certfile`.",
    )

    # -- load and slow clients (per worker process; README, Load and slow clients) -------------------
    max_in_flight_calls: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Most hook calls one worker works on at once. One more is answered at once with "
        "503, `Retry-After` and a JSON body (an EHR shows no cards), rather than queueing until every "
        "call times out together.",
    )
    retry_after_seconds: int = Field(
        1, ge=0, le=3600, description="The `Retry-After` of a 503 for load (shed calls, refused connections)."
    )
    max_connections: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Most open connections one worker of `als-cds serve` keeps; one more is answered "
        "503 (JSON, `Retry-After`) and closed. Keep it under the process's file limit (`ulimit -n`).",
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A new connection, or a keep-alive request once it begins, must deliver its request "
        "line and headers within this (`als-cds serve`); else 408 (JSON) and closed. Slow senders "
        "(10 bytes every 2 s) cannot hold a connection.",
    )
    http_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="From the end of its headers, a request's whole body must arrive within this "
        "(`als-cds serve`); else 408, or the connection is closed when the answer has gone (a 401 is "
        "sent before the body is read).",
    )
    http_keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        le=600,
        description="How long an idle keep-alive connection is kept between requests (`als-cds serve`). "
        "Longer than the EHR's (or load balancer's) own idle time, so that the client closes an idle "
        "connection first: at 5 s, as long as httpx keeps one, a call sent just as the server closed "
        "its connection failed (a reset, seen by the load test every ~5 s with 2 workers).",
    )

    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token a Prometheus scraper must present at `GET /metrics`. With "
        "authentication on and no token, /metrics is not served (404); with authentication off "
        "(local development) it is open unless a token is set. Keep it in the deployment's Secret.",
    )

    # -- storage ---------------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./als-cds.db",
        description="SQLAlchemy URL of the feedback store: a SQLite file by default, "
        "`postgresql+psycopg://user:pass@host/db` in production.",
    )
    issued_write_delay_ms: int = Field(
        50,
        ge=0,
        le=600_000,
        description="Issued-card records (which rule issued each card, for feedback) are written behind "
        "the answer, many calls in one transaction, at most this long after a call (store/writer.py). "
        "Another worker or replica sees a card's record this much (plus one write) later; feedback "
        "that arrives first waits for it.",
    )
    snooze_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a worker trusts what it read of a patient's snooze (suppression.py). A "
        "snooze set through another worker or replica hides its card at most this long later; one set "
        "through this worker, at once; a snooze's end is exact. 0: read the store on every call.",
    )
    issued_queue_calls: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="Most hook calls whose issued-card records wait to be written in a worker. While the "
        "database is down or slow, the records of calls beyond it are dropped, counted in "
        "`als_cds_issued_records_dropped_total` and logged (counts only); the cards still go out.",
    )
    migrate_on_start: bool = Field(
        True,
        description="Apply Alembic migrations when the service starts. Switch off where a separate "
        "migration job runs `als-cds migrate` (Kubernetes).",
    )

    # -- content ---------------------------------------------------------------------------------
    cards_dir: Path = Field(
        _REPO_ROOT / "cards", description="Folder of card definitions, one TOML file per rule id."
    )
    profile: Literal["nice", "us"] = Field(
        "nice",
        description="Guideline profile for the cards where UK (NICE) and US guidance differ.",
    )
    riluzole_lft_interval_after_year1_days: int = Field(
        365,
        ge=28,
        le=730,
        description="Interval between ALT checks after the first year of riluzole. The SmPC says "
        "'periodically'; NICE TA20 3.3 says annually, hence 365.",
    )

    alt_uln_default_male: float = Field(
        33,
        gt=0,
        description="ALT upper limit of normal (U/L) for men, used only when a result carries no "
        "reference range. ACG 2017 (Kwo et al.): a healthy ALT is up to 29-33 IU/L in men.",
    )
    alt_uln_default_female: float = Field(
        25,
        gt=0,
        description="ALT upper limit of normal (U/L) for women and for patients whose sex is not "
        "recorded (the lower limit errs towards flagging). ACG 2017: up to 19-25 IU/L in women.",
    )
    neutrophil_lower_limit: float = Field(
        1.5,
        gt=0,
        description="Neutrophil lower limit (10^9/L) used when a result carries no reference range.",
    )
    mdt_interval_days: int = Field(
        92,
        ge=28,
        le=365,
        description="Multidisciplinary review interval: NICE NG42 1.5.2 'usually every 2 to 3 months'.",
    )
    mdt_encounter_codes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        examples=["https://hospital.example.org/encounter-type|MND-MDT"],
        description="Extra `system|code` encounter type codes (comma-separated) that count as an MND "
        "multidisciplinary clinic visit, for sites with local clinic codes.",
    )
    respiratory_interval_days: int = Field(
        92,
        ge=28,
        le=365,
        description="Respiratory assessment interval: NICE NG42 1.14.10 / QS126 'every 2 to 3 months'.",
    )

    # -- reading the EHR's data -----------------------------------------------------------------------
    site_timezone: str = Field(
        "UTC",
        description="IANA time zone (e.g. `Europe/London`) in which a dateTime sent without a zone "
        "is read, and in which dates on cards are shown. Real feeds often omit the zone.",
    )
    clock_skew_seconds: int = Field(
        7200,
        ge=0,
        le=86_400,
        description="How far in the future a result's time may lie and still be trusted (a lab clock "
        "writing local time as UTC is an hour or two ahead in Europe). Beyond it the time is unknown: "
        "such a result cannot show that a test is up to date.",
    )

    # -- talking to the EHR's FHIR server --------------------------------------------------------
    fhir_budget_seconds: float = Field(
        4.0,
        gt=0,
        le=60,
        description="Time budget for all FHIR fetches of one hook call (missing prefetch keys, "
        "next pages). What has not arrived by then counts as unavailable.",
    )
    fhir_max_pages: int = Field(
        20, ge=1, le=1000, description="Most `next` pages followed for one prefetch key."
    )
    fhir_max_connections: int = Field(
        64,
        ge=1,
        le=1000,
        description="Most requests one process has in flight at once to one FHIR server (origin), and "
        "the size of that origin's connection pool: more wait their turn. Each origin has its own "
        "(a bulkhead: a hanging server holds only its own). A call asks some 11 queries at once, so "
        "with a FHIR server 100 ms away this bounds the calls fetching at full speed to about this "
        "number / 11 (docs/performance.md); lower it for a FHIR server that limits its clients.",
    )
    fhir_breaker_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Failures in a row (no answer in time, no connection, 5xx, 429) after which a FHIR "
        "server's circuit opens: its keys then fail at once (412, `transient`) instead of each waiting "
        "out the budget.",
    )
    fhir_breaker_open_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long an open circuit stays open; then one request probes the FHIR server, "
        "and its answer closes the circuit (or opens it again).",
    )

    fhir_max_response_bytes: int = Field(
        5_000_000,
        ge=10_000,
        le=100_000_000,
        description="Largest answer read from a FHIR server (one read, search or page), counted as it "
        "streams in (decompressed) and stopped there: the key is then unavailable (412, `too-costly`). "
        "A page of 100 results is some 100 kB; 5 MB is the size of the largest hook call accepted.",
    )
    fhir_max_call_bytes: int = Field(
        10_000_000,
        ge=10_000,
        le=500_000_000,
        description="Most bytes all FHIR answers of one hook call may add up to (every key, page and "
        "Medication read); beyond it the keys still being read are unavailable (412, `too-costly`). "
        "Bounds what a worker holds per call whatever a FHIR server sends.",
    )

    max_body_bytes: int = Field(
        5_000_000,
        ge=10_000,
        le=100_000_000,
        description="Largest request body accepted (413 above it). A hook call with full prefetch of a "
        "large chart is a few hundred kB; 5 MB leaves ample room.",
    )

    # -- browsers --------------------------------------------------------------------------------
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CORS_ORIGINS),
        description="Origins allowed by CORS, comma-separated (`*` for any). Preflight OPTIONS "
        "requests never need a token. The default allows the public CDS Hooks sandbox and a sandbox "
        "run locally: from its source (`http://localhost:8080`) or its build served on port 8090.",
    )

    # -- authentication of EHR calls (CDS Hooks 2.0 client JWT; see README, Authentication) ----------
    auth_required: bool = Field(
        True,
        description="Require a client JWT (`Authorization: Bearer`) on every service and feedback call. "
        "Switch off only for local development: the service then trusts anyone who can reach it.",
    )
    trusted_clients: dict[str, TrustedClient] = Field(
        default_factory=dict,
        examples=[
            '{"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/.well-known/jwks.json"}}'
        ],
        description='CDS clients whose JWTs are accepted, as JSON: `iss` → {"jwks_url": URL} or '
        '{"jwks": {"keys": [...]}}, optionally "jku": [allowed jku URLs], "jku_keys": {jku URL: '
        'local JWK Set or file path} and "tenant": "...". '
        "With auth_required, at least one is needed or the service refuses to start.",
    )
    public_base_url: str | None = Field(
        None,
        examples=["https://cds.example.org"],
        description="The service's public base URL (e.g. `https://cds.example.org`), from which the "
        "expected JWT `aud` is built behind a proxy. Unset: built from the request URL.",
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ES384", "RS384"],
        description="Accepted JWT algorithms, comma-separated: ES384 and RS384 (the spec's "
        "recommendation), ES256 and RS256 when configured. `none` and HMAC are never accepted.",
    )
    jwt_leeway_seconds: int = Field(
        60, ge=0, le=300, description="Clock skew allowed on `exp`, `iat` and `nbf`."
    )
    jwt_max_age_seconds: int = Field(
        3600,
        ge=60,
        le=86_400,
        description="Oldest accepted token (`iat` this far in the past); also bounds how long a `jti` "
        "is remembered for replay detection.",
    )
    jwks_cache_seconds: int = Field(
        3600, ge=60, le=86_400, description="How long a fetched JWK Set is used before it is fetched again."
    )

    # -- against alert fatigue, governance and analytics (issue 12; README, Alert fatigue) ---------
    disabled_rules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        examples=["quinine-order,cramps-treatment"],
        description="Rule ids this site switches off, comma-separated: they never run, leave the "
        "discovery document's prefetch and are named as switched off in its description and in the "
        "rule catalogue (`als-cds docs`). An id that is not a rule stops the service.",
    )
    digest_enabled: bool = Field(
        True,
        description="Fold the info-level 'due' reminders of one call (card files with "
        "`[fatigue] digest = true`) into one 'ALS care review' card with one suggestion per item. "
        "`false`: each reminder is a card of its own.",
    )
    order_session_minutes: int = Field(
        60,
        ge=1,
        le=1440,
        description="How long an order session lasts: a non-critical card shown on order-select is not "
        "shown again on order-sign for the same patient with the same text, and a draft order matching "
        "a create suggestion of ours does not bring back cards about itself, within this time.",
    )
    pseudonym_key: SecretStr | None = Field(
        None,
        description="Key of the salted (HMAC-SHA256) hashes of patient ids that snoozes and the order "
        "session are keyed by. Unset: a random key is made once and kept in the database (shared by "
        "all replicas). Set it (a Secret, 32+ characters) to keep the key out of the database.",
    )
    analytics_token: SecretStr | None = Field(
        None,
        description="Bearer token of `GET /analytics/rules` (aggregates only). Unset (the default): the "
        "endpoint does not exist. At least 32 characters.",
    )
    retention_days: int = Field(
        365,
        ge=1,
        le=3650,
        description="Default age for `als-cds prune`: issued-card records, order session marks, feedback "
        "and suppression records older than this many days are removed (ended snoozes whatever their "
        "age; a live snooze never).",
    )

    # -- the console (/console: fire hooks and review rules in a browser; see README, The console) ---
    console_enabled: bool | Literal["auto"] = Field(
        "auto",
        description="Serve the console at /console: `auto` (the default) serves it exactly when "
        "`auth_required` is false (the quickstart), `false` never. The console calls the hook and "
        "feedback endpoints as an EHR would but without a JWT, so `true` with authentication on is "
        "refused. Production: authentication on, console off (set `false`).",
    )

    @field_validator("ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("site_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}; e.g. 'Europe/London' or 'UTC'") from None
        return value

    @field_validator("cors_origins", "mdt_encounter_codes", "jwt_algorithms", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one JWT algorithm is needed")
        for alg in value:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(
                    f"{alg!r} is forbidden: CDS Hooks JWTs never use 'none' or a symmetric (HMAC) algorithm"
                )
            if alg not in SUPPORTED_JWT_ALGORITHMS:
                raise ValueError(f"unsupported JWT algorithm {alg!r}; choose from {SUPPORTED_JWT_ALGORITHMS}")
        return list(dict.fromkeys(value))

    @field_validator("trusted_clients")
    @classmethod
    def _check_issuers(cls, value: dict[str, TrustedClient]) -> dict[str, TrustedClient]:
        for issuer in value:
            if not issuer.strip() or len(issuer.encode("utf-8")) > MAX_ISSUER_BYTES:
                raise ValueError(f"issuer {issuer!r} must be non-empty and at most {MAX_ISSUER_BYTES} bytes")
        return value

    @field_validator("console_enabled", mode="before")
    @classmethod
    def _console_auto(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word in ("", "auto"):
            return "auto"
        if word in ("true", "1", "yes", "on"):
            return True
        if word in ("false", "0", "no", "off"):
            return False
        raise ValueError("must be auto, true or false")

    @field_validator("console_enabled")
    @classmethod
    def _console_needs_auth_off(cls, value: bool | str, info: ValidationInfo) -> bool | str:
        if value is True and info.data.get("auth_required") is True:
            raise ValueError(
                "the console calls the hook and feedback endpoints without an EHR's JWT, so it is served "
                "only with ALS_CDS_AUTH_REQUIRED=false; leave it at auto (on exactly when authentication "
                "is off) or set it to false"
            )
        return value

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"public_base_url must be an http(s) URL, no query or fragment: {value!r}")
        return value.strip().rstrip("/")

    @field_validator("disabled_rules", mode="before")
    @classmethod
    def _split_rule_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [r.strip() for r in value.split(",") if r.strip()]
        return value

    @field_validator("disabled_rules")
    @classmethod
    def _known_rules(cls, value: list[str]) -> list[str]:
        # Imported here: the rules package is large, and settings must load without it elsewhere.
        from cds_service.rules import CATALOGUE

        known = {rule.id for rule in CATALOGUE}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"not rule ids: {', '.join(unknown)} (docs/rules.md lists the rules)")
        return sorted(set(value))

    @field_validator("pseudonym_key", "analytics_token")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @property
    def console_served(self) -> bool:
        """Whether /console is served: never with authentication on (see `console_enabled`)."""
        return not self.auth_required and self.console_enabled in ("auto", True)

    @property
    def site_tz(self) -> ZoneInfo:
        return ZoneInfo(self.site_timezone)

    @property
    def encounter_lookback_days(self) -> int:
        """How far back the Encounter prefetch reaches: one MDT interval plus a month."""
        return self.mdt_interval_days + 31

    @property
    def observation_lookback_days(self) -> int:
        """How far back the Observation prefetch reaches.

        The longest look-back any rule needs (the ALT interval after the first year of riluzole,
        or the 12 months of weight history for weight loss), plus one month so that a result taken
        just before the interval ends is seen.
        """
        return max(self.riluzole_lft_interval_after_year1_days, 365) + 31


def get_settings() -> Settings:
    return Settings()
