"""Value sets are valid FHIR data with provenance, and matching sees every way a code is written."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.valueset import ValueSet as FhirValueSet

from cds_service import terminology
from cds_service.terminology import ICD10CM, RXNORM, SNOMED, Code, Concept, normalise_system


@pytest.mark.parametrize("valueset_id", terminology.all_valueset_ids())
def test_every_valueset_file_is_a_valid_fhir_valueset_with_a_source_for_every_code(valueset_id: str) -> None:
    raw = json.loads((terminology.VALUESET_DIR / f"{valueset_id}.json").read_text())
    FhirValueSet.model_validate(raw)
    assert raw["id"] == valueset_id
    for include in raw["compose"]["include"]:
        for concept in include["concept"]:
            checked = [e for e in concept.get("extension", []) if e["url"] == "urn:als-cds:checked"]
            assert checked and checked[0]["valueString"].split(":")[0].split()[0] in {
                "VERIFIED",
                "CORROBORATED",
                "UNVERIFIED",
            }, concept["code"]
    loaded = terminology.load(valueset_id)
    # A drug with no code anywhere (Relyvrio) is matched by its names alone.
    assert loaded.codes or loaded.match_names


def test_a_code_without_provenance_is_refused() -> None:
    with pytest.raises(ValueError, match="does not say where it was checked"):
        terminology.parse_valueset(
            {"id": "x", "compose": {"include": [{"system": SNOMED, "concept": [{"code": "1"}]}]}}
        )


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("urn:oid:2.16.840.1.113883.6.88", RXNORM),
        ("urn:oid:2.16.840.1.113883.6.96", SNOMED),
        ("http://snomed.info/sct/900000000000207008", SNOMED),
        ("http://loinc.org/", "http://loinc.org"),
        ("urn:oid:2.16.840.1.113883.6.90", ICD10CM),
        (None, ""),
    ],
)
def test_code_system_aliases_are_normalised(alias: str | None, canonical: str) -> None:
    assert normalise_system(alias) == canonical


def test_every_coding_of_a_concept_is_matched_not_only_the_first() -> None:
    riluzole = terminology.load("riluzole")
    concept = Concept.from_json(
        {
            "coding": [
                {"system": "urn:oid:1.2.840.114350", "code": "LOCAL-1"},
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2265862"},
            ]
        }
    )
    match = riluzole.match(concept)
    assert match is not None and match.kind == "code" and match.code == Code(RXNORM, "2265862")


@pytest.mark.parametrize("code", ["G12.21", "G1221", "g12.21"])
def test_icd10_codes_match_with_or_without_the_dot(code: str) -> None:
    als = terminology.load("als-diagnosis")
    assert als.match(Concept.from_json({"coding": [{"system": ICD10CM, "code": code}]}))


def test_name_match_is_a_whole_word_and_only_where_the_valueset_allows_it() -> None:
    riluzole = terminology.load("riluzole")
    assert riluzole.match(Concept(text="RILUZOLE 50mg tabs")).kind == "name"  # type: ignore[union-attr]
    assert riluzole.match(Concept(codes=(Code("urn:x", "1", "Tiglutik 5 mg/mL"),))) is not None
    assert riluzole.match(Concept(text="ariluzoleb")) is None
    # Conditions never match by name: "ALS" in a text is not a diagnosis code.
    assert terminology.load("als-diagnosis").match(Concept(text="Amyotrophic lateral sclerosis")) is None


def test_excluded_names_do_not_match() -> None:
    vs = terminology.parse_valueset(
        {
            "id": "hyoscine",
            "extension": [
                {"url": "urn:als-cds:match-name", "valueString": "hyoscine"},
                {"url": "urn:als-cds:exclude-name", "valueString": "butylbromide"},
            ],
            "compose": {"include": []},
        }
    )
    assert vs.match(Concept(text="Hyoscine hydrobromide 300 micrograms")) is not None
    assert vs.match(Concept(text="Hyoscine butylbromide 20 mg")) is None


def test_concept_from_messy_json_never_raises() -> None:
    for value in (
        None,
        "text",
        [],
        {"coding": "x"},
        {"coding": [None, {"code": 5}, {"system": 1}]},
        {"text": 5},
    ):
        assert Concept.from_json(value).codes == ()  # type: ignore[arg-type]


def test_a_value_set_remembers_its_answers_and_they_stay_right() -> None:
    """ValueSet.match memoises per concept: the remembered answer is the one computed, equal
    concepts built anew get it, and a full memo starts again rather than growing."""
    import copy
    import pickle

    from cds_service import terminology
    from cds_service.terminology import Code, Concept, ValueSet

    vs = ValueSet("t", "test", frozenset({("http://loinc.org", "1742-6")}), match_names=("alanine",))
    by_code = Concept((Code("http://loinc.org", "1742-6", "ALT"),))
    by_name = Concept((), "Alanine aminotransferase")
    neither = Concept((Code("http://loinc.org", "2345-7"),), "Glucose")
    for concept in (by_code, by_name, neither):
        first = vs.match(concept)
        again = vs.match(Concept(concept.codes, concept.text))  # equal, not the same object
        assert again == first
        assert vs.match(copy.deepcopy(concept)) == first
        assert vs.match(pickle.loads(pickle.dumps(concept))) == first
    assert vs.match(by_code) is not None and vs.match(by_code).kind == "code"
    assert vs.match(by_name) is not None and vs.match(by_name).kind == "name"
    assert vs.match(neither) is None
    for i in range(terminology.MATCH_MEMO_ENTRIES + 10):
        vs.match(Concept((Code("http://loinc.org", f"x-{i}"),)))
    assert len(vs._memo) <= terminology.MATCH_MEMO_ENTRIES  # type: ignore[attr-defined]
    assert vs.match(by_code) is not None
