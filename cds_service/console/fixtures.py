"""The bundled fixture patients as the console offers them, and the hook requests built from them.

The console fires hooks for a fixture patient (`fhir_fixtures/patients/*.json`, transaction
Bundles), or for a patient on a FHIR server, with draft orders the user picks: the patient's own
drafts, or any draft of another fixture patient (the "order library": each distinct order once).
The request is built here, as `cds_service/bundles.py` builds it for `als-cds evaluate` and the
tests, and then posted by the page to the service's own hook endpoint, like an EHR's.

What the tests expect each fixture patient to get (`fhir_fixtures/expected/*.json`, per rules
module) is read here too: the console shows it beside the cards, and the rule review page lists,
for each rule, the fixture patients that fire it.

Nothing here touches the network, the database or an EHR's data: only files of this repository,
read once per process. Without them (an installed wheel, the container image) the lists are empty.
"""

from __future__ import annotations

import copy
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_service.bundles import request_from_bundle, split_bundle
from cds_service.engine import RequestError

#: Where the fixtures live: beside the package, in this repository.
FIXTURES_DIR = Path(__file__).resolve().parents[2] / "fhir_fixtures"
#: The date at which `fhir_fixtures/expected/` holds (the tests' clock, `tests/support.py` NOW; a
#: test keeps the two equal). The service itself runs on today's date, so its cards may differ.
EXPECTATIONS_DATE = date(2026, 11, 22)
#: The `userId` of every request the console builds.
CONSOLE_USER = "Practitioner/als-cds-console"
HOOKS = ("patient-view", "order-select", "order-sign")
#: References in an order that point into its own patient's chart: dropped when the order is
#: lent to another patient, where they would name resources that do not exist.
_CHART_REFERENCES = ("encounter", "reasonReference", "basedOn", "priorPrescription", "replaces", "insurance")


@dataclass(frozen=True)
class DraftOrder:
    """One draft order of a fixture patient, named by `key` (`fixture/ResourceType/id`)."""

    key: str
    fixture: str
    resource: Mapping[str, Any]
    label: str

    @property
    def resource_type(self) -> str:
        return str(self.resource.get("resourceType"))

    def describe(self) -> dict[str, str]:
        return {
            "key": self.key,
            "label": self.label,
            "resourceType": self.resource_type,
            "from": self.fixture,
        }


@dataclass(frozen=True)
class FixturePatient:
    name: str  # the file name without .json: what the patient shows
    bundle: Mapping[str, Any]
    patient_id: str
    label: str  # name, sex and birth date, for the picker
    drafts: tuple[DraftOrder, ...]
    expected: Mapping[str, tuple[str, ...]]  # hook -> rule ids the tests expect (every area)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "patientId": self.patient_id,
            "label": self.label,
            "draftOrders": [d.describe() for d in self.drafts],
            "expected": {hook: list(ids) for hook, ids in self.expected.items()},
        }


@dataclass(frozen=True)
class Fixtures:
    patients: Mapping[str, FixturePatient]
    #: Each distinct draft order of every fixture patient once (by type, text and dose), that can
    #: stand on its own in another patient's request (no reference to a Medication in its chart).
    library: tuple[DraftOrder, ...]
    #: Every draft order of every fixture patient, by key.
    orders: Mapping[str, DraftOrder] = field(default_factory=dict)

    def rules_fired(self) -> dict[str, list[dict[str, Any]]]:
        """rule id -> the fixture patients expected to get its card, with the hooks on which."""
        fired: dict[str, dict[str, list[str]]] = {}
        for patient in self.patients.values():
            for hook in HOOKS:
                for rule_id in patient.expected.get(hook, ()):
                    fired.setdefault(rule_id, {}).setdefault(patient.name, []).append(hook)
        return {
            rule_id: [{"patient": name, "hooks": hooks} for name, hooks in sorted(by_patient.items())]
            for rule_id, by_patient in fired.items()
        }


def _text(concept: Any) -> str | None:
    if not isinstance(concept, Mapping):
        return None
    if isinstance(concept.get("text"), str):
        return concept["text"]
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            return coding["display"]
    return None


def order_label(resource: Mapping[str, Any]) -> str:
    """What the order is, as an order list shows it: the drug or service, then the dose."""
    what = _text(resource.get("medicationCodeableConcept")) or _text(resource.get("code"))
    if what is None and isinstance(resource.get("medicationReference"), Mapping):
        what = resource["medicationReference"].get("display") or resource["medicationReference"].get(
            "reference"
        )
    dose = None
    for dosage in resource.get("dosageInstruction") or ():
        if isinstance(dosage, Mapping) and isinstance(dosage.get("text"), str):
            dose = dosage["text"]
            break
    label = str(what or f"{resource.get('resourceType')} {resource.get('id')}")
    return f"{label}: {dose}" if dose else label


def _patient_label(patient: Mapping[str, Any]) -> str:
    name = ""
    for entry in patient.get("name") or ():
        if isinstance(entry, Mapping):
            name = entry.get("text") or " ".join([*entry.get("given", ()), entry.get("family", "")]).strip()
            if name:
                break
    parts = [name or "(no name)", str(patient.get("gender") or "sex not recorded")]
    if patient.get("birthDate"):
        parts.append(f"born {patient['birthDate']}")
    return ", ".join(parts)


def _expectations(directory: Path) -> dict[str, dict[str, set[str]]]:
    """fixture -> hook -> rule ids, merged over every area's file."""
    merged: dict[str, dict[str, set[str]]] = {}
    for path in sorted(directory.glob("*.json")):
        for fixture, hooks in json.loads(path.read_text(encoding="utf-8")).items():
            for hook, rule_ids in hooks.items():
                merged.setdefault(fixture, {}).setdefault(hook, set()).update(rule_ids)
    return merged


def _stands_alone(resource: Mapping[str, Any]) -> bool:
    """An order that names its drug itself (not a Medication elsewhere in its patient's chart)."""
    reference = resource.get("medicationReference")
    if not isinstance(reference, Mapping):
        return True
    target = str(reference.get("reference") or "")
    return target.startswith("#")


@functools.cache
def load(directory: Path = FIXTURES_DIR) -> Fixtures:
    """The fixture patients and their draft orders, read once per process."""
    expected = _expectations(directory / "expected")
    patients: dict[str, FixturePatient] = {}
    orders: dict[str, DraftOrder] = {}
    library: dict[tuple[str, str], DraftOrder] = {}
    for path in sorted((directory / "patients").glob("*.json"), key=lambda p: p.stem):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        chart, drafts = split_bundle(bundle)
        patient = next((r for r in chart if r.get("resourceType") == "Patient"), None)
        if patient is None or not isinstance(patient.get("id"), str):
            continue
        own = tuple(
            DraftOrder(f"{path.stem}/{d['resourceType']}/{d['id']}", path.stem, d, order_label(d))
            for d in drafts
        )
        for order in own:
            orders[order.key] = order
            if _stands_alone(order.resource):
                library.setdefault((order.resource_type, order.label.lower()), order)
        hooks = expected.get(path.stem, {})
        patients[path.stem] = FixturePatient(
            name=path.stem,
            bundle=bundle,
            patient_id=patient["id"],
            label=_patient_label(patient),
            drafts=own,
            expected={hook: tuple(sorted(hooks.get(hook, ()))) for hook in HOOKS if hook in hooks},
        )
    return Fixtures(
        patients=patients,
        library=tuple(sorted(library.values(), key=lambda o: (o.resource_type, o.label.lower()))),
        orders=orders,
    )


# ------------------------------------------------------------------------------------------------
# Building a hook request


@dataclass(frozen=True)
class OrderPick:
    key: str
    selected: bool


def check_fhir_base(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # e.g. an unclosed IPv6 bracket, or a port that is not a number
        usable = False
    if not usable or parts.query or parts.fragment:
        raise RequestError.single(
            400,
            "the FHIR server base URL must be an http(s) URL without a query or fragment, "
            "e.g. http://127.0.0.1:8103/fhir",
            where=["fhirServer"],
        )
    return url.strip().rstrip("/")


def _draft_orders(
    fixtures: Fixtures, picks: Sequence[OrderPick], patient_id: str, own_fixture: str | None, hook: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """(the draft order resources, the selections) for order-select or order-sign.

    order-select: every picked order is a draft in the basket, the ticked ones are `selections`.
    order-sign: the ticked orders are the ones signed; the others are left out.
    """
    resources: list[dict[str, Any]] = []
    selections: list[str] = []
    used: set[str] = set()
    for number, pick in enumerate(picks):
        order = fixtures.orders.get(pick.key)
        if order is None:
            raise RequestError.single(
                400, f"no draft order '{pick.key}' among the fixtures", where=[f"orders.{number}.key"]
            )
        if hook == "order-sign" and not pick.selected:
            continue
        resource = copy.deepcopy(dict(order.resource))
        if order.fixture != own_fixture:  # lent to this patient: its links into the other chart go
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
            for name in _CHART_REFERENCES:
                resource.pop(name, None)
        base_id = str(resource.get("id") or f"draft-{number + 1}")
        resource_id, suffix = base_id, 2
        while f"{resource['resourceType']}/{resource_id}" in used:
            resource_id, suffix = f"{base_id}-{suffix}", suffix + 1
        resource["id"] = resource_id
        reference = f"{resource['resourceType']}/{resource_id}"
        used.add(reference)
        resources.append(resource)
        if pick.selected:
            selections.append(reference)
    return resources, selections


def build_request(
    fixtures: Fixtures,
    *,
    hook: str,
    prefetch_keys: Sequence[str],
    picks: Sequence[OrderPick],
    fixture: str | None = None,
    fhir_server: str | None = None,
    patient_id: str | None = None,
) -> dict[str, Any]:
    """The hook request for a fixture patient (full prefetch), or for a patient on a FHIR server
    (no prefetch: the service fetches every key from `fhirServer`)."""
    if (fixture is None) == (fhir_server is None):
        raise RequestError.single(400, "name either a fixture patient or a FHIR server and patient id")
    if fixture is not None:
        patient = fixtures.patients.get(fixture)
        if patient is None:
            raise RequestError.single(
                404, f"no fixture patient '{fixture}'", where=["patient"], code="not-found"
            )
        request = request_from_bundle(patient.bundle, hook, list(prefetch_keys), user_id=CONSOLE_USER)
        pid = patient.patient_id
    else:
        if not patient_id or not patient_id.strip():
            raise RequestError.single(400, "a patient id on the FHIR server is needed", where=["patientId"])
        pid = patient_id.strip()
        request = {
            "hook": hook,
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": check_fhir_base(str(fhir_server)),
            "context": {"userId": CONSOLE_USER, "patientId": pid},
        }
    context = request["context"]
    if hook in ("order-select", "order-sign"):
        resources, selections = _draft_orders(fixtures, picks, pid, fixture, hook)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in resources],
        }
        if hook == "order-select":
            context["selections"] = selections
        else:
            context.pop("selections", None)
    return request
