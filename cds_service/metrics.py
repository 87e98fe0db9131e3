"""Prometheus metrics (prometheus-client), served at `GET /metrics`.

Several workers: `als-cds serve` gives every process of the service one fresh directory in
`PROMETHEUS_MULTIPROC_DIR` before any of them imports prometheus-client (the variable is read at
import), each worker writes its samples there, and `/metrics`, whichever worker answers, adds them
all up (prometheus-client's multiprocess mode). Only counters and histograms are used: they add up
across workers without the per-process bookkeeping gauges need.

Labels never carry patient data, a token, a URL or anything the caller chose freely: services,
hooks, rule ids, indicators, FHIR resource types and reasons are each one of a fixed set of ours;
anything else is counted as `other`. So the number of series is bounded whatever EHRs send.

Who may read `/metrics` (README, Metrics): with authentication on, only a scraper presenting
`ALS_CDS_METRICS_TOKEN` as a Bearer token, and without that setting it is not served at all (404);
with authentication off (local development) it is open.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

#: The services, hooks and resource types labels may name; anything else is `other`.
SERVICES = frozenset({"als-patient-view", "als-order-select", "als-order-sign"})
HOOKS = frozenset({"patient-view", "order-select", "order-sign"})
RESOURCE_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "MedicationRequest",
        "Medication",
        "Observation",
        "AllergyIntolerance",
        "Procedure",
        "Encounter",
        "Device",
        "DocumentReference",
        "Consent",
        "ServiceRequest",
        "NutritionOrder",
        "DeviceRequest",
        "VisionPrescription",
    }
)
FETCH_FAILURES = frozenset({"timeout", "security", "too-costly", "transient", "incomplete"})
OUTCOMES = frozenset({"accepted", "overridden"})
INDICATORS = frozenset({"info", "warning", "critical"})
_RULE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0)
_BYTES_BUCKETS = (1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1e7)

REQUESTS = Histogram(
    "als_cds_request_duration_seconds",
    "Time from request to answer, by endpoint, service, hook and HTTP status.",
    ["endpoint", "service", "hook", "status"],
    buckets=_LATENCY_BUCKETS,
)
CARDS = Counter("als_cds_cards_total", "Cards answered, by rule and indicator.", ["rule_id", "indicator"])
FHIR_FETCH = Histogram(
    "als_cds_fhir_fetch_duration_seconds",
    "Time to fetch one prefetch key (or a Medication) from a FHIR server, every page included.",
    ["resource_type"],
    buckets=_LATENCY_BUCKETS,
)
FHIR_BYTES = Histogram(
    "als_cds_fhir_response_bytes",
    "Size of each FHIR server answer read (decompressed).",
    ["resource_type"],
    buckets=_BYTES_BUCKETS,
)
FHIR_FAILURES = Counter(
    "als_cds_fhir_fetch_failures_total",
    "FHIR fetches that failed, by resource type and kind (the 412's issue code).",
    ["resource_type", "reason"],
)
FHIR_CIRCUITS = Counter("als_cds_fhir_circuit_opened_total", "Times a FHIR server's circuit opened.")
PREFETCH_MISSING = Counter(
    "als_cds_prefetch_keys_missing_total",
    "Prefetch keys the EHR did not fill usably, so the service fetched them (or could not).",
    ["key", "why"],
)
READER = Counter(
    "als_cds_reader_resources_total",
    "What the tolerant reader repaired or dropped, by resource type and reason (its own words).",
    ["resource_type", "outcome", "reason"],
)
FEEDBACK = Counter(
    "als_cds_feedback_total", "Feedback items received, by rule and outcome.", ["rule_id", "outcome"]
)
AUTH_REJECTIONS = Counter("als_cds_auth_rejections_total", "Calls refused 401, by reason.", ["reason"])
SHED = Counter("als_cds_shed_total", "Hook calls answered 503 at once: the worker was at capacity.")
CONNECTIONS_REFUSED = Counter("als_cds_connections_refused_total", "Connections over the limit, refused.")
ISSUED_DROPPED = Counter(
    "als_cds_issued_records_dropped_total",
    "Hook calls whose issued-card records were not stored (queue full: the database down or slow; "
    "shutdown: not written in time). Feedback on their cards is stored without its rule.",
    ["reason"],
)
SUPPRESSED = Counter(
    "als_cds_cards_suppressed_total",
    "Cards the rules found and the service did not show (issue 12), by rule and reason: snoozed for "
    "the patient, a duplicate of order-select on order-sign, or about an order the service suggested.",
    ["rule_id", "reason"],
)
SUPPRESSION_REASONS = frozenset({"snoozed", "duplicate", "own-suggestion"})
READ_TIMEOUTS = Counter(
    "als_cds_read_timeouts_total", "Connections closed for a request not read in time.", ["phase"]
)


def one_of(value: Any, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else "other"


def rule_label(rule_id: Any) -> str:
    """A rule id of ours (lower-case words and hyphens, as every card file is named), else `other`.
    Rule ids come from our own catalogue when cards are counted; from the store for feedback."""
    if isinstance(rule_id, str) and 0 < len(rule_id) <= 64 and set(rule_id) <= _RULE_ID_CHARS:
        return rule_id
    return "unknown" if rule_id is None else "other"


def observe_cards(cards: Iterable[Any]) -> None:
    for card in cards:
        CARDS.labels(rule_label(card.source.topic.code), one_of(card.indicator, INDICATORS)).inc()


def observe_reader(report: Any) -> None:
    """The reader's counts of one call (`ReadReport`): keys are 'Type.field: what' in its own words."""
    for outcome, counter in (("repaired", report.repaired), ("dropped", report.dropped)):
        for key, count in counter.items():
            rtype, _, reason = key.partition(".")
            READER.labels(one_of(rtype, RESOURCE_TYPES), outcome, reason[:120]).inc(count)
    for rtype, count in report.unreadable.items():
        READER.labels(one_of(rtype, RESOURCE_TYPES), "dropped", "unreadable resource").inc(count)


def resource_type_of(relative_url: str) -> str:
    """`Observation?patient=...` or `Patient/123` → the type, if it is one of ours."""
    return one_of(relative_url.lstrip("/").split("?", 1)[0].split("/", 1)[0], RESOURCE_TYPES)


def render() -> tuple[bytes, str]:
    """The exposition of this process, or of all the service's processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def allowed(token: str | None, auth_required: bool, headers: Mapping[str, str]) -> bool | None:
    """Whether this scrape may read the metrics; None when /metrics is not served at all."""
    if token is None:
        return None if auth_required else True
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
