"""ICD-10-CM codes in value sets are reportable leaves of a named release, or headers that never stand alone.

ICD-10-CM changes every fiscal year: F03.91 ("unspecified dementia with behavioral disturbance") was a
reportable code until FY2022 and is a header since FY2023 (F03.911 with agitation, F03.918 with other
behavioural disturbance). A value set that lists only the header misses every chart coded since then.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cds_service import terminology
from cds_service.terminology import ICD10CM, Concept

#: Value sets whose ICD-10-CM codes have been checked code by code against a named release.
CHECKED_AGAINST_A_RELEASE = ("cognitive-impairment", "sialorrhoea", "cramp")


def _icd10cm_concepts(valueset_id: str) -> list[dict[str, Any]]:
    raw = json.loads((terminology.VALUESET_DIR / f"{valueset_id}.json").read_text())
    return [c for inc in raw["compose"]["include"] if inc["system"] == ICD10CM for c in inc["concept"]]


def _note(concept: dict[str, Any]) -> str:
    return next(e["valueString"] for e in concept["extension"] if e["url"] == "urn:als-cds:checked")


def _icd(code: str) -> Concept:
    return Concept.from_json({"coding": [{"system": ICD10CM, "code": code}]})


@pytest.mark.parametrize("valueset_id", CHECKED_AGAINST_A_RELEASE)
def test_every_icd10cm_code_says_which_release_confirmed_its_status(valueset_id: str) -> None:
    for concept in _icd10cm_concepts(valueset_id):
        note = _note(concept)
        assert "icd10cm_codes_2023.txt" in note, concept["code"]
        assert ("reportable leaf" in note) != ("HEADER" in note), concept["code"]


@pytest.mark.parametrize("valueset_id", terminology.all_valueset_ids())
def test_a_header_code_never_stands_alone(valueset_id: str) -> None:
    concepts = _icd10cm_concepts(valueset_id)
    codes = {c["code"] for c in concepts}
    for concept in concepts:
        if "HEADER" in _note(concept):
            leaves = {c for c in codes if c != concept["code"] and c.startswith(concept["code"])}
            assert leaves, f"{valueset_id}: header {concept['code']} without its leaves"


@pytest.mark.parametrize(
    "code",
    ["F03.911", "F03.918", "F03.90", "F03.92", "F03.A0", "F03.C4", "F01.511", "F02.818", "G30.9", "G31.84"],
)
def test_current_dementia_leaves_count_as_impaired_cognition(code: str) -> None:
    assert terminology.load("cognitive-impairment").match(_icd(code)) is not None


@pytest.mark.parametrize("code", ["F03.91", "F02.81", "F01.51"])
def test_pre_fy2023_codes_still_match_older_records(code: str) -> None:
    assert terminology.load("cognitive-impairment").match(_icd(code)) is not None


@pytest.mark.parametrize("code", ["R41.82", "R41.89", "F03", "F06.8", "G12.21"])
def test_neighbouring_codes_are_not_impaired_cognition(code: str) -> None:
    assert terminology.load("cognitive-impairment").match(_icd(code)) is None


def test_icd10cm_dementia_leaves_are_written_with_or_without_the_dot() -> None:
    assert terminology.load("cognitive-impairment").match(_icd("F03911")) is not None
