"""Load test of the als-cds service on loopback: throughput, latency, errors and memory under load.

    .venv/bin/python scripts/loadtest.py                      # 10,000 requests, 1 worker, SQLite
    .venv/bin/python scripts/loadtest.py --workers 2 --json report.json
    .venv/bin/python scripts/loadtest.py --url http://127.0.0.1:8080 --server-pid 1234

By default it starts the service itself (`als-cds serve` as a subprocess on a free loopback port,
ALS_CDS_WORKERS uvicorn workers, a fresh SQLite database in a temporary folder, authentication
off), or it loads a server already running at --url. For the FHIR-fetch path it always starts
the project's real FHIR server on loopback (fhir-server/: Medplum's FHIR engine on Node 22, via
scripts/medplum.py), with every fixture patient's chart loaded into a tenant of its own, paging
at --fhir-page-size entries.

Traffic is a weighted mix (--mix) of these kinds of request, sent by --concurrency concurrent
clients over keep-alive connections, each patient chosen at random from fhir_fixtures/patients:

    pv-prefetch       patient-view with full prefetch (request_from_bundle, the service's keys)
    pv-fetch          patient-view with NO prefetch: the service fetches from the FHIR server
    select-prefetch   order-select with full prefetch, the patient's draft orders selected
    select-fetch      order-select with no prefetch
    sign-prefetch     order-sign with full prefetch
    sign-fetch        order-sign with no prefetch
    feedback          POST .../feedback: one distinct item on a card issued earlier in the run
    pv-412            patient-view whose FHIR server is down (a loopback port nobody listens on):
                      the service must answer 412

Every kind expects 200 except pv-412 (412); anything else is an error, as is a feedback answer
that did not store its item or did not know the card. The run stops after --requests or
--max-seconds, whichever comes first, after a warm-up (--warmup requests, not measured) that
precedes the "before" memory reading. Memory is the RSS (VmRSS, /proc/<pid>/status) of the server
process and all its descendants (uvicorn workers). Where the database is known (always, when the
script started the server), every acknowledged feedback item is checked to be stored exactly once.

Exit status: 0 when there were no errors, 1 otherwise, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: the project package is beside us
    sys.path.insert(0, str(ROOT))

from cds_service.bundles import request_from_bundle, split_bundle  # noqa: E402
from cds_service.services import build_services  # noqa: E402
from cds_service.settings import Settings  # noqa: E402
from scripts import medplum  # noqa: E402
from scripts.service_process import (  # noqa: E402
    cpu_seconds,
    free_port,
    memory_snapshot,
    pid_listening_on,
    process_tree,
    start_server,
    stop_process,
)

PATIENTS = ROOT / "fhir_fixtures" / "patients"
DEFAULT_MIX = (
    "pv-prefetch=30,pv-fetch=15,select-prefetch=15,select-fetch=10,"
    "sign-prefetch=10,sign-fetch=5,feedback=12,pv-412=3"
)
#: Stands in for the hookInstance in a prepared body; each request gets its own uuid.
_PLACEHOLDER = b"00000000-0000-4000-8000-00000000cafe"


@dataclass(frozen=True)
class Kind:
    name: str
    hook: str | None  # None: feedback
    mode: str  # prefetch | fetch | fhir-down | feedback
    expect: int = 200

    @property
    def service(self) -> str:
        return {"patient-view": "als-patient-view", "order-select": "als-order-select"}.get(
            self.hook or "", "als-order-sign"
        )


KINDS = {
    k.name: k
    for k in (
        Kind("pv-prefetch", "patient-view", "prefetch"),
        Kind("pv-fetch", "patient-view", "fetch"),
        Kind("select-prefetch", "order-select", "prefetch"),
        Kind("select-fetch", "order-select", "fetch"),
        Kind("sign-prefetch", "order-sign", "prefetch"),
        Kind("sign-fetch", "order-sign", "fetch"),
        Kind("feedback", None, "feedback"),
        Kind("pv-412", "patient-view", "fhir-down", expect=412),
    )
}


# ------------------------------------------------------------------------------------------------
# Processes: the FHIR server (the service and /proc readings: scripts/service_process.py)


def start_fhir_server(page_size: int, patients: Path, log_dir: Path, delay_ms: int = 0) -> medplum.FhirServer:
    """The Medplum FHIR server with every fixture patient's chart, one tenant per patient;
    `delay_ms` added to each FHIR request once the charts are loaded (a distant FHIR server)."""
    server = medplum.start("--page-size", str(page_size), log_dir=log_dir)
    try:
        for fixture in medplum.fixture_patients(patients):
            server.load_patient(fixture, patients)
        server.reset()  # count only the load's requests
        if delay_ms:
            server.configure(delayMs=delay_ms)
    except BaseException:
        server.stop()
        raise
    return server


# ------------------------------------------------------------------------------------------------
# Request bodies


@dataclass
class Prepared:
    """Request bodies per kind, serialised once; the hookInstance is filled in per request."""

    bodies: dict[str, list[bytes]] = field(default_factory=dict)


def prefetch_keys(url: str) -> dict[str, list[str]]:
    """The prefetch keys per hook, from the server's discovery document, as an EHR learns them.

    Falling back to this checkout's services when discovery cannot be read: the calls then show why.
    """
    try:
        services = httpx.get(f"{url}/cds-services", timeout=10).raise_for_status().json()["services"]
        return {s["hook"]: list(s.get("prefetch") or {}) for s in services}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        settings, today = Settings(_env_file=None), datetime.now(UTC).date()
        return {s.hook: list(s.prefetch(settings, today)) for s in build_services().values()}


def prepare(
    patients_dir: Path,
    fhir: medplum.FhirServer,
    down_base: str,
    keys: dict[str, list[str]],
    kinds: list[str] | None = None,
) -> Prepared:
    """Request bodies per kind (`kinds`: those of the mix; default all). `down_base`: a FHIR base
    URL where nothing listens (pv-412)."""
    paths = sorted(patients_dir.glob("*.json"))
    bundles = [(p.stem, json.loads(p.read_text(encoding="utf-8"))) for p in paths]
    prepared = Prepared()
    for kind in KINDS.values():
        if kind.hook is None or (kinds is not None and kind.name not in kinds):
            continue
        bodies = []
        for fixture, bundle in bundles:
            if kind.hook != "patient-view" and not split_bundle(bundle)[1]:
                continue  # order hooks: only the patients with draft orders
            request = request_from_bundle(bundle, kind.hook, keys[kind.hook], user_id="Practitioner/load-1")
            request["hookInstance"] = _PLACEHOLDER.decode()
            if kind.mode != "prefetch":
                del request["prefetch"]
                request["fhirServer"] = fhir.base(fixture) if kind.mode == "fetch" else down_base
                request["fhirAuthorization"] = {
                    "access_token": fhir.token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "als-cds",
                }
            bodies.append(json.dumps(request, separators=(",", ":")).encode("utf-8"))
        if not bodies:
            raise RuntimeError(f"no fixture patient fits {kind.name}")
        prepared.bodies[kind.name] = bodies
    return prepared


# ------------------------------------------------------------------------------------------------
# The load


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # ms, successful or not
    errors: Counter[str] = field(default_factory=Counter)  # "kind: cause"
    sent: int = 0
    feedback_sent: set[tuple[str, str]] = field(default_factory=set)  # (card uuid, timestamp)
    feedback_acknowledged: set[tuple[str, str]] = field(default_factory=set)


class Load:
    def __init__(self, url: str, prepared: Prepared, mix: dict[str, int], seed: int, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.prepared = prepared
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]
        self.rng = random.Random(seed)  # noqa: S311 - traffic shaping, not cryptography
        self.timeout = timeout
        self.cards: list[tuple[str, str, tuple[str, ...]]] = []  # (service, card uuid, suggestion uuids)
        self.feedback_seq = 0
        self.feedback_base = datetime.now(UTC).replace(microsecond=0)

    def _remember_cards(self, service: str, body: Any) -> None:
        for card in body.get("cards", []):
            entry = (service, card["uuid"], tuple(s["uuid"] for s in card.get("suggestions") or ()))
            if len(self.cards) < 5000:
                self.cards.append(entry)
            else:
                self.cards[self.rng.randrange(len(self.cards))] = entry

    def _feedback(self) -> tuple[str, bytes, tuple[str, str], bool]:
        self.feedback_seq += 1
        stamp = (self.feedback_base + timedelta(milliseconds=self.feedback_seq)).isoformat()
        known = bool(self.cards)
        service, card, suggestions = (
            self.rng.choice(self.cards) if known else ("als-patient-view", str(uuid.uuid4()), ())
        )
        item: dict[str, Any] = {"card": card, "outcomeTimestamp": stamp}
        if suggestions and self.feedback_seq % 2:
            item |= {"outcome": "accepted", "acceptedSuggestions": [{"id": suggestions[0]}]}
        else:
            item |= {
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "not-applicable", "system": "urn:als-cds:load-test", "display": "N/A"},
                    "userComment": f"load test item {self.feedback_seq}",
                },
            }
        body = json.dumps({"feedback": [item]}).encode("utf-8")
        return f"{self.url}/cds-services/{service}/feedback", body, (card, stamp), known

    async def one(self, client: aiohttp.ClientSession, results: Results) -> None:
        kind = KINDS[self.rng.choices(self.kinds, self.weights)[0]]
        feedback_key, known_card = None, False
        if kind.mode == "feedback":
            url, body, feedback_key, known_card = self._feedback()
            results.feedback_sent.add(feedback_key)
        else:
            url = f"{self.url}/cds-services/{kind.service}"
            template = self.rng.choice(self.prepared.bodies[kind.name])
            body = template.replace(_PLACEHOLDER, str(uuid.uuid4()).encode(), 1)
        results.sent += 1
        started = time.perf_counter()
        cause = None
        try:
            async with client.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                status, content = response.status, await response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if status != kind.expect:
                cause = f"HTTP {status}"
            elif kind.expect == 200:
                answer = json.loads(content)
                if feedback_key is not None:
                    if answer.get("stored") != 1:
                        cause = "feedback item not stored"
                    elif known_card and answer.get("unknownCards"):
                        cause = "feedback on an issued card found no issued card"
                    else:
                        results.feedback_acknowledged.add(feedback_key)
                elif not isinstance(answer.get("cards"), list):
                    cause = "answer without cards"
                else:
                    self._remember_cards(kind.service, answer)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            elapsed = (time.perf_counter() - started) * 1000
            cause = type(exc).__name__
        results.latencies.setdefault(kind.name, []).append(elapsed)
        if cause is not None:
            results.errors[f"{kind.name}: {cause}"] += 1

    async def run(
        self, requests: int, concurrency: int, max_seconds: float, ramp_seconds: float = 0.0
    ) -> tuple[Results, float, str]:
        """`ramp_seconds`: the clients start one by one over this time. Started all at once, their
        connections arrive in one burst, and the event loop (uvloop, as asyncio) of whichever
        uvicorn worker wakes first accepts the whole burst: that worker then serves every
        keep-alive connection of the run while the others idle (seen: 498 s of CPU against 0.9 s).
        EHRs open connections over time."""
        results = Results()
        remaining = [requests]
        stopped_by = ["requests"]
        deadline = time.monotonic() + max_seconds
        async def client_loop(client: aiohttp.ClientSession, delay: float) -> None:
            await asyncio.sleep(delay)
            while remaining[0] > 0:
                if time.monotonic() >= deadline:
                    stopped_by[0] = "max-seconds"
                    return
                remaining[0] -= 1
                await self.one(client, results)

        started = time.perf_counter()
        # aiohttp, not httpx: the driver shares the service's cores, and httpx cost it 2.5 ms of CPU
        # a call (more than half of what the service spent); aiohttp about a fifth of that.
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            step = ramp_seconds / concurrency
            tasks = [asyncio.ensure_future(client_loop(client, i * step)) for i in range(concurrency)]
            # Each request is bounded by the timeout, so this cannot wait for ever; the extra margin
            # only guards against a bug here.
            done, pending = await asyncio.wait(tasks, timeout=max_seconds + self.timeout + 30)
            for task in pending:
                task.cancel()
                results.errors["driver: client loop did not finish"] += 1
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    results.errors[f"driver: {type(task.exception()).__name__}"] += 1
        return results, time.perf_counter() - started, stopped_by[0]


# ------------------------------------------------------------------------------------------------
# Report


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(values)

    def rank(q: float) -> float:  # nearest rank
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))], 1)

    return {
        "count": len(ordered),
        "p50_ms": rank(0.50),
        "p95_ms": rank(0.95),
        "p99_ms": rank(0.99),
        "max_ms": round(ordered[-1], 1),
        "mean_ms": round(sum(ordered) / len(ordered), 1),
    }


def check_feedback_rows(database_url: str, sent: set[tuple[str, str]], acked: set[tuple[str, str]]) -> dict:
    from cds_service.store import Store

    store = Store(database_url)
    try:
        rows = store.feedback_rows()
    finally:
        store.close()

    def stamp(value: datetime) -> str:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()

    sent_norm = {(card, stamp(datetime.fromisoformat(ts))) for card, ts in sent}
    acked_norm = {(card, stamp(datetime.fromisoformat(ts))) for card, ts in acked}
    ours = [(r["card_uuid"], stamp(r["outcome_timestamp"])) for r in rows]
    ours = [key for key in ours if key in sent_norm]
    return {
        "stored_rows": len(ours),
        "missing": len(acked_norm - set(ours)),
        "duplicate_rows": len(ours) - len(set(ours)),
    }


def build_report(args: argparse.Namespace, context: dict[str, Any]) -> dict[str, Any]:
    results: Results = context["results"]
    warmup: Results = context["warmup_results"]
    by_kind = {}
    for name in context["mix"]:
        stats = percentiles(results.latencies.get(name, []))
        errors = sum(n for cause, n in results.errors.items() if cause.startswith(f"{name}: "))
        by_kind[name] = {**stats, "expected_status": KINDS[name].expect, "errors": errors}
    every = [ms for values in results.latencies.values() for ms in values]
    completed = len(every)
    before, after = context["memory_before"], context["memory_after"]
    memory: dict[str, Any] = {"available": before is not None and after is not None}
    if memory["available"]:
        growth = after["total_rss_kb"] - before["total_rss_kb"]
        samples = context["memory_samples"]
        memory |= {
            "before_kb": before["total_rss_kb"],
            "after_kb": after["total_rss_kb"],
            "growth_kb": growth,
            "growth_pct": round(100 * growth / before["total_rss_kb"], 2) if before["total_rss_kb"] else None,
            "peak_kb": max([after["total_rss_kb"], *(kb for _, kb in samples)]),
            # Warm-up effects (caches, allocator arenas) land early; a leak keeps going. What the
            # second half of the measured run added tells the two apart.
            "second_half_growth_kb": _second_half_growth(samples, after["total_rss_kb"]),
            "processes_before": before["processes"],
            "processes_after": after["processes"],
            "samples": samples,
        }
    else:
        memory["reason"] = "no server pid: pass --server-pid, or run on the same machine as the server"
    errors_total = sum(results.errors.values()) + sum(warmup.errors.values())
    # Counted with the warm-up's, as the database check sees the rows of both.
    feedback = {
        "sent": len(results.feedback_sent | warmup.feedback_sent),
        "acknowledged": len(results.feedback_acknowledged | warmup.feedback_acknowledged),
    }
    feedback |= context.get("feedback_check") or {
        "stored_rows": None,
        "missing": None,
        "duplicate_rows": None,
    }
    check_failed = bool(feedback["missing"] or feedback["duplicate_rows"])
    return {
        "tool": "scripts/loadtest.py",
        "started_at": context["started_at"],
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_start": context["loadavg_start"],
            "loadavg_end": context["loadavg_end"],
        },
        "target": {
            "url": context["url"],
            "started_by_loadtest": context["owned"],
            "workers": context["workers"],
            "database": context["database"],
            "server_env": context.get("server_env", {}),
        },
        "fhir_server": {
            "origin": context["fhir_origin"],
            "page_size": args.fhir_page_size,
            "delay_ms": args.fhir_delay_ms,
            "answers_by_status": context.get("fhir_stats"),
            "note": "Medplum FHIR engine (fhir-server/, in memory), one tenant per fixture patient",
        },
        "config": {
            "requests": args.requests,
            "max_seconds": args.max_seconds,
            "concurrency": args.concurrency,
            "warmup": args.warmup,
            "ramp_seconds": args.ramp_seconds,
            "mix": context["mix"],
            "seed": args.seed,
            "request_timeout_s": args.request_timeout,
        },
        "requests": {
            "sent": results.sent,
            "completed": completed,
            "stopped_by": context["stopped_by"],
            "warmup_sent": warmup.sent,
        },
        "duration_s": round(context["duration"], 2),
        "throughput_rps": round(completed / context["duration"], 1) if context["duration"] else 0.0,
        "latency_ms": {"overall": percentiles(every), "by_kind": by_kind},
        "errors": {
            "total": errors_total,
            "by_cause": dict(sorted(results.errors.items())),
            "warmup_by_cause": dict(sorted(warmup.errors.items())),
        },
        "feedback": feedback,
        "memory": memory,
        "cpu_seconds": context["cpu"],
        # utime + stime of the server and its workers over the measured requests: unlike wall
        # time, hardly moved by other load on a shared machine.
        "server_cpu_ms_per_request": (
            round(1000 * context["cpu_precise"] / completed, 2)
            if completed and context["cpu_precise"]
            else None
        ),
        "server_shutdown": context.get("shutdown"),
        "ok": errors_total == 0 and not check_failed,
    }


def _second_half_growth(samples: list[list[float]], after_kb: int) -> int | None:
    """RSS after the run minus the first sample taken in its second half (None: too few samples)."""
    if len(samples) < 4:
        return None
    halfway = samples[-1][0] / 2
    middle = next(kb for t, kb in samples if t >= halfway)
    return int(after_kb - middle)


def _mb(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def render_table(report: dict[str, Any]) -> str:
    target, req = report["target"], report["requests"]
    workers = f"{target['workers']} worker(s), " if target["workers"] else ""
    lines = [
        f"als-cds load test against {target['url']} ({workers}database {target['database'] or 'unknown'})",
        f"{req['completed']} requests in {report['duration_s']} s (stopped by {req['stopped_by']}; "
        f"warm-up {req['warmup_sent']} not counted), concurrency {report['config']['concurrency']}",
        f"throughput: {report['throughput_rps']} req/s    errors: {report['errors']['total']}"
        f" (in the warm-up: {sum(report['errors']['warmup_by_cause'].values())})",
        "",
        f"{'kind':<16}{'expect':>7}{'count':>8}{'errors':>8}"
        + "".join(f"{h:>9}" for h in ("p50 ms", "p95 ms", "p99 ms", "max ms")),
    ]

    def row(name: str, stats: dict[str, Any], expect: str, errors: int) -> str:
        cells = [stats[k] if stats[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
        return f"{name:<16}{expect:>7}{stats['count']:>8}{errors:>8}" + "".join(f"{c:>9}" for c in cells)

    for name, stats in report["latency_ms"]["by_kind"].items():
        lines.append(row(name, stats, str(stats["expected_status"]), stats["errors"]))
    lines.append(row("overall", report["latency_ms"]["overall"], "", report["errors"]["total"]))
    for cause, count in report["errors"]["by_cause"].items():
        lines.append(f"  error {cause}: {count}")
    for cause, count in report["errors"]["warmup_by_cause"].items():
        lines.append(f"  error in the warm-up {cause}: {count}")
    memory = report["memory"]
    lines.append("")
    if memory["available"]:
        lines.append(
            f"memory (RSS of the server and its workers): before {_mb(memory['before_kb'])}, "
            f"after {_mb(memory['after_kb'])}, growth {memory['growth_kb'] / 1024:+.1f} MB "
            f"({memory['growth_pct']:+.1f}%), peak {_mb(memory['peak_kb'])}"
        )
        late = memory["second_half_growth_kb"]
        lines.append(
            "  growth in the second half of the run: "
            + ("n/a (too few samples)" if late is None else f"{late / 1024:+.1f} MB")
        )
        after = {p["pid"]: p for p in memory["processes_after"]}
        for proc in memory["processes_before"]:
            end = after.get(proc["pid"], {})
            cpu = f"{end['cpu_s'] - proc['cpu_s']:.1f} s" if end else "n/a"
            lines.append(
                f"  pid {proc['pid']:<8}{proc['role']:<18}{_mb(proc['rss_kb']):>10} -> "
                f"{_mb(end.get('rss_kb')):>10}   cpu in the run {cpu}"
            )
    else:
        lines.append(f"memory: not measured ({memory['reason']})")
    cpu = report["cpu_seconds"]
    lines.append(
        "cpu seconds in the measured run: "
        + ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} n/a" for k, v in cpu.items())
    )
    if report["server_cpu_ms_per_request"] is not None:
        lines.append(f"server cpu per request: {report['server_cpu_ms_per_request']} ms")
    fb = report["feedback"]
    lines.append(
        f"feedback (with warm-up): {fb['acknowledged']} of {fb['sent']} acknowledged; stored rows "
        f"{fb['stored_rows'] if fb['stored_rows'] is not None else 'not checked'}, missing "
        f"{fb['missing'] if fb['missing'] is not None else '-'}, duplicate rows "
        f"{fb['duplicate_rows'] if fb['duplicate_rows'] is not None else '-'}"
    )
    fhir = report["fhir_server"]
    lines.append(
        f"FHIR server (Medplum, page size {fhir['page_size']}, {fhir['delay_ms']} ms added a request) "
        "answers by HTTP status: "
        f"{fhir['answers_by_status']}"
    )
    if report["server_shutdown"]:
        shutdown = report["server_shutdown"]
        lines.append(
            f"server shutdown (SIGTERM): exit code {shutdown['exit_code']}, "
            f"log says application shutdown complete: {shutdown['log_says_shutdown_complete']}"
        )
    lines.append("result: " + ("OK" if report["ok"] else "ERRORS"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {name!r}; kinds: {', '.join(KINDS)}")
        mix[name] = int(weight or 1)
    if not any(mix.values()):
        raise argparse.ArgumentTypeError("the mix has no weight")
    return {k: v for k, v in mix.items() if v > 0}


def parse_workers(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be >= 1")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Kinds: " + ", ".join(KINDS) + f". Default mix: {DEFAULT_MIX}",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--url", help="load a server already running here (loopback); default: start one")
    target.add_argument("--server-pid", type=int, help="with --url: the server's pid, for its memory")
    target.add_argument(
        "--workers",
        type=parse_workers,
        default=[1],
        help="uvicorn workers of the started server (default 1); a list such as 1,2 runs the whole "
        "test once per count, back to back, and compares them",
    )
    target.add_argument(
        "--database-url", help="database of the started server (default: SQLite in a temporary folder)"
    )
    target.add_argument("--server-log", type=Path, help="keep the started server's log here")
    target.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="ALS_CDS_X=VALUE",
        help="a setting for the started server (repeatable), e.g. ALS_CDS_FHIR_BUDGET_SECONDS=10",
    )
    target.add_argument("--server-log-level", default="info", choices=["debug", "info", "warning", "error"])
    load = parser.add_argument_group("load")
    load.add_argument("--requests", type=int, default=10_000, help="measured requests (default 10000)")
    load.add_argument("--max-seconds", type=float, default=300, help="measured phase time cap (default 300)")
    load.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    load.add_argument("--warmup", type=int, default=300, help="requests before the measured phase (300)")
    load.add_argument(
        "--ramp-seconds",
        type=float,
        default=2.0,
        help="the clients start one by one over this time, so that their connections spread over "
        "the workers (default 2; 0: all at once)",
    )
    load.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX), help="kind=weight,...")
    load.add_argument("--seed", type=int, default=4, help="random seed of the traffic (default 4)")
    load.add_argument("--request-timeout", type=float, default=30, help="per request, seconds (30)")
    load.add_argument(
        "--fhir-page-size", type=int, default=5, help="FHIR server page size where a search has no _count (5)"
    )
    load.add_argument(
        "--fhir-delay-ms",
        type=int,
        default=0,
        help="added by the FHIR server to each request, as a distant server would (default 0)",
    )
    load.add_argument("--patients", type=Path, default=PATIENTS, help="folder of patient Bundles")
    out = parser.add_argument_group("output")
    out.add_argument("--json", help="also write the report as JSON to this file ('-': stdout)")
    out.add_argument("--sample-seconds", type=float, default=2.0, help="memory sampling interval")
    args = parser.parse_args(argv)
    if (
        min(args.requests, args.concurrency) < 1
        or args.max_seconds <= 0
        or args.warmup < 0
        or args.ramp_seconds < 0
    ):
        parser.error(
            "--requests and --concurrency must be >= 1, --max-seconds > 0, --warmup and --ramp-seconds >= 0"
        )
    if any("=" not in item or not item.startswith("ALS_CDS_") for item in args.server_env):
        parser.error("--server-env takes ALS_CDS_NAME=VALUE")
    if args.url and len(args.workers) > 1:
        parser.error("--url loads one server: a list of --workers needs the script to start them")
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address (http://127.0.0.1:PORT)")
    return args


async def sample_memory(root: int | None, every: float, samples: list[list[float]], t0: float) -> None:
    while root is not None:
        snapshot = memory_snapshot(root)
        if snapshot:
            samples.append([round(time.perf_counter() - t0, 1), snapshot["total_rss_kb"]])
        await asyncio.sleep(every)


async def measured(load: Load, args: argparse.Namespace, root: int | None, samples: list) -> tuple:
    sampler = asyncio.ensure_future(sample_memory(root, args.sample_seconds, samples, time.perf_counter()))
    try:
        return await load.run(args.requests, args.concurrency, args.max_seconds, args.ramp_seconds)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


def run_once(args: argparse.Namespace, workers: int, log_path: Path | None) -> dict[str, Any] | None:
    """One complete run (FHIR server, service, warm-up, measured load, shutdown, checks): its report."""
    workdir = Path(tempfile.mkdtemp(prefix="als-cds-load-"))
    fhir: medplum.FhirServer | None = None
    server = None
    context: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "mix": args.mix,
        "owned": args.url is None,
        "workers": workers if args.url is None else None,
    }
    try:
        fhir = start_fhir_server(args.fhir_page_size, args.patients, workdir, args.fhir_delay_ms)
        context["fhir_origin"] = fhir.origin
        database_url = args.database_url or f"sqlite:///{workdir / 'als-cds.db'}"
        log_path = log_path or workdir / "server.log"
        if args.url is None:
            extra = dict(item.split("=", 1) for item in args.server_env)
            server, url = start_server(workers, database_url, workdir, log_path, args.server_log_level, extra)
            context["server_env"] = extra
            root: int | None = server.pid
            context["database"] = database_url.split("://")[0].split("+")[0]
        else:
            url = args.url.rstrip("/")
            root = args.server_pid or pid_listening_on(int(url.rsplit(":", 1)[1].split("/")[0]))
            context["database"] = (
                args.database_url.split("://")[0].split("+")[0] if args.database_url else None
            )
        context["url"] = url
        # Nothing listens here once the probe socket is closed: a FHIR server that is down.
        down_base = f"http://127.0.0.1:{free_port()}/fhir"
        prepared = prepare(args.patients, fhir, down_base, prefetch_keys(url), list(args.mix))
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"loadtest: cannot start: {exc}", file=sys.stderr)
        if server is not None:
            stop_process(server, 10)
        if fhir is not None:
            fhir.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        return None

    try:
        load = Load(url, prepared, args.mix, args.seed, args.request_timeout)
        if args.warmup:
            context["warmup_results"], _, _ = asyncio.run(
                load.run(args.warmup, args.concurrency, min(args.max_seconds, 120), args.ramp_seconds)
            )
        else:
            context["warmup_results"] = Results()
        time.sleep(1.0)  # let the warm-up's last responses and any deferred work settle
        context["memory_before"] = memory_snapshot(root)
        server_pids = process_tree(root) if root else []

        def cpu_now() -> tuple[float, float, float]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return cpu_seconds(server_pids), usage.ru_utime + usage.ru_stime, cpu_seconds([fhir.process.pid])

        cpu_before = cpu_now()
        samples: list[list[float]] = []
        results, duration, stopped_by = asyncio.run(measured(load, args, root, samples))
        cpu_after = cpu_now()
        time.sleep(1.0)
        context["memory_after"] = memory_snapshot(root)
        context |= {
            "results": results,
            "duration": duration,
            "stopped_by": stopped_by,
            "memory_samples": samples,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
        context["cpu_precise"] = (cpu_after[0] - cpu_before[0]) if root else None
        context["cpu"] = {
            name: round(after - before, 1) if (name != "server" or root) else None
            for name, before, after in zip(
                ("server", "load_driver", "fhir_server"), cpu_before, cpu_after, strict=True
            )
        }
        with contextlib.suppress(httpx.HTTPError, ValueError):
            context["fhir_stats"] = fhir.stats()["byStatus"]
        if server is not None:
            code = stop_process(server, 45)
            log_text = log_path.read_text(errors="replace")
            context["shutdown"] = {
                "exit_code": code,
                "log_says_shutdown_complete": "Application shutdown complete." in log_text,
            }
        if args.url is None or args.database_url:
            acked = results.feedback_acknowledged | context["warmup_results"].feedback_acknowledged
            sent = results.feedback_sent | context["warmup_results"].feedback_sent
            context["feedback_check"] = check_feedback_rows(database_url, sent, acked)
    finally:
        if server is not None:
            stop_process(server, 45)
        fhir.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return build_report(args, context)


def compare(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each run against the first (e.g. 2 workers against 1), from one invocation, back to back."""
    first = reports[0]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(b / a, 2) if a and b is not None else None

    return {
        "workers": [r["target"]["workers"] for r in reports],
        "throughput_rps": [r["throughput_rps"] for r in reports],
        "throughput_ratio": [ratio(first["throughput_rps"], r["throughput_rps"]) for r in reports],
        "p50_ms": [r["latency_ms"]["overall"]["p50_ms"] for r in reports],
        "p95_ms": [r["latency_ms"]["overall"]["p95_ms"] for r in reports],
        "p99_ms": [r["latency_ms"]["overall"]["p99_ms"] for r in reports],
        "server_cpu_s": [r["cpu_seconds"]["server"] for r in reports],
        "server_cpu_ms_per_request": [r["server_cpu_ms_per_request"] for r in reports],
        "rss_after_kb": [r["memory"].get("after_kb") for r in reports],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reports = []
    for workers in args.workers:
        log_path = args.server_log
        if log_path is not None and len(args.workers) > 1:
            log_path = log_path.with_name(f"{log_path.stem}-{workers}w{log_path.suffix}")
        report = run_once(args, workers, log_path)
        if report is None:
            return 2
        reports.append(report)
        print(render_table(report), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    if len(reports) == 1:
        document: dict[str, Any] = reports[0]
    else:
        document = {"runs": reports, "comparison": compare(reports), "ok": all(r["ok"] for r in reports)}
        c = document["comparison"]
        lines = ["", "comparison (one invocation, runs back to back):"]
        for i, workers in enumerate(c["workers"]):
            lines.append(
                f"  {workers} worker(s): {c['throughput_rps'][i]} req/s (x{c['throughput_ratio'][i]}), "
                f"p50 {c['p50_ms'][i]} ms, p95 {c['p95_ms'][i]} ms, p99 {c['p99_ms'][i]} ms, "
                f"server cpu {c['server_cpu_s'][i]} s, RSS after {_mb(c['rss_after_kb'][i])}"
            )
        print("\n".join(lines), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(document, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
