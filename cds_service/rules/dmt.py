"""Edaravone, tofersen and sodium phenylbutyrate/taurursodiol (Relyvrio): regimens, eligibility, withdrawal.

Sources (details and verification status in each rule's card file):

* Radicava / Radicava ORS US Prescribing Information 2.1: "RADICAVA: an intravenous infusion of
  60 mg administered over a 60-minute period. RADICAVA ORS: 105 mg (5 mL) taken orally or via
  feeding tube in the morning after overnight fasting"; an initial cycle of daily dosing for 14
  days then 14 days off, then daily dosing for 10 days out of 14-day periods, each followed by 14
  days off. W&P 5.2: both products contain sodium bisulfite (sulfite allergic-type reactions).
* Qalsody (tofersen): for ALS with a mutation in SOD1 (FDA accelerated approval, 25 April 2023);
  100 mg intrathecally, 3 loading doses at 14-day intervals, then every 28 days.
* Relyvrio / Albrioza (AMX0035): Amylyx began withdrawing the US and Canadian marketing
  authorisations on 4 April 2024 after the PHOENIX trial; no new prescriptions, existing patients
  could move to a free-drug programme.

How a SOD1 variant is recognised (rule tofersen-sod1), since no SOD1-specific LOINC test code or
SNOMED CT code for SOD1-ALS was found:

1. An Observation is a SOD1 result when it names the gene SOD1 (HGNC:11179, or the symbol in a
   text): in a "Gene studied [ID]" (LOINC 48018-6) component, in its value, or in its code (a lab's
   local single-gene test). A result that names other genes as well is not specific to SOD1, and a
   variant counts only when the gene result itself (gene-studied component, value or answer) names
   SOD1: a test name alone may be a panel.
2. Its answers are read from the value, the components (other than the gene) and the
   interpretation. Codes decide where present (LOINC answers: Present / Pathogenic / Likely
   pathogenic; Absent / Benign / Likely benign; Uncertain significance / No call), otherwise words
   in the text, negative words first ("no pathogenic variant detected" is negative). A component
   naming the variant (c.HGVS 48004-6, p.HGVS 48005-3, discrete variant 81252-9) counts as a
   variant found.
3. Only a result that shows a variant and nothing against it counts as a recorded SOD1 variant.
   Negative, uncertain (VUS, no call), conflicting and unreadable results do not: the card then
   says what was found. A germline result does not go stale: its age does not matter.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from cds_service import terminology
from cds_service.record import (
    DraftOrder,
    Interest,
    MedicationFact,
    MedicationMatch,
    ObservationFact,
    PatientRecord,
    Quantity,
)
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact
from cds_service.rules.evidence import caveat, clip, day, order_line
from cds_service.terminology import Concept, units

EDARAVONE = terminology.load("edaravone")
EDARAVONE_IV = terminology.load("edaravone-iv")
EDARAVONE_ORAL = terminology.load("edaravone-oral")
ROUTE_INTRAVENOUS = terminology.load("route-intravenous")
ROUTE_ENTERAL = terminology.load("route-enteral")
SULFITE_ALLERGY = terminology.load("sulfite-allergy")
TOFERSEN = terminology.load("tofersen")
RELYVRIO = terminology.load("relyvrio")
SOD1 = terminology.load("sod1")
GENETIC_VARIANT_OBSERVATION = terminology.load("genetic-variant-observation")
GENE_STUDIED = terminology.load("gene-studied")
VARIANT_HGVS = terminology.load("variant-hgvs")
VARIANT_PRESENT = terminology.load("variant-present")
VARIANT_NOT_FOUND = terminology.load("variant-not-found")
VARIANT_UNCERTAIN = terminology.load("variant-uncertain")

#: Radicava PI 2.1: "an intravenous infusion of 60 mg administered over a 60-minute period".
IV_DOSE_MG = Decimal(60)
IV_INFUSION_MINUTES = Decimal(60)
#: Radicava PI 2.1: "RADICAVA ORS: 105 mg (5 mL)"; the suspension is 21 mg/mL (RxNorm SCD 2602117).
ORS_DOSE_MG = Decimal(105)
ORS_MG_PER_ML = Decimal(21)
#: Both products: one dose a day on dosing days (PI 2.1 "daily dosing").
DOSES_PER_DOSING_DAY = Decimal(1)

Form = Literal["iv", "oral"]
_FORM_LABEL: dict[Form, str] = {"iv": "IV", "oral": "oral suspension (ORS)"}
_LABEL_DOSE: dict[Form, str] = {
    "iv": "60 mg IV over 60 minutes, once daily on dosing days",
    "oral": "105 mg (5 mL) by mouth or feeding tube, in the morning after an overnight fast",
}
_LABEL_DOSE_SHORT: dict[Form, str] = {"iv": "60 mg over 60 min", "oral": "105 mg (5 mL)"}
_UCUM = "http://unitsofmeasure.org"
_MG_SPELLINGS = frozenset({"mg", "milligram", "milligrams"})


# --------------------------------------------------------------------------------------------
# Shared helpers


def _draft_bindings(order: DraftOrder) -> tuple[str | None, dict[str, Any]]:
    """Variant and bindings for a card whose suggestion deletes the draft: no id, no delete."""
    if order.reference is None:
        return "no-draft-id", {}
    return None, {"draft_reference": order.reference}


def _relyvrio_prescriptions(record: PatientRecord) -> list[MedicationMatch]:
    return record.active_medications(RELYVRIO)


def relyvrio_withdrawn(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    current = _relyvrio_prescriptions(record)
    if not current:
        return []
    evidence = [
        f"Active prescription: {m.fact.concept.label} ({m.fact.status}, authored "
        f"{day(m.fact.authored_on)}{caveat(m.match)})."
        for m in current
    ]
    return [
        Finding(
            rule_id="relyvrio-withdrawn",
            fields={"drug": clip(current[0].fact.concept.label, 50)},
            evidence=tuple(evidence),
        )
    ]


def relyvrio_order(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    findings = []
    for order, match in record.draft_orders_in(RELYVRIO):
        variant, bindings = _draft_bindings(order)
        findings.append(
            Finding(
                rule_id="relyvrio-order",
                fields={"drug": clip(order.concept.label, 50)},
                evidence=(order_line(order, match),),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# Edaravone: sulfite allergy


def edaravone_sulfite_allergy(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = record.draft_orders_in(EDARAVONE)
    if not orders:
        return []
    allergies = record.allergies_in(SULFITE_ALLERGY)
    if not allergies:
        return []
    allergy_lines = []
    for allergy in allergies:
        found = allergy.match(SULFITE_ALLERGY)
        criticality = allergy.criticality or "criticality not recorded"
        verification = allergy.verification_status
        allergy_lines.append(
            f"Recorded allergy/intolerance: {allergy.concept.label} "
            f"({allergy.status or 'status not recorded'}, {verification or 'verification not recorded'}, "
            f"{criticality}{caveat(found)})."
        )
    findings = []
    for order, match in orders:
        variant, bindings = _draft_bindings(order)
        findings.append(
            Finding(
                rule_id="edaravone-sulfite-allergy",
                fields={"allergy": clip(allergies[0].concept.label, 50)},
                evidence=(order_line(order, match), *allergy_lines),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# Edaravone: regimen


def product_form(concept: Concept) -> Form | None:
    """IV bag or oral suspension, from the product code first, then from form words in the text."""
    iv = EDARAVONE_IV.match(concept)
    oral = EDARAVONE_ORAL.match(concept)
    iv_code = iv is not None and iv.kind == "code"
    oral_code = oral is not None and oral.kind == "code"
    if iv_code != oral_code:
        return "iv" if iv_code else "oral"
    if iv_code and oral_code:
        return None
    if (iv is None) != (oral is None):
        return "iv" if iv is not None else "oral"
    return None


def route_form(route: Concept) -> Form | None:
    iv = ROUTE_INTRAVENOUS.match(route)
    enteral = ROUTE_ENTERAL.match(route)
    if (iv is None) == (enteral is None):
        return None
    return "iv" if iv is not None else "oral"


def dose_in_mg(dose: Quantity | None, form: Form | None) -> Decimal | None:
    """The dose in mg; None when it cannot be read.

    units.convert has no 'mg' (shared change requested), so mg is read here; other mass units go
    through units.convert. Millilitres are read only for the oral suspension, whose strength
    (21 mg/mL) is fixed; IV bags come in two strengths, so a volume there is not a dose.
    """
    if dose is None:
        return None
    unit = dose.code if dose.code and dose.system in (None, _UCUM) else (dose.unit or dose.code)
    if unit is not None and unit.strip().lower() in _MG_SPELLINGS:
        return dose.value
    grams = units.convert(dose, "g")
    if grams is not None:
        return grams * 1000
    if form == "oral":
        millilitres = units.convert(dose, "mL")
        if millilitres is not None:
            return millilitres * ORS_MG_PER_ML
    return None


def _infusion_minutes(med: MedicationFact) -> tuple[bool, Decimal | None]:
    """(given, minutes): the infusion duration of the first dosage, when stated and readable."""
    dosage = med.dosage
    if dosage is None or dosage.duration is None:
        return False, None
    factor = {"s": Decimal(1) / 60, "min": Decimal(1), "h": Decimal(60)}.get(dosage.duration_unit or "")
    return True, (dosage.duration * factor) if factor is not None else None


def _number(value: Decimal) -> str:
    return f"{value.normalize():f}"


@dataclass
class _RegimenCheck:
    form: Form | None
    ordered: str
    ordered_dose: str
    problems: list[str]
    unreadable: list[str]
    dose_differs: bool


def _check_regimen(order: DraftOrder) -> _RegimenCheck:
    med = order.medication
    dosage = med.dosage if med is not None else None
    product = product_form(order.concept)
    route = route_form(dosage.route) if dosage is not None else None
    problems: list[str] = []
    unreadable: list[str] = []
    if product is not None and route is not None and product != route:
        problems.append(
            f"the route ({dosage.route.label if dosage else ''}) does not fit the product "
            f"({_FORM_LABEL[product]})"
        )
    form = product or route
    if form is None:
        unreadable.append("IV or oral suspension could not be told from the product or the route")

    dose = dosage.dose if dosage is not None else None
    mg = dose_in_mg(dose, form)
    parts = []
    ordered_dose = (
        f"{_number(mg)} mg" if mg is not None else (str(dose) if dose is not None else "not stated")
    )
    if dose is None:
        unreadable.append("no structured dose")
        parts.append("dose not stated")
    elif mg is None:
        unreadable.append(f"dose '{dose}' cannot be read as mg")
        parts.append(str(dose))
    else:
        parts.append(f"{_number(mg)} mg" + (f" ({dose})" if str(dose) != f"{_number(mg)} mg" else ""))

    dose_differs = False
    if form is not None and mg is not None:
        expected = IV_DOSE_MG if form == "iv" else ORS_DOSE_MG
        if mg != expected:
            dose_differs = True
            problems.append(f"the dose {_number(mg)} mg is not the label dose {_number(expected)} mg")

    per_day = dosage.per_day if dosage is not None else None
    if per_day is not None:
        parts.append(f"{_number(per_day)} dose(s) a day")
        if per_day != DOSES_PER_DOSING_DAY:
            problems.append(f"{_number(per_day)} doses a day instead of one")
    if form == "iv" and med is not None:
        given, minutes = _infusion_minutes(med)
        if given and minutes is None:
            unreadable.append("the infusion duration's unit cannot be read")
        elif minutes is not None:
            parts.append(f"infused over {_number(minutes)} min")
            if minutes != IV_INFUSION_MINUTES:
                problems.append(f"infusion over {_number(minutes)} minutes instead of 60")
    if dosage is not None and dosage.text:
        parts.append(f"'{clip(dosage.text, 80)}'")
    return _RegimenCheck(form, ", ".join(parts), clip(ordered_dose, 30), problems, unreadable, dose_differs)


def _corrected_order(order: DraftOrder, form: Form) -> dict[str, Any]:
    """The draft with the label dose (the rest of the order unchanged)."""
    resource = copy.deepcopy(dict(order.resource))
    if order.id and "id" not in resource:
        resource["id"] = order.id
    value = IV_DOSE_MG if form == "iv" else ORS_DOSE_MG
    dose = {"value": int(value), "unit": "mg", "system": _UCUM, "code": "mg"}
    instructions = resource.setdefault("dosageInstruction", [{}])
    first = instructions[0]
    first["doseAndRate"] = [
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/dose-rate-type", "code": "ordered"}
                ]
            },
            "doseQuantity": dose,
        }
    ]
    return resource


def edaravone_regimen(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    findings = []
    for order, match in record.draft_orders_in(EDARAVONE):
        if order.medication is None:
            continue  # not a medication order (e.g. an infusion ServiceRequest): no dose to check
        check = _check_regimen(order)
        form = check.form
        evidence = [order_line(order, match), f"Ordered: {check.ordered}."]
        evidence += [f"Could not check: {item}." for item in check.unreadable]
        evidence += [f"Differs from the label: {item}." for item in check.problems]
        bindings: dict[str, Any] = {}
        if check.dose_differs and form is not None:
            variant: str | None = "dose-differs"
            bindings["updated_order"] = _corrected_order(order, form)
        elif check.problems:
            variant = "schedule-differs"
        elif check.unreadable:
            variant = "check"
        else:
            variant = None
        findings.append(
            Finding(
                rule_id="edaravone-regimen",
                fields={
                    "route": _FORM_LABEL[form] if form else "route not recorded",
                    "label_dose": _LABEL_DOSE[form]
                    if form
                    else "60 mg IV over 60 minutes, or 105 mg (5 mL) ORS",
                    "ordered": check.ordered,
                    "label_dose_short": _LABEL_DOSE_SHORT[form] if form else "60 mg IV or 105 mg ORS",
                    "ordered_dose": check.ordered_dose,
                    "problem": "; ".join(check.problems or check.unreadable) or "none",
                },
                evidence=tuple(evidence),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# Tofersen: SOD1


Verdict = Literal["variant", "negative", "uncertain", "unreadable"]


@dataclass(frozen=True)
class Sod1Result:
    observation: ObservationFact
    verdict: Verdict
    detail: str

    def line(self) -> str:
        when = day(self.observation.effective)
        return f"SOD1 result {self.observation.concept.label} ({when}): {self.detail}."


def _names(concepts: Iterable[Concept]) -> str:
    return ", ".join(dict.fromkeys(c.label for c in concepts if c.codes or c.text))


def _string_values(text: str | None) -> Iterator[Concept]:
    if text and text.strip():
        yield Concept(text=text)


def _genes_and_answers(obs: ObservationFact) -> tuple[list[Concept], list[Concept], bool]:
    """(genes named, answers, a variant-describing component is present)."""
    genes: list[Concept] = []
    answers: list[Concept] = []
    hgvs = False
    if GENE_STUDIED.match(obs.concept):
        genes.append(obs.value_concept)
        genes.extend(_string_values(obs.value_string))
    else:
        answers.append(obs.value_concept)
        answers.extend(_string_values(obs.value_string))
    for component in obs.components:
        code = component.concept
        values = [component.value_concept, *_string_values(component.value_string)]
        if GENE_STUDIED.match(code):
            genes.extend(values)
        elif VARIANT_HGVS.match(code):
            hgvs = hgvs or any(v.codes or v.text for v in values)
        else:
            answers.extend(values)
    answers.extend(obs.interpretation)
    return [g for g in genes if g.codes or g.text], [a for a in answers if a.codes or a.text], hgvs


def _answer_kind(answer: Concept) -> str | None:
    """'negative', 'uncertain' or 'variant': codes decide first, then words (negative words first)."""
    ordered = (
        ("negative", VARIANT_NOT_FOUND),
        ("uncertain", VARIANT_UNCERTAIN),
        ("variant", VARIANT_PRESENT),
    )
    matches = [(kind, vs.match(answer)) for kind, vs in ordered]
    for kind, found in matches:
        if found is not None and found.kind == "code":
            return kind
    for kind, found in matches:
        if found is not None:
            return kind
    return None


def classify_sod1(obs: ObservationFact) -> Sod1Result | None:
    """The SOD1 verdict of one observation; None when it is not a SOD1 result."""
    genes, answers, hgvs = _genes_and_answers(obs)
    names_sod1 = SOD1.match(obs.concept) is not None or any(SOD1.match(g) for g in genes)
    if not names_sod1:
        return None
    other_genes = [g for g in genes if SOD1.match(g) is None]
    kinded = [(a, _answer_kind(a)) for a in answers]
    kinds = {kind for _, kind in kinded if kind}
    if hgvs:
        kinds.add("variant")
    said = _names(a for a, kind in kinded if kind) or _names(answers) or "no readable answer"
    if hgvs:
        said += ", variant description given"
    if other_genes:
        return Sod1Result(
            obs, "uncertain", f"also covers {_names(other_genes)}, so it is not specific to SOD1 ({said})"
        )
    if kinds == {"variant"}:
        if not any(SOD1.match(c) for c in (*genes, *answers)):
            # Only the test's name mentions SOD1 (it may be a gene panel): the variant may be elsewhere.
            return Sod1Result(
                obs,
                "uncertain",
                f"variant reported, but only the test name mentions SOD1, not the gene result ({said})",
            )
        return Sod1Result(obs, "variant", f"variant recorded ({said})")
    if kinds == {"negative"}:
        return Sod1Result(obs, "negative", f"no disease-causing variant ({said})")
    if "variant" in kinds and len(kinds) > 1:
        return Sod1Result(obs, "uncertain", f"conflicting answers ({said})")
    if "uncertain" in kinds:
        return Sod1Result(obs, "uncertain", f"does not settle it ({said})")
    return Sod1Result(obs, "unreadable", f"result could not be read ({said})")


def sod1_results(record: PatientRecord) -> list[Sod1Result]:
    results = []
    # A plain result (a number, no components, no coded or text answer) can name SOD1 only by its
    # code: looked up once per concept (the reader shares equal concepts), not once per result.
    plain: dict[int, tuple[Concept, bool]] = {}
    for obs in record.observations_naming((SOD1,)):
        if "effective" in obs.unreadable:
            continue  # a date from the future (or no date at all) is a data error, not a result
        if not (obs.components or obs.value_string or obs.value_concept.codes or obs.value_concept.text):
            hit = plain.get(id(obs.concept))
            if hit is None or hit[0] is not obs.concept:
                hit = plain[id(obs.concept)] = (obs.concept, SOD1.match(obs.concept) is not None)
            if not hit[1]:
                continue
        result = classify_sod1(obs)
        if result is not None:
            results.append(result)
    return results


_STATUS_TEXT: dict[str, str] = {
    "none": "no SOD1 result on record",
    "negative": "SOD1 result negative",
    "uncertain": "SOD1 result inconclusive",
    "unreadable": "SOD1 result unreadable",
}


def tofersen_sod1(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    orders = record.draft_orders_in(TOFERSEN)
    if not orders:
        return []
    results = sod1_results(record)
    if any(r.verdict == "variant" for r in results):
        return []
    if not results:
        status = "none"
        result_lines = [
            "No SOD1 genetic result (gene SOD1 / HGNC:11179 named in an Observation) in the data received."
        ]
    else:
        status = next(
            v for v in ("negative", "uncertain", "unreadable") if any(r.verdict == v for r in results)
        )
        result_lines = [r.line() for r in results]
    findings = []
    for order, match in orders:
        variant, bindings = _draft_bindings(order)
        findings.append(
            Finding(
                rule_id="tofersen-sod1",
                fields={"sod1_status": _STATUS_TEXT[status]},
                evidence=(order_line(order, match), *result_lines),
                variant=variant,
                bindings=bindings,
            )
        )
    return findings


# --------------------------------------------------------------------------------------------
# Rules

_ORDER_HOOKS = frozenset({"order-select", "order-sign"})

RELYVRIO_WITHDRAWN = Rule(
    id="relyvrio-withdrawn",
    title="Relyvrio (sodium phenylbutyrate/taurursodiol) withdrawn from the market",
    hooks=frozenset({"patient-view"}),
    reads=Interest({"MedicationRequest": (RELYVRIO,)}),
    evaluate=relyvrio_withdrawn,
    trigger=(
        "An active or on-hold prescription of sodium phenylbutyrate/taurursodiol (Relyvrio, Albrioza, "
        "AMX0035), recognised by name; sodium phenylbutyrate alone never matches."
    ),
    facts=(
        RuleFact(
            "Market status",
            "withdrawn: Amylyx began voluntary withdrawal of the US (Relyvrio) and Canadian (Albrioza) "
            "marketing authorisations on 4 April 2024; no new prescriptions; free-drug programme for "
            "existing patients",
            "amylyx-withdrawal",
        ),
        RuleFact(
            "Reason",
            "Phase 3 PHOENIX did not meet its primary or secondary endpoints (announced 8 March 2024)",
            "amylyx-withdrawal",
        ),
        RuleFact(
            "Codes",
            "no active RxNorm, NDC or SNOMED CT code found; matched by names (relyvrio, albrioza, amx0035, "
            "pb-turso, taurursodiol, ursodoxicoltaurine) and a project-local code",
            "evidence-doc-rxnorm",
            "UNVERIFIED: absence of a code is what the checked sources show; re-check RxNav before release.",
        ),
    ),
)

RELYVRIO_ORDER = Rule(
    id="relyvrio-order",
    title="Relyvrio ordered: withdrawn from the market",
    hooks=_ORDER_HOOKS,
    reads=Interest({}),
    evaluate=relyvrio_order,
    trigger=(
        "A draft order for sodium phenylbutyrate/taurursodiol (Relyvrio, Albrioza, AMX0035); sodium "
        "phenylbutyrate alone never matches."
    ),
    facts=(
        RuleFact(
            "Market status",
            "withdrawn from 4 April 2024 (US and Canada); no new prescriptions",
            "amylyx-withdrawal",
        ),
        RuleFact(
            "Codes",
            "no active code; matched by names",
            "evidence-doc-rxnorm",
            "UNVERIFIED: absence of a code is what the checked sources show; re-check RxNav before release.",
        ),
    ),
)

EDARAVONE_SULFITE_ALLERGY = Rule(
    id="edaravone-sulfite-allergy",
    title="Edaravone ordered for a patient with a sulfite allergy",
    hooks=_ORDER_HOOKS,
    reads=Interest({"AllergyIntolerance": (SULFITE_ALLERGY,)}),
    evaluate=edaravone_sulfite_allergy,
    trigger=(
        "A draft edaravone order (IV or oral suspension) while a current, not refuted allergy or "
        "intolerance to a sulfite/bisulfite is recorded (code or reaction substance, or a sulfite name)."
    ),
    facts=(
        RuleFact(
            "Sodium bisulfite in both products",
            "Radicava (IV) and Radicava ORS both list sodium bisulfite",
            "radicava-spl",
        ),
        RuleFact(
            "Warning",
            "W&P 5.2 Sulfite allergic reactions: sodium bisulfite may cause allergic-type reactions incl. "
            "anaphylactic symptoms and life-threatening or less severe asthmatic episodes in susceptible "
            "people",
            "radicava-pi",
        ),
    ),
)

EDARAVONE_REGIMEN = Rule(
    id="edaravone-regimen",
    title="Edaravone order: dose and cycle against the label",
    hooks=_ORDER_HOOKS,
    reads=Interest({}),
    evaluate=edaravone_regimen,
    trigger=(
        "A draft edaravone medication order: info with the label regimen; warning when the dose, doses a "
        "day, infusion time or route differ from the label for the product (IV 60 mg over 60 minutes; ORS "
        "105 mg); info asking to check when the dose or route cannot be read."
    ),
    facts=(
        RuleFact("IV dose", f"{_number(IV_DOSE_MG)} mg", "radicava-pi", "PI 2.1."),
        RuleFact(
            "IV infusion time", f"{_number(IV_INFUSION_MINUTES)} minutes", "radicava-pi", "PI 2.1, 2.2."
        ),
        RuleFact("ORS dose", f"{_number(ORS_DOSE_MG)} mg (5 mL)", "radicava-pi", "PI 2.1."),
        RuleFact(
            "ORS strength",
            f"{_number(ORS_MG_PER_ML)} mg/mL",
            "radicava-pi",
            "105 mg / 5 mL (PI 2.1); RxNorm SCD 2602117 'edaravone 21 MG/ML Oral Suspension'. Used to read a "
            "dose given in mL for the ORS only.",
        ),
        RuleFact(
            "Doses per dosing day",
            _number(DOSES_PER_DOSING_DAY),
            "radicava-pi",
            "PI 2.1 'daily dosing'; the days on/off of the cycle are not checked (one order shows no cycle).",
        ),
        RuleFact(
            "Cycle",
            "daily for 14 days then 14 days off; then daily on 10 of 14 days, then 14 days off",
            "radicava-pi",
            "PI 2.1; stated on the card, not checked.",
        ),
        RuleFact(
            "ORS food",
            "in the morning after an overnight fast; no food for 1 hour after the dose",
            "radicava-pi",
            "PI 2.1 (overnight fasting) checked; the 1-hour rule is from PI 2.3 as quoted in the evidence "
            "document (label mirror), not re-read by this author.",
        ),
        RuleFact(
            "IV administration",
            "two consecutive 30 mg bags over 60 minutes in total; stop the infusion at the first sign of "
            "hypersensitivity",
            "radicava-pi",
            "PI 2.2.",
        ),
        RuleFact(
            "ORS by feeding tube",
            "105 mg (5 mL) taken orally or via feeding tube",
            "radicava-pi",
            "PI 2.1; oral and feeding-tube routes (value set route-enteral) both count as the ORS route.",
        ),
        RuleFact(
            "Route by product",
            "IV bags: RxNorm 1924316, 1924317, 2681044; oral suspension: 2602117, 2602122",
            "radicava-spl",
        ),
    ),
)

TOFERSEN_SOD1 = Rule(
    id="tofersen-sod1",
    title="Tofersen ordered without a recorded SOD1 variant",
    hooks=_ORDER_HOOKS,
    reads=Interest({"Observation": (GENETIC_VARIANT_OBSERVATION, SOD1)}),
    evaluate=tofersen_sod1,
    trigger=(
        "A draft tofersen order while no Observation records a disease-causing SOD1 variant (negative, "
        "uncertain, unreadable or missing results all count as not recorded)."
    ),
    facts=(
        RuleFact(
            "Indication",
            "ALS in adults with a mutation in the SOD1 gene (FDA accelerated approval 25 April 2023)",
            "qalsody-approval",
        ),
        RuleFact(
            "Dose",
            "100 mg (15 mL) intrathecally; 3 loading doses at 14-day intervals, then every 28 days",
            "qalsody-smpc",
        ),
        RuleFact(
            "Serious warnings",
            "myelitis and radiculitis; papilloedema and raised intracranial pressure; aseptic meningitis",
            "qalsody-us-pi",
        ),
        RuleFact(
            "SOD1 result coding",
            "gene studied LOINC 48018-6 = HGNC:11179 (or 'SOD1' in a text); answers LOINC LA9633-4 Present, "
            "LA6668-3 / LA26332-9 (likely) pathogenic count; LA9634-2 Absent, LA6675-8 / LA26334-5 "
            "(likely) benign, LA26333-7 uncertain, LA18198-4 no call do not",
            "genomics-reporting-ig",
            "Design: no SOD1-specific LOINC or SNOMED CT code was found; see the module docstring.",
        ),
    ),
)

RULES: tuple[Rule, ...] = (
    RELYVRIO_WITHDRAWN,
    RELYVRIO_ORDER,
    EDARAVONE_SULFITE_ALLERGY,
    EDARAVONE_REGIMEN,
    TOFERSEN_SOD1,
)
