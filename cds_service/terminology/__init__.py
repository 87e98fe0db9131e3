"""Value sets and code matching.

Real EHR data says one thing in many ways: a riluzole order may carry an RxNorm ingredient code,
a product-level (SCD/SBD) code, an OID instead of the RxNorm URI, a local code and only a text.
Matching therefore looks at every coding of a concept, normalises code systems and ICD-10 code
spellings, and, for value sets that allow it (medications), falls back to the ingredient or brand
name in the text or displays. The match says how it matched, so a card can say "matched by name".

Value sets are FHIR ValueSet JSON files in `valuesets/`, one per concept, each code with the
source where it was checked (extension `urn:als-cds:checked`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

VALUESET_DIR = Path(__file__).parent / "valuesets"

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"

# Other spellings of the same code systems seen in real traffic: HL7 OIDs (Epic sends RxNorm as
# urn:oid:2.16.840.1.113883.6.88), trailing slashes, SNOMED CT edition URIs.
_SYSTEM_ALIASES: dict[str, str] = {
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.3": ICD10,
    "urn:oid:2.16.840.1.113883.6.8": UCUM,
}
_ICD_SYSTEMS = frozenset({ICD10CM, ICD10})

_CHECKED_EXT = "urn:als-cds:checked"
_MATCH_NAME_EXT = "urn:als-cds:match-name"
_EXCLUDE_NAME_EXT = "urn:als-cds:exclude-name"
#: Results of this value set stay relevant for life (a genetic result): fetched without a date window.
_FULL_HISTORY_EXT = "urn:als-cds:full-history"


def normalise_system(system: str | None) -> str:
    """Map a code system URI to its canonical FHIR form ('' when absent)."""
    if not system:
        return ""
    system = system.strip()
    if system in _SYSTEM_ALIASES:
        return _SYSTEM_ALIASES[system]
    stripped = system.rstrip("/")
    if stripped.startswith(SNOMED):  # http://snomed.info/sct/900000000000207008 (edition URI)
        return SNOMED
    return _SYSTEM_ALIASES.get(stripped, stripped)


def normalise_code(system: str, code: str) -> str:
    """ICD-10 codes are compared without the dot and in upper case (G12.21 == G1221 == g12.21)."""
    code = code.strip()
    if system in _ICD_SYSTEMS:
        return code.replace(".", "").upper()
    return code


@dataclass(frozen=True, slots=True)
class Code:
    """One coding as the matchers see it: canonical system, comparable code, display for humans."""

    system: str
    code: str
    display: str | None = None
    #: (system, comparable code): computed once, since every value-set lookup of the code uses it.
    key: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.system, normalise_code(self.system, self.code)))


@dataclass(frozen=True, slots=True)
class Concept:
    """A CodeableConcept reduced to what matching and card text need: every coding, and the text."""

    codes: tuple[Code, ...] = ()
    text: str | None = None
    # Concepts are looked up in dicts many times a call (a value set's memo, the record's groups):
    # the hash of their codes and text, computed once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.codes, self.text)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt, not restored: a string's hash differs between processes.
        return (Concept, (self.codes, self.text))

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Concept:
        """Build from raw FHIR JSON: cheap enough to run on every resource of a large chart."""
        if not isinstance(value, Mapping):
            return cls()
        codes: list[Code] = []
        codings = value.get("coding")
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                display = coding.get("display")
                system = coding.get("system")
                codes.append(
                    Code(
                        normalise_system(system if isinstance(system, str) else None),
                        coding["code"],
                        display if isinstance(display, str) else None,
                    )
                )
        text = value.get("text")
        return cls(tuple(codes), text if isinstance(text, str) else None)

    @property
    def label(self) -> str:
        """The most human name the data offers."""
        if self.text:
            return self.text
        for code in self.codes:
            if code.display:
                return code.display
        return self.codes[0].code if self.codes else "(no name)"

    def names(self) -> Iterable[str]:
        if self.text:
            yield self.text
        for code in self.codes:
            if code.display:
                yield code.display


#: The concept of a field that was absent or unreadable: one shared object (concepts are frozen).
NO_CONCEPT = Concept()


@dataclass(frozen=True, slots=True)
class Match:
    """Why a concept belongs to a value set: by which code, or by which name in its text."""

    valueset: str
    kind: Literal["code", "name"]
    code: Code | None = None
    name: str | None = None

    def describe(self) -> str:
        if self.kind == "code" and self.code is not None:
            return f"code {self.code.code}"
        return f"name '{self.name}' in the text (no known code)"

    @property
    def caveat(self) -> str | None:
        """What a clinician should know about how this was recognised, for a card: nothing when a
        code matched (codes are machine text a card does not show); when only a name in free text
        did, that no code backs it, a weaker identification worth a second look."""
        return None if self.kind == "code" else "named in free text, no code"


_G = TypeVar("_G")

#: Concepts a value set remembers its answer for (`ValueSet.match`).
MATCH_MEMO_ENTRIES = 1024  # per value set (about a hundred): a few MB at most in all


@dataclass(frozen=True)
class ValueSet:
    id: str
    title: str
    codes: frozenset[tuple[str, str]]
    match_names: tuple[str, ...] = ()
    exclude_names: tuple[str, ...] = ()
    full_history: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "_name_re", _word_pattern(self.match_names))
        object.__setattr__(self, "_exclude_re", _word_pattern(self.exclude_names))
        object.__setattr__(self, "_memo", {})

    def match(self, concept: Concept) -> Match | None:
        """Match every coding first; fall back to names only where the value set allows it.

        Remembered per concept (at most `MATCH_MEMO_ENTRIES`, then forgotten all at once): the same
        few concepts (ALT, riluzole, ALS) arrive in call after call, and matching a name is a
        regular-expression search. Concepts and matches are frozen, so a remembered answer is the
        answer."""
        memo: dict[int, tuple[Concept, Match | None]] = self._memo  # type: ignore[attr-defined]
        # By the concept's identity (a read shares its concepts, and a process its well-formed
        # ones: `reader.fields.concept_of_strings`), not its value: a Concept's hash is a Python
        # call, and the rules ask a few hundred questions a call. The entry holds the concept, so
        # its id cannot be reused while it is remembered; an equal concept that is another object
        # is matched again, to the same answer.
        hit = memo.get(id(concept))
        if hit is not None and hit[0] is concept:
            return hit[1]
        found = self._match(concept)
        if len(memo) >= MATCH_MEMO_ENTRIES:
            memo.clear()
        memo[id(concept)] = (concept, found)
        return found

    def match_groups(
        self, groups: Mapping[tuple[Concept, ...], _G], codes: AbstractSet[tuple[str, str]] | None = None
    ) -> list[tuple[_G, Match]]:
        """(group, match) for each group of facts whose concepts the set matches (the first that
        does), in the groups' order: what `PatientRecord` asks of every list it matches, with the
        memo read here rather than through a call of `match` for each group.

        `codes`: every code (`Code.key`) of the groups' concepts, when the caller keeps them. A set
        that matches by code alone (no names) and holds none of them matches no group: answered by
        one set operation (some 40 % of a chart's questions to its lists, for 100 results)."""
        if codes is not None and self._name_re is None and self.codes.isdisjoint(codes):  # type: ignore[attr-defined]
            return []
        memo: dict[int, tuple[Concept, Match | None]] = self._memo  # type: ignore[attr-defined]
        found = []
        for concepts, group in groups.items():
            match = None
            for concept in concepts:
                hit = memo.get(id(concept))
                match = hit[1] if hit is not None and hit[0] is concept else self.match(concept)
                if match is not None:
                    found.append((group, match))
                    break
        return found

    def _match(self, concept: Concept) -> Match | None:
        for code in concept.codes:
            if code.key in self.codes:
                return Match(self.id, "code", code=code)
        name_re: re.Pattern[str] | None = self._name_re  # type: ignore[attr-defined]
        if name_re is None:
            return None
        exclude_re: re.Pattern[str] | None = self._exclude_re  # type: ignore[attr-defined]
        for name in concept.names():
            if exclude_re is not None and exclude_re.search(name):
                continue
            found = name_re.search(name)
            if found:
                return Match(self.id, "name", name=found.group(0).lower())
        return None


def _word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    words = [w for w in words if w]
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


def parse_valueset(resource: Mapping[str, Any]) -> ValueSet:
    """Read our ValueSet JSON: compose.include concepts, plus the name-matching extensions."""
    codes: set[tuple[str, str]] = set()
    for include in resource.get("compose", {}).get("include", []):
        system = normalise_system(include["system"])
        for concept in include.get("concept", []):
            if not any(ext.get("url") == _CHECKED_EXT for ext in concept.get("extension", [])):
                raise ValueError(
                    f"value set {resource['id']}: code {concept['code']} does not say where it was checked"
                )
            codes.add(Code(system, concept["code"]).key)
    extensions = resource.get("extension", [])
    return ValueSet(
        id=resource["id"],
        title=resource.get("title", resource["id"]),
        codes=frozenset(codes),
        match_names=tuple(e["valueString"] for e in extensions if e.get("url") == _MATCH_NAME_EXT),
        exclude_names=tuple(e["valueString"] for e in extensions if e.get("url") == _EXCLUDE_NAME_EXT),
        full_history=any(e.get("url") == _FULL_HISTORY_EXT and e.get("valueBoolean") for e in extensions),
    )


@cache
def load(valueset_id: str) -> ValueSet:
    """Load a bundled value set by id (cached: value sets are immutable data)."""
    path = VALUESET_DIR / f"{valueset_id}.json"
    return parse_valueset(json.loads(path.read_text(encoding="utf-8")))


def all_valueset_ids() -> list[str]:
    return sorted(p.stem for p in VALUESET_DIR.glob("*.json"))
