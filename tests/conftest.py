"""Shared pytest fixtures.

PostgreSQL: `postgres_url` (session) is a database on a server for the whole test run;
`postgres_db_url` (per test) is a view of it through a fresh, empty schema, so tests never see each
other's tables or rows.

The server is either the one named by ALS_CDS_TEST_POSTGRES_URL (the role needs CREATEDB), or a
throwaway one this module starts from the local PostgreSQL binaries (Debian's
/usr/lib/postgresql/<version>/bin, or initdb and pg_ctl on PATH): a temporary data directory,
trust authentication, listening on 127.0.0.1 only and on a unix socket inside that directory,
fsync off. Missing binaries skip the PostgreSQL tests, except on CI (CI=true) or with
ALS_CDS_REQUIRE_POSTGRES=1, where they fail: CI must never pass by silently skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from glob import glob
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import pytest
import respx.mocks
from psycopg import sql
from sqlalchemy import make_url

from cds_service.fhir_http import FhirHttp


class _FhirHttpMocker(respx.mocks.HTTPCoreMocker):
    """respx's default mock (httpcore's pools), and also `FhirHttp.fetch`: the service's FHIR
    requests go through aiohttp (cds_service/fhir_http.py), which httpcore's patch never sees, and
    a test's FHIR mock must answer them as it answers any httpx client. Patched there, not at
    httpx's client (respx's "httpx" mocker), which would catch the tests' own calls to the app."""

    name = "httpcore-and-fhir-http"
    targets: ClassVar[list[str]] = [*respx.mocks.HTTPCoreMocker.targets, "cds_service.fhir_http.FhirHttp"]
    target_methods: ClassVar[list[str]] = [*respx.mocks.HTTPCoreMocker.target_methods, "fetch"]

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        if "request" in kwargs:
            return super().to_httpx_request(**kwargs)
        return httpx.Request("GET", kwargs["url"], headers=kwargs["headers"])

    @classmethod
    async def prepare_async_request(cls, httpx_request: httpx.Request, **kwargs: Any) -> Any:
        if "request" in kwargs:
            return await super().prepare_async_request(httpx_request, **kwargs)
        return httpx_request, kwargs

    @classmethod
    def from_sync_httpx_response(cls, httpx_response: httpx.Response, target: Any, **kwargs: Any) -> Any:
        if isinstance(target, FhirHttp):
            return httpx_response
        return super().from_sync_httpx_response(httpx_response, target, **kwargs)


respx.mocks.DEFAULT_MOCKER = _FhirHttpMocker.name

_PG_SUPERUSER = "postgres"  # database role created by initdb; also the OS user when run as root
_PG_TEST_DATABASE = "als_cds_test"
_DIR_PREFIX = "als-cds-pg-"
_OWNER_FILE = "owner.pid"


def _postgres_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("ALS_CDS_REQUIRE_POSTGRES") == "1"


def _find_postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: newest Debian version first, then PATH."""

    def version(bindir: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(bindir).parent.name))

    candidates = sorted(glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        bindir = Path(candidate)
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _run_server_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL server program; as the `postgres` OS user when we are root."""
    command = list(args)
    if os.geteuid() == 0:
        command = ["runuser", "-u", _PG_SUPERUSER, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _reap_abandoned_servers(bindir: Path, parent: Path) -> None:
    """Stop and delete test servers whose pytest process died without tearing them down.

    A session killed by a signal (a CI timeout, Ctrl-C twice) never reaches the fixture's
    finaliser, and its server would run on forever. Only directories carrying an owner file whose
    process is gone are touched, so servers of concurrent sessions are left alone.
    """
    for root in parent.glob(f"{_DIR_PREFIX}*"):
        try:
            owner = int((root / _OWNER_FILE).read_text(encoding="ascii"))
        except (OSError, ValueError):
            continue
        if _process_alive(owner):
            continue
        if (root / "data" / "postmaster.pid").exists():
            _run_server_command(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _LocalPostgres:
    """A throwaway PostgreSQL cluster in a temporary directory.

    initdb refuses to run as root, so when the tests run as root every server command runs as the
    `postgres` OS user (runuser) and the directory is handed to that user.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # The unix socket path must stay under ~100 bytes; a long TMPDIR (macOS) would break it.
        parent = tempfile.gettempdir() if len(tempfile.gettempdir()) < 60 else "/tmp"
        _reap_abandoned_servers(bindir, Path(parent))
        self.root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        # Who owns this server: a later session reaps it if this one is killed before teardown.
        (self.root / _OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        if os.geteuid() == 0:
            shutil.chown(self.root, user=_PG_SUPERUSER, group=None)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run_server_command(*args)

    def _check(self, completed: subprocess.CompletedProcess[str], what: str) -> None:
        if completed.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{what} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}\n{log}"
            )

    def start(self) -> None:
        self._check(
            self._run(
                str(self.bindir / "initdb"),
                "-D", str(self.data),
                "-U", _PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            "initdb",
        )  # fmt: skip
        # Settings go into the config file rather than onto a command line, so no shell quoting.
        # The port is picked just before starting; if another process takes it meanwhile, retry.
        for _attempt in range(5):
            self.port = _free_loopback_port()
            settings = (
                "\n# als-cds test server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\n"
            )
            with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write(settings)
            pg_ctl = str(self.bindir / "pg_ctl")
            started = self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
            if started.returncode == 0:
                return
        self._check(started, "pg_ctl start")

    def stop(self) -> None:
        try:
            if self.port:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{_PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"


def _libpq_url(sqlalchemy_url: str, database: str | None = None) -> str:
    """A psycopg (libpq) connection URL for a SQLAlchemy URL, optionally on another database."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def _create_database(server_url: str, name: str) -> None:
    with psycopg.connect(_libpq_url(server_url, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL (`postgresql+psycopg://...`) of a PostgreSQL database for this test session."""
    external = os.environ.get("ALS_CDS_TEST_POSTGRES_URL")
    if external:
        yield external
        return

    bindir = _find_postgres_bindir()
    if bindir is None:
        message = (
            "PostgreSQL binaries (initdb, pg_ctl, postgres) not found in /usr/lib/postgresql/*/bin "
            "or on PATH; install postgresql (apt-get install postgresql) or set "
            "ALS_CDS_TEST_POSTGRES_URL"
        )
        if _postgres_required():
            pytest.fail(f"{message} (required because CI=true or ALS_CDS_REQUIRE_POSTGRES=1)")
        pytest.skip(message)

    server = _LocalPostgres(bindir)
    try:
        server.start()
        url = server.url(_PG_TEST_DATABASE)
        _create_database(url, _PG_TEST_DATABASE)
        yield url
    finally:
        server.stop()


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """The session database seen through a new, empty schema of its own, dropped afterwards.

    The URL sets `search_path` to that schema (libpq `options`), so for the code under test it is
    an empty database: tables, indexes and `alembic_version` all land in the schema. A schema is
    created in about a millisecond where CREATE DATABASE takes a third of a second, never touches
    what else is in the database (safe on an ALS_CDS_TEST_POSTGRES_URL server) and lets tests run
    in parallel against one server.
    """
    schema = f"als_cds_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_url(postgres_url)
    options = " ".join(filter(None, [url.query.get("options"), f"-csearch_path={schema}"]))
    try:
        yield url.update_query_dict({"options": options}).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq_url(postgres_url), autocommit=True) as admin:
            # A connection a failed test left inside a transaction could block the drop forever.
            admin.execute("SET lock_timeout = '10s'")
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
