"""The per-process memory of snoozes (suppression.py, ALS_CDS_SNOOZE_CACHE_SECONDS), on SQLite and
PostgreSQL: a snooze set through this worker counts at once, one set through another worker within
the cache's time (here: still unseen by a worker that trusts its memory for five minutes, seen at
once by one that keeps none), and a snooze's end is exact whatever the cache holds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.api.test_alert_fatigue import QUICKSTART, VIEW, Clock, card_of, make, override
from tests.cards_shown import shown_rules
from tests.support import NOW, hook_request

RULE = "mdt-review-overdue"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'als-cds.db'}"
    return str(request.getfixturevalue("postgres_db_url"))


def test_a_snooze_counts_at_once_where_it_was_set_and_elsewhere_within_the_cache_time(
    database_url: str,
) -> None:
    clock = Clock()
    with (
        make(database_url, clock, digest_enabled=False) as setting,
        make(database_url, clock, digest_enabled=False, snooze_cache_seconds=300) as remembering,
        make(database_url, clock, digest_enabled=False, snooze_cache_seconds=0) as uncached,
    ):
        for worker in (setting, remembering, uncached):  # each has read the subject: not snoozed
            assert RULE in shown_rules(worker.post(VIEW, json=hook_request(QUICKSTART)).json())
        first = setting.post(VIEW, json=hook_request(QUICKSTART)).json()
        override(setting, "als-patient-view", card_of(first, RULE), "snooze-1-month")

        assert RULE not in shown_rules(setting.post(VIEW, json=hook_request(QUICKSTART)).json())
        assert RULE not in shown_rules(uncached.post(VIEW, json=hook_request(QUICKSTART)).json())
        # The stated bound: a worker that read the subject before the snooze trusts that reading
        # for up to its cache time (five minutes here, five seconds by default).
        assert RULE in shown_rules(remembering.post(VIEW, json=hook_request(QUICKSTART)).json())


def test_the_end_of_a_snooze_is_exact_whatever_the_cache_holds(database_url: str) -> None:
    clock = Clock()
    with make(database_url, clock, digest_enabled=False, snooze_cache_seconds=300) as client:
        first = client.post(VIEW, json=hook_request(QUICKSTART)).json()
        override(client, "als-patient-view", card_of(first, RULE), "snooze-1-month")
        assert RULE not in shown_rules(client.post(VIEW, json=hook_request(QUICKSTART)).json())  # cached
        clock.now = NOW + timedelta(days=30, minutes=2)  # 30 days after the override at 12:01
        assert RULE in shown_rules(client.post(VIEW, json=hook_request(QUICKSTART)).json())
