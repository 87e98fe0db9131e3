"""Data the service could not read: never a silent "All clear".

A draft order that could not be read at all was not checked by any order rule. Answering with no
card would look, in the EHR, exactly like "checked, nothing to say" (the CDS Hooks sandbox shows
"All clear"). This rule says instead which order could not be checked, in general terms: the
reason names what was missing, never the sender's values.
"""

from __future__ import annotations

from cds_service.record import Interest, PatientRecord
from cds_service.rules.base import Finding, Rule, RuleConfig, RuleFact


def order_unreadable(record: PatientRecord, config: RuleConfig) -> list[Finding]:
    unread = record.unread_orders_to_check
    if not unread:
        return []
    evidence = tuple(
        f"{order.resource_type} {order.reference or '(no id)'}"
        f"{' (selected)' if order.selected else ''}: {order.why}."
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

RULES = (ORDER_UNREADABLE,)
