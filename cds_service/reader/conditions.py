"""Condition → ConditionFact: code, statuses, onset, recorded date, abatement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds_service.reader.fields import FieldReader
from cds_service.record import ConditionFact
from cds_service.terminology import Concept

#: Verification statuses that mean "this diagnosis is not the patient's".
EXCLUDED_VERIFICATION = frozenset({"entered-in-error", "refuted"})
_ONSET = ("onsetDateTime", "onsetPeriod", "onsetString", "onsetAge", "onsetRange")
_ABATEMENT = ("abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange", "abatementString")


def read_condition(raw: Mapping[str, Any], concept: Concept, f: FieldReader) -> ConditionFact | None:
    verification = f.status_code(raw.get("verificationStatus"), "verificationStatus")
    if verification in EXCLUDED_VERIFICATION:
        return None
    onset = None
    if "onsetDateTime" in raw:
        onset = f.when(raw["onsetDateTime"], "onsetDateTime", field_name="onset")
    elif "onsetPeriod" in raw:
        onset = f.period_start(raw["onsetPeriod"], "onsetPeriod", field_name="onset")
    return ConditionFact(
        id=f.resource_id,
        concept=concept,
        clinical_status=f.status_code(raw.get("clinicalStatus"), "clinicalStatus"),
        verification_status=verification,
        onset=onset,
        recorded=f.when(raw.get("recordedDate"), "recordedDate", field_name="recorded"),
        abated=any(raw.get(name) is not None for name in _ABATEMENT),
        unreadable=tuple(f.unreadable),
    )
