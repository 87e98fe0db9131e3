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


#: The diagnosis's fields the gate depends on, and what an unreadable one was taken to mean.
_GATE_FIELDS = {
    "clinicalStatus": "clinical status (taken as active)",
    "verificationStatus": "verification status (not taken as refuted)",
}


def diagnosis_note(record: PatientRecord) -> str | None:
    """One evidence line when no active ALS diagnosis was read with its statuses whole.

    Then the gate rests on statuses read the safe way (an unreadable clinical status counts as
    active, not as resolved), and the clinician should know. None when one diagnosis's statuses
    were read; an unreadable onset date does not change the gate and is not mentioned here.
    """
    diagnoses = record.active_conditions(ALS_DIAGNOSIS)
    unread = [{name for name in c.unreadable if name in _GATE_FIELDS} for c in diagnoses]
    if not diagnoses or not all(unread):
        return None
    fields = sorted({_GATE_FIELDS[name] for names in unread for name in names})
    return f"Data that could not be read: the ALS/MND diagnosis record's {' and '.join(fields)}."
