"""The gate in front of every rule: only a patient with MND gets a card, and which MND.

NICE NG42 covers every form of motor neurone disease, so the gate (`has_mnd`) admits them all:
breathing, nutrition, saliva, the multidisciplinary team and advance care planning are for
everyone with MND. A few rules are about the ALS form only (offering riluzole: NICE TA20, and the
SmPC says it is not for other forms); they declare `scope="als"` and also need `has_als`, where
progressive bulbar palsy, familial and unspecified MND count as ALS (see the value set's
description for why).

A diagnosis gates in only when it is active and not merely suspected: a provisional, differential
or unconfirmed verification status keeps it out (refuted and entered-in-error never reach the
record). A verification status that is absent counts as confirmed (most problem lists send none);
one that was sent but could not be read counts as confirmed too, and every card then says so
(`diagnosis_note`).
"""

from __future__ import annotations

from cds_service import terminology
from cds_service.record import UNREAD_PREFIX, ConditionFact, Interest, PatientRecord

MND_DIAGNOSIS = terminology.load("mnd-diagnosis")
ALS_DIAGNOSIS = terminology.load("als-diagnosis")

#: What the gate needs from the chart, merged into every service's prefetch.
READS = Interest({"Condition": (MND_DIAGNOSIS, ALS_DIAGNOSIS)})

#: Verification statuses of a diagnosis that is suspected, not made (HL7 condition-ver-status).
NOT_CONFIRMED = frozenset({"unconfirmed", "provisional", "differential"})


def diagnoses(record: PatientRecord, valueset: terminology.ValueSet = MND_DIAGNOSIS) -> list[ConditionFact]:
    """Active diagnoses in the value set that are not merely suspected."""
    return [c for c in record.active_conditions(valueset) if c.verification_status not in NOT_CONFIRMED]


def has_mnd(record: PatientRecord) -> bool:
    """An active, confirmed (or unstated) diagnosis of any form of MND: the gate of every rule."""
    return bool(diagnoses(record, MND_DIAGNOSIS))


def has_als(record: PatientRecord) -> bool:
    """An active, confirmed (or unstated) diagnosis of the ALS form (rules with scope 'als')."""
    return bool(diagnoses(record, ALS_DIAGNOSIS))


#: The diagnosis's fields the gate depends on, and what an unreadable one was taken to mean.
_GATE_FIELDS = {
    "clinicalStatus": "clinical status (taken as active)",
    "verificationStatus": "verification status (taken as confirmed)",
}


def diagnosis_note(record: PatientRecord) -> str | None:
    """One evidence line when no MND diagnosis that gates in was read with its statuses whole.

    Then the gate rests on statuses read the safe way (an unreadable clinical status counts as
    active, not as resolved), and the clinician should know. None when one diagnosis's statuses
    were read; an unreadable onset date does not change the gate and is not mentioned here.
    """
    found = diagnoses(record)
    unread = [{name for name in c.unreadable if name in _GATE_FIELDS} for c in found]
    if not found or not all(unread):
        return None
    fields = sorted({_GATE_FIELDS[name] for names in unread for name in names})
    return f"{UNREAD_PREFIX} the MND diagnosis record's {' and '.join(fields)}."
