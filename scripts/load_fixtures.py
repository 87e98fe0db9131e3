"""Load every fixture patient's chart into the project's FHIR server, one tenant each.

    python -m scripts.load_fixtures http://fhir:8080 fhir_fixtures/patients

The loader of the local stack (`deploy/compose.yaml`, run there in the service's own image): it
waits until the server answers `/metadata`, then PUTs each fixture's chart as a transaction into
`/tenants/<fixture>/fhir`, exactly as the tests load it (`scripts/medplum.py`): the fixture Bundles
were written one patient at a time and reuse resource ids, so one shared base would mix their
charts, and draft orders are left out (the EHR sends those in the hook's context). A hook request
then names `http://fhir:8080/tenants/<fixture>/fhir` as its `fhirServer`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

from scripts.medplum import chart_transaction, fixture_patients

WAIT_SECONDS = 120.0


def wait_for(origin: str, client: httpx.Client, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if client.get(f"{origin}/fhir/metadata").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"load_fixtures: {origin}/fhir/metadata did not answer within {seconds:.0f} s")
        time.sleep(1)


def load(origin: str, patients: Path, client: httpx.Client) -> list[str]:
    loaded = []
    for fixture in fixture_patients(patients):
        bundle = json.loads((patients / f"{fixture}.json").read_text(encoding="utf-8"))
        transaction = chart_transaction(bundle)
        response = client.post(
            f"{origin}/tenants/{fixture}/fhir",
            json=transaction,
            headers={"Content-Type": "application/fhir+json"},
        )
        if response.status_code != 200 or response.json().get("type") != "transaction-response":
            raise SystemExit(f"load_fixtures: {fixture}: {response.status_code} {response.text[:500]}")
        print(f"loaded {fixture} ({len(transaction['entry'])} resources)", flush=True)
        loaded.append(fixture)
    return loaded


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m scripts.load_fixtures ORIGIN PATIENTS_DIR", file=sys.stderr)
        return 2
    origin, patients = argv[0].rstrip("/"), Path(argv[1])
    with httpx.Client(timeout=30) as client:
        wait_for(origin, client)
        loaded = load(origin, patients, client)
    if not loaded:
        raise SystemExit(f"load_fixtures: no fixture patients in {patients}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
