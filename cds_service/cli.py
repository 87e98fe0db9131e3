"""`als-cds`: the command line.

als-cds serve       start the service (uvicorn) with the ALS_CDS_* settings
als-cds migrate     bring the database schema up to date (for a deploy step or migration job)
als-cds prune       remove issued-card records, feedback and suppression records past an age,
                    and ended snoozes, in batches (safe while the service runs)
als-cds evaluate    the cards a hook request or a patient Bundle would get, without a server
als-cds check-fhir  run the service's FHIR queries against a FHIR server, per service
als-cds docs        write the rule catalogue page

A mistake in the settings or the arguments (a value that does not parse, a missing file, a port in
use, authentication on with no trusted client) is one line on stderr naming the setting, what was
wrong and an example of a right value, and exit status 2: never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import logging.config
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from cds_service import logs
from cds_service.settings import Settings, TrustedClient

#: The flags that override a setting, by setting name.
_FLAGS = {
    "host": "--host",
    "port": "--port",
    "profile": "--profile",
    "ssl_certfile": "--ssl-certfile",
    "ssl_keyfile": "--ssl-keyfile",
}

#: Settings whose value is never quoted back in a message (a database URL carries its password).
_SECRET_SETTINGS = frozenset({"database_url", "pseudonym_key", "analytics_token"})


class UsageError(Exception):
    """A mistake in the settings or arguments: `main` prints it as one line and exits with 2."""


# -- naming settings in messages -------------------------------------------------------------------


def _env_name(name: str) -> str:
    return f"ALS_CDS_{name.upper()}"


def _label(name: str, from_flag: bool = False) -> str:
    """How a message names a setting: its variable, and its flag when the value came from one."""
    return f"{_FLAGS[name]} ({_env_name(name)})" if from_flag and name in _FLAGS else _env_name(name)


def _example(name: str, from_flag: bool = False) -> str:
    """A right value for a setting, written as the user would set it."""
    field = Settings.model_fields[name]
    value: Any = field.examples[0] if field.examples else field.get_default(call_default_factory=True)
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list | tuple):
        text = ",".join(map(str, value))
    else:
        text = str(value)
    if from_flag and name in _FLAGS:
        return f"{_FLAGS[name]} {shlex.quote(text)}"
    return f"{_env_name(name)}={shlex.quote(text)}"


def _settings_problem(exc: ValidationError, from_flags: set[str]) -> str:
    """One line per setting that failed validation (normally one), each with an example."""
    first_per_setting: dict[str, dict[str, Any]] = {}
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        first_per_setting.setdefault(name, error)
    lines = []
    for name, error in first_per_setting.items():
        if name not in Settings.model_fields:
            lines.append(f"the settings are not valid: {error['msg']}")
            continue
        from_flag = name in from_flags
        where = _label(name, from_flag)
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        inside = [str(part) for part in error["loc"][1:]]
        if name == "trusted_clients" and inside:
            where += f", issuer {inside[0]!r}"
            if len(inside) > 1:
                where += f", member {inside[1]!r}"
            if error["type"] == "extra_forbidden":
                message = f"unknown member (a trusted client takes {', '.join(TrustedClient.model_fields)})"
        value = error.get("input")
        shown = ""
        if (
            name not in _SECRET_SETTINGS
            and isinstance(value, str | int | float)
            and error["type"] != "extra_forbidden"
            and len(str(value)) <= 80
        ):
            shown = f" (got {str(value)!r})"
        lines.append(f"{where}: {message}{shown}; e.g. {_example(name, from_flag)}")
    return "\n".join(lines)


def _settings_unreadable(exc: SettingsError) -> str:
    """pydantic-settings could not even decode a value (a JSON setting that is not JSON)."""
    found = re.search(r'field "([^"]+)"', str(exc))
    name = found.group(1) if found else None
    if name not in Settings.model_fields:
        return f"the settings cannot be read: {exc}"
    cause = exc.__cause__
    if isinstance(cause, json.JSONDecodeError) and not cause.doc.strip():
        why = "set but empty: give a JSON value, or leave it unset"
    elif isinstance(cause, json.JSONDecodeError):
        why = f"not valid JSON ({cause.msg} at character {cause.pos})"
    else:
        why = "cannot be read"
    return f"{_env_name(name)}: {why}; e.g. {_example(name)}"


def _load_settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise UsageError(_settings_problem(exc, set(overrides))) from None
    except SettingsError as exc:
        raise UsageError(_settings_unreadable(exc)) from None


def _parse_now(value: str | None, site_tz: tzinfo = UTC) -> datetime | None:
    """`--now` as an aware instant; without a zone it is the site's time (ALS_CDS_SITE_TIMEZONE),
    as the reader reads a dateTime without a zone, never this machine's local time."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--now: {value!r} is not an ISO 8601 date or date-time; "
            "e.g. --now 2026-11-22T12:00:00+00:00 or --now 2026-11-22"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=site_tz)
    return parsed.astimezone(UTC)


# -- serve ---------------------------------------------------------------------------------------


def _check_database_url(settings: Settings) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(settings.database_url)
    except ArgumentError:
        raise UsageError(
            "ALS_CDS_DATABASE_URL: not a SQLAlchemy database URL; e.g. "
            "ALS_CDS_DATABASE_URL=sqlite:///./als-cds.db or postgresql+psycopg://user:pass@host/db"
        ) from None


def _check_authentication(settings: Settings) -> None:
    """What the app would refuse at start-up, said before uvicorn starts, as one line."""
    import asyncio

    from cds_service import security

    config = security.AuthConfig.from_settings(settings)
    if config.required and not config.clients:
        raise UsageError(
            "ALS_CDS_TRUSTED_CLIENTS is empty while ALS_CDS_AUTH_REQUIRED is true, so every call would be "
            f"refused: name the EHRs allowed to call (README, Authentication), e.g. "
            f"{_example('trusted_clients')}, or set ALS_CDS_AUTH_REQUIRED=false for a local trial only"
        )
    http = security.new_jwks_http_client()
    try:
        # Parses every trusted client's static keys, as the app's start-up would.
        security.Authenticator(config, store=None, clock=lambda: datetime.now(UTC), http=http)  # type: ignore[arg-type]
    except security.ConfigurationError as exc:
        raise UsageError(f"{exc} (README, Authentication)") from None
    finally:
        asyncio.run(http.aclose())


def _check_tls(settings: Settings, from_flags: set[str]) -> dict[str, str]:
    """uvicorn's TLS arguments, once the certificate and key are known to load together."""
    import ssl

    cert, key = settings.ssl_certfile, settings.ssl_keyfile
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        given, missing = ("ssl_certfile", "ssl_keyfile") if key is None else ("ssl_keyfile", "ssl_certfile")
        raise UsageError(
            f"{_label(given, given in from_flags)} is set but {_label(missing, True)} is not: HTTPS needs "
            "a certificate and its key; e.g. --ssl-certfile cert.pem --ssl-keyfile key.pem"
        )
    for name, path in (("ssl_certfile", cert), ("ssl_keyfile", key)):
        if not path.is_file():
            where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
            raise UsageError(
                f"{_label(name, name in from_flags)}: no such file {str(path)!r}{where}; "
                f"e.g. {_example(name, name in from_flags)}"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key would make OpenSSL ask for its password on the terminal: it gets none.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise UsageError(
            f"ALS_CDS_SSL_CERTFILE and ALS_CDS_SSL_KEYFILE do not load as a certificate and its key "
            f"({reason}): give a PEM certificate and its unencrypted PEM private key; "
            "e.g. ALS_CDS_SSL_CERTFILE=./cert.pem ALS_CDS_SSL_KEYFILE=./key.pem"
        ) from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def _check_port_free(settings: Settings, from_flags: set[str]) -> None:
    """Bind the address as uvicorn will (SO_REUSEADDR, each address of the host) and let it go."""
    host, port = settings.host, settings.port
    host_label, port_label = _label("host", "host" in from_flags), _label("port", "port" in from_flags)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise UsageError(
            f"{host_label}: {host!r} is not an address or host name of this machine; "
            "e.g. ALS_CDS_HOST=127.0.0.1 (or 0.0.0.0 for every interface)"
        ) from None
    bound = 0
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue  # that address family is not enabled here; asyncio skips it too
                raise UsageError(_bind_problem(exc, host, port, host_label, port_label)) from None
            bound += 1
    if not bound:
        raise UsageError(
            f"{host_label}: {host!r} is not an address of this machine; "
            "e.g. ALS_CDS_HOST=127.0.0.1 (or 0.0.0.0 for every interface)"
        )


def _bind_problem(exc: OSError, host: str, port: int, host_label: str, port_label: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        other = port + 1 if port < 65535 else 8080
        return (
            f"port {port} on {host} is already in use: stop the process that listens there, or choose "
            f"another port with ALS_CDS_PORT or --port; e.g. --port {other}"
        )
    if exc.errno == errno.EACCES:
        return f"{port_label}: this user may not listen on port {port} (below 1024); e.g. --port 8080"
    return f"cannot listen on {host} port {port} ({exc.strerror}): check {host_label} and {port_label}"


def _metrics_directory(workers: int) -> str | None:
    """With several workers, the directory where each writes its metric samples (metrics.py): set
    before anything imports prometheus-client, which reads it at import, in this process and (by
    inheritance) in every worker. A fresh one per start, as prometheus-client requires; returned
    when it is ours to delete. One worker keeps its samples in memory."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:  # the deployment's (e.g. an emptyDir volume): emptied of a previous run's samples
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    if workers < 2:
        return None
    created = tempfile.mkdtemp(prefix="als-cds-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    return created


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    metrics_dir = _metrics_directory(settings.workers)
    try:
        return _serve_with(settings, args)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_with(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from_flags = set(args.from_flags)
    _check_database_url(settings)
    _check_authentication(settings)
    tls = _check_tls(settings, from_flags)
    _check_port_free(settings, from_flags)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    # Not yet listening: uvicorn's own line "Uvicorn running on ..." follows once it is.
    print(
        f"als-cds: starting on {'https' if tls else 'http'}://{host}:{settings.port}/cds-services "
        f"(database {_safe_url(settings.database_url)}, profile {settings.profile}, "
        f"{settings.workers} worker{'s' if settings.workers > 1 else ''})",
        file=sys.stderr,
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "log_config": logs.configure(settings.log_level),
        "proxy_headers": True,
        "access_log": False,  # the service logs one line per call of its own (logs.py)
        "timeout_graceful_shutdown": 30,
        # Read deadlines and a connection limit that uvicorn lacks (server.py).
        "http": "cds_service.server:GuardedHttpProtocol",
        "timeout_keep_alive": settings.http_keep_alive_seconds,
        **tls,
    }
    try:
        if settings.workers > 1:
            from cds_service.server import run_workers

            # uvicorn's own supervisor returns normally when a worker fails to start, and restarts
            # a worker that dies before serving for ever: `run_workers` says whether they started.
            if not run_workers(uvicorn.Config("cds_service.app:app", **options)):
                print("als-cds: the service did not start; the log lines above say why", file=sys.stderr)
                return 3
            return 0
        uvicorn.run("cds_service.app:app", **options)
    except SystemExit as exc:  # uvicorn's start-up failure (after what the checks above can see)
        if exc.code not in (0, None):
            print("als-cds: the service did not start; the log lines above say why", file=sys.stderr)
        raise
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from cds_service.store import Store

    _check_database_url(settings)
    store = Store(settings.database_url)
    try:
        store.migrate()
    finally:
        store.close()
    print(f"als-cds: database {_safe_url(settings.database_url)} is up to date", file=sys.stderr)
    return 0


def _prune(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from sqlalchemy.exc import SQLAlchemyError

    from cds_service.store import Store
    from cds_service.store.prune import prune

    _check_database_url(settings)
    days = settings.retention_days if args.older_than is None else args.older_than
    now = _parse_now(args.now, settings.site_tz) or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    store = Store(settings.database_url)
    try:
        removed = prune(store, cutoff, now, batch_size=args.batch_size)
    except SQLAlchemyError as exc:  # its message can quote rows: the type only
        print(
            f"als-cds: the database {_safe_url(settings.database_url)} could not be pruned "
            f"({type(exc).__name__}); is its schema up to date (als-cds migrate)? What was removed "
            "before stays removed; run it again to go on.",
            file=sys.stderr,
        )
        return 1
    finally:
        store.close()
    print(
        f"als-cds: removed from {_safe_url(settings.database_url)} what is older than {days} days "
        f"(before {cutoff.isoformat().replace('+00:00', 'Z')}), and ended snoozes:"
    )
    width = max(map(len, removed))
    for table, count in removed.items():
        print(f"  {table:<{width}}  {count}")
    print(f"  {'total':<{width}}  {sum(removed.values())}")
    return 0


def _days(value: str) -> int:
    """`--older-than`: whole days, 1 to 3650 (as ALS_CDS_RETENTION_DAYS)."""
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number of days; e.g. --older-than 365"
        ) from None
    if not 1 <= days <= 3650:
        raise argparse.ArgumentTypeError(f"{days} days: give 1 to 3650; e.g. --older-than 365")
    return days


def _batch_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= 100_000:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a whole number from 1 to 100000; e.g. --batch-size 1000"
        )
    return size


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from cds_service import cards
    from cds_service.bundles import request_from_bundle
    from cds_service.engine import Engine, RequestError
    from cds_service.fhir_client import FhirClient, new_http_client
    from cds_service.hooks import CDSRequest, CDSResponse
    from cds_service.reader.strict import format_findings, strict_findings
    from cds_service.services import build_services

    now = _parse_now(args.now, settings.site_tz) or datetime.now(UTC)
    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"als-cds: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    services = {s.hook: s for s in build_services(disabled=settings.disabled_rules).values()}
    if isinstance(document, dict) and "hook" in document:
        raw_request = document
    elif isinstance(document, dict) and document.get("resourceType") == "Bundle":
        hook = args.hook or "patient-view"
        keys = list(services[hook].prefetch(settings, now.date()))
        try:
            raw_request = request_from_bundle(document, hook, keys)
        except ValueError as exc:
            print(f"als-cds: {exc}", file=sys.stderr)
            return 2
    else:
        print("als-cds: the file is neither a CDS Hooks request nor a FHIR Bundle", file=sys.stderr)
        return 2
    try:
        request = CDSRequest.model_validate(raw_request)
    except ValueError as exc:
        print(f"als-cds: not a valid CDS Hooks request: {exc}", file=sys.stderr)
        return 2
    service = services.get(request.hook)
    if service is None:
        print(f"als-cds: no service answers the hook '{request.hook}'", file=sys.stderr)
        return 2

    async def run() -> object:
        http = new_http_client(
            max_connections=settings.fhir_max_connections, timeout_seconds=settings.fhir_budget_seconds
        )
        try:
            engine = Engine(
                settings,
                cards.load_catalogue(settings.cards_dir),
                FhirClient(
                    http,
                    max_pages=settings.fhir_max_pages,
                    max_in_flight=settings.fhir_max_connections,
                    max_response_bytes=settings.fhir_max_response_bytes,
                ),
                lambda: now,
                keep_deviations=args.strict,
            )
            return await engine.run(service, request)
        finally:
            await http.aclose()

    try:
        outcome = asyncio.run(run())
    except RequestError as exc:
        print(f"als-cds: the service would answer HTTP {exc.status}:", file=sys.stderr)
        for issue in exc.issues:
            where = ", ".join(issue.get("expression", []))
            print(f"  - {issue['diagnostics']}" + (f" [{where}]" if where else ""), file=sys.stderr)
        return 1
    response = CDSResponse(cards=outcome.cards).to_json()  # type: ignore[attr-defined]
    findings = (
        strict_findings(outcome.record.report.deviations, outcome.resources)  # type: ignore[attr-defined]
        if args.strict
        else []
    )
    if args.json:
        print(json.dumps(response, indent=2))
        if args.strict:  # stdout stays the response, for tools that read it
            print("\n".join(format_findings(findings)), file=sys.stderr)
        return 1 if findings else 0
    print(f"{service.id} ({request.hook}) at {now.date().isoformat()}: {len(response['cards'])} card(s)")
    for card in response["cards"]:
        print(f"\n[{card['indicator'].upper()}] {card['summary']}")
        print(f"  rule: {card['source']['topic']['code']} | source: {card['source']['label']}")
        for suggestion in card.get("suggestions", []):
            print(f"  suggestion: {suggestion['label']}")
        if args.detail:
            for line in card.get("detail", "").splitlines():
                print(f"    {line}")
    if args.strict:
        print()
        print("\n".join(format_findings(findings)))
    return 1 if findings else 0


def _docs(settings: Settings, args: argparse.Namespace) -> int:
    from cds_service.catalogue_doc import render_catalogue

    text = render_catalogue(settings.cards_dir, settings.disabled_rules)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"als-cds: wrote {args.output}", file=sys.stderr)
    return 0


def _check_fhir(settings: Settings, args: argparse.Namespace) -> int:
    import os
    from dataclasses import asdict

    from cds_service.check_fhir import format_report, run

    now = _parse_now(args.now, settings.site_tz)
    token = args.token or os.environ.get("ALS_CDS_CHECK_TOKEN")
    report = run(args.url, args.patient, token, settings, now, strict=args.strict)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def _safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="als-cds", description="CDS Hooks service for ALS/MND care")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the service")
    serve.add_argument("--host", help="override ALS_CDS_HOST")
    serve.add_argument("--port", help="override ALS_CDS_PORT")
    serve.add_argument(
        "--ssl-certfile", help="PEM certificate: answer HTTPS (override ALS_CDS_SSL_CERTFILE; needs the key)"
    )
    serve.add_argument("--ssl-keyfile", help="its unencrypted PEM private key (override ALS_CDS_SSL_KEYFILE)")
    commands.add_parser("migrate", help="apply database migrations")
    prune_ = commands.add_parser(
        "prune",
        help="remove issued-card records, feedback and suppression records past an age, and ended "
        "snoozes, in batches (safe while the service runs; a live snooze is never removed)",
    )
    prune_.add_argument(
        "--older-than",
        type=_days,
        metavar="DAYS",
        help="remove what is older than this many days (default ALS_CDS_RETENTION_DAYS, 365)",
    )
    prune_.add_argument(
        "--batch-size", type=_batch_size, default=1000, help="rows removed per transaction (default 1000)"
    )
    prune_.add_argument("--now", help="count the age from this ISO date-time (default: now)")
    evaluate = commands.add_parser(
        "evaluate", help="print the cards a hook request, or a FHIR Bundle of one patient, would get"
    )
    evaluate.add_argument("file", help="a CDS Hooks request JSON, or a FHIR Bundle holding one patient")
    evaluate.add_argument(
        "--hook",
        choices=["patient-view", "order-select", "order-sign"],
        help="for a Bundle: the hook to simulate (default patient-view); orders with status draft "
        "become the draft orders",
    )
    evaluate.add_argument("--now", help="evaluate as of this ISO date-time (default: now)")
    evaluate.add_argument("--profile", choices=["nice", "us"], help="override ALS_CDS_PROFILE")
    evaluate.add_argument("--json", action="store_true", help="print the CDS Hooks response JSON")
    evaluate.add_argument("--detail", action="store_true", help="also print each card's detail")
    evaluate.add_argument(
        "--strict",
        action="store_true",
        help="also list every deviation from R4 in the data (what the reader repaired or dropped, and "
        "what fhir.resources finds invalid); exit status 1 if there is any",
    )
    check = commands.add_parser(
        "check-fhir", help="test a FHIR server with the prefetch queries the service will make for a patient"
    )
    check.add_argument("url", help="the FHIR server's base URL (as the EHR would send it in fhirServer)")
    check.add_argument("--patient", required=True, help="a patient id on that server")
    check.add_argument(
        "--token",
        help="a Bearer access token for the server (or set ALS_CDS_CHECK_TOKEN, kept out of shell history)",
    )
    check.add_argument("--now", help="evaluate the cards as of this ISO date-time (default: now)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--strict",
        action="store_true",
        help="also list every deviation from R4 in what the server returned; exit status 1 if there is any",
    )
    docs = commands.add_parser("docs", help="write the rule catalogue page from the rule metadata")
    docs.add_argument("--output", default="docs/rules.md", help="where to write it ('-' for stdout)")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in vars(args).items() if k in _FLAGS and v is not None}
    args.from_flags = sorted(overrides)
    commands_by_name = {
        "serve": _serve,
        "migrate": _migrate,
        "prune": _prune,
        "evaluate": _evaluate,
        "docs": _docs,
        "check-fhir": _check_fhir,
    }
    try:
        settings = _load_settings(overrides)
        logging.config.dictConfig(logs.configure(settings.log_level))
        return commands_by_name[args.command](settings, args)
    except UsageError as exc:
        print(f"als-cds: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
