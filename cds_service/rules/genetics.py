"""Genetics: offer genetic testing to every person with ALS who has no ALS genetic result on record.

Source (details and verification status in cards/genetic-testing-offer.toml):

* Roggenbuck J, et al. Evidence-based consensus guidelines for ALS genetic testing and counseling.
  Ann Clin Transl Neurol 2023;10(11):2074-2091 (35 statements, modified Delphi): "all persons with ALS
  should be offered single-step genetic testing, consisting of a C9orf72 assay, along with sequencing
  of SOD1, FUS, and TARDBP, at a minimum", with education and genetic risk assessment before and after
  testing. (The rule request cited it as Neurology Genetics; the journal is ACTN.)
* Tofersen (Qalsody) is for ALS with a SOD1 mutation (FDA accelerated approval 25 April 2023; EU and
  MHRA authorisations for SOD1-ALS): a genetic result now decides eligibility.

Scope: the ALS form (`scope="als"`): the consensus is about persons with ALS. No look-back: a germline
result does not go stale, so a result of any age counts, and the card never comes back once one is
recorded.

What counts as a genetic result on record (the card stays silent), whatever it found:

1. A SOD1 result, recognised exactly as the tofersen-sod1 rule recognises it (`dmt.sod1_results`):
   positive, negative, inconclusive or unreadable, it shows the test was done.
2. An Observation naming C9orf72, FUS or TARDBP (HGNC identifier, or the symbol in a text) in the same
   places dmt.py looks for SOD1: its code, a "Gene studied" (LOINC 48018-6) component, or its value when
   the Observation itself is a gene-studied result. No LOINC test code for these genes was found, so, as
   for SOD1, a result is recognised by its gene.
3. A Procedure done or in progress that is a genetic test (SNOMED CT 405824009 / 405825005, or named a
   genetic test or gene panel) and names one of the four genes. A genetic test naming none of them (a
   cancer panel) does not count: the card says it was seen and not counted.

Results held only in a letter, a scanned report or a DiagnosticReport without Observations are not
read (the card says so).
"""

from __future__ import annotations

from collections.abc import Iterator

from cds_service import terminology
from cds_service.record import Interest, ObservationFact, PatientRecord, first_match
from cds_service.rules import dmt
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import day, patient_reference
from cds_service.terminology import Concept, ValueSet

C9ORF72 = terminology.load("gene-c9orf72")
FUS = terminology.load("gene-fus")
TARDBP = terminology.load("gene-tardbp")
GENETIC_TEST = terminology.load("genetic-test")

#: The genes the 2023 consensus names as the minimum to test, in the order it names them.
ALS_GENES: tuple[tuple[str, ValueSet], ...] = (
    ("C9orf72", C9ORF72),
    ("SOD1", dmt.SOD1),
    ("FUS", FUS),
    ("TARDBP", TARDBP),
)
GENE_LIST = "C9orf72, SOD1, FUS or TARDBP"

#: At most this many genetic tests that do not count are named on the card (the rest are counted).
_SHOWN = 2


def _gene_concepts(obs: ObservationFact) -> Iterator[Concept]:
    """Where a result names its gene: the code, gene-studied components, or a gene-studied value."""
    yield obs.concept
    if dmt.GENE_STUDIED.match(obs.concept) is not None:
        yield obs.value_concept
        if obs.value_string:
            yield Concept(text=obs.value_string)
    for component in obs.components:
        if dmt.GENE_STUDIED.match(component.concept) is not None:
            yield component.value_concept
            if component.value_string:
                yield Concept(text=component.value_string)


def genes_named(concepts: list[Concept]) -> list[str]:
    """The ALS genes (of the four) these concepts name, in consensus order."""
    return [symbol for symbol, valueset in ALS_GENES if first_match(valueset, concepts) is not None]


def als_genetic_results(record: PatientRecord) -> list[str]:
    """One short description per ALS genetic result or ALS genetic test on record (empty: none)."""
    found = [f"SOD1 result ({day(r.observation.effective)})" for r in dmt.sod1_results(record)]
    # A chart repeats a few result codes many times (and the reader shares equal concepts): a plain
    # result's code is looked up once per concept, not once per result.
    plain: dict[int, tuple[Concept, list[str]]] = {}
    for obs in record.observations_naming(_GENE_VALUESETS):
        if "effective" in obs.unreadable:
            continue  # as dmt.sod1_results: a date from the future is a data error, not a result
        if obs.components or obs.value_string or obs.value_concept.codes or obs.value_concept.text:
            named = genes_named(list(_gene_concepts(obs)))
        else:  # only the code can name a gene
            hit = plain.get(id(obs.concept))
            if hit is None or hit[0] is not obs.concept:
                hit = plain[id(obs.concept)] = (obs.concept, genes_named([obs.concept]))
            named = hit[1]
        genes = [g for g in named if g != "SOD1"]
        if genes:
            found.append(f"{', '.join(genes)} result ({day(obs.effective)})")
    for proc in record.procedures_in(GENETIC_TEST):
        genes = genes_named(list(proc.concepts))
        if genes:
            found.append(f"genetic test naming {', '.join(genes)} ({proc.status}, {day(proc.when)})")
    return found


def _other_genetic_tests(record: PatientRecord) -> list[str]:
    """Genetic tests and results on record that name none of the four genes (seen, not counted)."""
    seen = [
        f"{proc.concept.label} ({day(proc.when)})"
        for proc in record.procedures_in(GENETIC_TEST)
        if not genes_named(list(proc.concepts))
    ]
    for obs in record.observations_matching(dmt.GENETIC_VARIANT_OBSERVATION):
        concepts = list(_gene_concepts(obs))
        if genes_named(concepts):
            continue
        genes = ", ".join(dict.fromkeys(c.label for c in concepts[1:] if c.codes or c.text))
        seen.append(f"{obs.concept.label}{f' of {genes}' if genes else ''} ({day(obs.effective)})")
    return seen


def genetic_testing_offer(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    if als_genetic_results(record):
        return []
    evidence = [f"No genetic result or genetic test naming {GENE_LIST} in the data received."]
    others = _other_genetic_tests(record)
    if others:
        shown = "; ".join(others[:_SHOWN])
        more = f"; and {len(others) - _SHOWN} more" if len(others) > _SHOWN else ""
        evidence.append(f"Genetic tests on record for other genes (not counted): {shown}{more}.")
    unread = record.unread_note([dmt.GENETIC_VARIANT_OBSERVATION, dmt.SOD1, C9ORF72, FUS, TARDBP], "genetic")
    if unread is not None:
        evidence.append(unread)
    return [
        Finding(
            rule_id="genetic-testing-offer",
            fields={},
            evidence=tuple(evidence),
            bindings={"patient_reference": patient_reference(record)},
        )
    ]


_GENE_VALUESETS = tuple(valueset for _, valueset in ALS_GENES)

GENETIC_TESTING_OFFER = Rule(
    id="genetic-testing-offer",
    title="ALS: offer genetic testing (no ALS genetic result on record)",
    hooks=frozenset({"patient-view"}),
    reads=Interest(
        {
            "Observation": (dmt.GENETIC_VARIANT_OBSERVATION, *_GENE_VALUESETS),
            "Procedure": (GENETIC_TEST,),
        }
    ),
    evaluate=genetic_testing_offer,
    trigger=(
        "ALS and no genetic result on record for C9orf72, SOD1, FUS or TARDBP (an Observation naming the "
        "gene, whatever it found), and no genetic test done or in progress that names one of them; any age "
        "of result counts."
    ),
    facts=(
        RuleFact(
            "Who is offered testing",
            "every person with ALS, whatever the family history",
            "roggenbuck-2023",
            "Consensus summary: 'all persons with ALS should be offered single-step genetic testing'. Scope "
            "'als' (the gate's ALS form, which counts progressive bulbar palsy, familial and unspecified MND "
            "as ALS).",
        ),
        RuleFact(
            "Minimum genes",
            "C9orf72 repeat-expansion assay, and sequencing of SOD1, FUS and TARDBP",
            "roggenbuck-2023",
            "'consisting of a C9orf72 assay, along with sequencing of SOD1, FUS, and TARDBP, at a minimum'.",
        ),
        RuleFact(
            "Counselling",
            "education and genetic risk assessment before and after testing",
            "roggenbuck-2023",
            "Consensus summary ('key education and genetic risk assessments that should be provided before "
            "and after testing'); the statements themselves were not read (full text not obtained).",
        ),
        RuleFact(
            "Why now: tofersen",
            "tofersen (Qalsody) is for ALS with a SOD1 mutation",
            "qalsody-approval",
            "FDA accelerated approval 25 April 2023 (indication: ALS in adults with a SOD1 mutation).",
        ),
        RuleFact(
            "What counts as a result on record",
            "any SOD1 result as tofersen-sod1 reads it (positive, negative, inconclusive or unreadable); any "
            "Observation naming C9orf72, FUS or TARDBP; a genetic test Procedure (completed or in progress) "
            "naming one of the four genes",
            "genomics-reporting-ig",
            "Design: gene named by HGNC id or symbol in the code, a 'Gene studied' (LOINC 48018-6) component "
            "or a gene-studied value, as dmt.py does for SOD1; no gene-specific LOINC test code was found. A "
            "result's finding does not matter: the question is whether testing was done.",
        ),
        RuleFact(
            "Gene identifiers",
            "SOD1 HGNC:11179 (verified); C9orf72 HGNC:28337, FUS HGNC:4010, TARDBP HGNC:11571 "
            "(corroborated); symbols in a text also match",
            "hgnc-ids",
        ),
        RuleFact(
            "Genetic test procedure codes",
            "SNOMED CT 405824009 Genetic test, 405825005 Molecular genetic test, or 'genetic test' / 'gene "
            "panel' in the text; counted only when the procedure also names one of the four genes",
            "genetic-test-codes",
        ),
        RuleFact(
            "Look-back",
            "none: a genetic result or test of any date counts",
            "roggenbuck-2023",
            "Design: a germline result does not change, so no retest interval is applied (the consensus "
            "full text, and any retest advice in it, was not read).",
        ),
        RuleFact(
            "Suggested orders",
            "SNOMED CT 306250006 Referral to genetic counselor; 405825005 Molecular genetic test",
            "referral-codes",
            "306250006 from the VSAC 'Referral' value set (verified); 405825005 from the MII molecular "
            "genetics IG examples (verified, see genetic-test-codes).",
        ),
    ),
    scope="als",
)

RULES: tuple[Rule, ...] = (GENETIC_TESTING_OFFER,)
