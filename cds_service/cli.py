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
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in vars(args).items() if k in ("host", "port") and v is not None}
    settings = Settings(**overrides)
    logging.config.dictConfig(logs.configure(settings.log_level))
    if args.command == "serve":
        return _serve(settings, args)
    return _migrate(settings, args)


if __name__ == "__main__":
    raise SystemExit(main())
