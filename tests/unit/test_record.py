"""The patient record: R4 parsing, the raw-JSON relevance filter, statuses, dates, draft orders."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cds_service import terminology
from cds_service.reader import build_record, resources_from_bundle, to_instant
from cds_service.record import Interest
from tests.support import (
    NOW,
    bundled_charts,
    chart_bytes,
    chart_name,
    load_chart,
    patient_resources,
    record_from,
    service_interest,
)

ALT = terminology.load("alt")
RILUZOLE = terminology.load("riluzole")
ALS = terminology.load("als-diagnosis")
EVERYTHING = Interest(
    {
        t: None
        for t in (
            "Condition",
            "Observation",
            "MedicationRequest",
            "Procedure",
            "AllergyIntolerance",
            "Encounter",
        )
    }
)


def synthea_patient_id(resources: list[dict[str, Any]]) -> str:
    return next(r["id"] for r in resources if r["resourceType"] == "Patient")


# -- real R4 charts (the Synthea charts in fhir_fixtures/synthea, always there) --------------


@pytest.mark.parametrize("chart", bundled_charts(), ids=lambda p: chart_name(p).split("_")[0])
def test_real_r4_charts_are_read_without_a_single_dropped_field(chart: Path) -> None:
    resources = [dict(r) for r in resources_from_bundle(load_chart(chart))]
    record = build_record(
        patient_id=synthea_patient_id(resources), now=NOW, resources=resources, interest=EVERYTHING
    )
    assert record.report.dropped == Counter()
    assert record.report.unreadable == Counter()
    expected = Counter(r["resourceType"] for r in resources if r["resourceType"] in EVERYTHING.by_type)
    for rtype, count in expected.items():
        assert record.report.read[rtype] == count, rtype
    assert record.patient is not None


def test_large_chart_is_filtered_on_its_codes_before_fields_are_read() -> None:
    # The largest chart of the whole shared set is bundled (tests/unit/test_bundled_charts.py).
    chart = max(bundled_charts(), key=lambda p: len(chart_bytes(p)))
    resources = [dict(r) for r in resources_from_bundle(load_chart(chart))]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    interest = service_interest()
    wanted = {key for vs in interest.by_type["Observation"] or () for key in vs.codes}
    relevant = [
        o
        for o in observations
        if any((c.get("system"), c.get("code")) in wanted for c in o["code"].get("coding", []))
    ]
    assert len(observations) > 200
    assert len(relevant) < len(observations) / 2
    record = record_from(resources, patient_id=synthea_patient_id(resources), interest=interest)
    # Only observations some rule reads were read field by field; for the rest, only the code.
    assert record.report.read["Observation"] == len(relevant)
    assert record.report.not_relevant["Observation"] == len(observations) - len(relevant)
    # Types no rule reads (claims, immunizations, ...) are not read at all.
    assert record.report.read["ExplanationOfBenefit"] == 0
    assert record.report.not_relevant["Claim"] > 0


# -- the gate: without an MND diagnosis, the rest of the chart is not read -------------------


def _gated(resources: list[dict[str, Any]], **options: Any) -> Any:
    from cds_service.reader import ReadOptions
    from cds_service.rules import gate_open

    return build_record(
        patient_id=synthea_patient_id(resources),
        now=NOW,
        resources=resources,
        interest=service_interest(),
        gate=gate_open,
        options=ReadOptions(**options),
    )


def test_without_an_mnd_diagnosis_only_the_patient_and_diagnoses_are_read() -> None:
    chart = max(bundled_charts(), key=lambda p: len(chart_bytes(p)))  # a Synthea chart, no MND
    resources = [dict(r) for r in resources_from_bundle(load_chart(chart))]
    observations = sum(r["resourceType"] == "Observation" for r in resources)
    conditions = sum(r["resourceType"] == "Condition" for r in resources)
    record = _gated(resources)
    assert record.patient is not None and conditions > 0
    # Every diagnosis looked at (the gate's question), none of them MND.
    assert record.report.read["Condition"] + record.report.not_relevant["Condition"] == conditions
    assert record.observations == [] and record.medications == [] and record.procedures == []
    assert record.report.read["Observation"] == 0
    assert record.report.not_relevant["Observation"] == observations  # counted, not decoded
    # --strict keeps every deviation of every resource: it reads the whole chart.
    assert _gated(resources, keep_deviations=True).report.read["Observation"] > 0


def test_with_an_mnd_diagnosis_the_whole_chart_is_read_as_without_the_gate() -> None:
    resources = patient_resources("als-riluzole-lft-overdue")
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    resources = [r if r["resourceType"] != "Patient" else {**r, "id": pid} for r in resources]
    gated = _gated(resources)
    ungated = record_from(resources, patient_id=pid)
    assert gated.report.read == ungated.report.read
    assert gated.observations == ungated.observations and gated.medications == ungated.medications


def test_rules_without_the_gate_read_nothing_the_gate_leaves_unread() -> None:
    from cds_service.reader import GATE_TYPES
    from cds_service.rules import CATALOGUE

    for rule in CATALOGUE:
        if not rule.gated:
            assert set(rule.reads.by_type) <= GATE_TYPES, rule.id


# -- resources that cannot be read ----------------------------------------------------------


def test_an_unreadable_value_costs_that_field_only_and_is_counted_without_its_content() -> None:
    resources = patient_resources("als-riluzole-lft-overdue")
    broken = {
        "resourceType": "Observation",
        "id": "broken",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]},
        "subject": {"reference": "Patient/als-riluzole-lft-overdue"},
        "effectiveDateTime": "2026-11-20T08:00:00Z",
        "valueQuantity": {"value": "SECRET-PHI-VALUE-42", "unit": "U/L"},
    }
    record = record_from([*resources, broken], patient_id="als-riluzole-lft-overdue")
    assert record.report.dropped == Counter({"Observation.valueQuantity.value: not a number": 1})
    # The result is still there: the test was done on that day, its value is unknown (never normal).
    [kept] = [o for o in record.observations_in(ALT) if o.id == "broken"]
    assert kept.value is None and "value" in kept.unreadable
    assert record.unreadable_observations(ALT) == [kept]
    assert len(record.observations_in(ALT)) == 6
    summary = json.dumps(record.report.summary())
    assert "SECRET-PHI-VALUE-42" not in summary
    assert "valueQuantity.value" in summary  # the report says where, not what


def test_epic_long_ids_and_unknown_elements_cost_nothing() -> None:
    long_id = "eAB3mDIBBcyUKviyzrxsnAw3" * 4 + "_x"
    condition = {
        "resourceType": "Condition",
        "id": long_id,
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
        "subject": {"reference": "Patient/p"},
        "someFutureElement": {"x": 1},
    }
    record = record_from([condition], patient_id="p")
    assert record.report.dropped == Counter() and record.report.repaired == Counter()
    [fact] = record.active_conditions(ALS)
    assert fact.id == long_id


def test_resources_of_another_patient_are_dropped() -> None:
    resources = patient_resources("als-riluzole-lft-overdue")
    record = record_from(resources, patient_id="someone-else")
    assert record.conditions == []
    assert record.report.other_patient["Condition"] == 3  # one was entered in error, still counted


def test_urn_uuid_references_are_kept() -> None:
    condition = {
        "resourceType": "Condition",
        "id": "c",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86044005"}]},
        "subject": {"reference": "urn:uuid:3f1c5a9e-0000-4000-8000-000000000001"},
    }
    assert record_from([condition], patient_id="p").has_active_condition(ALS)


def test_a_resource_sent_under_two_prefetch_keys_is_kept_once() -> None:
    resources = patient_resources("als-riluzole-lft-overdue")
    record = record_from([*resources, *resources], patient_id="als-riluzole-lft-overdue")
    assert len(record.observations_in(ALT)) == 5


# -- statuses --------------------------------------------------------------------------------


def test_condition_statuses() -> None:
    record = record_from(patient_resources("als-riluzole-lft-overdue"), patient_id="als-riluzole-lft-overdue")
    ids = {c.id for c in record.conditions}
    assert "wrong-dx-1" not in ids  # entered-in-error is gone entirely
    assert "als-dx-1" in ids
    refuted = record_from(patient_resources("no-als-on-riluzole"), patient_id="no-als-on-riluzole")
    assert not refuted.has_active_condition(ALS)


def test_medication_statuses_and_intents() -> None:
    base = {
        "resourceType": "MedicationRequest",
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"text": "riluzole 50 mg"},
    }
    requests = [
        {**base, "id": "a", "status": "active", "intent": "order"},
        {**base, "id": "b", "status": "on-hold", "intent": "order"},
        {**base, "id": "c", "status": "stopped", "intent": "order"},
        {**base, "id": "d", "status": "active", "intent": "proposal"},
        {**base, "id": "e", "status": "cancelled", "intent": "order"},
    ]
    record = record_from(requests, patient_id="p")
    assert sorted(m.fact.id for m in record.active_medications(RILUZOLE)) == ["a", "b"]


def test_observation_statuses() -> None:
    def obs(oid: str, status: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]},
            "effectiveDateTime": "2026-11-01",
        }

    statuses = ["final", "amended", "corrected", "preliminary", "registered", "cancelled", "entered-in-error"]
    record = record_from([obs(s, s) for s in statuses], patient_id="p")
    assert {o.id for o in record.observations_in(ALT)} == {"final", "amended", "corrected", "preliminary"}


def test_future_dated_results_are_not_the_latest() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "future",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]},
        "effectiveDateTime": (NOW + timedelta(days=30)).isoformat(),
    }
    assert record_from([obs], patient_id="p").latest_observation(ALT) is None


def test_observation_keeps_value_unit_and_reference_range() -> None:
    record = record_from(patient_resources("als-riluzole-lft-overdue"), patient_id="als-riluzole-lft-overdue")
    latest = record.latest_observation(ALT, with_value=True)
    assert latest is not None
    assert str(latest.value) == "38 U/L"
    assert latest.value.code == "U/L"
    assert latest.reference_range is not None and latest.reference_range.high is not None
    assert str(latest.reference_range.high) == "40 U/L"
    assert latest.effective == datetime(2025, 1, 10, 9, 30, tzinfo=UTC)


# -- dates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025", datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-03", datetime(2025, 3, 1, tzinfo=UTC)),
        ("2025-03-09", datetime(2025, 3, 9, tzinfo=UTC)),
        (date(2025, 3, 9), datetime(2025, 3, 9, tzinfo=UTC)),
        ("2025-03-09T10:00:00+02:00", datetime(2025, 3, 9, 8, 0, tzinfo=UTC)),
        (datetime(2025, 3, 9, 10, 0), datetime(2025, 3, 9, 10, 0, tzinfo=UTC)),
        (
            datetime(2025, 3, 9, 10, 0, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2025, 3, 9, 15, 0, tzinfo=UTC),
        ),
        ("not a date", None),
        (None, None),
    ],
)
def test_fhir_dates_become_aware_utc_instants(value: object, expected: datetime | None) -> None:
    assert to_instant(value) == expected


# -- draft orders ----------------------------------------------------------------------------


def test_draft_orders_selected_first_with_medication_resolved_from_the_bundle() -> None:
    from tests.support import hook_request

    context = hook_request("order-select-riluzole")["context"]
    record = record_from(
        [],
        patient_id=context["patientId"],
        draft_orders=context["draftOrders"],
        selections=context["selections"],
    )
    assert [o.reference for o in record.draft_orders] == [
        "MedicationRequest/draft-riluzole-1",
        "ServiceRequest/draft-cbc-1",
    ]
    assert record.draft_orders[0].selected and not record.draft_orders[1].selected
    [(order, match)] = record.draft_orders_in(RILUZOLE)
    assert match.kind == "code" and match.code is not None and match.code.code == "199206"
    assert order.medication is not None and order.medication.status == "draft"


def test_contained_medication_is_resolved() -> None:
    draft = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "m1",
                    "status": "draft",
                    "intent": "order",
                    "contained": [
                        {
                            "resourceType": "Medication",
                            "id": "med",
                            "code": {
                                "coding": [
                                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "35623"}
                                ]
                            },
                        }
                    ],
                    "medicationReference": {"reference": "#med"},
                    "subject": {"reference": "Patient/p"},
                }
            }
        ],
    }
    record = record_from([], patient_id="p", draft_orders=draft, selections=["MedicationRequest/m1"])
    assert record.draft_orders_in(RILUZOLE)


def test_dstu2_draft_orders_are_counted_not_read() -> None:
    draft = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "MedicationOrder", "id": "x", "status": "draft"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}},
        ],
    }
    record = record_from([], patient_id="p", draft_orders=draft)
    assert record.draft_orders == []
    assert record.report.unsupported_draft_types == Counter({"MedicationOrder": 1})


def test_bundle_outcome_entries_are_not_data() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "Condition", "id": "c"}, "search": {"mode": "match"}},
            {"fullUrl": "no-resource"},
        ],
    }
    assert [r["resourceType"] for r in resources_from_bundle(bundle)] == ["Condition"]


# -- allergies, procedures, encounters, devices, documents, consents, dosage ----------------


def _all_types() -> Interest:
    types = (
        "Condition",
        "Observation",
        "MedicationRequest",
        "AllergyIntolerance",
        "Procedure",
        "Encounter",
        "Device",
        "DocumentReference",
        "Consent",
    )
    return Interest(dict.fromkeys(types))


def test_allergies_match_by_code_or_reaction_substance_and_drop_refuted_or_resolved() -> None:
    from tests import factories as f

    sulfite = terminology.parse_valueset(
        {
            "id": "sulfite-test",
            "compose": {
                "include": [
                    {
                        "system": "http://snomed.info/sct",
                        "concept": [
                            {
                                "code": "3692009",
                                "extension": [{"url": "urn:als-cds:checked", "valueString": "x"}],
                            }
                        ],
                    }
                ]
            },
        }
    )
    resources = [
        f.allergy(f.snomed("3692009"), rid="coded"),
        f.allergy(f.concept(text="preservatives"), substances=[f.snomed("3692009")], rid="by-substance"),
        f.allergy(f.snomed("3692009"), verification="refuted", rid="refuted"),
        f.allergy(f.snomed("3692009"), clinical="resolved", rid="resolved"),
    ]
    record = record_from(resources, patient_id=f.PID, interest=_all_types())
    assert sorted(a.id for a in record.allergies_in(sulfite)) == ["by-substance", "coded"]


def test_only_done_procedures_and_held_encounters_count_newest_first() -> None:
    from tests import factories as f

    resources = [
        f.procedure(f.snomed("54956002"), f.days_ago(300), rid="old"),
        f.procedure(f.snomed("54956002"), f.days_ago(3), rid="new"),
        f.procedure(f.snomed("54956002"), f.days_ago(1), status="not-done", rid="not-done"),
        f.procedure(f.snomed("54956002"), None, status="entered-in-error", rid="error"),
        f.encounter([f.snomed("1")], f.days_ago(10), rid="held"),
        f.encounter([f.snomed("1")], f.days_ago(5), status="cancelled", rid="cancelled"),
        f.encounter([f.snomed("1")], f.days_ago(-5), status="planned", rid="planned"),
    ]
    record = record_from(resources, patient_id=f.PID, interest=_all_types())
    assert [p.id for p in record.procedures_in()] == ["new", "old"]
    assert [p.id for p in record.procedures_in(since=f.days_ago(30))] == ["new"]
    assert [e.id for e in record.encounters_in()] == ["held"]


def test_encounter_class_and_service_type_are_matchable_concepts() -> None:
    from tests import factories as f

    enc = f.encounter([f.snomed("11429006")], f.days_ago(1), service_type=f.snomed("394591006"))
    [fact] = record_from([enc], patient_id=f.PID, interest=_all_types()).encounters
    codes = {code.code for concept in fact.concepts for code in concept.codes}
    assert codes == {"11429006", "394591006", "AMB"}


def test_devices_documents_and_consents_keep_only_current_ones() -> None:
    from tests import factories as f

    resources = [
        f.device(f.snomed("470571004"), rid="tube"),
        f.device(f.snomed("470571004"), status="inactive", rid="removed"),
        f.document(f.loinc("42348-3"), f.days_ago(10), rid="ad"),
        f.document(f.loinc("42348-3"), f.days_ago(10), status="superseded", rid="old-ad"),
        f.consent(
            f.concept(f.coding("http://terminology.hl7.org/CodeSystem/consentscope", "adr")),
            [],
            f.days_ago(5),
            rid="consent",
        ),
        f.consent(
            f.concept(f.coding("http://terminology.hl7.org/CodeSystem/consentscope", "adr")),
            [],
            f.days_ago(5),
            status="rejected",
            rid="rejected",
        ),
    ]
    record = record_from(resources, patient_id=f.PID, interest=_all_types())
    assert [d.id for d in record.devices] == ["tube"]
    assert [d.id for d in record.documents] == ["ad"]
    assert [c.id for c in record.consents] == ["consent"]


@pytest.mark.parametrize(
    ("dosage", "per_day", "dose"),
    [
        (
            {
                "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
                "doseAndRate": [{"doseQuantity": {"value": 50, "unit": "mg"}}],
            },
            2,
            "50 mg",
        ),
        ({"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}, 2, None),
        ({"timing": {"code": {"coding": [{"code": "BID"}]}}}, 2, None),
        ({"text": "as directed"}, None, None),
        (
            {
                "doseAndRate": [
                    {
                        "type": {"coding": [{"code": "calculated"}]},
                        "doseQuantity": {"value": 10, "unit": "mL"},
                    },
                    {"type": {"coding": [{"code": "ordered"}]}, "doseQuantity": {"value": 50, "unit": "mg"}},
                ]
            },
            None,
            "50 mg",
        ),
    ],
)
def test_structured_dosage_is_read(dosage: dict[str, Any], per_day: int | None, dose: str | None) -> None:
    from tests import factories as f

    request = f.medication_request(f.rxnorm("199206"))
    request["dosageInstruction"] = [dosage]
    [med] = record_from([request], patient_id=f.PID, interest=_all_types()).medications
    assert med.dosage is not None
    assert med.dosage.per_day == per_day
    assert (str(med.dosage.dose) if med.dosage.dose else None) == dose


def test_order_select_checks_only_the_selected_orders_and_order_sign_all() -> None:
    from tests import factories as f

    bundle = f.draft_orders(
        f.medication_request(f.rxnorm("199206"), status="draft", rid="a"),
        f.medication_request(f.rxnorm("199206"), status="draft", rid="b"),
    )
    select = record_from([], patient_id=f.PID, draft_orders=bundle, selections=["MedicationRequest/b"])
    assert [o.id for o in select.orders_to_check] == ["b"]
    sign = record_from([], patient_id=f.PID, draft_orders=bundle)
    assert [o.id for o in sign.orders_to_check] == ["a", "b"]
    assert len(sign.draft_orders_in(RILUZOLE)) == 2


def test_patient_sex_comes_from_the_patient_resource() -> None:
    from tests import factories as f

    assert record_from([f.patient("male")], patient_id=f.PID).sex == "male"
    assert record_from([], patient_id=f.PID).sex is None


def test_a_concept_read_again_in_a_later_call_is_the_same_and_the_memo_stays_bounded() -> None:
    """Concepts are built once per process from their raw strings (reader/fields.py): the next
    call's read gives an equal concept (the same object), a different spelling a different one,
    and the memo starts again when full."""
    from cds_service.reader import fields
    from cds_service.record import ReadReport

    raw = {"coding": [{"system": "http://loinc.org", "code": "1742-6", "display": "ALT"}], "text": "ALT"}

    def read(value: dict[str, Any]) -> terminology.Concept:
        reader = fields.FieldReader(
            "Observation", "o1", datetime(2026, 1, 1, tzinfo=UTC), fields.ReadOptions(), ReadReport()
        )
        return reader.concept(value, "code")

    first, again = read(raw), read(json.loads(json.dumps(raw)))
    assert again is first
    assert first.codes[0].key == ("http://loinc.org", "1742-6") and first.text == "ALT"
    other = read({**raw, "text": "Alanine aminotransferase"})
    assert other != first and other.text == "Alanine aminotransferase"
    for i in range(fields.CONCEPT_MEMO_ENTRIES + 5):
        read({"coding": [{"system": "http://loinc.org", "code": f"x-{i}"}]})
    assert len(fields._CONCEPTS) <= fields.CONCEPT_MEMO_ENTRIES
    assert read(raw) == first


def test_observations_matching_keeps_undated_results_in_arrival_order_and_matches_each_concept_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For findings whose presence alone counts (an advance care plan, an SLT referral): every
    result of the value set, dated or not, in the order it came; `observations_in` keeps the dated."""

    def alt(oid: str, when: str | None) -> dict[str, Any]:
        resource = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]},
        }
        return resource | ({"effectiveDateTime": when} if when else {})

    ast = {"coding": [{"system": "http://loinc.org", "code": "1920-8"}]}
    other = alt("ast", "2026-11-02") | {"code": ast}
    record = record_from(
        [alt("old", "2026-01-01"), alt("undated", None), other, alt("new", "2026-11-01")], patient_id="p"
    )
    asked = Counter[str]()
    match = type(ALT).match

    def counted(self: terminology.ValueSet, concept: terminology.Concept) -> Any:
        asked[concept.codes[0].code] += 1
        return match(self, concept)

    monkeypatch.setattr(type(ALT), "match", counted)
    assert [o.id for o in record.observations_matching(ALT)] == ["old", "undated", "new"]
    assert [o.id for o in record.observations_in(ALT)] == ["new", "old"]
    assert asked == {"1742-6": 1, "1920-8": 1}  # once per concept, not once per result


def test_observations_naming_reads_coded_and_answered_results_in_arrival_order_not_every_plain_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a rule looking for a gene reads (genetics.py, dmt.py): results whose code is in the value
    set, and results with an answer of their own; a plain result of another code is never looked at,
    and each concept is matched once, however many results share it."""
    from cds_service.rules import dmt

    def result(oid: str, code: str, **extra: Any) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": "2026-11-01",
            **extra,
        }

    variant = "69548-6"  # a genetic variant assessment: the gene is named by its answer
    plain = [result(f"alt{i}", "1742-6", valueQuantity={"value": 30 + i, "unit": "U/L"}) for i in range(50)]
    answered = result("gene", variant, valueString="SOD1 c.272A>C")
    coded = result("sod1", "x-local")  # a lab's local single-gene test, named by its display
    coded["code"]["coding"][0]["display"] = "SOD1 gene sequencing"
    record = record_from([*plain[:25], answered, *plain[25:], coded], patient_id="p")
    assert len(record.observations) == 52
    asked = Counter[str]()
    match = type(dmt.SOD1).match

    def counted(self: terminology.ValueSet, concept: terminology.Concept) -> Any:
        asked[concept.codes[0].code] += 1
        return match(self, concept)

    monkeypatch.setattr(type(dmt.SOD1), "match", counted)
    assert [o.id for o in record.observations_naming((dmt.SOD1,))] == ["gene", "sod1"]
    assert asked["1742-6"] == 1  # fifty plain ALT results: one look at their shared code


def test_a_derived_value_is_computed_once_a_record_and_config_and_again_when_either_changes() -> None:
    """`PatientRecord.derived`: what several rules derive alike (the breathing rules' reading) is
    computed once a call, never answered for a record that has since grown or another config."""
    from cds_service.rules.base import RuleConfig

    calls: list[int] = []

    def count(record: Any, config: RuleConfig) -> int:
        calls.append(1)
        return len(record.observations)

    record = record_from([], patient_id="p")
    config, other = RuleConfig(), RuleConfig()
    assert record.derived(count, config) == 0
    assert record.derived(count, config) == 0
    assert len(calls) == 1
    assert record.derived(count, other) == 0  # another config (equal, but not the same): again
    assert len(calls) == 2
    record.observations.append(object())  # type: ignore[arg-type]
    assert record.derived(count, other) == 1  # the record grew: again, and the new answer
    assert len(calls) == 3
    record.observations = list(record.observations)  # another list, as long
    assert record.derived(count, other) == 1
    assert len(calls) == 4


def test_the_breathing_rules_read_the_interval_once_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from cds_service.rules import CATALOGUE, evaluate, respiratory
    from cds_service.rules.base import RuleConfig

    resources = patient_resources("respiratory-fvc-70-orthopnoea")
    patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    record = record_from(resources, patient_id=patient)
    read = respiratory._breathing
    calls: list[int] = []

    def counted(*args: Any) -> Any:
        calls.append(1)
        return read(*args)

    monkeypatch.setattr(respiratory, "_breathing", counted)
    findings = evaluate(CATALOGUE, record, RuleConfig())
    assert "respiratory-niv-referral" in {f.rule_id for f in findings}  # the reading was used
    assert len(calls) == 1  # NIV referral, hypercapnia and advance care planning's trigger points


def test_results_of_equal_concepts_that_are_not_one_object_match_as_one_group_in_list_order() -> None:
    """The record groups facts by their concept's identity (the read shares concepts); facts built
    apart carry equal concepts that are different objects, and still match as one group, in the
    order they arrived, whatever the value set; a list with generic facts is grouped by each of
    their concepts."""
    from cds_service.record import GenericFact, ObservationFact
    from cds_service.terminology import Code, Concept, ValueSet

    def alt() -> Concept:
        return Concept((Code("http://loinc.org", "1742-6", "ALT"),), "ALT")

    def ast() -> Concept:
        return Concept((Code("http://loinc.org", "1920-8", "AST"),), "AST")

    when = NOW - timedelta(days=1)
    record = record_from([], patient_id="p")
    concepts = [alt(), ast(), alt(), alt(), ast()]
    record.observations = [
        ObservationFact(f"o{i}", c, "final", when - timedelta(hours=i), None, None)
        for i, c in enumerate(concepts)
    ]
    assert concepts[0] is not concepts[2] and concepts[0] == concepts[2]
    alt_set = ValueSet("alt", "ALT", frozenset({("http://loinc.org", "1742-6")}))
    both = ValueSet(
        "both", "ALT and AST", frozenset({("http://loinc.org", "1742-6"), ("http://loinc.org", "1920-8")})
    )
    assert [o.id for o in record.observations_matching(alt_set)] == ["o0", "o2", "o3"]
    assert [o.id for o in record.observations_matching(both)] == ["o0", "o1", "o2", "o3", "o4"]
    assert [o.id for o in record.observations_in(alt_set)] == ["o0", "o2", "o3"]  # newest first
    substance = Concept((Code("http://snomed.info/sct", "1", "riluzole"),))
    record.allergies = [
        GenericFact("a0", (alt(), substance), "active", when),
        GenericFact("a1", (ast(),), "active", when),
    ]
    by_substance = ValueSet("s", "riluzole", frozenset({("http://snomed.info/sct", "1")}))
    assert [f.id for f, _ in record._matching(record.allergies, by_substance)] == ["a0"]


def test_a_value_set_that_shares_no_code_with_a_list_answers_without_its_groups_unless_it_matches_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A list keeps every code of its facts' concepts: a value set matched by code alone that holds
    none of them matches nothing, and is answered without asking after any group. One that also
    matches names still reads each concept, and finds a result named in its text; one that shares a
    code finds its results, as before."""
    from cds_service.record import ObservationFact
    from cds_service.terminology import Code, Concept, ValueSet

    LOINC = "http://loinc.org"
    asked: list[str] = []
    match = ValueSet._match

    def counted(self: ValueSet, concept: Concept) -> Any:
        asked.append(self.id)
        return match(self, concept)

    monkeypatch.setattr(ValueSet, "_match", counted)
    when = NOW - timedelta(days=1)
    record = record_from([], patient_id="p")

    def result(rid: str, code: str, text: str | None = None) -> ObservationFact:
        return ObservationFact(rid, Concept((Code(LOINC, code, text),), text), "final", when, None, None)

    record.observations = [result("o0", "1742-6", "ALT"), result("o1", "9999-9", "FVC")]
    fvc_code = ValueSet("fvc", "FVC", frozenset({(LOINC, "19868-9")}))
    fvc_named = ValueSet("fvc-named", "FVC", frozenset({(LOINC, "19868-9")}), match_names=("FVC",))
    alt = ValueSet("alt", "ALT", frozenset({(LOINC, "1742-6")}))

    assert record.observations_matching(fvc_code) == []
    assert asked == []
    assert [o.id for o in record.observations_matching(fvc_named)] == ["o1"]
    assert asked == ["fvc-named", "fvc-named"]
    assert [o.id for o in record.observations_matching(alt)] == ["o0"]
    record.observations.append(result("o2", "19868-9"))  # the list grew: its codes are taken again
    assert [o.id for o in record.observations_matching(fvc_code)] == ["o2"]
