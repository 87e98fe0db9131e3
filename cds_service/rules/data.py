"""Data the service could not read: never a silent "All clear".

A draft order that could not be read at all was not checked by any order rule. Answering with no
card would look, in the EHR, exactly like "checked, nothing to say" (the CDS Hooks sandbox shows
"All clear"). This rule says instead which order could not be checked, in general terms: the
reason names what was missing, never the sender's values.

The same holds for the gate in front of every rule: a diagnosis whose code could not be read may
have been the ALS/MND one, and without a readable ALS diagnosis no rule runs.
"""

from __future__ import annotations

from cds_service.record import Interest, PatientRecord
from cds_service.rules.als import has_mnd
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact

#: Draft order types as a clinician names them (the resource's id is machine text, and the order
#: could not be read, so what it is for cannot be said).
_ORDER_KINDS = {
    "MedicationRequest": "A medication order",
    "ServiceRequest": "A test or referral order",
    "NutritionOrder": "A nutrition order",
    "DeviceRequest": "A device order",
    "VisionPrescription": "A vision prescription",
    "SupplyRequest": "A supply order",
    "CommunicationRequest": "A communication request",
    "ImmunizationRecommendation": "An immunization recommendation",
}


def order_unreadable(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    unread = record.unread_orders_to_check
    if not unread:
        return []
    evidence = tuple(
        f"{_ORDER_KINDS.get(order.resource_type, 'An order')}"
        f"{' (the one selected)' if order.selected else ''}: {order.why}."
        for order in unread
    )
    return [
        Finding(
            rule_id="order-unreadable",
            fields={"count": str(len(unread))},
            evidence=evidence,
        )
    ]


ORDER_UNREADABLE = Rule(
    id="order-unreadable",
    title="A draft order could not be checked",
    hooks=frozenset({"order-select", "order-sign"}),
    reads=Interest({}),
    evaluate=order_unreadable,
    trigger="A draft order in context.draftOrders could not be read (no resource, no type, or what is "
    "ordered cannot be told): it was not checked, and the card says so instead of showing nothing.",
    facts=(
        RuleFact(
            "No card means checked",
            "an EHR shows an empty answer as 'no recommendations'",
            "cds-hooks-2",
            "Design choice: CDS Hooks 2.0 gives no other way to say that a check could not be made.",
        ),
    ),
)


def diagnosis_unreadable(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    """No readable MND diagnosis, and a diagnosis whose code could not be read."""
    unread = record.unread.get("Condition", 0)
    if not unread or has_mnd(record):
        return []
    return [
        Finding(
            rule_id="diagnosis-unreadable",
            fields={"count": str(unread)},
            evidence=(
                f"{unread} Condition record(s) whose code could not be read: what they diagnose is unknown.",
                "No readable motor neurone disease (MND) diagnosis in the data received.",
            ),
        )
    ]


DIAGNOSIS_UNREADABLE = Rule(
    id="diagnosis-unreadable",
    title="A diagnosis could not be read, so the ALS checks may not have run",
    hooks=frozenset({"patient-view"}),
    reads=Interest({}),
    evaluate=diagnosis_unreadable,
    trigger="No readable active ALS/MND diagnosis, and at least one Condition whose code was sent but "
    "could not be read (it may be the ALS one): the card says the checks may not have run, instead of "
    "showing nothing.",
    facts=ORDER_UNREADABLE.facts,
    gated=False,
)

RULES = (ORDER_UNREADABLE, DIAGNOSIS_UNREADABLE)
