"""Logs: one JSON line per hook call with what operations need, and never patient data or a token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import respx
from fastapi.testclient import TestClient

from cds_service import engine as engine_module
from cds_service.app import create_app
from cds_service.logs import JsonFormatter
from cds_service.settings import Settings
from tests.api.test_invocation import mock_fhir_server
from tests.support import NOW, hook_request, patient_resources

#: Patient data in the fixtures and requests below: none of it may reach a log line.
PHI = [
    "als-riluzole-lft-overdue",  # the patient id
    "Hartley",
    "Margaret",
    "1961-05-14",
    "E1001",  # MRN
    "12 Example Road",
    "LS1 4AP",
    "opaque-test-access-token",
    "opaque-epic-style-token",
    "Amyotrophic lateral sclerosis",
    "riluzole 50 MG Oral Tablet",
    "SECRET-COMMENT-Margaret-Hartley",
]


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Every logger the service or its libraries write to, formatted as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    # The CLI's logging configuration (left behind by tests that run `main`) sends these loggers to
    # their own handlers: route them to the root for this test, as a fresh process would.
    for name in ("cds_service", "uvicorn", "uvicorn.error", "httpx", "httpcore"):
        named = logging.getLogger(name)
        monkeypatch.setattr(named, "handlers", [])
        monkeypatch.setattr(named, "propagate", True)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    monkeypatch.setenv("ALS_CDS_AUTH_REQUIRED", "false")
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def client(tmp_path: Path, log_stream: io.StringIO) -> Iterator[TestClient]:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'db'}", fhir_budget_seconds=2)
    with TestClient(create_app(settings, clock=lambda: NOW), raise_server_exceptions=False) as test_client:
        yield test_client


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_structured_line_per_hook_call_with_what_operations_need(
    client: TestClient, log_stream: io.StringIO
) -> None:
    client.post("/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue"))
    [call] = [line for line in lines(log_stream) if line.get("event") == "hook call"]
    assert call["service"] == "als-patient-view"
    assert call["hook"] == "patient-view"
    assert call["hook_instance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert call["status"] == 200
    assert call["cards"] == 2 and "riluzole-lft-due" in call["rule_ids"]  # the warning and the care review
    assert isinstance(call["duration_ms"], float)
    assert call["level"] == "info" and call["time"].endswith("+00:00")


def test_a_request_full_of_patient_data_leaves_none_in_the_logs(
    client: TestClient, log_stream: io.StringIO
) -> None:
    epic = hook_request("patient-view-epic-style")
    epic["extension"]["free-text"] = "SECRET-COMMENT-Margaret-Hartley"
    client.post("/cds-services/als-patient-view", json=epic)
    with respx.mock(assert_all_called=False) as router:
        mock_fhir_server(router, patient_resources("als-riluzole-lft-overdue"))
        client.post(
            "/cds-services/als-patient-view", json=hook_request("patient-view-fetch-from-fhir-server")
        )
    broken = hook_request("patient-view-als-riluzole-lft-overdue")
    broken["context"]["patientId"] = ["Margaret Hartley", "1961-05-14"]  # a 400 that could echo it
    client.post("/cds-services/als-patient-view", json=broken)
    client.post(
        "/cds-services/als-patient-view/feedback",
        json={
            "feedback": [
                {
                    "card": "x",
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-22T12:00:00Z",
                    "overrideReason": {"userComment": "SECRET-COMMENT-Margaret-Hartley"},
                }
            ]
        },
    )
    text = log_stream.getvalue()
    assert text.count('"event": "hook call"') == 3
    for secret in PHI:
        assert secret not in text, secret


def test_an_unexpected_error_logs_its_type_not_its_message(
    client: TestClient, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(**_: object) -> None:
        raise ValueError("Margaret Hartley, born 1961-05-14")

    monkeypatch.setattr(engine_module, "build_record", explode)
    response = client.post(
        "/cds-services/als-patient-view", json=hook_request("patient-view-als-riluzole-lft-overdue")
    )
    assert response.status_code == 500
    assert "Margaret" not in response.text
    text = log_stream.getvalue()
    assert "Margaret" not in text and "1961-05-14" not in text
    assert any(line.get("error_type") == "ValueError" for line in lines(log_stream))


# -- uvicorn's own lines, and the no-interpolation guarantee for every other line ---------------


@pytest.fixture
def uvicorn_lines(monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    """The records uvicorn's own code logs, captured as they are handed to a handler."""
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(logger, "handlers", [Capture()])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    return records


def format_line(record: logging.LogRecord) -> tuple[str, dict]:
    text = JsonFormatter().format(record)
    return text, json.loads(text)


def test_uvicorns_server_lines_are_filled_in_without_colour(uvicorn_lines: list[logging.LogRecord]) -> None:
    """The lines uvicorn itself logs when it binds and starts: readable, and no ANSI code."""
    import os

    import uvicorn
    from uvicorn.server import Server

    async def asgi_app(scope: object, receive: object, send: object) -> None:
        pass

    config = uvicorn.Config(asgi_app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    config.load()
    sock = config.bind_socket()  # logs "Uvicorn running on %s://%s:%d ..." with the bound port
    try:
        port = sock.getsockname()[1]
        Server(config)._log_started_message([sock])  # the single-process variant of the same line
    finally:
        sock.close()
    logging.getLogger("uvicorn.error").info(  # exactly as uvicorn.server.Server._serve logs it
        "Started server process [%d]",
        os.getpid(),
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )
    assert len(uvicorn_lines) == 3
    formatted = [format_line(record) for record in uvicorn_lines]
    events = [line["event"] for _, line in formatted]
    assert events == [
        f"Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)",
        f"Uvicorn running on http://127.0.0.1:{port} (Press CTRL+C to quit)",
        f"Started server process [{os.getpid()}]",
    ]
    for text, line in formatted:
        assert "color_message" not in line
        assert "\\u001b" not in text and "\x1b" not in text
        assert "%d" not in text and "%s" not in text


def test_every_other_template_keeps_its_arguments_out(uvicorn_lines: list[logging.LogRecord]) -> None:
    """Only uvicorn's server lines are filled in: not its other lines, and no other logger's."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.error("ASGI callable should return None, but returned '%s'.", "Margaret Hartley")
    uvicorn_log.info("Started server process [%d] of %s", 42, "Margaret Hartley")  # not the template
    others = [
        # uvicorn's template with arguments that do not fit it: the template, not an error.
        logging.LogRecord(
            "uvicorn.error",
            logging.INFO,
            "",
            0,
            "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
            ("Margaret", "Hartley", "x"),
            None,
        ),
        logging.LogRecord("httpx", logging.INFO, "", 0, "HTTP Request: GET %s", ("/Patient/E1001",), None),
        # A library's logger that happens to log uvicorn's template is still not filled in.
        logging.LogRecord("somelib", logging.INFO, "", 0, "Started server process [%d]", (1961,), None),
    ]
    for record in [*uvicorn_lines, *others]:
        text, line = format_line(record)
        assert line["event"] == record.msg
        assert "Margaret" not in text and "Hartley" not in text and "E1001" not in text
        assert "1961" not in text


def test_no_ansi_code_reaches_a_line_from_anywhere() -> None:
    record = logging.LogRecord("cds_service", logging.WARNING, "", 0, "\x1b[31mred\x1b[0m alert", (), None)
    record.__dict__.update(
        {
            "color_message": "\x1b[36mx\x1b[0m",
            "detail": "\x1b[1mbold\x1b[0m",
            "nested": {"k": ["\x1b]0;t\x07"]},
        }
    )
    text, line = format_line(record)
    assert "\\u001b" not in text and "\x1b" not in text and "\\u009b" not in text
    assert line["event"] == "red alert" and line["detail"] == "bold"
    assert "color_message" not in line


@pytest.mark.parametrize(
    ("text", "error_type", "withheld"),
    [
        pytest.param(
            "Traceback (most recent call last):\n"
            '  File "app.py", line 1, in lifespan\n'
            "cds_service.security.ConfigurationError: patient Margaret Hartley\n",
            "ConfigurationError",
            ("Margaret", "app.py"),
            id="Starlette's failed start-up",
        ),
        # SQLAlchemy's errors end with the statement and a link: the type is on the line before
        # them (a worker's failed start-up was logged with error_type "(Background on this error at").
        pytest.param(
            "Traceback (most recent call last):\n"
            '  File "repository.py", line 146, in _on_connect\n'
            "sqlite3.OperationalError: database is locked\n"
            "\n"
            "The above exception was the direct cause of the following exception:\n"
            "\n"
            "Traceback (most recent call last):\n"
            '  File "app.py", line 1, in lifespan\n'
            "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked\n"
            "[SQL: PRAGMA journal_mode = WAL]\n"
            "(Background on this error at: https://sqlalche.me/e/20/e3q8)\n",
            "OperationalError",
            ("PRAGMA", "locked"),
            id="SQLAlchemy's, ending in notes",
        ),
    ],
)
def test_a_traceback_handed_over_as_a_message_keeps_only_its_exception_type(
    text: str, error_type: str, withheld: tuple[str, ...]
) -> None:
    """Starlette passes a failed start-up to uvicorn as the traceback's text, which uvicorn logs."""
    record = logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, text, (), None)
    formatted, line = format_line(record)
    assert line["event"] == "traceback withheld" and line["error_type"] == error_type
    assert not [word for word in withheld if word in formatted]
