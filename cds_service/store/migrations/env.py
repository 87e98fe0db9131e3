"""Alembic environment of the feedback store.

There is no alembic.ini: `cds_service.store.alembic_config()` builds the configuration in code, and
`Store.migrate()` hands its own open connection over in `config.attributes["connection"]`, so the
migration runs with exactly the engine settings the service uses (SQLite pragmas, psycopg 3) and
also works on an in-memory SQLite database. Given only `sqlalchemy.url` (`alembic_config(url)`
used with `alembic.command` directly), it opens an engine of its own, configured the same way.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cds_service.store.repository import create_store_engine
from cds_service.store.tables import metadata

config = context.config


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode (copy and move) makes later revisions portable.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`) instead of running it."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the caller's connection when given one, else through a fresh engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url given to the Alembic configuration")
    engine = create_store_engine(url)
    try:
        with engine.connect() as own_connection:
            _run_on(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
