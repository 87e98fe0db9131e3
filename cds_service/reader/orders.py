"""Draft orders (`context.draftOrders`) → DraftOrder, or UnreadOrder when one cannot be read.

An order that cannot be read is never dropped in silence: it becomes an UnreadOrder, and the
`order-unreadable` rule says on a card that it could not be checked. The JSON kept for an "update"
suggestion is the order with the reader's structural repairs applied (a `category` object made a
list, a date-only `authoredOn` kept as a date, which R4 allows), so what the service sends back is
valid R4 where the sender's was not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cds_service.reader.fields import FieldReader
from cds_service.reader.medications import MedicationIndex, medication_concept, read_medication_request
from cds_service.reader.others import read_concepts
from cds_service.reader.repair import repaired_json
from cds_service.record import DRAFT_ORDER_TYPES, DraftOrder, UnreadOrder


def read_draft_orders(
    bundle: Mapping[str, Any],
    selections: Sequence[str],
    medications: MedicationIndex,
    reader: Any,  # a callable (rtype, raw) -> FieldReader, from reader/__init__.py
) -> tuple[list[DraftOrder], list[UnreadOrder], dict[str, int]]:
    """(orders read, orders that could not be read, unsupported types counted)."""
    selected_refs = set(selections)
    orders: list[DraftOrder] = []
    unread: list[UnreadOrder] = []
    unsupported: dict[str, int] = {}
    entries = bundle.get("entry")
    entries = entries if isinstance(entries, list) else [entries] if isinstance(entries, Mapping) else []
    for position, entry in enumerate(entries, start=1):
        raw = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(raw, Mapping):
            unread.append(UnreadOrder("unknown", None, False, f"entry {position} holds no resource"))
            continue
        rtype = raw.get("resourceType")
        if not isinstance(rtype, str):
            unread.append(UnreadOrder("unknown", None, False, f"entry {position} has no resourceType"))
            continue
        if rtype in ("Medication", "OperationOutcome"):
            continue
        rid = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else None
        reference = f"{rtype}/{rid}" if rid else None
        selected = reference is not None and reference in selected_refs
        if rtype not in DRAFT_ORDER_TYPES:
            # DSTU2 MedicationOrder / STU3 ProcedureRequest: this service reads R4 only.
            unsupported[rtype] = unsupported.get(rtype, 0) + 1
            continue
        f: FieldReader = reader(rtype, rid)
        medication = None
        if rtype == "MedicationRequest":
            concept = medication_concept(raw, medications, f)
            medication = read_medication_request(raw, concept, f)
            categories = f.concepts(raw.get("category"), "category")
        else:
            concepts = read_concepts(rtype, raw, f)
            concept = concepts[0]
            categories = tuple(concepts[1:])
        if not concept.codes and not concept.text:
            f.report.dropped[f"{rtype}: what is ordered could not be read"] += 1
            unread.append(UnreadOrder(rtype, reference, selected, "what is ordered could not be read"))
            continue
        orders.append(
            DraftOrder(
                resource_type=rtype,
                id=rid,
                concept=concept,
                selected=selected,
                resource=repaired_json(rtype, raw),
                medication=medication,
                categories=categories,
                unreadable=tuple(f.unreadable),
            )
        )
        f.report.read[rtype] += 1
    orders.sort(key=lambda o: not o.selected)  # stable: selected first, EHR order kept
    return orders, unread, unsupported
