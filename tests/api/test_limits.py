"""Request limits: oversized bodies get 413 and non-JSON bodies 415, before anything is parsed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cds_service.app import create_app
from cds_service.settings import Settings
from tests.support import NOW, hook_request

LIMIT = 200_000


@pytest.fixture
def small_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None, database_url=f"sqlite:///{tmp_path / 'db'}", max_body_bytes=LIMIT, auth_required=False
    )
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        yield client


def _issue(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_a_declared_oversized_body_is_413(small_client: TestClient) -> None:
    body = json.dumps({"hook": "patient-view", "padding": "x" * (LIMIT + 1)})
    response = small_client.post(
        "/cds-services/als-patient-view", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert _issue(response)["code"] == "too-long"


def test_a_streamed_oversized_body_without_length_is_cut_off_with_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(LIMIT // 10_000 + 5):
            yield b" " * 10_000

    response = small_client.post(
        "/cds-services/als-patient-view", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/xml"]
)
def test_a_body_that_is_not_json_is_415(small_client: TestClient, content_type: str) -> None:
    response = small_client.post(
        "/cds-services/als-patient-view", content="hook=patient-view", headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert "JSON" in _issue(response)["diagnostics"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/fhir+json", None]
)
def test_json_content_types_and_a_missing_header_are_accepted(
    small_client: TestClient, content_type: str | None
) -> None:
    body = json.dumps(hook_request("patient-view-no-als-on-riluzole"))
    headers = {"Content-Type": content_type} if content_type else {}
    response = small_client.post("/cds-services/als-patient-view", content=body, headers=headers)
    assert response.status_code == 200, response.text


def test_limit_errors_carry_cors_headers_so_a_browser_can_read_them(small_client: TestClient) -> None:
    response = small_client.post(
        "/cds-services/als-patient-view",
        content="x",
        headers={"Content-Type": "text/plain", "Origin": "https://sandbox.cds-hooks.org"},
    )
    assert response.status_code == 415
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"


def test_a_feedback_body_over_the_limit_is_413_and_stores_nothing(small_client: TestClient) -> None:
    item = {
        "card": "c",
        "outcome": "overridden",
        "overrideReason": {"userComment": "x" * LIMIT},
        "outcomeTimestamp": "2026-11-22T12:00:00Z",
    }
    response = small_client.post("/cds-services/als-patient-view/feedback", json={"feedback": [item]})
    assert response.status_code == 413
    assert small_client.app.state.als.store.feedback_rows() == []  # type: ignore[attr-defined]


def test_deeply_nested_json_is_a_400_not_a_crash(small_client: TestClient) -> None:
    depth = 50_000
    body = (
        '{"hook": "patient-view", "hookInstance": "x", "context": '
        + '{"a": ' * depth
        + "1"
        + "}" * depth
        + "}"
    )
    response = small_client.post(
        "/cds-services/als-patient-view", content=body[:LIMIT], headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


# ------------------------------------------------------------------------------------------------
# Load shedding (the middleware alone: calls held in flight on purpose)


async def test_hook_calls_beyond_the_in_flight_limit_are_answered_503_at_once_with_retry_after() -> None:
    import asyncio

    import httpx

    from cds_service.limits import LoadShedding

    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    shedding = LoadShedding(slow_app, max_in_flight=3, retry_after_seconds=2)
    transport = httpx.ASGITransport(app=shedding)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        held = [
            asyncio.ensure_future(client.post("/cds-services/als-patient-view", json={})) for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        shed = await asyncio.gather(
            *(client.post("/cds-services/als-patient-view", json={}) for _ in range(4))
        )
        feedback = asyncio.ensure_future(client.post("/cds-services/als-patient-view/feedback", json={}))
        discovery = asyncio.ensure_future(client.get("/cds-services"))
        await asyncio.sleep(0.05)
        assert not feedback.done() and not discovery.done()  # neither counted nor shed: let through
        release.set()
        answered = await asyncio.gather(*held, feedback, discovery)

    assert [r.status_code for r in answered] == [200] * 5
    for response in shed:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.headers["content-type"] == "application/json"
        issue = response.json()["issue"][0]
        assert issue["code"] == "throttled" and "capacity" in issue["diagnostics"]
    assert shedding.shed == 4 and shedding.in_flight == 0


def test_the_served_app_freezes_its_start_up_heap_and_collects_garbage_less_often(tmp_path: Path) -> None:
    """Only the served app (freeze_gc): a hook call leaves ~700 objects alive for a while, so at
    Python's default threshold it paid for a collection nearly every call (app.GC_THRESHOLD)."""
    import gc

    from cds_service.app import GC_THRESHOLD

    before = gc.get_threshold()
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/g.db", auth_required=False)  # type: ignore[call-arg]
    try:
        with TestClient(create_app(settings)):
            assert gc.get_threshold() == before  # an app of the tests: left alone
        with TestClient(create_app(settings, freeze_gc=True)):
            assert gc.get_threshold()[0] == GC_THRESHOLD
            assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_a_thousand_results_are_read_without_a_garbage_collection(tmp_path: Path) -> None:
    """1,000 Observations are decoded whole (wire.WHOLE_BODY_BYTES): tens of thousands of
    containers alive until the call ends. Under app.GC_THRESHOLD they are freed before a collection
    comes; at 10,000 each such call paid four, each walking all of them again."""
    import copy
    import gc

    from cds_service import wire
    from cds_service.bundles import request_from_bundle
    from cds_service.services import build_services
    from tests.support import patient_bundle

    bundle = copy.deepcopy(patient_bundle("als-riluzole-lft-overdue"))
    alt = next(e for e in bundle["entry"] if e["resource"].get("id") == "alt-5")
    bundle["entry"] += [
        {**copy.deepcopy(alt), "resource": {**copy.deepcopy(alt["resource"]), "id": f"alt-x{i}"}}
        for i in range(1000)
    ]
    service = next(s for s in build_services().values() if s.hook == "patient-view")
    keys = list(service.prefetch(Settings(_env_file=None), NOW.date()))
    body = json.dumps(request_from_bundle(bundle, "patient-view", keys)).encode()
    assert wire.ALWAYS_WHOLE_BYTES < len(body) <= wire.WHOLE_BODY_BYTES

    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    before = gc.get_threshold()
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/g.db", auth_required=False)  # type: ignore[call-arg]
    try:
        with TestClient(create_app(settings, clock=lambda: NOW, freeze_gc=True)) as client:
            url = f"/cds-services/{service.id}"
            headers = {"content-type": "application/json"}
            assert client.post(url, content=body, headers=headers).status_code == 200  # warm
            gc.collect()
            gc.callbacks.append(count)
            try:
                response = client.post(url, content=body, headers=headers)
            finally:
                gc.callbacks.remove(count)
            assert response.status_code == 200
            assert response.json()["cards"]
            assert collections == []
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()  # as the test above: the tests' own heap must stay collectable


def test_a_large_body_refused_with_400_gives_back_its_room_to_decode(small_client: TestClient) -> None:
    """wire.room_to_decode: the room a call takes comes back however it ends."""
    from cds_service import wire

    request = hook_request("patient-view-als-riluzole-lft-overdue")
    request["hook"] = 42  # a client mistake, found after the body was decoded
    request["prefetch"] = {
        "padding": {
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "Basic", "id": "x" * 100}}] * 1000,
        }
    }
    body = json.dumps(request).encode()
    assert wire.ALWAYS_WHOLE_BYTES < len(body) <= wire.WHOLE_BODY_BYTES
    response = small_client.post(
        "/cds-services/als-patient-view", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert wire._WHOLE.held == 0


# ------------------------------------------------------------------------------------------------
# Where a call runs: on the event loop, or handed to worker threads


def _chart_with_results(count: int) -> bytes:
    import copy

    from cds_service.bundles import request_from_bundle
    from cds_service.services import build_services
    from tests.support import patient_bundle

    bundle = copy.deepcopy(patient_bundle("als-riluzole-lft-overdue"))
    alt = next(e for e in bundle["entry"] if e["resource"].get("id") == "alt-5")
    bundle["entry"] += [
        {**copy.deepcopy(alt), "resource": {**copy.deepcopy(alt["resource"]), "id": f"alt-x{i}"}}
        for i in range(count)
    ]
    service = next(s for s in build_services().values() if s.hook == "patient-view")
    keys = list(service.prefetch(Settings(_env_file=None), NOW.date()))
    return json.dumps(request_from_bundle(bundle, "patient-view", keys)).encode()


@pytest.mark.parametrize(
    ("results", "handed_off"),
    [(100, []), (150, []), (300, ["read_request", "decide"]), (900, ["read_request", "decide"])],
)
def test_a_call_is_handed_to_worker_threads_only_when_large(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, results: int, handed_off: list[str]
) -> None:
    """wire.HANDOFF_BODY_BYTES, engine.INLINE_READ_RESOURCES: a chart of a few hundred results is
    decoded, read and judged on the event loop (handing its data from thread to thread cost more
    than it spared the loop); a larger one has both its body and its record read in a thread, also
    when its resources alone would not have been handed off (300 results of 1.9 kB: 570 kB)."""
    import asyncio

    from cds_service import engine, wire

    body = _chart_with_results(results)
    large = len(body) > wire.HANDOFF_BODY_BYTES
    assert large is bool(handed_off)
    assert results + 20 < engine.INLINE_READ_RESOURCES or large
    seen: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(getattr(func, "__name__", type(func).__name__))
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        response = client.post(
            "/cds-services/als-patient-view", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["cards"]
    assert seen == handed_off
