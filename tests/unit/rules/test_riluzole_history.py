"""The riluzole rules read results with their history and their dates (clinical safety review).

- A rechallenge after ALT reached 5 x ULN on riluzole: refused on orders, silent offer, a warning
  when riluzole is current again (SmPC 4.4: re-administration cannot be recommended).
- Pregnancy and breast-feeding on riluzole orders (SmPC 4.3), only while current.
- "Stop riluzole" only on results from the current course, bilirubin paired with its ALT's day, and
  the stop itself offered as a suggestion.
- No offer in late-stage disease: tracheostomy or invasive ventilation (SmPC 4.1).
- A renewal with the ALT check overdue gets a card.
- A raised ALT that is old, or judged against a stand-in limit, asks for baseline liver tests.

Every test goes through `evaluate` (the gate in front) and `record_from` (the production reader).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest

from cds_service.rules.riluzole import (
    ALT_RAISED,
    BASELINE_DAYS,
    BREASTFEEDING_CURRENT_DAYS,
    LFT_DUE,
    NEUTROPENIA,
    NOT_PRESCRIBED,
    ORDER_CONTRAINDICATION,
    ORDER_LIVER,
    ORDER_MONITORING,
    PREGNANCY_CURRENT_DAYS,
    RECHALLENGE,
)
from tests.factories import (
    ICD10CM,
    LOINC,
    allergy,
    als,
    coding,
    concept,
    condition,
    days_ago,
    device,
    loinc,
    observation,
    procedure,
    rxnorm,
    snomed,
)
from tests.unit.rules.test_riluzole import (
    alt,
    ast,
    bilirubin,
    draft,
    fixture_findings,
    neutrophils,
    on_riluzole,
    render,
    run,
    text,
)


def course(
    *,
    status: str = "stopped",
    started: float = 900,
    ended: float | None = 800,
    reason: dict[str, Any] | None = None,
    rid: str = "old-course",
) -> dict[str, Any]:
    """A riluzole request with its dates: authored and validity start `started` days ago, validity
    end `ended` days ago (None: not recorded), and a statusReason."""
    request = on_riluzole(status=status, authored=days_ago(started), rid=rid)
    period = {"start": days_ago(started).isoformat()}
    if ended is not None:
        period["end"] = days_ago(ended).isoformat()
    request["dispenseRequest"] = {"validityPeriod": period}
    if reason is not None:
        request["statusReason"] = reason
    return request


# ============================================================================================
# 1. Rechallenge after ALT reached 5 x ULN during a course


def stopped_for_alt() -> list[dict[str, Any]]:
    """A course 900 to 800 days ago, stopped after ALT 6.2 x ULN; ALT normal ever since."""
    return [
        course(),
        alt(25, low=7, high=40, days=905),
        alt(248, low=7, high=40, days=810),
        alt(60, low=7, high=40, days=780),
        alt(27, low=7, high=40, days=10),
    ]


def test_a_restart_order_after_alt_reached_5_x_uln_on_riluzole_is_refused() -> None:
    [finding] = run(RECHALLENGE, als(), *stopped_for_alt(), drafts=[draft()])
    assert finding.variant is None
    assert finding.fields == {"times_uln": "6.2", "alt_date": days_ago(810).date().isoformat()}
    assert "No current riluzole: this order starts it again." in finding.evidence
    assert "During riluzole (stopped" in text([finding]) and "248 U/L" in text([finding])
    body = render(finding)
    assert body["indicator"] == "critical"
    [action] = body["suggestions"][0]["actions"]
    assert action == {
        "type": "delete",
        "description": "Remove the draft riluzole order (SmPC 4.4: no rechallenge after ALT 5 × ULN)",
        "resourceId": "MedicationRequest/draft-ril",
    }


def test_the_offer_stays_silent_after_alt_reached_5_x_uln_on_riluzole() -> None:
    assert run(NOT_PRESCRIBED, als(), *stopped_for_alt()) == []


def test_a_restart_order_also_keeps_its_monitoring_card_and_no_hepatic_contraindication() -> None:
    [monitoring] = run(ORDER_MONITORING, als(), *stopped_for_alt(), drafts=[draft()])
    assert "ALT reached 5 × ULN during it: re-administration cannot be recommended" in text([monitoring])
    assert "not a contraindication by itself" not in text([monitoring])
    assert run(ORDER_LIVER, als(), *stopped_for_alt(), drafts=[draft()]) == []


@pytest.mark.parametrize(
    ("alt_days", "counts"),
    [
        (905, False),  # before the course
        (900, True),  # the day it started: drawn after the start time
        (800.1, True),  # the last day of the course
        (799, False),  # after the recorded end: not on riluzole
    ],
)
def test_only_an_alt_during_the_course_counts(alt_days: float, counts: bool) -> None:
    resources = [als(), course(), alt(248, low=7, high=40, days=alt_days)]
    assert bool(run(RECHALLENGE, *resources, drafts=[draft()])) is counts
    assert bool(run(NOT_PRESCRIBED, *resources)) is not counts


def test_a_course_without_an_end_date_covers_every_later_alt() -> None:
    resources = [als(), course(ended=None), alt(248, low=7, high=40, days=300)]
    assert run(RECHALLENGE, *resources, drafts=[draft()])


@pytest.mark.parametrize(("value", "fires"), [(199, False), (200, True)])
def test_the_rechallenge_threshold_is_5_x_uln_reached(value: float, fires: bool) -> None:
    resources = [als(), course(), alt(value, low=7, high=40, days=810)]
    assert bool(run(RECHALLENGE, *resources, drafts=[draft()])) is fires


def test_a_bound_above_5_x_uln_and_the_default_uln_count() -> None:
    bound = alt(1000, low=7, high=40, days=810)
    bound["valueQuantity"]["comparator"] = ">"
    assert run(RECHALLENGE, als(), course(), bound, drafts=[draft()])
    assert run(RECHALLENGE, als(), course(), alt(125, days=810), drafts=[draft()], sex="female")  # 5 x 25


def test_a_renewal_after_alt_reached_5_x_uln_in_the_current_course_is_refused() -> None:
    [finding] = run(RECHALLENGE, als(), on_riluzole(), alt(210, low=7, high=40), drafts=[draft()])
    assert "Riluzole is current: this order continues it." in finding.evidence


def test_a_renewal_after_alt_reached_5_x_uln_in_the_current_course_offers_to_stop_that_course() -> None:
    [finding] = run(RECHALLENGE, als(), on_riluzole(), alt(210, low=7, high=40), drafts=[draft()])
    assert finding.variant == "stop"
    body = render(finding)
    actions = [a for s in body["suggestions"] for a in s["actions"]]
    assert [a["type"] for a in actions] == ["delete", "update"]
    assert actions[1]["resource"]["status"] == "stopped" and actions[1]["resource"]["id"] == "ril"


def test_a_renewal_draft_without_an_id_still_offers_the_stop_of_the_current_course() -> None:
    no_id = draft()
    del no_id["id"]
    [finding] = run(RECHALLENGE, als(), on_riluzole(), alt(210, low=7, high=40), drafts=[no_id])
    assert finding.variant == "stop-no-reference"
    [action] = [a for s in render(finding)["suggestions"] for a in s["actions"]]
    assert action["type"] == "update" and action["resource"]["status"] == "stopped"


@pytest.mark.parametrize(
    "reason",
    [
        {"text": "Raised LFTs"},
        {"text": "transaminitis"},
        {"text": "Drug-induced hepatitis"},
        concept(coding("http://snomed.info/sct", "409673008", "Serum alanine aminotransferase level raised")),
    ],
)
def test_a_stop_for_a_liver_reason_without_the_alt_asks_to_check_it(reason: dict[str, Any]) -> None:
    resources = [als(), course(reason=reason), alt(30, low=7, high=40, days=10)]
    [finding] = run(RECHALLENGE, *resources, drafts=[draft()])
    assert finding.variant == "reason"
    body = render(finding)
    assert body["indicator"] == "warning" and "suggestions" not in body
    assert "for a liver reason" in text([finding])
    assert run(NOT_PRESCRIBED, *resources) == []
    [monitoring] = run(ORDER_MONITORING, *resources, drafts=[draft()])
    assert "It ended for a liver reason: check the ALT at that time." in text([monitoring])


@pytest.mark.parametrize("reason", [{"text": "Nausea"}, {"text": "Salt intake advice"}, None])
def test_other_stop_reasons_do_not_block_a_restart(reason: dict[str, Any] | None) -> None:
    resources = [als(), course(reason=reason), alt(30, low=7, high=40, days=10)]
    assert run(RECHALLENGE, *resources, drafts=[draft()]) == []
    [offer] = run(NOT_PRESCRIBED, *resources)
    assert "An earlier course is not a contraindication by itself" in text([offer])


def test_a_draft_without_an_id_gets_the_card_without_a_delete() -> None:
    no_id = draft()
    del no_id["id"]
    [finding] = run(RECHALLENGE, als(), *stopped_for_alt(), drafts=[no_id])
    assert finding.variant == "no-reference"
    assert "suggestions" not in render(finding)


def test_riluzole_current_again_after_alt_reached_5_x_uln_is_a_warning_that_offers_the_stop() -> None:
    restarted = on_riluzole(authored=days_ago(200), rid="ril")
    [finding] = run(ALT_RAISED, als(), *stopped_for_alt(), restarted)
    assert finding.variant == "earlier" and finding.indicator == "warning"
    assert finding.fields["times_uln"] == "6.2"
    body = render(finding)
    stop, lft = body["suggestions"]
    assert "isRecommended" not in stop  # a specialist may have decided to restart
    assert stop["actions"][0]["resource"]["status"] == "stopped"
    assert lft["actions"][0]["resource"]["code"]["coding"][0]["code"] == "24325-3"


def test_the_latest_alt_at_5_x_uln_is_the_stop_card_not_the_earlier_one() -> None:
    restarted = on_riluzole(authored=days_ago(200), rid="ril")
    [finding] = run(ALT_RAISED, als(), *stopped_for_alt(), restarted, alt(220, low=7, high=40, days=2))
    assert finding.variant == "stop"


# ============================================================================================
# 4. Pregnancy and breast-feeding on riluzole orders (SmPC 4.3)


def pregnancy(onset_days: float | None, **kwargs: Any) -> dict[str, Any]:
    return condition(
        snomed("77386006", "Pregnancy"), onset=days_ago(onset_days) if onset_days else None, **kwargs
    )


def pregnancy_status(value: dict[str, Any], days: float) -> dict[str, Any]:
    return observation(loinc("82810-3"), days_ago(days), value_concept=value)


def breastfeeding(days: float, yes: bool = True) -> dict[str, Any]:
    code = ("LA29252-6", "Currently breastfeeding") if yes else ("LA29253-4", "Not currently breastfeeding")
    return observation(loinc("63895-7"), days_ago(days), value_concept=concept(coding(LOINC, *code)))


PREGNANT_LOINC = concept(coding(LOINC, "LA15173-0", "Pregnant"))
PREGNANT_SNOMED = snomed("77386006", "Pregnant")


@pytest.mark.parametrize(
    ("resource", "reason"),
    [
        (pregnancy(30), "pregnancy"),
        (pregnancy(None), "pregnancy"),  # undated: taken as current
        (pregnancy_status(PREGNANT_SNOMED, 20), "pregnancy"),
        (pregnancy_status(PREGNANT_LOINC, 20), "pregnancy"),
        (breastfeeding(60), "breast-feeding"),
        (allergy(rxnorm("35623", "riluzole")), "riluzole allergy"),
    ],
)
def test_a_riluzole_order_is_refused_in_pregnancy_breastfeeding_or_allergy(
    resource: dict[str, Any], reason: str
) -> None:
    [finding] = run(ORDER_CONTRAINDICATION, als(), resource, drafts=[draft()])
    assert finding.fields["reason"] == reason
    body = render(finding)
    assert body["indicator"] == "critical"
    assert body["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/draft-ril"


def test_a_renewal_is_checked_too() -> None:
    assert run(ORDER_CONTRAINDICATION, als(), on_riluzole(), breastfeeding(10), drafts=[draft()])


@pytest.mark.parametrize(
    ("resource", "fires"),
    [
        (pregnancy(PREGNANCY_CURRENT_DAYS), True),
        (pregnancy(PREGNANCY_CURRENT_DAYS + 1), False),  # years-old problem-list entry: over
        (pregnancy(30, clinical="resolved"), False),
        (pregnancy_status(PREGNANT_LOINC, PREGNANCY_CURRENT_DAYS), True),
        (pregnancy_status(PREGNANT_LOINC, PREGNANCY_CURRENT_DAYS + 1), False),
        (breastfeeding(BREASTFEEDING_CURRENT_DAYS), True),
        (breastfeeding(BREASTFEEDING_CURRENT_DAYS + 1), False),
        (breastfeeding(10, yes=False), False),
    ],
)
def test_only_a_current_pregnancy_or_breastfeeding_counts(resource: dict[str, Any], fires: bool) -> None:
    assert bool(run(ORDER_CONTRAINDICATION, als(), resource, drafts=[draft()])) is fires
    assert bool(run(NOT_PRESCRIBED, als(), alt(28, low=7, high=40), resource)) is not fires


def test_the_latest_pregnancy_status_decides_on_orders() -> None:
    later_not = pregnancy_status(snomed("60001007", "Not pregnant"), 2)
    assert (
        run(ORDER_CONTRAINDICATION, als(), pregnancy_status(PREGNANT_SNOMED, 20), later_not, drafts=[draft()])
        == []
    )


def test_several_reasons_are_named_together() -> None:
    resources = [pregnancy(30), breastfeeding(5), allergy(rxnorm("35623"))]
    [finding] = run(ORDER_CONTRAINDICATION, als(), *resources, drafts=[draft()])
    assert finding.fields["reason"] == "pregnancy, breast-feeding, riluzole allergy"


def test_an_icd10_pregnancy_counts() -> None:
    coded = condition(concept(coding(ICD10CM, "Z33.1")), onset=days_ago(40))
    assert run(ORDER_CONTRAINDICATION, als(), coded, drafts=[draft()])


def test_no_order_no_card() -> None:
    assert run(ORDER_CONTRAINDICATION, als(), pregnancy(30)) == []


# ============================================================================================
# 5. Results from the current course only, bilirubin paired with its ALT, the stop offered


def test_a_low_count_from_before_riluzole_started_is_not_neutropenia_on_riluzole() -> None:
    started = on_riluzole(authored=days_ago(20))
    assert run(NEUTROPENIA, als(), started, neutrophils(0.9, days=30)) == []
    [finding] = run(NEUTROPENIA, als(), started, neutrophils(0.9, days=10))
    assert "not recorded" not in text([finding])


def test_a_later_normal_count_before_the_course_does_not_hide_a_low_one_after() -> None:
    started = on_riluzole(authored=days_ago(20))
    assert run(NEUTROPENIA, als(), started, neutrophils(0.9, days=5), neutrophils(3.0, days=30))


def test_a_low_count_during_an_earlier_course_is_not_the_current_courses() -> None:
    restarted = on_riluzole(authored=days_ago(20))
    earlier = course(started=200, ended=100)
    assert run(NEUTROPENIA, als(), earlier, restarted, neutrophils(0.9, days=150)) == []


def test_with_no_recorded_start_a_count_of_any_date_is_read_and_the_card_says_so() -> None:
    undated = on_riluzole(authored=None)
    [finding] = run(NEUTROPENIA, als(), undated, neutrophils(0.9, days=400))
    assert "Start of the riluzole course not recorded" in text([finding])


def test_an_alt_from_before_the_course_is_not_a_stop_on_riluzole() -> None:
    started = on_riluzole(authored=days_ago(20))
    assert run(ALT_RAISED, als(), started, alt(300, low=7, high=40, days=25)) == []
    assert run(LFT_DUE, als(), started, alt(300, low=7, high=40, days=25)) == []  # baseline in time


def test_bilirubin_from_another_day_is_not_paired_with_the_alt() -> None:
    resources = [als(), on_riluzole(), alt(60, low=7, high=40, days=1)]
    old_bilirubin = bilirubin(40, low=0, high=21, days=400)
    assert run(ALT_RAISED, *resources, old_bilirubin) == []
    [warning] = run(ALT_RAISED, als(), on_riluzole(), alt(130, low=7, high=40, days=1), old_bilirubin)
    assert warning.variant is None
    assert "not from the day of this ALT, so not paired" in text([warning])


@pytest.mark.parametrize(("bili_days", "paired"), [(1, True), (1.2, True), (2, False), (0.5, False)])
def test_bilirubin_pairs_with_the_alt_of_the_same_calendar_day(bili_days: float, paired: bool) -> None:
    # ALT 1 day ago at 12:00 UTC: bilirubin at 07:12 the same day pairs, the day before or after does not.
    resources = [
        als(),
        on_riluzole(),
        alt(60, low=7, high=40, days=1),
        bilirubin(40, low=0, high=21, days=bili_days),
    ]
    findings = run(ALT_RAISED, *resources)
    assert bool(findings) is paired
    if paired:
        assert findings[0].variant == "liver-dysfunction"


def stop_action(body: dict[str, Any]) -> dict[str, Any]:
    [action] = body["suggestions"][0]["actions"]
    assert body["suggestions"][0]["isRecommended"] is True
    return action


def active_request() -> dict[str, Any]:
    request = on_riluzole(dose=(50, "mg"), every_hours=12)
    request["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">active</div>'}
    request["note"] = [{"text": "Started by Dr A"}]
    return request


@pytest.mark.parametrize(
    ("resources", "reason"),
    [
        ([alt(250, low=7, high=40)], "ALT 6.2 × ULN on"),
        ([alt(60, low=7, high=40), bilirubin(40, low=0, high=21)], "Raised ALT and bilirubin on"),
    ],
    ids=["alt-stop", "liver-dysfunction"],
)
def test_a_critical_alt_card_offers_the_stop_built_from_the_senders_request(
    resources: list[dict[str, Any]], reason: str
) -> None:
    sent = active_request()
    [finding] = run(ALT_RAISED, als(), sent, *resources)
    action = stop_action(render(finding))
    assert action["type"] == "update"
    stopped = action["resource"]
    assert stopped["status"] == "stopped" and stopped["statusReason"]["text"].startswith(reason)
    expected = copy.deepcopy(sent)
    del expected["text"]
    assert {k: v for k, v in stopped.items() if k not in ("status", "statusReason")} == {
        k: v for k, v in expected.items() if k != "status"
    }
    MedicationRequest.model_validate(stopped)


def test_the_neutropenia_card_offers_the_stop() -> None:
    [finding] = run(NEUTROPENIA, als(), active_request(), neutrophils(0.9))
    action = stop_action(render(finding))
    assert action["resource"]["statusReason"]["text"].startswith("Neutrophils 0.9 × 10⁹/L on")
    assert action["resource"]["id"] == "ril"


def test_with_two_current_requests_no_single_stop_is_offered() -> None:
    second = on_riluzole(rid="ril-2", status="on-hold")
    [finding] = run(ALT_RAISED, als(), active_request(), second, alt(250, low=7, high=40))
    assert finding.variant == "stop-no-reference" and finding.indicator == "critical"
    body = render(finding)
    assert [s["actions"][0]["type"] for s in body["suggestions"]] == ["create"]
    [finding] = run(NEUTROPENIA, als(), active_request(), second, neutrophils(0.9))
    assert finding.variant == "no-reference" and "suggestions" not in render(finding)


def test_a_stop_built_from_an_invalid_request_is_left_out_not_sent() -> None:
    broken = active_request()
    broken["authoredOn"] = "yesterday"  # the reader drops it; R4 validation refuses it
    [finding] = run(ALT_RAISED, als(), broken, alt(250, low=7, high=40))
    body = render(finding)
    assert [s["actions"][0]["type"] for s in body["suggestions"]] == ["create"]


# ============================================================================================
# 9. Late-stage disease: tracheostomy ventilation (SmPC 4.1)

TRACHEOTOMY = snomed("48387007", "Incision of trachea")
INVASIVE = snomed("1258985005", "Invasive mechanical ventilation")


@pytest.mark.parametrize(
    "resource",
    [
        procedure(TRACHEOTOMY, days_ago(100)),
        device(snomed("129121000", "Tracheostomy tube")),
        condition(concept(coding(ICD10CM, "Z93.0", "Tracheostomy status"))),
        procedure(INVASIVE, days_ago(100), status="in-progress"),
    ],
    ids=["tracheostomy", "tube", "status", "ventilation"],
)
def test_no_offer_of_riluzole_with_tracheostomy_or_invasive_ventilation(resource: dict[str, Any]) -> None:
    assert run(NOT_PRESCRIBED, als(), alt(28, low=7, high=40), resource) == []


@pytest.mark.parametrize(
    "resource",
    [
        procedure(INVASIVE, days_ago(3000)),  # a completed episode (e.g. for surgery)
        device(snomed("129121000", "Tracheostomy tube"), status="inactive"),
        condition(concept(coding(ICD10CM, "Z93.0")), clinical="resolved"),
        procedure(snomed("428311008", "Noninvasive ventilation"), days_ago(10), status="in-progress"),
    ],
    ids=["ventilation-ended", "tube-removed", "status-resolved", "niv"],
)
def test_the_offer_stands_without_current_tracheostomy_ventilation(resource: dict[str, Any]) -> None:
    assert run(NOT_PRESCRIBED, als(), alt(28, low=7, high=40), resource)


# ============================================================================================
# 11. Renewals with the ALT check overdue


@pytest.mark.parametrize(
    ("start_days", "alt_days", "fires"),
    [(40, 31, False), (40, 32, True), (150, 92, False), (150, 93, True), (500, 365, False), (500, 366, True)],
)
def test_a_renewal_follows_the_lft_due_schedule(start_days: int, alt_days: int, fires: bool) -> None:
    resources = [als(), on_riluzole(authored=days_ago(start_days)), alt(25, low=7, high=40, days=alt_days)]
    findings = run(ORDER_MONITORING, *resources, drafts=[draft()])
    assert bool(findings) is fires
    assert bool(run(LFT_DUE, *resources)) is fires
    if fires:
        [finding] = findings
        assert finding.variant == "renewal-overdue"
        body = render(finding)
        assert body["indicator"] == "warning"
        assert body["suggestions"][0]["actions"][0]["resource"]["code"]["coding"][0]["code"] == "24325-3"
        assert finding.evidence[0].startswith("This order renews the current prescription: ")
        assert "\n- Latest ALT: 25 U/L" in body["detail"]  # shown within the card's three data lines


def test_a_renewal_with_no_alt_at_all_fires() -> None:
    [finding] = run(ORDER_MONITORING, als(), on_riluzole(), drafts=[draft()])
    assert finding.fields["last_alt"] == "none in the data received"


def test_a_restart_after_a_stop_is_a_new_course_on_the_monthly_schedule() -> None:
    restarted = on_riluzole(authored=days_ago(45), rid="ril")
    resources = [als(), course(started=900, ended=800), restarted, alt(25, low=7, high=40, days=40)]
    [finding] = run(ORDER_MONITORING, *resources, drafts=[draft()])
    assert finding.fields["window_days"] == "31"


# ============================================================================================
# 15. A raised result that is not a baseline asks for liver tests


@pytest.mark.parametrize(("days", "baseline"), [(BASELINE_DAYS, True), (BASELINE_DAYS + 1, False)])
def test_a_raised_alt_is_a_contraindication_only_while_it_is_a_baseline(days: float, baseline: bool) -> None:
    raised = alt(150, low=7, high=40, days=days)  # 3.75 x ULN
    offer = run(NOT_PRESCRIBED, als(), raised)
    liver = run(ORDER_LIVER, als(), raised, drafts=[draft()])
    [monitoring] = run(ORDER_MONITORING, als(), raised, drafts=[draft()])
    if baseline:
        assert offer == [] and liver and monitoring.variant is None
        return
    [finding] = offer
    assert finding.variant == "baseline" and liver == [] and monitoring.variant == "baseline"
    assert f"it is {BASELINE_DAYS + 1} days old" in text([finding])
    body = render(finding)
    [suggestion] = body["suggestions"]
    assert suggestion["actions"][0]["resource"]["resourceType"] == "ServiceRequest"  # no riluzole proposal
    assert render(monitoring)["indicator"] == "warning"


def test_a_stale_raised_ast_asks_for_liver_tests_too() -> None:
    [finding] = run(NOT_PRESCRIBED, als(), ast(200, low=0, high=40, days=400))
    assert finding.variant == "baseline"


@pytest.mark.parametrize(
    "reference",
    [
        [{"text": "Men: up to 50 U/L; women: up to 35 U/L"}],
        [{"high": {"value": 40, "unit": "furlongs", "code": "furlongs"}}],
    ],
    ids=["text-only", "unreadable-unit"],
)
def test_a_raised_alt_against_a_stand_in_limit_is_not_a_contraindication(reference: list[dict]) -> None:
    raised = alt(90)  # 3.6 x the female default of 25 U/L
    raised["referenceRange"] = reference
    [finding] = run(NOT_PRESCRIBED, als(), raised, sex="female")
    assert finding.variant == "baseline"
    assert "stand-in" in text([finding])
    assert run(ORDER_LIVER, als(), raised, drafts=[draft()], sex="female") == []


def test_a_range_written_as_simple_text_is_the_labs_own_limit() -> None:
    raised = alt(90)
    raised["referenceRange"] = [{"text": "10-100 U/L"}]
    [finding] = run(NOT_PRESCRIBED, als(), raised, sex="female")
    assert finding.variant is None and "0.9 × ULN 100" in text([finding])


def test_no_range_at_all_still_uses_the_acg_default_as_before() -> None:
    assert run(NOT_PRESCRIBED, als(), alt(90), sex="female") == []  # 3.6 x 25, recent: contraindication


def test_hepatic_disease_is_a_contraindication_whatever_its_date() -> None:
    liver = condition(snomed("328383001", "Chronic liver disease"), onset=days_ago(4000))
    assert run(NOT_PRESCRIBED, als(), liver) == []
    assert run(ORDER_LIVER, als(), liver, drafts=[draft()])


@pytest.mark.parametrize(
    ("fixture", "request_id"), [("riluzole-alt-stop", "riluzole-r3"), ("riluzole-neutropenia", "riluzole-r8")]
)
def test_the_fixture_stop_cards_offer_the_stop_of_the_charts_request(fixture: str, request_id: str) -> None:
    [finding] = fixture_findings(fixture, "patient-view")
    action = stop_action(render(finding))
    assert action["resource"]["id"] == request_id and action["resource"]["status"] == "stopped"
    MedicationRequest.model_validate(action["resource"])
