"""What the store holds per call: rows and bytes per table, measured on a real PostgreSQL.

    python scripts/store_footprint.py --database-url postgresql+psycopg://user@127.0.0.1:5432/db --calls 1000

For each kind of call (patient-view, order-select, order-sign with full prefetch, and one
feedback item on a card issued earlier) it makes an empty schema, runs the service in-process
(the real app, authentication on: every call carries a signed JWT, so the replay cache fills as in
production) against it, sends `--calls` calls, then reads each table's rows and size
(`pg_total_relation_size`: heap, indexes and TOAST, after VACUUM) and the average row
(`pg_column_size` of the row). Every call is for a different patient (the fixture's patient id
rewritten), as in an EHR, so that nothing is deduplicated or suppressed as a repeat.
docs/deployment.md turns the output into bytes per million calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm
from psycopg import sql
from sqlalchemy import make_url

from cds_service.app import create_app
from cds_service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = ROOT / "fhir_fixtures" / "requests"
EHR = "https://ehr.example.org"
BASE = "http://testserver"
KINDS = {
    "patient-view": ("als-patient-view", "patient-view-als-riluzole-lft-overdue"),
    "order-select": ("als-order-select", "order-select-riluzole"),
    "order-sign": ("als-order-sign", "order-sign-riluzole"),
}


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Caller:
    def __init__(self, client: TestClient, key: ec.EllipticCurvePrivateKey) -> None:
        self.client, self.key = client, key

    def post(self, path: str, body: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": EHR, "aud": BASE + path, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        token = jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": "k", "typ": "JWT"})
        response = self.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        if response.status_code != 200:
            raise SystemExit(f"{path}: {response.status_code} {response.text[:500]}")
        return response.json()


def hook_call(caller: Caller, kind: str, n: int) -> dict[str, Any]:
    service, name = KINDS[kind]
    text = (REQUESTS / f"{name}.json").read_text(encoding="utf-8")
    request = json.loads(text)
    patient = request["context"]["patientId"]
    request = json.loads(text.replace(patient, f"footprint-{n:07d}"))
    request["hookInstance"] = str(uuid.uuid4())
    return caller.post(f"/cds-services/{service}", request)


def measure(url: str, kind: str, calls: int) -> dict[str, Any]:
    schema = f"footprint_{kind.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(libpq(url), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    parsed = make_url(url)
    scoped = parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    key = ec.generate_private_key(ec.SECP384R1())
    jwks = {"keys": [{**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k", "alg": "ES384"}]}
    settings = Settings(
        _env_file=None,
        database_url=scoped,
        auth_required=True,
        trusted_clients={EHR: {"jwks": jwks}},
    )
    cards = 0
    try:
        with TestClient(create_app(settings), base_url=BASE) as client:
            caller = Caller(client, key)
            time.sleep(1.5)  # the migrations' statistics reach pg_stat_database before `before`
            before = database_counters(url)
            started = time.monotonic()
            if kind == "feedback":
                for n in range(calls):
                    card = hook_call(caller, "patient-view", n)["cards"][0]
                    item = {
                        "card": card["uuid"],
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-12-01T10:00:00Z",
                    }
                    caller.post("/cds-services/als-patient-view/feedback", {"feedback": [item]})
            else:
                for n in range(calls):
                    cards += len(hook_call(caller, kind, n)["cards"])
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # PostgreSQL flushes a backend's statistics at most once a second
        after = database_counters(url)
        with psycopg.connect(libpq(url), autocommit=True) as db:
            db.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            tables = [
                row[0]
                for row in db.execute(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = %s AND tablename <> 'alembic_version' ORDER BY tablename",
                    (schema,),
                )
            ]
            db.execute("VACUUM ANALYZE")
            figures = {}
            for table in tables:
                ident = sql.Identifier(schema, table)
                rows = db.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0]
                total = db.execute(
                    "SELECT pg_total_relation_size(%s::regclass)", (f"{schema}.{table}",)
                ).fetchone()[0]
                heap = db.execute("SELECT pg_relation_size(%s::regclass)", (f"{schema}.{table}",)).fetchone()[
                    0
                ]
                width = db.execute(
                    sql.SQL("SELECT avg(pg_column_size(t.*)) FROM {} t").format(ident)
                ).fetchone()[0]
                figures[table] = {
                    "rows": rows,
                    "total_bytes": total,
                    "heap_bytes": heap,
                    "avg_row_bytes": width,
                }
    finally:
        with psycopg.connect(libpq(url), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    counters = {name: after[name] - before[name] for name in before}
    return {
        "kind": kind,
        "calls": calls,
        "cards": cards,
        "seconds": round(elapsed, 1),
        "database": counters,
        "tables": figures,
    }


def database_counters(url: str) -> dict[str, int]:
    """Transactions committed and rows written in the whole database so far (pg_stat_database):
    measure on a server nothing else uses. Each reading is itself one committed transaction."""
    with psycopg.connect(libpq(url), autocommit=True) as db:
        row = db.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    return dict(zip(("commits", "inserted", "updated", "deleted"), map(int, row), strict=True))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", required=True, help="postgresql+psycopg://... (schemas are made and dropped)"
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls of each kind (default 1000)")
    parser.add_argument("--kinds", default="patient-view,order-select,order-sign,feedback")
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args(argv)
    results = [measure(args.database_url, kind, args.calls) for kind in args.kinds.split(",")]
    for result in results:
        print(f"\n{result['kind']}: {result['calls']} calls, {result['cards']} cards, {result['seconds']} s")
        per_call = {name: f"{value / result['calls']:.2f}" for name, value in result["database"].items()}
        print(f"  per call, whole database (transactions committed, read-only ones too; rows): {per_call}")
        print(
            f"  {'table':<18} {'rows':>7} {'rows/call':>9} {'avg row B':>9} "
            f"{'total B/call':>12} {'heap B/call':>11}"
        )
        for table, f in result["tables"].items():
            if not f["rows"]:
                continue
            calls = result["calls"]
            print(
                f"  {table:<18} {f['rows']:>7} {f['rows'] / calls:>9.2f} {float(f['avg_row_bytes']):>9.1f} "
                f"{f['total_bytes'] / calls:>12.0f} {f['heap_bytes'] / calls:>11.0f}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
