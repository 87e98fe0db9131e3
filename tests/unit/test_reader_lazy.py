"""Large bodies: resources kept in their bytes until read, shared values, memoised record queries.

These are the mechanisms behind the large-body figures of bench/ (docs/performance.md); the API
tests send every fixture both ways (test_fixture_expectations.py, test_real_data.py) and compare.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import msgspec
import pytest

from cds_service import terminology, wire
from cds_service.reader import build_record, dedupe
from cds_service.reader.lazy import LazyResource, UnreadableResource, decode_bundle_lazily, materialise
from cds_service.record import ObservationFact, Quantity
from cds_service.terminology import Concept
from tests.support import NOW, service_interest

PATIENT = "p1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def alt(rid: str, value: float, days_ago: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "1742-6", "display": "ALT"}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": (NOW - timedelta(days=days_ago)).isoformat(),
        "valueQuantity": {
            "value": value,
            "unit": "U/L",
            "system": "http://unitsofmeasure.org",
            "code": "U/L",
        },
        "referenceRange": [{"high": {"value": 56, "unit": "U/L"}}],
        **extra,
    }


def lazy(resource: Any) -> Any:
    return LazyResource.of(msgspec.Raw(json.dumps(resource).encode()))


def large_request(resources: list[dict[str, Any]]) -> Any:
    """A hook call over the one-pass size, so that wire.py keeps its resources in their bytes."""
    request = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": PATIENT},
        "prefetch": {
            "observations": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
            }
        },
    }
    body = json.dumps(request).encode()
    # Over the one-pass size as the bodies of tens of thousands of resources are, without the cost
    # of building one in every test.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wire, "WHOLE_BODY_BYTES", len(body) - 1)
        return wire.read_request(body)


# -- LazyResource --------------------------------------------------------------------------------


def test_a_large_body_keeps_each_prefetch_resource_in_its_bytes() -> None:
    request = large_request([alt(f"a{i}", 30 + i) for i in range(300)])
    entries = request.prefetch["observations"]["entry"]
    assert len(entries) == 300
    assert all(isinstance(e["resource"], LazyResource) for e in entries)
    gc.collect()
    assert not any(gc.is_tracked(e) for e in entries)  # nothing for a full collection to walk


def test_a_large_body_keeps_what_a_reader_asks_of_an_entry_besides_its_resource() -> None:
    resources = [alt(f"a{i}", 30 + i) for i in range(300)]
    request = large_request(resources)
    body = json.loads(json.dumps({"entry": [{"resource": r} for r in resources]}))  # as sent
    body["entry"][0]["search"] = {"mode": "outcome"}
    body["entry"][1]["fullUrl"] = "https://ehr.example.org/fhir/Observation/a1"
    raw = dict(request.prefetch)
    raw["observations"] = decode_bundle_lazily(
        msgspec.Raw(json.dumps({"resourceType": "Bundle", **body}).encode())
    )
    entries = raw["observations"]["entry"]
    assert entries[0]["search"] == {"mode": "outcome"}  # an outcome is not data: kept to say so
    assert entries[1]["fullUrl"] == "https://ehr.example.org/fhir/Observation/a1"
    assert "search" not in entries[2] or entries[2]["search"] != {"mode": "match"}


def test_a_typical_body_is_decoded_whole() -> None:
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": {"patientId": PATIENT},
            "prefetch": {"observations": {"resourceType": "Bundle", "entry": [{"resource": alt("a", 1)}]}},
        }
    ).encode()
    request = wire.read_request(body)
    resource = request.prefetch["observations"]["entry"][0]["resource"]
    # A well-formed result: in its bytes, decoded once into the reader's Structs (observations.py).
    assert type(resource) is LazyResource and resource.typed is not None
    assert materialise(resource) == alt("a", 1)


def test_a_typical_body_decodes_whole_what_is_not_a_well_formed_result() -> None:
    odd = {**alt("b", 2), "effectiveDateTime": 20260101}  # not text: read the long way, which drops it
    condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": f"Patient/{PATIENT}"}}
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": {"patientId": PATIENT},
            "extension-of-a-newer-spec": {"kept": True},
            "prefetch": {
                "observations": {
                    "resourceType": "Bundle",
                    "entry": [{"resource": odd}, {"resource": condition}, {"resource": alt("a", 1)}],
                },
                "patient": {"resourceType": "Patient", "id": PATIENT},
            },
        }
    ).encode()
    request = wire.read_request(body)
    entries = request.prefetch["observations"]["entry"]
    assert [type(e["resource"]) for e in entries] == [dict, dict, LazyResource]
    assert [e["resource"] for e in entries[:2]] == [odd, condition]
    assert request.prefetch["patient"] == {"resourceType": "Patient", "id": PATIENT}
    assert request.model_extra == {"extension-of-a-newer-spec": {"kept": True}}


def test_an_epic_extension_after_prefetch_keeps_the_one_pass_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """CDS Hooks keeps `extension` for extensions on every object, and Epic sends its own after
    `prefetch`: read by the request's own Struct, not the general way (which scanned the prefetch
    three times over), and kept on the request all the same."""
    extension = {"com.epic.cdshooks.request.bpa-trigger-action": "OnOpenPatientChart"}
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": {"patientId": PATIENT},
            "prefetch": {"observations": {"resourceType": "Bundle", "entry": [{"resource": alt("a", 1)}]}},
            "extension": extension,
        }
    ).encode()

    class Refused:
        def decode(self, _: Any) -> Any:
            raise AssertionError("the general way was taken")

    monkeypatch.setattr(wire, "_OBJECT", Refused())
    request = wire.read_request(body)
    assert request.model_extra == {"extension": extension}
    resource = request.prefetch["observations"]["entry"][0]["resource"]
    assert type(resource) is LazyResource and resource.typed is not None


def results_body(resources: list[dict[str, Any]]) -> bytes:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}
    request = {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": PATIENT}}
    return json.dumps({**request, "prefetch": {"observations": bundle}}).encode()


class CountedSplits:
    """`lazy._BUNDLE`, counting how often a Bundle is split into its entries' bytes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from cds_service.reader import lazy as module

        self.calls = 0
        self.decoder = module._BUNDLE
        monkeypatch.setattr(module, "_BUNDLE", self)

    def decode(self, raw: Any) -> Any:
        self.calls += 1
        return self.decoder.decode(raw)


def test_a_bundle_of_well_formed_results_is_decoded_in_one_pass_never_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    splits = CountedSplits(monkeypatch)
    resources = [alt(f"a{i}", 30 + i) for i in range(20)]
    request = wire.read_request(results_body(resources))
    entries = request.prefetch["observations"]["entry"]
    assert all(type(e["resource"]) is LazyResource and e["resource"].typed is not None for e in entries)
    record = build_record(
        patient_id=PATIENT, now=NOW, resources=[e["resource"] for e in entries], interest=service_interest()
    )
    assert [o.id for o in record.observations] == [f"a{i}" for i in range(20)]
    assert splits.calls == 0  # every result read from its Structs: the Bundle's bytes never split
    gc.collect()
    assert not any(gc.is_tracked(e) for e in entries)


def test_results_of_a_bundle_decoded_whole_that_read_the_long_way_split_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A result the fast path declines (here a date without its zone, read in the site's zone with
    a note) needs its own bytes: the Bundle is split then, once for all such results."""
    splits = CountedSplits(monkeypatch)
    zoneless = [alt(f"z{i}", 40 + i, effectiveDateTime="2026-11-20T08:30:00") for i in range(3)]
    resources = [alt("a0", 30), *zoneless, alt("a1", 31)]
    entries = wire.read_request(results_body(resources)).prefetch["observations"]["entry"]
    assert [materialise(e["resource"]) for e in entries] == resources  # each its own, as sent
    assert splits.calls == 1
    record = build_record(
        patient_id=PATIENT, now=NOW, resources=[e["resource"] for e in entries], interest=service_interest()
    )
    assert sorted(o.id for o in record.observations) == ["a0", "a1", "z0", "z1", "z2"]
    assert record.report.repaired  # the zone-less dates, noted as the long way notes them
    assert splits.calls == 1


def test_a_body_of_a_thousand_results_is_decoded_whole_and_a_far_larger_one_entry_by_entry() -> None:
    """One pass is cheaper than splitting up to WHOLE_BODY_BYTES (wire.py); beyond it, memory wins."""
    resources = [alt(f"a{i}", 30 + i) for i in range(1000)]
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": {"patientId": PATIENT},
            "prefetch": {"observations": bundle},
        }
    ).encode()
    assert wire.ALWAYS_WHOLE_BYTES < len(body) <= wire.WHOLE_BODY_BYTES
    entries = wire.read_request(body).prefetch["observations"]["entry"]
    assert all(e["resource"].typed is not None for e in entries)  # decoded once, for the reader
    split = large_request(resources).prefetch["observations"]["entry"]
    # Only their headers: each is decoded when the reader reaches it, and let go after.
    assert all(type(e["resource"]) is LazyResource and e["resource"].typed is None for e in split)


def test_bodies_decoded_whole_at_once_are_bounded_and_the_room_comes_back_when_the_call_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decoded whole, a body's dicts (five times its size) live as long as its call: past
    WHOLE_BUDGET_BYTES held at once, further bodies are read entry by entry."""
    monkeypatch.setattr(wire, "WHOLE_BUDGET_BYTES", 1_000_000)
    size = 400_000
    with wire.room_to_decode(size) as first, wire.room_to_decode(size) as second:
        assert (first, second) == (True, True)
        with wire.room_to_decode(size) as third:
            assert third is False  # 1.2 MB would be held: entry by entry
        with wire.room_to_decode(10_000) as typical:
            assert typical is True  # a typical body: always whole, no budget asked
    with wire.room_to_decode(size) as again:
        assert again is True  # both calls ended: their room is back
    with pytest.raises(RuntimeError), wire.room_to_decode(size):
        raise RuntimeError("a call that failed")
    with wire.room_to_decode(2 * size) as after_failure, wire.room_to_decode(size) as last:
        assert (after_failure, last) == (True, False)
    with wire.room_to_decode(wire.WHOLE_BODY_BYTES + 1) as huge:
        assert huge is False  # over the one-pass size: never whole


def test_a_body_read_entry_by_entry_for_want_of_room_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = [alt(f"a{i}", 30 + i) for i in range(300)]
    body = json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": {"patientId": PATIENT},
            "prefetch": {
                "observations": {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
            },
        }
    ).encode()
    whole = wire.read_request(body, whole=True).prefetch["observations"]["entry"]
    split = wire.read_request(body, whole=False).prefetch["observations"]["entry"]
    assert all(e["resource"].typed is not None for e in whole)
    assert all(e["resource"].typed is None for e in split)
    assert [materialise(e["resource"]) for e in split] == [materialise(e["resource"]) for e in whole]
    assert [materialise(e["resource"]) for e in whole] == resources


def test_a_lazy_resource_answers_its_header_undecoded_and_the_rest_as_a_mapping() -> None:
    resource = lazy({**alt("a1", 40), "meta": {"versionId": "3", "lastUpdated": "2026-11-01T00:00:00Z"}})
    assert isinstance(resource, Mapping)
    assert (resource.resource_type, resource.id, resource.version_id) == ("Observation", "a1", "3")
    assert resource["resourceType"] == "Observation"
    assert resource.get("status") == "final"
    assert resource.get("absent", "default") == "default"
    assert "valueQuantity" in resource
    assert materialise(resource) == alt("a1", 40) | {
        "meta": {"versionId": "3", "lastUpdated": "2026-11-01T00:00:00Z"}
    }
    assert materialise(resource) is not materialise(resource)  # decoded afresh, never kept


def test_a_lazy_resource_is_not_tracked_by_the_garbage_collector_nor_is_its_entry() -> None:
    resource = lazy(alt("a1", 40))
    entry = {"resource": resource, "fullUrl": "Observation/a1"}
    gc.collect()
    assert not gc.is_tracked(resource)
    assert not gc.is_tracked(entry)


def test_a_lazy_resource_never_prints_its_content() -> None:
    resource = lazy(alt("a1", 40, note=[{"text": "patient says secret"}]))
    assert "secret" not in repr(resource)
    assert "Observation" in repr(resource)


def test_a_header_that_is_not_text_is_not_trusted_and_the_resource_still_reads() -> None:
    resource = lazy({"resourceType": "Observation", "id": {"odd": 1}, "meta": {"versionId": ["1"]}})
    assert resource.id is None and resource.version_id is None
    assert resource["id"] == {"odd": 1}  # read from the bytes, as the sender wrote it


def test_an_entry_resource_that_is_not_an_object_is_left_as_it_is() -> None:
    assert LazyResource.of(msgspec.Raw(b'"text"')) == "text"


def test_bytes_that_cannot_be_decoded_raise_a_named_error_without_content() -> None:
    broken = LazyResource(msgspec.Raw(b'{"resourceType": "Observation", "id": "x", "value": '), "Observation")
    with pytest.raises(UnreadableResource) as raised:
        materialise(broken)
    assert "Observation" not in str(raised.value)


# -- the reader over lazy resources ---------------------------------------------------------------


def test_the_latest_version_of_a_lazy_duplicate_is_kept() -> None:
    older = lazy({**alt("a1", 400), "meta": {"versionId": "1"}})
    newer = lazy({**alt("a1", 40), "meta": {"versionId": "2"}})
    [kept] = dedupe([newer, older])
    assert kept is newer
    [kept] = dedupe([older, newer])
    assert kept is newer


def test_types_no_rule_reads_are_skipped_without_decoding() -> None:
    claim = LazyResource(msgspec.Raw(b"{not json at all"), "Claim", "c1")
    record = build_record(
        patient_id=PATIENT, now=NOW, resources=[claim, lazy(alt("a1", 40))], interest=service_interest()
    )
    assert record.report.not_relevant["Claim"] == 1
    assert [o.id for o in record.observations] == ["a1"]


def test_a_resource_of_interest_that_cannot_be_decoded_is_counted_as_unread_not_dropped_silently() -> None:
    broken = LazyResource(msgspec.Raw(b'{"resourceType": "Observation", '), "Observation", "x")
    record = build_record(patient_id=PATIENT, now=NOW, resources=[broken], interest=service_interest())
    assert record.report.unreadable["Observation"] == 1
    assert record.unread["Observation"] == 1


# -- shared values ---------------------------------------------------------------------------------


def test_equal_concepts_and_ranges_of_one_read_are_one_object() -> None:
    record = build_record(
        patient_id=PATIENT,
        now=NOW,
        resources=[alt(f"a{i}", 40, days_ago=i + 1) for i in range(3)],
        interest=service_interest(),
    )
    first, *others = record.observations
    for other in others:
        assert other.concept is first.concept
        assert other.reference_range is first.reference_range
        assert other.value is first.value


def test_a_repair_is_counted_for_every_resource_that_needed_it_even_when_the_value_is_shared() -> None:
    bent = [
        alt(f"a{i}", 40, days_ago=i + 1, code={"coding": {"system": LOINC, "code": "1742-6"}})
        for i in range(3)
    ]
    record = build_record(patient_id=PATIENT, now=NOW, resources=bent, interest=service_interest())
    assert len(record.observations) == 3
    assert record.report.repaired["Observation.code.coding: one value where a list belongs"] == 3


# -- memoised record queries ------------------------------------------------------------------------


def test_a_record_query_sees_facts_added_after_it_was_first_asked() -> None:
    alt_set = terminology.load("alt")
    record = build_record(
        patient_id=PATIENT, now=NOW, resources=[alt("a1", 40, days_ago=5)], interest=service_interest()
    )
    assert [o.id for o in record.observations_in(alt_set)] == ["a1"]
    record.observations.append(
        ObservationFact(
            id="a2",
            concept=record.observations[0].concept,
            status="final",
            effective=NOW - timedelta(days=1),
            value=Quantity(record.observations[0].value.value),  # type: ignore[union-attr]
            reference_range=None,
        )
    )
    assert [o.id for o in record.observations_in(alt_set)] == ["a2", "a1"]


def test_a_caller_may_change_the_list_a_query_returns() -> None:
    alt_set = terminology.load("alt")
    record = build_record(patient_id=PATIENT, now=NOW, resources=[alt("a1", 40)], interest=service_interest())
    record.observations_in(alt_set).clear()
    assert [o.id for o in record.observations_in(alt_set)] == ["a1"]
    assert isinstance(record.observations[0].concept, Concept)


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 40, "comparator": ["<"]},  # a list where a code belongs
        {"value": 40, "comparator": {"code": "<"}},
        {"value": 40, "unit": ["U/L"]},
        {"value": float("nan"), "unit": "U/L"},
        {"value": float("inf"), "unit": "U/L"},
        {"value": True, "unit": "U/L"},
    ],
    ids=["comparator-list", "comparator-object", "unit-list", "nan", "infinity", "boolean"],
)
def test_an_odd_quantity_takes_the_long_way_and_never_raises(quantity: dict[str, Any]) -> None:
    record = build_record(
        patient_id=PATIENT,
        now=NOW,
        resources=[alt("a1", 40, valueQuantity=quantity)],
        interest=service_interest(),
    )
    [fact] = record.observations
    if "unit" in quantity and isinstance(quantity["unit"], list):
        # The number is kept, the odd unit is not: the lab's range on the same result gives it.
        assert fact.value is not None and fact.value.value == 40
        assert record.report.repaired["Observation.value: unit taken from the result's reference range"] == 1
    else:
        assert fact.value is None and "value" in fact.unreadable
