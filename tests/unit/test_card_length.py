"""Cards a clinician reads in seconds (issue 10).

In the CDS Hooks Sandbox a card of 100-odd words with a data list already fills a screen. So every
card that any fixture patient gets, on any hook and under either guideline profile, keeps its whole
detail (its own wording plus at most three lines of data) under 120 words, and shows no machine
text: no code system, no "matched by", no UCUM spelling, no setting name, no reference list.
The card files' own templates are held to a tighter limit, leaving room for the data lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache

import pytest

from cds_service import cards
from cds_service.bundles import split_bundle
from cds_service.catalogue_doc import word_count
from cds_service.rules import CATALOGUE, RuleConfig, evaluate
from tests.support import FIXTURES, patient_bundle, record_from, service_interest

DETAIL_MAX_WORDS = 119
#: A card file's own detail (and each variant's, with its profile note): the rest of the 120 words
#: is for the data lines.
TEMPLATE_MAX_WORDS = 80
PATIENTS = sorted(p.stem for p in (FIXTURES / "patients").glob("*.json"))
HOOKS = ("patient-view", "order-select", "order-sign")
#: Each hook's service: its interest decides what the record reads (order services read allergies).
SERVICE_OF_HOOK = {hook: f"als-{hook}" for hook in HOOKS}
PROFILES = ("nice", "us")
#: Machine text a clinician should never have to read on a card.
MACHINE_TEXT = re.compile(
    r"matched by|\bSNOMED\b|\bLOINC\b|\bRxNorm\b|\bUCUM\b|ALS_CDS_|\[IU\]|\{pill\}|\{tablet\}|umol/|ukat/|"
    r"10\*9|mm\[Hg\]|cm\[H2O\]|\*\*Sources:\*\*|https?://|MedicationRequest/|ServiceRequest/|urn:"
)


def _catalogue() -> cards.CardCatalogue:
    from cds_service.settings import Settings

    return cards.load_catalogue(Settings(_env_file=None).cards_dir)


@cache
def rendered() -> list[tuple[str, str, str, str, str]]:
    """(patient, hook, profile, rule id, detail) of every card the fixture patients get."""
    catalogue = _catalogue()
    out = []
    for name in PATIENTS:
        chart, drafts = split_bundle(patient_bundle(name))
        for hook in HOOKS:
            if hook != "patient-view" and not drafts:
                continue
            order_bundle = (
                {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]}
                if hook != "patient-view"
                else None
            )
            selections = [f"{d['resourceType']}/{d['id']}" for d in drafts if d.get("id")]
            record = record_from(
                chart,
                interest=service_interest(SERVICE_OF_HOOK[hook]),
                patient_id=name,
                draft_orders=order_bundle,
                selections=selections if order_bundle else (),
            )
            rules = [r for r in CATALOGUE if hook in r.hooks]
            for profile in PROFILES:
                for finding in evaluate(rules, record, RuleConfig(profile=profile)):
                    card = cards.render(finding, catalogue[finding.rule_id], profile)
                    out.append((name, hook, profile, finding.rule_id, card.detail or ""))
    return out


def _templates() -> Iterator[tuple[str, str, str]]:
    """(rule id, variant or '', detail text as a profile shows it) for every card file template."""
    for rule_id, definition in _catalogue().definitions.items():
        for variant_name, variant in [("", None), *definition.variants.items()]:
            detail = (variant and variant.detail) or definition.detail
            for profile in PROFILES:
                note = definition.profile_notes.get(profile)  # type: ignore[call-overload]
                yield rule_id, f"{variant_name}/{profile}", f"{detail}\n\n{note}" if note else detail


def test_the_fixture_patients_get_cards_to_measure() -> None:
    # Every rule measured, none left out of the sweep.
    assert {rule_id for *_, rule_id, _ in rendered()} == {rule.id for rule in CATALOGUE}


def test_every_card_a_fixture_patient_gets_has_a_detail_under_120_words() -> None:
    long = sorted(
        {
            (rule_id, word_count(detail), f"{name} {hook} {profile}")
            for name, hook, profile, rule_id, detail in rendered()
            if word_count(detail) > DETAIL_MAX_WORDS
        }
    )
    assert long == [], "\n".join(f"{r}: {n} words ({where})" for r, n, where in long)


def test_no_card_a_fixture_patient_gets_shows_machine_text() -> None:
    found = sorted(
        {
            (rule_id, m.group(0))
            for *_, rule_id, detail in rendered()
            for m in [MACHINE_TEXT.search(detail)]
            if m
        }
    )
    assert found == []


@pytest.mark.parametrize("rule_id", sorted(d.stem for d in (FIXTURES.parent / "cards").glob("*.toml")))
def test_every_card_template_leaves_room_for_its_data_lines(rule_id: str) -> None:
    long = [
        (variant, word_count(text))
        for rid, variant, text in _templates()
        if rid == rule_id and word_count(text) > TEMPLATE_MAX_WORDS
    ]
    assert long == []


def test_the_care_review_digest_stays_under_120_words_whatever_it_holds() -> None:
    """The digest folds a call's reminders into one card (issue 12): with every reminder due, it is
    still a card a clinician reads in seconds."""
    from cds_service import digest
    from cds_service.settings import Settings

    catalogue = _catalogue()
    wording = digest.load_wording(Settings(_env_file=None).cards_dir)
    reminders = {rule_id for rule_id, d in catalogue.definitions.items() if d.fatigue.digest}
    rules = [r for r in CATALOGUE if "patient-view" in r.hooks]
    sizes = []
    for name in PATIENTS:
        chart, _ = split_bundle(patient_bundle(name))
        record = record_from(chart, patient_id=name, interest=service_interest("als-patient-view"))
        for profile in PROFILES:
            shown = [
                cards.render(f, catalogue[f.rule_id], profile)
                for f in evaluate(rules, record, RuleConfig(profile=profile))
            ]
            for card in digest.fold(shown, catalogue, wording):
                if digest.is_digest(card, wording):
                    items = sum(line.startswith("- ") for line in (card.detail or "").splitlines())
                    sizes.append((word_count(card.detail or ""), items, name, profile))
    words, items, name, profile = max(sizes)
    assert words <= DETAIL_MAX_WORDS, (words, name, profile)
    # The fixtures hold a call with every reminder due: the worst case is measured, not imagined.
    assert max(n for _, n, _, _ in sizes) == len(reminders)
