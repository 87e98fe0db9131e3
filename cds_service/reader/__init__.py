"""The tolerant reader: raw FHIR JSON of one hook call → the patient record rules read.

The one place that knows FHIR's wire quirks. The flow, for every resource that arrived (prefetch
keys, FHIR server pages, draft orders):

    de-duplicated by type and id (the latest version kept)  →  other patients' resources dropped
    →  types and codes no rule reads skipped on a glance at the raw JSON (cheap: most of a chart)
    →  the fields rules use read one by one (`fields.py`, one module per resource type)
    →  facts in a `PatientRecord` (`record.py`)

Why plain JSON and not fhir.resources models on this path: a model validates a resource whole (one
bad element costs the resource) and building it was three quarters of the service's CPU on a typical
chart. fhir.resources stays where strictness is right: what the service sends, and `--strict`
reports (`reader/strict.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from msgspec import UNSET

from cds_service.reader.conditions import read_condition
from cds_service.reader.fields import FieldReader, ReadOptions, parse_when, to_instant
from cds_service.reader.lazy import LazyResource, UnreadableResource, materialise
from cds_service.reader.medications import (
    MedicationIndex,
    medication_concept,
    read_medication_request,
    reference_id,
)
from cds_service.reader.observations import (
    ResultReading,
    WellFormedObservation,
    decode_well_formed,
    read_observation,
    read_well_formed_observation,
    well_formed_code,
)
from cds_service.reader.orders import read_draft_orders
from cds_service.reader.others import KEEP_STATUSES, read_concepts, read_generic, read_patient
from cds_service.record import Interest, PatientRecord, ReadReport
from cds_service.terminology import Concept

#: What is read before the gate of `build_record` is asked: the patient and the diagnoses.
GATE_TYPES = frozenset({"Patient", "Condition"})

__all__ = [
    "ReadOptions",
    "build_record",
    "dedupe",
    "parse_when",
    "resources_from_bundle",
    "to_instant",
]


def build_record(
    *,
    patient_id: str,
    now: datetime,
    resources: Iterable[Mapping[str, Any]],
    interest: Interest,
    draft_orders: Mapping[str, Any] | None = None,
    selections: Sequence[str] = (),
    options: ReadOptions | None = None,
    medications: Iterable[Mapping[str, Any]] = (),
    gate: Callable[[PatientRecord], bool] | None = None,
) -> PatientRecord:
    """Read raw FHIR JSON into a PatientRecord.

    `resources` may repeat a resource (two prefetch keys can overlap): it is read once, the latest
    version kept. `medications` are Medication resources fetched for references (`prefetch.py`).
    `gate`: asked once the Patient and the Conditions (`GATE_TYPES`) are read; when it says no, the
    other resources are counted as not relevant and not read (unless every deviation is to be
    kept, for `--strict`). Draft orders are always read.
    """
    options = options or ReadOptions()
    now = now.astimezone(options.site_tz)
    record = PatientRecord(now=now, patient_id=patient_id)
    report = record.report
    if options.keep_deviations:
        report.deviations = []

    interned: dict[Any, Any] = {}  # shared values of this read (FieldReader.intern)
    own = f"Patient/{patient_id}"  # the subject nearly every resource names

    trusted_until = now + options.clock_skew

    def reader(rtype: str, rid: str | None) -> FieldReader:
        return FieldReader(rtype, rid, now, options, report, interned, trusted_until)

    unique = dedupe(resources, report)
    # A large chart repeats a few codes many times over: whether rules read a concept is decided once.
    wants: dict[tuple[str, tuple[Concept, ...]], bool] = {}
    index = MedicationIndex()
    index.add_all(unique)
    index.add_all(m for m in medications if isinstance(m, Mapping))
    if draft_orders:
        for entry in _entries(draft_orders):
            if (
                isinstance(entry.get("resource"), Mapping)
                and entry["resource"].get("resourceType") == "Medication"
            ):
                index.add(entry["resource"], entry.get("fullUrl"))

    # A result's code decides its concept (remembered by its bytes for the process) and whether any
    # rule reads it (by `interest.wants`, as for the long way): once per distinct code in this read.
    result_codes: dict[bytes, tuple[Concept, bool] | None] = {}
    reading = ResultReading(interned, options.site_tz, trusted_until)
    results_wanted = interest.wants_type("Observation")

    def result_code(code: bytes) -> tuple[Concept, bool] | None:
        concept = well_formed_code(code, interned)
        return None if concept is None else (concept, interest.wants("Observation", (concept,)))

    def read_well_formed(obs: WellFormedObservation) -> bool:
        """An Observation read on the well-formed path (`observations.py`): True when read and
        counted here; False when it is to be read the long way (nothing counted yet). The same
        decisions, in the same order, as `read` and `_read_fact` below."""
        if obs.patient is not UNSET:
            return False
        if obs.subject is not None and obs.subject.reference != own:
            other = reference_id(obs.subject.reference, "Patient")
            if other is not None and other != patient_id:
                report.other_patient["Observation"] += 1
                return True
        key = bytes(obs.code)
        code = result_codes.get(key, _UNDECIDED)
        if code is _UNDECIDED:
            code = result_codes[key] = result_code(key)
        if code is None:
            return False
        if not code[1]:
            report.not_relevant["Observation"] += 1
            return True
        fact = read_well_formed_observation(obs, code[0], reading)
        if fact is None:
            return False
        report.read["Observation"] += 1
        record.observations.append(fact)
        return True

    def read(item: Mapping[str, Any]) -> None:
        if type(item) is LazyResource:
            # Its header answers without its Mapping methods (Python calls, on every result).
            rtype = item.resource_type
            if item.typed is not None:  # a result its Bundle's decoding found well formed
                if not results_wanted:
                    report.not_relevant[rtype] += 1
                    return
                if read_well_formed(item.typed):
                    return
            elif rtype == "Observation" and results_wanted:
                obs = decode_well_formed(item.bytes())
                if obs is not None and read_well_formed(obs):
                    return
        else:
            rtype = item["resourceType"]
        if rtype in ("Medication", "OperationOutcome"):
            return  # Medications are read through the requests that point at them
        if rtype != "Patient" and not interest.wants_type(rtype):
            report.not_relevant[rtype] += 1
            return  # decided on the header: most of a large chart is never decoded
        try:
            raw = item if type(item) is dict else materialise(item)
        except UnreadableResource:
            report.unreadable[rtype] += 1
            record.unread[rtype] += 1
            return
        rid = raw.get("id")
        if type(rid) is not str:
            rid = rid if isinstance(rid, str) else None
        if rtype == "Patient":
            if rid not in (None, patient_id):
                report.other_patient[rtype] += 1
                return
            record.patient = read_patient(raw, reader(rtype, rid))
            report.read[rtype] += 1
            return
        if _names_other_patient(raw, patient_id, own):
            report.other_patient[rtype] += 1
            return
        f = reader(rtype, rid)
        if rtype == "MedicationRequest":
            concepts = (medication_concept(raw, index, f),)
        else:
            concepts = read_concepts(rtype, raw, f)
        wanted = wants.get((rtype, concepts))
        if wanted is None:
            wanted = wants[(rtype, concepts)] = interest.wants(rtype, concepts)
        if not wanted:
            if not any(c.codes or c.text for c in concepts) and f.unreadable:
                record.unread[rtype] += 1  # what it is about could not be read: it may have mattered
            report.not_relevant[rtype] += 1
            return
        _read_fact(record, rtype, raw, concepts, f)

    if gate is None or options.keep_deviations:
        for item in unique:
            read(item)
    else:
        # The patient and the diagnoses first: when the gate stays shut (no MND diagnosis, the
        # common case in a clinic), no rule reads the rest, which is counted and left undecoded.
        rest = []
        for item in unique:
            rtype = item.resource_type if type(item) is LazyResource else item["resourceType"]
            if rtype in GATE_TYPES:
                read(item)
            else:
                rest.append(item)
        if gate(record):
            for item in rest:
                read(item)
        else:
            for item in rest:
                if item["resourceType"] not in ("Medication", "OperationOutcome"):  # as `read`
                    report.not_relevant[item["resourceType"]] += 1

    if draft_orders:
        orders, unread, unsupported = read_draft_orders(draft_orders, selections, index, reader)
        record.draft_orders = orders
        record.unread_orders = unread
        report.unsupported_draft_types.update(unsupported)
    return record


def _read_fact(
    record: PatientRecord, rtype: str, raw: Mapping[str, Any], concepts: tuple[Any, ...], f: FieldReader
) -> None:
    report = record.report
    try:
        if rtype == "Condition":
            fact: Any = read_condition(raw, concepts[0], f)
            target: list[Any] = record.conditions
        elif rtype == "Observation":
            fact, target = read_observation(raw, concepts[0], f), record.observations
        elif rtype == "MedicationRequest":
            fact, target = read_medication_request(raw, concepts[0], f), record.medications
        elif rtype == "AllergyIntolerance":
            fact, target = read_generic(rtype, raw, concepts, f), record.allergies
        elif rtype in KEEP_STATUSES:
            fact = read_generic(rtype, raw, concepts, f)
            target = {
                "Procedure": record.procedures,
                "Encounter": record.encounters,
                "Device": record.devices,
                "DocumentReference": record.documents,
                "Consent": record.consents,
            }[rtype]
        else:
            report.not_relevant[rtype] += 1
            return
    except RecursionError:  # nested too deep to read: the resource is lost, and counted
        report.unreadable[rtype] += 1
        record.unread[rtype] += 1
        return
    report.read[rtype] += 1
    if fact is not None:
        target.append(fact)


#: Not yet decided in this read (None is an answer: the code is not read the well-formed way).
_UNDECIDED = object()

#: Checked by type first: an isinstance check against Mapping (an ABC) costs a microsecond.
_MAPPINGS = (dict, LazyResource)


def resources_from_bundle(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The resources of a Bundle's entries (search results, transactions, collections alike).

    Entries that only report the outcome of a search (`search.mode = outcome`, as Epic sends for
    "no results") are not data. One entry object where R4 wants a list is read as a list of one.
    """
    found = []
    for entry in _entries(bundle):
        resource = entry.get("resource")
        if type(resource) not in _MAPPINGS and not isinstance(resource, Mapping):
            continue
        search = entry.get("search")
        if (
            search is not None
            and (type(search) is dict or isinstance(search, Mapping))
            and search.get("mode") == "outcome"
        ):
            continue
        found.append(resource)
    return found


def _entries(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = bundle.get("entry")
    if isinstance(entries, Mapping):
        entries = [entries]
    if not isinstance(entries, list):
        return []
    return [e for e in entries if type(e) is dict or isinstance(e, Mapping)]


def dedupe(resources: Iterable[Any], report: ReadReport | None = None) -> list[Mapping[str, Any]]:
    """Each resource once, by type and id; of two versions, the later (versionId, then lastUpdated)."""
    by_key: dict[tuple[str, str], int] = {}
    unique: list[Mapping[str, Any]] = []
    for raw in resources:
        if type(raw) is LazyResource:  # the header answers without decoding
            rtype, rid = raw.resource_type, raw.id
        elif isinstance(raw, Mapping):
            rtype, rid = raw.get("resourceType"), raw.get("id")
        else:
            continue
        if not isinstance(rtype, str):
            continue
        if not isinstance(rid, str) or not rid:
            unique.append(raw)
            continue
        key = (rtype, rid)
        at = by_key.get(key)
        if at is None:
            by_key[key] = len(unique)
            unique.append(raw)
            continue
        if report is not None:
            report.duplicates[rtype] += 1
        if _version(raw) > _version(unique[at]):
            unique[at] = raw
    return unique


def _version(raw: Mapping[str, Any]) -> tuple[int, str]:
    if isinstance(raw, LazyResource):
        version, updated = raw.version_id, raw.last_updated
    else:
        meta = raw.get("meta")
        if not isinstance(meta, Mapping):
            return (-1, "")
        version, updated = meta.get("versionId"), meta.get("lastUpdated")
    number = int(version) if isinstance(version, str) and version.isdigit() else -1
    instant = to_instant(updated) if isinstance(updated, str) else None
    return (number, instant.astimezone(UTC).isoformat() if instant is not None else "")


def _names_other_patient(raw: Mapping[str, Any], patient_id: str, own: str) -> bool:
    """True only when the resource clearly belongs to another patient (urn:uuid refs are kept).
    `own`: 'Patient/<patient_id>'."""
    for element in ("subject", "patient"):
        ref = raw.get(element)
        if isinstance(ref, Mapping):
            reference = ref.get("reference")
            if reference == own:
                continue  # the common case, without taking the reference apart
            other = reference_id(reference, "Patient")
            if other is not None and other != patient_id:
                return True
    return False
