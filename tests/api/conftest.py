"""An app per test: temporary SQLite store, the clock fixed at tests.support.NOW.

These apps run with authentication off (`auth_required=False`), so that the tests of hooks, cards
and feedback need no JWT; test_auth.py covers authentication.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.support import NOW


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'als-cds.db'}",
        fhir_budget_seconds=2.0,
        auth_required=False,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=lambda: NOW)) as test_client:
        yield test_client


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on each real database the service supports: the embedded SQLite and PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'als-cds.db'}"
    else:
        url = request.getfixturevalue("postgres_db_url")
    settings = Settings(_env_file=None, database_url=url, auth_required=False)
    with TestClient(create_app(settings, clock=lambda: NOW)) as test_client:
        yield test_client
