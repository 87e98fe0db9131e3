"""`als-cds`: the command line.

als-cds serve     start the service (uvicorn) with the ALS_CDS_* settings
als-cds migrate   bring the database schema up to date (for a deploy step or migration job)
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import sys
from collections.abc import Sequence
from pathlib import Path

from cds_service import logs
from cds_service.settings import Settings


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    print(
        f"als-cds: serving on http://{settings.host}:{settings.port}/cds-services "
        f"(database {_safe_url(settings.database_url)}, profile {settings.profile})",
        file=sys.stderr,
    )
    uvicorn.run(
        "cds_service.app:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=logs.configure(settings.log_level),
        proxy_headers=True,
        access_log=False,  # the service logs one line per call of its own (logs.py)
        timeout_graceful_shutdown=30,
    )
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from cds_service.store import Store

    store = Store(settings.database_url)
    try:
        store.migrate()
    finally:
        store.close()
    print(f"als-cds: database {_safe_url(settings.database_url)} is up to date", file=sys.stderr)
    return 0


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import json
    from datetime import UTC, datetime

    from cds_service import cards
    from cds_service.bundles import request_from_bundle
    from cds_service.engine import Engine, RequestError
    from cds_service.fhir_client import FhirClient, new_http_client
    from cds_service.hooks import CDSRequest, CDSResponse
    from cds_service.reader.strict import format_findings, strict_findings
    from cds_service.services import build_services

    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"als-cds: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    services = {s.hook: s for s in build_services().values()}
    now = datetime.fromisoformat(args.now).astimezone(UTC) if args.now else datetime.now(UTC)
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
                    http, max_pages=settings.fhir_max_pages, max_in_flight=settings.fhir_max_connections
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

    text = render_catalogue(settings.cards_dir)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"als-cds: wrote {args.output}", file=sys.stderr)
    return 0


def _check_fhir(settings: Settings, args: argparse.Namespace) -> int:
    import json
    import os
    from dataclasses import asdict
    from datetime import UTC, datetime

    from cds_service.check_fhir import format_report, run

    token = args.token or os.environ.get("ALS_CDS_CHECK_TOKEN")
    now = datetime.fromisoformat(args.now).astimezone(UTC) if args.now else None
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
    serve.add_argument("--port", type=int, help="override ALS_CDS_PORT")
    commands.add_parser("migrate", help="apply database migrations")
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

    overrides = {k: v for k, v in vars(args).items() if k in ("host", "port", "profile") and v is not None}
    settings = Settings(**overrides)
    logging.config.dictConfig(logs.configure(settings.log_level))
    commands_by_name = {
        "serve": _serve,
        "migrate": _migrate,
        "evaluate": _evaluate,
        "docs": _docs,
        "check-fhir": _check_fhir,
    }
    return commands_by_name[args.command](settings, args)


if __name__ == "__main__":
    raise SystemExit(main())
