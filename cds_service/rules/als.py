"""The gate in front of every rule: only a patient with ALS/MND gets an ALS card."""

from __future__ import annotations

from cds_service import terminology
from cds_service.record import Interest, PatientRecord

ALS_DIAGNOSIS = terminology.load("als-diagnosis")

#: What the gate needs from the chart, merged into every service's prefetch.
READS = Interest({"Condition": (ALS_DIAGNOSIS,)})


def has_als(record: PatientRecord) -> bool:
    """An active, non-refuted, not entered-in-error ALS/MND condition (SNOMED CT or ICD-10)."""
    return record.has_active_condition(ALS_DIAGNOSIS)
