"""Card files: complete, cited, and rendered into spec-valid cards."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cds_service import cards
from cds_service.hooks import Card, CDSResponse
from cds_service.record import UNREAD_PREFIX
from cds_service.rules import CATALOGUE, RuleConfig, evaluate
from cds_service.rules.base import Finding
from cds_service.settings import Settings
from tests.support import patient_resources, record_from

CARDS_DIR = Settings().cards_dir
CATALOG = cards.load_catalogue(CARDS_DIR)


def no_empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of null, empty string, empty list or empty object anywhere in the JSON."""
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in no_empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in no_empty_values(v, f"{path}[{i}]")]
    return []


def test_every_rule_has_a_card_file_and_every_card_file_a_rule() -> None:
    assert {r.id for r in CATALOGUE} == set(CATALOG.definitions)


@pytest.mark.parametrize("rule", CATALOGUE, ids=lambda r: r.id)
def test_every_fact_a_rule_relies_on_cites_a_source_in_its_card(rule: Any) -> None:
    definition = CATALOG[rule.id]
    assert rule.facts, "a rule must record the facts it relies on"
    for fact in rule.facts:
        assert definition.citation(fact.citation) is not None, f"{rule.id}: {fact.name} cites {fact.citation}"


def test_riluzole_card_renders_from_the_fixture_patient() -> None:
    record = record_from(patient_resources("als-riluzole-lft-overdue"), patient_id="als-riluzole-lft-overdue")
    [finding] = [f for f in evaluate(CATALOGUE, record, RuleConfig()) if f.rule_id == "riluzole-lft-due"]
    assert CATALOG[finding.rule_id].placeholders() <= set(finding.fields)
    card = cards.render(finding, CATALOG[finding.rule_id])
    body = card.to_json()
    assert no_empty_values(body) == []
    Card.model_validate(body)
    assert body["uuid"] and all(s["uuid"] for s in body["suggestions"])
    assert body["selectionBehavior"] == "any"
    assert body["source"]["topic"] == {
        "system": cards.RULE_ID_SYSTEM,
        "code": "riluzole-lft-due",
        "display": "Riluzole: ALT monitoring due",
        "extension": {cards.RULE_VERSION_EXTENSION: CATALOG["riluzole-lft-due"].version},
    }
    assert "38 U/L on 2025-01-10" in body["detail"]  # the data that fired it
    assert "Sources" not in body["detail"] and "https://" not in body["detail"]  # sources: in links
    assert body["source"]["url"] and body["links"]
    action = body["suggestions"][0]["actions"][0]
    assert action["resource"]["subject"] == {"reference": "Patient/als-riluzole-lft-overdue"}
    assert action["resource"]["status"] == "draft"


def test_two_renders_get_different_uuids() -> None:
    finding = Finding(
        "riluzole-lft-due",
        {"window_days": "31", "phase": "x", "last_alt": "y"},
        (),
        bindings={"patient_reference": "Patient/1"},
    )
    a, b = (cards.render(finding, CATALOG["riluzole-lft-due"]) for _ in range(2))
    assert a.uuid != b.uuid
    assert a.suggestions and b.suggestions and a.suggestions[0].uuid != b.suggestions[0].uuid


def test_longest_summary_stays_under_140_characters() -> None:
    worst = {
        "window_days": "730",
        "phase": "start date not recorded",
        "last_alt": "none in the data received",
    }
    finding = Finding("riluzole-lft-due", worst, (), bindings={"patient_reference": "Patient/x"})
    assert len(cards.render(finding, CATALOG["riluzole-lft-due"]).summary) < 140


def test_cards_are_sorted_critical_then_warning_then_info() -> None:
    fields = {"window_days": "31", "phase": "x", "last_alt": "y"}
    bind = {"patient_reference": "Patient/1"}
    findings = [
        Finding("riluzole-lft-due", fields, (), indicator="info", bindings=bind),
        Finding("riluzole-lft-due", fields, (), indicator="critical", bindings=bind),
        Finding("riluzole-lft-due", fields, (), indicator="warning", bindings=bind),
    ]
    assert [c.indicator for c in cards.render_all(findings, CATALOG)] == ["critical", "warning", "info"]


def test_a_template_field_the_rule_does_not_provide_is_an_error_not_a_blank() -> None:
    finding = Finding(
        "riluzole-lft-due", {"window_days": "31"}, (), bindings={"patient_reference": "Patient/1"}
    )
    with pytest.raises(cards.CardFileError, match="which the rule does not provide"):
        cards.render(finding, CATALOG["riluzole-lft-due"])


def _write_card(tmp_path: Path, name: str, **changes: Any) -> Path:
    raw = tomllib.loads((CARDS_DIR / "riluzole-lft-due.toml").read_text())
    raw.update(changes)
    lines = []
    import json

    # A tiny TOML writer is enough here: the tests only need valid variations of the real file.
    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, (dict, list))}
        for k, v in scalars.items():
            lines.append(f"{k} = {json.dumps(v if not hasattr(v, 'isoformat') else v.isoformat())}")
        for k, v in table.items():
            if isinstance(v, dict):
                lines.append(f"[{prefix}{k}]")
                emit(f"{prefix}{k}.", v)
            elif isinstance(v, list):
                for item in v:
                    lines.append(f"[[{prefix}{k}]]")
                    emit(f"{prefix}{k}.", item)

    emit("", raw)
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def test_card_file_must_be_named_for_its_rule(tmp_path: Path) -> None:
    _write_card(tmp_path, "other-name")
    with pytest.raises(cards.CardFileError, match="does not match the file name"):
        cards.load_catalogue(tmp_path)


def test_card_file_without_citations_is_refused(tmp_path: Path) -> None:
    _write_card(tmp_path, "riluzole-lft-due", citations=[])
    with pytest.raises(cards.CardFileError, match="citations"):
        cards.load_catalogue(tmp_path)


def test_card_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    _write_card(tmp_path, "riluzole-lft-due", summry="typo")
    with pytest.raises(cards.CardFileError, match="summry"):
        cards.load_catalogue(tmp_path)


def test_profile_notes_follow_the_guideline_profile() -> None:
    """Where a drug's licence differs between the UK and the US, the card says so for the profile."""
    definition = CATALOG["edaravone-regimen"]
    bindings = {
        "patient_reference": "Patient/1",
        "draft_reference": "MedicationRequest/1",
        "updated_order": {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/1"},
        },
    }
    finding = Finding(
        "edaravone-regimen", dict.fromkeys(definition.placeholders(), "x"), (), bindings=bindings
    )
    nice = cards.render(finding, definition, "nice").detail or ""
    us = cards.render(finding, definition, "us").detail or ""
    assert "no marketing authorisation" in nice
    assert "no marketing authorisation" not in us
    tofersen = CATALOG["tofersen-sod1"]
    finding = Finding("tofersen-sod1", dict.fromkeys(tofersen.placeholders(), "x"), (), bindings=bindings)
    assert "MHRA" in (cards.render(finding, tofersen, "nice").detail or "")
    assert "accelerated approval" in (cards.render(finding, tofersen, "us").detail or "")


def test_every_profile_note_is_backed_by_a_citation_in_its_card() -> None:
    for definition in CATALOG.definitions.values():
        if definition.profile_notes:
            assert len(definition.citations) >= 2, definition.rule_id


def _with_references(value: Any) -> Any:
    """A card file's resource with every `$name` binding a plain reference (as rules bind them)."""
    if isinstance(value, str) and value.startswith("$"):
        return "Patient/example"
    if isinstance(value, dict):
        return {k: _with_references(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_references(v) for v in value]
    return value


@pytest.mark.parametrize("rule_id", sorted(CATALOG.definitions))
def test_every_resource_a_card_file_suggests_is_valid_r4(rule_id: str) -> None:
    """Strict in what we send: the card files' own resources, checked here once with fhir.resources
    (resources built from the sender's orders are checked when each card is rendered)."""
    from fhir.resources.R4B import get_fhir_model_class

    definition = CATALOG[rule_id]
    suggestion_sets = [definition.suggestions] + [
        v.suggestions for v in definition.variants.values() if v.suggestions is not None
    ]
    for suggestions in suggestion_sets:
        for suggestion in suggestions:
            for action in suggestion.actions:
                if isinstance(action.resource, dict) and "resourceType" in action.resource:
                    resource = _with_references(action.resource)
                    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_a_summary_pushed_over_140_characters_by_its_fields_is_cut_at_a_word_boundary() -> None:
    from cds_service.rules.evidence import clip

    long_name = "riluzole 5 MG/ML Oral Suspension [Teglutik] " * 5
    text = f"Riluzole order ({long_name}): hepatic disease recorded, remove the order"
    cut = clip(text, 139)
    assert len(cut) <= 139 and cut.endswith("…")
    assert text.startswith(cut[:-1])
    assert cut[:-1].split()[-1] in text.split()  # the last word is whole


def test_clip_leaves_short_text_alone_and_collapses_whitespace() -> None:
    from cds_service.rules.evidence import clip

    assert clip("ALT  raised\n", 40) == "ALT raised"


def _lft_due(*evidence: str) -> str:
    fields = {"window_days": "31", "phase": "x", "last_alt": "y"}
    finding = Finding("riluzole-lft-due", fields, evidence, bindings={"patient_reference": "Patient/1"})
    return cards.render(finding, CATALOG["riluzole-lft-due"]).detail or ""


def test_a_card_shows_at_most_three_lines_of_evidence_and_says_how_many_there_were() -> None:
    detail = _lft_due("one.", "two.", "three.", "four.", "five.")
    assert "**Data behind this card:** (3 of 5 shown)" in detail
    assert "- three." in detail and "four." not in detail and "five." not in detail


def test_evidence_about_data_that_could_not_be_read_is_never_cut() -> None:
    unread = f"{UNREAD_PREFIX} 2 ALT result(s) had a value that could not be read (not counted as normal)."
    diagnosis = f"{UNREAD_PREFIX} the MND diagnosis record's clinical status."
    detail = _lft_due("one.", "two.", "three.", "four.", unread, diagnosis)
    assert f"- one.\n- {unread}\n- {diagnosis}" in detail
    assert "two." not in detail and "(3 of 6 shown)" in detail


def test_three_lines_of_evidence_are_shown_whole_with_no_count() -> None:
    detail = _lft_due("one.", "two.", "three.")
    assert "**Data behind this card:**\n- one.\n- two.\n- three." in detail and "shown)" not in detail


def _every_action_resource() -> list[tuple[str, Any]]:
    found = []
    for rule_id, definition in sorted(CATALOG.definitions.items()):
        suggestion_sets = [definition.suggestions] + [
            v.suggestions for v in definition.variants.values() if v.suggestions is not None
        ]
        for suggestions in suggestion_sets:
            for suggestion in suggestions:
                found += [(rule_id, a.resource) for a in suggestion.actions if a.resource]
                found += [(rule_id, a.resourceId) for a in suggestion.actions if a.resourceId]
    return found


def _walked(value: Any, bindings: dict[str, Any]) -> Any:
    """What binding means, walked in Python: each "$name" replaced by a copy of the finding's value."""
    import copy

    if isinstance(value, str) and value.startswith("$"):
        return copy.deepcopy(bindings[value[1:]])
    if isinstance(value, dict):
        return {k: _walked(v, bindings) for k, v in value.items()}
    if isinstance(value, list):
        return [_walked(v, bindings) for v in value]
    return value


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str) and value.startswith("$"):
        return {value[1:]}
    if isinstance(value, dict):
        return set().union(*map(_placeholders, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_placeholders, value)) if value else set()
    return set()


@pytest.mark.parametrize(("rule_id", "resource"), _every_action_resource())
def test_a_compiled_suggestion_resource_binds_exactly_as_the_template_walk_does(
    rule_id: str, resource: Any
) -> None:
    """Rendering binds a card file's resource from its compiled form (`_ResourceTemplate`, for
    speed); it must give what walking the template gives, share nothing with the finding's values,
    and refuse a missing value the same way."""
    names = sorted(_placeholders(resource))
    bindings: dict[str, Any] = {
        name: {"reference": f"Patient/{i}", "nested": [{"n": i}]} if i % 2 else f"value-{i}"
        for i, name in enumerate(names)
    }
    template = cards._ResourceTemplate.of(resource)
    bound = template.bind(bindings)
    assert bound == _walked(resource, bindings)
    assert template.bind(bindings) == bound  # binding again: the template was not changed
    expected = _walked(resource, bindings)
    for value in bindings.values():
        if isinstance(value, dict):  # a bound container is a copy: changing the finding's own...
            value["nested"][0]["n"] = "changed"
    assert bound == expected  # ...leaves what was rendered alone
    if names:
        with pytest.raises(cards.CardFileError, match="which the rule does not provide"):
            template.bind({})


def test_new_uuid_makes_distinct_version_7_uuids_in_the_canonical_form_ordered_by_time() -> None:
    import time
    import uuid

    before = time.time_ns() // 1_000_000
    made = [cards.new_uuid() for _ in range(5000)]  # several refills of the pool
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == len(made)
    for text in made[:200] + made[-200:]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # RFC 9562: unix milliseconds first
    # Ordered by the time they were made (the index locality they are for); within a millisecond
    # the random bits decide.
    millis = [uuid.UUID(text).int >> 80 for text in made]
    assert millis == sorted(millis)
    # The 74 random bits vary: no two uuids of one millisecond share them, and each bit is seen both ways.
    random_bits = [
        uuid.UUID(text).int & ((1 << 62) - 1) | (uuid.UUID(text).int >> 64 & 0xFFF) << 62 for text in made
    ]
    assert len(set(random_bits)) == len(made)
    for bit in range(74):
        assert {r >> bit & 1 for r in random_bits} == {0, 1}


def test_a_forked_child_never_hands_out_its_parents_uuids() -> None:
    import os

    cards.new_uuid()  # the pool now holds bytes a child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next uuids, to the parent
        os.write(write, ",".join(cards.new_uuid() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = set(os.read(read, 4096).decode().split(","))
    os.close(read)
    parent = {cards.new_uuid() for _ in range(3)}
    assert len(child) == 3
    assert not child & parent


def test_uuids_taken_from_many_threads_at_once_are_all_distinct() -> None:
    import sys
    from concurrent.futures import ThreadPoolExecutor

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch all the time: a race would show
    try:
        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(lambda _: [cards.new_uuid() for _ in range(2000)], range(8)))
    finally:
        sys.setswitchinterval(interval)
    made = [u for batch in batches for u in batch]
    assert len(set(made)) == len(made) == 16000


def _all_cards_of_the_bundled_patients() -> list[Card]:
    rendered = []
    for path in sorted((Path(__file__).parents[2] / "fhir_fixtures" / "patients").glob("*.json")):
        record = record_from(patient_resources(path.stem), patient_id=path.stem)
        rendered += cards.render_all(evaluate(CATALOGUE, record, RuleConfig()), CATALOG)
    return rendered


def test_an_answers_json_bytes_are_its_pruned_json_for_every_card_the_bundled_patients_get() -> None:
    """`to_json_bytes` (pydantic's serializer, for the hook's answer) says what `to_json` says."""
    rendered = _all_cards_of_the_bundled_patients()
    assert len(rendered) > 20
    response = CDSResponse(cards=rendered)
    assert json.loads(response.to_json_bytes()) == response.to_json()
    assert json.loads(CDSResponse().to_json_bytes()) == {"cards": []}


def test_empty_strings_lists_and_objects_are_pruned_from_the_json_bytes_as_from_the_json() -> None:
    """Where the serializer's bytes could hold an empty member, the answer takes the pruning way:
    a suggested resource with an empty note, an empty status and an empty extension loses them,
    and a text that only looks empty ('[]' in a detail) is kept as written."""
    [card] = [c for c in _all_cards_of_the_bundled_patients() if c.suggestions][:1]
    action = card.suggestions[0].actions[0]  # type: ignore[index]
    resource = {**action.resource, "note": [], "status": "", "meta": {}}  # type: ignore[dict-item]
    emptied = card.model_copy(
        update={
            "detail": f"{card.detail} []",
            "suggestions": [
                card.suggestions[0].model_copy(  # type: ignore[index]
                    update={"actions": [action.model_copy(update={"resource": resource})]}
                )
            ],
        }
    )
    body = json.loads(CDSResponse(cards=[emptied]).to_json_bytes())
    assert body == CDSResponse(cards=[emptied]).to_json()
    sent = body["cards"][0]["suggestions"][0]["actions"][0]["resource"]
    assert "note" not in sent and "status" not in sent and "meta" not in sent
    assert body["cards"][0]["detail"].endswith(" []")
    assert no_empty_values(body) == []
