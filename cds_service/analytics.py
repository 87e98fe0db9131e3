"""`GET /analytics/rules`: what became of each rule's cards, per period, as aggregates only.

For a governance committee deciding which rules earn their place (issue 12): per rule and period,
cards shown (as a card of their own or as an item of the care review), accepted (cards, and each
suggestion), overridden by reason (system and code, with the CDS Hooks 3.0 ballot code where one
fits), snoozes set, cards suppressed (and why) and the acceptance rate. JSON, or CSV for a
spreadsheet (`format=csv` or `Accept: text/csv`).

Who may read it: the holder of `ALS_CDS_ANALYTICS_TOKEN`, as `Authorization: Bearer <token>`
(compared in constant time), whatever the EHR authentication. Unset (the default), the route does
not exist: 404, and it is not in the OpenAPI document. The console (only with authentication off)
shows the same figures at /console/analytics (`console/__init__.py`).

What it never shows: a patient, a hashed subject key, a card or suggestion uuid, a comment. Counts
come from `GROUP BY` in the database (`store/analytics.py`); an override reason that is neither one
of the card's own nor a ballot code is counted as "other", never echoed (a client may send any text
as a code). Feedback counts in the period its card was shown, so the rate is the share of that
period's cards that were accepted.

Periods are calendar days, ISO weeks (from Monday) or months in UTC, cut to the range asked for;
only (rule, period) pairs with a non-zero figure are listed.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from cds_service.cards import OVERRIDE_REASON_SYSTEM, CardCatalogue
from cds_service.engine import RequestError
from cds_service.fatigue import NON_ADHERENCE_CODES, NON_ADHERENCE_SYSTEM
from cds_service.rules import CATALOGUE
from cds_service.settings import Settings
from cds_service.store import Store
from cds_service.store import analytics as counted

Period = Literal["day", "week", "month"]
PERIODS: tuple[str, ...] = ("day", "week", "month")
#: Without `since`: this many days before `until` (whose default is the end of today, UTC).
DEFAULT_DAYS = 90
#: Longest range one answer covers (ten years): bounds the work of a single request.
MAX_DAYS = 3660
#: The query parameters, and each one's meaning, for the 400 that names an unknown one.
PARAMETERS: dict[str, str] = {
    "since": "start, included: a date (YYYY-MM-DD, its UTC midnight) or an ISO date-time with a zone",
    "until": "end: a date (that whole UTC day included; default today) or an ISO date-time with a zone "
    "(excluded)",
    "period": "day, week or month (default month)",
    "rule": "only these rule ids, comma-separated",
    "format": "json (default) or csv",
}
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
CSV_COLUMNS = (
    "period_start",
    "period_end",
    "rule_id",
    "measure",
    "suggestion",
    "reason_system",
    "reason_code",
    "standard_code",
    "suppression_reason",
    "value",
)
#: What a reason counted as "other" is called (it is not echoed: see the module docstring).
OTHER_REASON = "other"


@dataclass(frozen=True)
class Query:
    since: datetime
    until: datetime
    period: Period
    rules: tuple[str, ...]
    format: Literal["json", "csv"]


def _instant(name: str, raw: str, *, end: bool) -> datetime:
    text = raw.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        value = datetime.fromisoformat(text)
    except ValueError:
        raise RequestError.single(
            400,
            f"{name}: not a date or an ISO 8601 date-time; e.g. {name}=2026-11-01 or "
            f"{name}=2026-11-01T00:00:00Z",
            where=[name],
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise RequestError.single(
            400,
            f"{name}: a date-time needs a zone (Z or +hh:mm); e.g. {name}=2026-11-01T00:00:00Z",
            where=[name],
        )
    return value.astimezone(UTC)


def parse_query(params: Sequence[tuple[str, str]], accept: str, now: datetime) -> Query:
    """The query of a request, or a 400 naming the parameter that is wrong and why."""
    given: dict[str, str] = {}
    for name, value in params:
        if name not in PARAMETERS:
            known = ", ".join(PARAMETERS)
            raise RequestError.single(
                400, f"unknown query parameter {name[:40]!r}; known: {known}", where=[name[:40]]
            )
        if name in given:
            raise RequestError.single(400, f"{name}: given more than once", where=[name])
        given[name] = value
    # Without `until`: today included (to the next UTC midnight), so what was just shown counts.
    today = now.astimezone(UTC).date()
    until = (
        _instant("until", given["until"], end=True)
        if "until" in given
        else _midnight(today) + timedelta(days=1)
    )
    since = (
        _instant("since", given["since"], end=False)
        if "since" in given
        else until - timedelta(days=DEFAULT_DAYS)
    )
    if since >= until:
        raise RequestError.single(400, "since must be before until", where=["since", "until"])
    if until - since > timedelta(days=MAX_DAYS):
        raise RequestError.single(
            400,
            f"the range from since to until is longer than {MAX_DAYS} days; ask for less",
            where=["since"],
        )
    period = given.get("period", "month").strip().lower()
    if period not in PERIODS:
        raise RequestError.single(400, "period: give day, week or month", where=["period"])
    rules: tuple[str, ...] = ()
    if "rule" in given:
        rules = tuple(sorted({r.strip() for r in given["rule"].split(",") if r.strip()}))
        known_rules = {rule.id for rule in CATALOGUE}
        unknown = [r for r in rules if r not in known_rules]
        if not rules or unknown:
            shown = ", ".join(repr(r[:60]) for r in unknown[:3]) or "none given"
            raise RequestError.single(
                400, f"rule: not rule ids: {shown} (docs/rules.md lists the rules)", where=["rule"]
            )
    if "format" in given:
        fmt = given["format"].strip().lower()
        if fmt not in ("json", "csv"):
            raise RequestError.single(400, "format: give json or csv", where=["format"])
    else:
        fmt = "csv" if "text/csv" in accept.lower() else "json"
    return Query(since, until, period, rules, fmt)  # type: ignore[arg-type]


# -- periods ----------------------------------------------------------------------------------


def _period_start(day: date, period: Period) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if period == "month":
        return day.replace(day=1)
    return day


def _period_end(start: date, period: Period) -> date:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- figures ----------------------------------------------------------------------------------


@dataclass
class Figures:
    """One rule in one period."""

    shown: int = 0
    accepted_cards: int = 0
    suggestions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    overridden: int = 0
    reasons: dict[tuple[str | None, str | None, str | None], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    snoozed: int = 0
    suppressed: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _reason_key(
    catalogue: CardCatalogue, rule_id: str, system: str | None, code: str | None, standard: str | None
) -> tuple[str | None, str | None, str | None]:
    """(system, code, standard code) to report: a card's own reason or a ballot code as stored,
    anything else as `other` (its text is the client's, so it is never echoed)."""
    if code is None:
        return (None, None, None)
    if system == NON_ADHERENCE_SYSTEM and code in NON_ADHERENCE_CODES:
        return (system, code, code)
    definition = catalogue.definitions.get(rule_id)
    own = (
        {(r.system or OVERRIDE_REASON_SYSTEM, r.code) for r in definition.override_reasons}
        if definition
        else set()
    )
    if (system, code) in own:
        return (system, code, standard if standard in NON_ADHERENCE_CODES else None)
    return (None, OTHER_REASON, None)


def figures(
    counts: counted.DailyCounts, query: Query, catalogue: CardCatalogue
) -> dict[tuple[str, date], Figures]:
    """The day counts folded into (rule, period start) figures."""
    found: dict[tuple[str, date], Figures] = defaultdict(Figures)

    def at(rule_id: str, day: date) -> Figures:
        return found[(rule_id, _period_start(day, query.period))]

    for rule_id, day, n in counts.shown:
        at(rule_id, day).shown += n
    for cards in counts.accepted_cards:
        at(cards.rule_id, cards.day).accepted_cards += cards.cards
    for accepted in counts.accepted:
        at(accepted.rule_id, accepted.day).suggestions[accepted.label or ""] += accepted.suggestions
    for override in counts.overridden:
        figure = at(override.rule_id, override.day)
        figure.overridden += override.overrides
        figure.snoozed += override.snoozes
        key = _reason_key(catalogue, override.rule_id, override.system, override.code, override.standard_code)
        figure.reasons[key] += override.overrides
    for suppressed in counts.suppressed:
        at(suppressed.rule_id, suppressed.day).suppressed[suppressed.reason] += suppressed.cards
    return found


def _reason_display(
    catalogue: CardCatalogue, rule_id: str, key: tuple[str | None, str | None, str | None]
) -> str:
    system, code, _ = key
    if code is None:
        return "no reason given"
    if code == OTHER_REASON and system is None:
        return "a reason this card does not offer (not shown)"
    if system == NON_ADHERENCE_SYSTEM:
        return NON_ADHERENCE_CODES[code]
    definition = catalogue.definitions.get(rule_id)
    return (
        next((r.display for r in definition.override_reasons if r.code == code), code) if definition else code
    )


def rows(
    query: Query, found: Mapping[tuple[str, date], Figures], catalogue: CardCatalogue
) -> list[dict[str, Any]]:
    """The JSON rows, by rule then period; each period cut to the range asked for."""
    listed = []
    for (rule_id, start), figure in sorted(found.items()):
        period_start = max(_midnight(start), query.since)
        period_end = min(_midnight(_period_end(start, query.period)), query.until)
        accepted = sum(figure.suggestions.values())
        listed.append(
            {
                "ruleId": rule_id,
                "periodStart": _iso(period_start),
                "periodEnd": _iso(period_end),
                "shown": figure.shown,
                "acceptedCards": figure.accepted_cards,
                "acceptedSuggestions": accepted,
                "acceptedBySuggestion": [
                    {"suggestion": label, "count": n} for label, n in sorted(figure.suggestions.items())
                ],
                "overridden": figure.overridden,
                "overriddenByReason": [
                    {
                        "system": key[0],
                        "code": key[1],
                        "standardCode": key[2],
                        "display": _reason_display(catalogue, rule_id, key),
                        "count": n,
                    }
                    for key, n in sorted(figure.reasons.items(), key=lambda kv: (-kv[1], str(kv[0])))
                ],
                "snoozed": figure.snoozed,
                "suppressed": sum(figure.suppressed.values()),
                "suppressedByReason": dict(sorted(figure.suppressed.items())),
                "acceptanceRate": round(figure.accepted_cards / figure.shown, 4) if figure.shown else None,
            }
        )
    return listed


def report(store: Store, query: Query, catalogue: CardCatalogue) -> dict[str, Any]:
    """The whole answer, as JSON values (read from the database in one transaction)."""
    counts = counted.daily(store, query.since, query.until, query.rules)
    return {
        "since": _iso(query.since),
        "until": _iso(query.until),
        "period": query.period,
        "periodsIn": "UTC",
        "rules": list(query.rules) or None,
        "rows": rows(query, figures(counts, query, catalogue), catalogue),
    }


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula (labels are wording, but stay cautious)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(answer: Mapping[str, Any]) -> str:
    """One line per figure (a long table): totals with empty detail columns, then each breakdown."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)

    def line(row: Mapping[str, Any], measure: str, value: Any, **detail: Any) -> None:
        cells = {"period_start": row["periodStart"], "period_end": row["periodEnd"], "rule_id": row["ruleId"]}
        cells |= {"measure": measure, "value": value, **detail}
        writer.writerow([_cell(cells.get(column)) for column in CSV_COLUMNS])

    for row in answer["rows"]:
        for measure, key in (
            ("shown", "shown"),
            ("accepted_cards", "acceptedCards"),
            ("accepted_suggestions", "acceptedSuggestions"),
            ("overridden", "overridden"),
            ("snoozed", "snoozed"),
            ("suppressed", "suppressed"),
            ("acceptance_rate", "acceptanceRate"),
        ):
            line(row, measure, row[key])
        for accepted in row["acceptedBySuggestion"]:
            line(row, "accepted_suggestion", accepted["count"], suggestion=accepted["suggestion"])
        for reason in row["overriddenByReason"]:
            line(
                row,
                "overridden_reason",
                reason["count"],
                reason_system=reason["system"],
                reason_code=reason["code"],
                standard_code=reason["standardCode"],
            )
        for why, n in row["suppressedByReason"].items():
            line(row, "suppressed_reason", n, suppression_reason=why)
    return out.getvalue()


async def answer(request: Request, store: Store, catalogue: CardCatalogue, now: datetime) -> Response:
    """The analytics answer for a request (JSON or CSV); a bad query raises a 400 `RequestError`."""
    query = parse_query(list(request.query_params.multi_items()), request.headers.get("accept", ""), now)
    found = await run_in_threadpool(report, store, query, catalogue)
    if query.format == "csv":
        name = f"als-cds-rules-{query.period}-{query.since.date()}-{query.until.date()}.csv"
        return Response(
            to_csv(found),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return Response(_json(found), media_type="application/json")


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- the route --------------------------------------------------------------------------------


def token_matches(expected: str, authorization: str | None) -> bool:
    """Whether `Authorization: Bearer <token>` carries the analytics token, compared in constant
    time (bytes: a header with characters outside ASCII compares too, never raises)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def install(app: FastAPI, settings: Settings, unauthorised: Any) -> None:
    """Add `GET /analytics/rules` when ALS_CDS_ANALYTICS_TOKEN is set; else nothing (a 404).

    `unauthorised`: the app's 401 answer (an OperationOutcome with `WWW-Authenticate: Bearer`).
    """
    if settings.analytics_token is None:
        return
    expected = settings.analytics_token.get_secret_value().strip()

    @app.get(
        "/analytics/rules",
        summary="Per rule and period: cards shown, accepted, overridden by reason, snoozed, suppressed",
        responses={
            200: {"content": {"application/json": {}, "text/csv": {}}},
            400: {"description": "a query parameter that is not right; the body says which and why"},
            401: {"description": "no valid analytics token (Authorization: Bearer)"},
        },
    )
    async def analytics_rules(
        request: Request,
        since: str | None = None,
        until: str | None = None,
        period: str | None = None,
        rule: str | None = None,
        format: str | None = None,
    ) -> Response:
        # The parameters are declared for the OpenAPI document; they are read (and checked, each
        # mistake named) from the query string itself, which also refuses unknown and repeated ones.
        if not token_matches(expected, request.headers.get("authorization")):
            return unauthorised()
        state = request.app.state.als
        return await answer(request, state.store, state.engine.catalogue, state.clock())
