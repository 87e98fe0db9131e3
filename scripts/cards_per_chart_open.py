"""Cards per chart open (patient-view) on the bundled charts, with the care review digest off
(every reminder a card of its own, as before issue 12) and on (the default).

    .venv/bin/python scripts/cards_per_chart_open.py

Charts: every fixture patient with an MND diagnosis (`fhir_fixtures/patients/`) and the bundled
Synthea charts (`fhir_fixtures/synthea/`), evaluated at the tests' date (2026-11-22T12:00Z) by the
service itself over HTTP, each on a fresh database (no snooze). Snoozes lower the figures further,
by how often clinicians use them; that cannot be measured without clinicians.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds_service.app import create_app  # noqa: E402
from cds_service.bundles import request_from_bundle  # noqa: E402
from cds_service.services import build_services  # noqa: E402
from cds_service.settings import Settings  # noqa: E402
from tests.support import NOW, bundled_charts, chart_name, load_chart  # noqa: E402


def charts() -> dict[str, dict[str, Any]]:
    found = {
        f"fixture:{p.stem}": json.loads(p.read_text())
        for p in sorted((ROOT / "fhir_fixtures/patients").glob("*.json"))
    }
    found |= {f"synthea:{chart_name(p)}": load_chart(p) for p in bundled_charts()}
    return found


def measure(digest: bool) -> tuple[dict[str, list[dict[str, Any]]], Counter[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None, database_url=f"sqlite:///{tmp}/m.db", auth_required=False, digest_enabled=digest
        )
        keys = list(build_services()["als-patient-view"].prefetch(settings, NOW.date()))
        answers = {}
        with TestClient(create_app(settings, clock=lambda: NOW)) as client:
            for name, bundle in charts().items():
                request = request_from_bundle(bundle, "patient-view", keys)
                answers[name] = client.post("/cds-services/als-patient-view", json=request).json()["cards"]
    rules = Counter(card["source"]["topic"]["code"] for cards in answers.values() for card in cards)
    return answers, rules


def report(label: str, answers: dict[str, list[dict[str, Any]]]) -> None:
    opened = {name: cards for name, cards in answers.items() if cards}  # charts with MND
    total = sum(len(cards) for cards in opened.values())
    info = sum(1 for cards in opened.values() for card in cards if card["indicator"] == "info")
    for group in ("fixture", "synthea"):
        some = {n: c for n, c in opened.items() if n.startswith(group)}
        n = sum(len(c) for c in some.values())
        per = n / max(len(some), 1)
        print(f"{label:12} {group:8} charts with cards {len(some):3}  cards {n:4}  per chart open {per:.2f}")
    print(
        f"{label:12} all      charts with cards {len(opened):3}  cards {total:4}  per chart open "
        f"{total / max(len(opened), 1):.2f}  info {100 * info / max(total, 1):.0f} %"
    )


if __name__ == "__main__":
    before, before_rules = measure(digest=False)
    after, after_rules = measure(digest=True)
    report("digest off", before)
    report("digest on", after)
    print("most frequent cards, digest off:", before_rules.most_common(6))
    print("most frequent cards, digest on: ", after_rules.most_common(6))
