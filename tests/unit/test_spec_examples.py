"""The CDS Hooks specification's own example JSON, run through the wire models of `cds_service.hooks`.

The fixtures live in `tests/spec_examples/`; where each one comes from, and every edit made to it, is
recorded in `tests/spec_examples/PROVENANCE.md`. Files are grouped by name prefix (`request-`,
`response-`, ...). Each group has a fixed expected size, so deleting a fixture fails the suite.

Three outcomes are possible for an example:

* it validates (and, for response-side models, `to_json()` gives back exactly the published JSON);
* it breaks a rule of the 2.0 specification itself (e.g. a card without `indicator`): the strict
  models must reject it, at the expected location (`SPEC_VIOLATIONS`);
* it is valid per the specification but our model rejects it (`MODEL_PROBLEMS`): such a test is
  marked `xfail(strict=True)`, so it turns red as soon as the model is fixed and the entry can go.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from cds_service.hooks import (
    HOOK_CONTEXTS,
    Action,
    Card,
    CDSRequest,
    CDSResponse,
    DiscoveryResponse,
    FeedbackRequest,
    OverrideReason,
    Source,
)

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "spec_examples"

#: How many fixtures each prefix must have. A missing or extra file fails `test_example_inventory`.
EXPECTED_COUNTS: dict[str, int] = {
    "discovery": 2,
    "request": 3,
    "context": 4,
    "response": 4,
    "feedback": 4,
    "action": 3,
    "fragment": 2,
    "jwt": 1,
    "jwks": 1,  # the CDS Hooks sandbox key set (see PROVENANCE.md)
}

#: Published examples that break a 2.0 rule our strict models enforce: file (or (file, card index))
#: -> location of the expected validation error. See PROVENANCE.md, "Known deviations".
SPEC_VIOLATIONS: dict[str | tuple[str, int], tuple[str | int, ...]] = {
    # `indicator` is REQUIRED on a card; the autolaunchable example omits it.
    "response-autolaunchable-cds-hooks-2.0.1.json": ("cards", 0, "indicator"),
    ("response-autolaunchable-cds-hooks-2.0.1.json", 0): ("indicator",),
    # `description` is REQUIRED on an action; the systemActions example omits it.
    "response-system-actions-cds-hooks-2.0.1.json": ("systemActions", 0, "description"),
}

#: Request examples whose envelope is valid but whose `context` lacks a field the hook REQUIRES.
CONTEXT_VIOLATIONS: dict[str, tuple[str | int, ...]] = {
    # The extension illustration abbreviates the patient-view context to `userId` only.
    "request-patient-view-extension-cds-hooks-2.0.1.json": ("patientId",),
}

#: Examples that are valid per the specification but rejected by our models (reported, not fixed
#: here): file (or (file, card index)) -> the reason, shown in the xfail.
MODEL_PROBLEMS: dict[str | tuple[str, int], str] = {
    # Both problems first reported here (ServiceDescriptor refused the reserved `extension`;
    # Card.uuid was required though OPTIONAL in the spec) were fixed in cds_service/hooks.py.
}


def _files(kind: str) -> list[Path]:
    return sorted(EXAMPLES_DIR.glob(f"{kind}-*.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _model_problem_marks(key: str | tuple[str, int]) -> list[pytest.MarkDecorator]:
    if key not in MODEL_PROBLEMS:
        return []
    return [pytest.mark.xfail(strict=True, raises=ValidationError, reason=MODEL_PROBLEMS[key])]


def _params(kind: str) -> list[Any]:
    """One pytest param per fixture, marked xfail when a model problem is on record for it."""
    return [pytest.param(path, id=path.name, marks=_model_problem_marks(path.name)) for path in _files(kind)]


def _card_params() -> list[Any]:
    """One pytest param per card of every response fixture."""
    return [
        pytest.param(path, index, id=f"{path.name}[{index}]", marks=_model_problem_marks((path.name, index)))
        for path in _files("response")
        for index in range(len(_load(path)["cards"]))
    ]


def empty_paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every location in a JSON value that holds null, "", [] or {} (0 and false are values)."""
    if value is None or (isinstance(value, str | list | dict) and not value):
        return [path]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in empty_paths(item, (*path, key))]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in empty_paths(item, (*path, index))]
    return []


def _assert_clean_round_trip(
    model: type[BaseModel], published: Any, *, allowed: frozenset[tuple[str | int, ...]] = frozenset()
) -> None:
    """Validate, serialise with `to_json()`, check it is clean, lossless and stable."""
    body = model.model_validate(published).to_json()
    assert [p for p in empty_paths(body) if p not in allowed] == []
    assert body == published  # nothing the spec example says is lost or invented
    assert model.model_validate(body).to_json() == body


def _assert_rejected_at(model: type[BaseModel], data: Any, loc: tuple[str | int, ...]) -> None:
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate(data)
    assert loc in [tuple(error["loc"]) for error in excinfo.value.errors()]


# ------------------------------------------------------------------------------------------------
# Inventory


def test_example_inventory() -> None:
    for kind, expected in EXPECTED_COUNTS.items():
        assert len(_files(kind)) == expected, f"{kind}-*.json: expected {expected} fixtures"
    all_json = sorted(EXAMPLES_DIR.glob("*.json"))
    assert len(all_json) == sum(EXPECTED_COUNTS.values()), "a fixture has an unknown prefix"
    assert (EXAMPLES_DIR / "PROVENANCE.md").is_file()
    provenance = (EXAMPLES_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    for path in all_json:
        assert f"`{path.name}`" in provenance, f"{path.name} has no entry in PROVENANCE.md"


def test_deviation_tables_name_existing_fixtures() -> None:
    for key in [*SPEC_VIOLATIONS, *CONTEXT_VIOLATIONS, *MODEL_PROBLEMS]:
        name = key if isinstance(key, str) else key[0]
        assert (EXAMPLES_DIR / name).is_file(), f"stale entry for {name}"


def test_empty_paths_checker() -> None:
    sample = {"a": None, "b": "", "c": [], "d": {}, "e": [0, False, {"f": ""}], "g": {"h": "x"}}
    assert empty_paths(sample) == [("a",), ("b",), ("c",), ("d",), ("e", 2, "f")]
    assert empty_paths({"cards": []}) == [("cards",)]
    assert empty_paths({"n": 0, "t": False, "s": "x"}) == []


# ------------------------------------------------------------------------------------------------
# Requests and hook contexts


@pytest.mark.parametrize("path", _params("request"))
def test_request_examples(path: Path) -> None:
    data = _load(path)
    request = CDSRequest.model_validate(data)
    assert request.hook in HOOK_CONTEXTS
    context_model = HOOK_CONTEXTS[request.hook]
    if path.name in CONTEXT_VIOLATIONS:
        _assert_rejected_at(context_model, request.context, CONTEXT_VIOLATIONS[path.name])
    else:
        context = context_model.model_validate(request.context)
        assert context.patientId == data["context"]["patientId"]


def test_request_keeps_extension_and_hides_token() -> None:
    extension_example = EXAMPLES_DIR / "request-patient-view-extension-cds-hooks-2.0.1.json"
    extended = CDSRequest.model_validate(_load(extension_example))
    assert extended.model_extra is not None
    assert extended.model_extra["extension"]["com.example.timestamp"] == "2017-11-27T22:13:25Z"

    authorised = CDSRequest.model_validate(_load(EXAMPLES_DIR / "request-patient-view-cds-hooks-2.0.1.json"))
    assert authorised.fhirAuthorization is not None
    assert authorised.fhirAuthorization.access_token.get_secret_value() == "some-opaque-fhir-access-token"
    assert "some-opaque-fhir-access-token" not in repr(authorised)


@pytest.mark.parametrize("path", _params("context"))
def test_library_context_examples(path: Path) -> None:
    hook = next(name for name in HOOK_CONTEXTS if path.name.startswith(f"context-{name}-"))
    context = HOOK_CONTEXTS[hook].model_validate(_load(path)["context"])
    assert context.patientId == "1288992"


# ------------------------------------------------------------------------------------------------
# Feedback


@pytest.mark.parametrize("path", _params("feedback"))
def test_feedback_examples(path: Path) -> None:
    data = _load(path)
    feedback = FeedbackRequest.model_validate(data)
    assert [item.card for item in feedback.feedback] == [item["card"] for item in data["feedback"]]
    for item in feedback.feedback:
        if item.outcome == "accepted":
            assert item.acceptedSuggestions
        assert item.outcomeTimestamp.utcoffset() is not None


# ------------------------------------------------------------------------------------------------
# Discovery and responses


@pytest.mark.parametrize("path", _params("discovery"))
def test_discovery_examples(path: Path) -> None:
    _assert_clean_round_trip(DiscoveryResponse, _load(path))


@pytest.mark.parametrize("path", _params("response"))
def test_response_examples(path: Path) -> None:
    data = _load(path)
    if path.name in SPEC_VIOLATIONS:
        _assert_rejected_at(CDSResponse, data, SPEC_VIOLATIONS[path.name])
    else:
        # An empty `cards` array is the one empty value the spec asks for ("no guidance").
        _assert_clean_round_trip(CDSResponse, data, allowed=frozenset({("cards",)}))


@pytest.mark.parametrize(("path", "index"), _card_params())
def test_response_cards(path: Path, index: int) -> None:
    card = _load(path)["cards"][index]
    key = (path.name, index)
    if key in SPEC_VIOLATIONS:
        _assert_rejected_at(Card, card, SPEC_VIOLATIONS[key])
    else:
        _assert_clean_round_trip(Card, card)


@pytest.mark.parametrize("path", _params("action"))
def test_action_examples(path: Path) -> None:
    _assert_clean_round_trip(Action, _load(path))


@pytest.mark.parametrize("path", _params("fragment"))
def test_fragment_examples(path: Path) -> None:
    data = _load(path)
    if "source" in data:
        _assert_clean_round_trip(Source, data["source"])
    else:
        for reason in data["overrideReasons"]:
            _assert_clean_round_trip(OverrideReason, reason)


# ------------------------------------------------------------------------------------------------
# Authentication example (kept for the JWT work; checked here only for internal consistency)


def _b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_jwt_example_is_consistent() -> None:
    example = _load(_files("jwt")[0])
    header, payload, signature = example["compact"].split(".")
    assert _b64url_json(header) == example["header"]
    assert _b64url_json(payload) == example["payload"]
    assert len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))) == 96  # ES384: r || s
    assert example["header"]["alg"] == "ES384"
    (public_key,) = [key for key in example["jwks"]["keys"] if key["kid"] == example["header"]["kid"]]
    private_key = example["private_jwk"]
    assert {k: v for k, v in private_key.items() if k != "d"} == public_key


def test_flat_ballot_form_of_override_reason_is_read_as_a_reason() -> None:
    """Older sandboxes (PR #135) sent overrideReason {code, system} without the `reason` wrapper."""
    body = {
        "feedback": [
            {
                "card": "abc",
                "outcome": "overridden",
                "overrideReason": {"code": "not-relevant", "system": "urn:x"},
                "outcomeTimestamp": "2026-11-22T10:00:00Z",
            }
        ]
    }
    item = FeedbackRequest.model_validate(body).feedback[0]
    assert item.reasons()[0].reason is not None
    assert item.reasons()[0].reason.code == "not-relevant"
