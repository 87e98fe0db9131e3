"""A patient's FHIR Bundle as the hook request an EHR would send for it.

`als-cds evaluate` accepts a Bundle of one patient (a transaction Bundle as in `fhir_fixtures/`,
or a search or collection Bundle); the tests send the fixture patients through the API the same
way. Orders with status `draft` (MedicationRequest, ServiceRequest, ...) are orders being written:
they become the hook's `draftOrders`. Everything else is the chart, grouped into the service's
prefetch keys the way an EHR that fills every template would send it.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any

from cds_service.prefetch import TYPE_BY_KEY
from cds_service.record import DRAFT_ORDER_TYPES


def split_bundle(bundle: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chart resources, draft orders) of a Bundle."""
    chart: list[dict[str, Any]] = []
    drafts: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        is_draft = resource.get("resourceType") in DRAFT_ORDER_TYPES and resource.get("status") == "draft"
        (drafts if is_draft else chart).append(copy.deepcopy(dict(resource)))
    for number, draft in enumerate(drafts, start=1):
        draft.setdefault("id", f"draft-{number}")
    return chart, drafts


def request_from_bundle(
    bundle: Mapping[str, Any],
    hook: str,
    prefetch_keys: list[str],
    *,
    user_id: str = "Practitioner/als-cds-evaluate",
) -> dict[str, Any]:
    """A CDS Hooks request for `hook` with full prefetch for `prefetch_keys`.

    On order-select every draft order is selected.
    """
    chart, drafts = split_bundle(bundle)
    patients = [r for r in chart if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        raise ValueError("the Bundle must hold exactly one Patient with an id")
    patient = patients[0]
    prefetch: dict[str, Any] = {}
    for key in prefetch_keys:
        rtype = TYPE_BY_KEY[key]
        if rtype == "Patient":
            prefetch[key] = patient
            continue
        matching = [r for r in chart if r.get("resourceType") == rtype]
        prefetch[key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matching),
            "entry": [
                {"fullUrl": f"{rtype}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
                for r in matching
            ],
        }
    context: dict[str, Any] = {"userId": user_id, "patientId": patient["id"]}
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    if hook == "order-select":
        context["selections"] = [f"{d['resourceType']}/{d['id']}" for d in drafts]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}
