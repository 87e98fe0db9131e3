"""FastAPI's own OpenTelemetry (0.165 and later) must not export what a request carried.

Once an operator configures an OpenTelemetry provider, FastAPI records request validation
failures and unhandled exceptions as log records, with exception messages and stack traces, and
keeps the request's body and errors for log processors. This service never logs patient data
(its own lines name exception types only), so it turns that part off (`app._framework_telemetry`).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

pytest.importorskip("fastapi.telemetry", reason="FastAPI before 0.165 has no telemetry of its own")


class _RecordingLogger:
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def emit(self, *args: Any, **kwargs: Any) -> None:
        self.records.append(kwargs)

    def is_enabled(self, *args: Any, **kwargs: Any) -> bool:
        return True


class _RecordingLoggerProvider:
    """A configured provider, as an operator's OpenTelemetry SDK would install (FastAPI checks only
    that it is not OpenTelemetry's deferred placeholder)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def get_logger(self, *args: Any, **kwargs: Any) -> _RecordingLogger:
        return _RecordingLogger(self.records)


@pytest.fixture
def otel_logs(monkeypatch: pytest.MonkeyPatch) -> _RecordingLoggerProvider:
    from opentelemetry import _logs
    from opentelemetry._logs import _internal

    provider = _RecordingLoggerProvider()
    monkeypatch.setattr(_logs, "get_logger_provider", lambda: provider)
    monkeypatch.setattr(_internal, "get_logger_provider", lambda: provider)
    return provider


def test_fastapi_left_to_its_defaults_would_export_a_validation_failure(
    otel_logs: _RecordingLoggerProvider,
) -> None:
    """The control: with a provider configured, FastAPI's default records what the test below
    checks our app does not."""

    class Body(BaseModel):
        count: int

    bare = FastAPI()

    @bare.post("/echo")
    def echo(body: Body) -> dict[str, int]:
        return {"count": body.count}

    with TestClient(bare) as client:
        assert client.post("/echo", json={"count": "Jane Doe, MRN 1234"}).status_code == 422
    assert [r.get("event_name") for r in otel_logs.records] == ["fastapi.validation.failed"]


def test_the_service_exports_no_log_record_of_a_refused_request(
    otel_logs: _RecordingLoggerProvider, client: TestClient
) -> None:
    refused = client.post(
        "/cds-services/als-patient-view/feedback", json={"feedback": [{"card": "Jane Doe, MRN 1234"}]}
    )
    assert refused.status_code == 400
    assert otel_logs.records == []
