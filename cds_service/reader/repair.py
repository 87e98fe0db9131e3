"""A resource the service sends back (an "update" suggestion), valid R4 where the sender's was not.

An update replaces the whole resource in the EHR, so a suggestion that stops an order or changes a
draft sends the order as the sender sent it, with only what it changes, and with the reader's
structural repairs applied: an element R4 makes a list that came as one object (the CDS Hooks
sandbox sends `category` so) becomes a list of one. Everything else is left as it came.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

#: R4 list elements that real clients send as one object (the CDS Hooks sandbox: category).
_LIST_ELEMENTS: dict[str, tuple[str, ...]] = {
    "MedicationRequest": (
        "category",
        "identifier",
        "reasonCode",
        "reasonReference",
        "note",
        "dosageInstruction",
        "contained",
        "supportingInformation",
        "insurance",
        "basedOn",
    ),
    "ServiceRequest": (
        "category",
        "identifier",
        "reasonCode",
        "reasonReference",
        "note",
        "bodySite",
        "orderDetail",
        "performer",
        "contained",
        "specimen",
        "insurance",
        "basedOn",
    ),
}


def repaired_json(rtype: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the order with one-object-for-a-list elements made lists (for sending back)."""
    fixed = copy.deepcopy(dict(raw))
    for name in _LIST_ELEMENTS.get(rtype, ("category", "identifier", "note", "contained")):
        if name in fixed and fixed[name] is not None and not isinstance(fixed[name], list):
            fixed[name] = [fixed[name]]
    return fixed
