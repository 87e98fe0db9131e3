"""`--strict`: every place where the data was not valid R4, for the integration engineer.

The hook path is tolerant (a defect costs its field, never the resource) and only counts what it
repaired or dropped. An engineer connecting an EHR wants the list: which resource, which element,
what was wrong, and what the service did about it. Two sources, one report:

* the tolerant reader's own deviations (`ReadOptions(keep_deviations=True)`): what it repaired
  ('one value where a list belongs') or dropped ('unreadable date'), in the fields rules read;
* fhir.resources' R4 models (the R4B package reads R4), validating every resource whole, so that
  defects in elements no rule reads show too ('not valid R4').

The report names resources by type and id and elements by path, with the validator's kind of
error; it never prints a value (the data is a patient's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from cds_service.reader.lazy import UnreadableResource, materialise
from cds_service.record import Deviation

#: pydantic error kinds whose message is the validator's own fixed text. Others (a custom
#: validator's ValueError, an assertion) may quote the value, so only their kind is printed.
_SAFE_MESSAGES = frozenset(
    {
        "missing",
        "extra_forbidden",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "string_type",
        "int_type",
        "int_parsing",
        "float_type",
        "float_parsing",
        "decimal_type",
        "decimal_parsing",
        "bool_type",
        "bool_parsing",
        "string_too_short",
        "string_pattern_mismatch",
        "literal_error",
        "enum",
    }
)


@dataclass(frozen=True)
class StrictFinding:
    """One defect: where (resource, element path), what, and what the service did about it."""

    resource: str  # 'Observation/abc', or 'Observation (no id)'
    path: str
    what: str
    action: str  # 'repaired', 'field dropped', 'resource dropped', 'not valid R4'


def strict_findings(
    deviations: Iterable[Deviation] | None, resources: Iterable[Mapping[str, Any]]
) -> list[StrictFinding]:
    """The reader's deviations, then each resource's R4 validation errors, in a stable order."""
    found = [
        StrictFinding(_name(d.resource_type, d.resource_id), d.path, d.what, d.action)
        for d in deviations or ()
    ]
    seen: set[tuple[str, str]] = set()
    for item in resources:
        if not isinstance(item, Mapping):
            continue
        try:
            resource = materialise(item)
        except UnreadableResource:
            name = _name(item.get("resourceType"), item.get("id"))
            found.append(StrictFinding(name, "", "JSON not readable", "resource dropped"))
            continue
        rtype, rid = resource.get("resourceType"), resource.get("id")
        key = (str(rtype), str(rid))
        if isinstance(rid, str) and key in seen:
            continue  # sent under two keys: reported once
        seen.add(key)
        name = _name(rtype, rid)
        found.extend(StrictFinding(name, path, what, "not valid R4") for path, what in validate_r4(resource))
    return found


def validate_r4(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(element path, what is wrong) for each R4 validation error of one resource; [] if valid."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return [("resourceType", "missing or not text")]
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError):
        return [("resourceType", "not an R4 resource type")]
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        return [_describe(error) for error in exc.errors(include_input=False, include_url=False)]
    except (ValueError, TypeError) as exc:
        return [("", f"not valid R4 ({type(exc).__name__})")]
    return []


def _describe(error: Any) -> tuple[str, str]:
    path = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    kind = str(error.get("type", "invalid"))
    message = str(error.get("msg", "")) if kind in _SAFE_MESSAGES else ""
    return path, f"{message} ({kind})" if message else kind


def _name(rtype: Any, rid: Any) -> str:
    rtype = rtype if isinstance(rtype, str) else "(no resourceType)"
    return f"{rtype}/{rid}" if isinstance(rid, str) and rid else f"{rtype} (no id)"


def format_findings(findings: list[StrictFinding]) -> list[str]:
    """The report as text lines, one per finding, grouped by what the service did."""
    if not findings:
        return ["Strict check: every resource is valid R4, and the reader repaired nothing."]
    order = {"resource dropped": 0, "field dropped": 1, "repaired": 2, "not valid R4": 3}
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.action] = counts.get(finding.action, 0) + 1
    lines = [
        "Strict check: "
        + ", ".join(f"{n} {action}" for action, n in sorted(counts.items(), key=lambda i: order.get(i[0], 9)))
    ]
    for finding in sorted(findings, key=lambda f: (order.get(f.action, 9), f.resource, f.path)):
        where = f"{finding.resource} {finding.path}".rstrip()
        lines.append(f"  {finding.action:<16} {where}: {finding.what}")
    return lines
