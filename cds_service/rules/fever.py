"""Fever: one definition for every rule that needs to know whether the patient has a fever now.

Used by riluzole-fever-check-wbc (a febrile illness on riluzole prompts a white cell count, SmPC
4.4) and massage-order-contraindications (no massage with a fever). Neither source gives a number:
"fever" here is a design choice, recorded as such in both rules' facts: a body temperature of
38.0 °C (100.4 °F) or more measured in the last 7 days, or an active fever condition. A
temperature in a unit that cannot be read is not evidence either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from cds_service import terminology
from cds_service.record import ConditionFact, Interest, ObservationFact, PatientRecord

FEVER = terminology.load("fever")
BODY_TEMPERATURE = terminology.load("body-temperature")

#: 38.0 °C = 100.4 °F, the cut-off the massage sources name; a design choice for riluzole.
FEVER_CELSIUS = Decimal("38.0")
#: How recent a measured temperature must be to count as a fever now (design choice).
FEVER_WINDOW_DAYS = 7

#: What the fever check reads from the chart, for the rules that use it.
READS = Interest({"Observation": (BODY_TEMPERATURE,), "Condition": (FEVER,)})


@dataclass(frozen=True)
class FeverReading:
    observation: ObservationFact
    celsius: Decimal


@dataclass(frozen=True)
class Fever:
    readings: tuple[FeverReading, ...]  # newest first
    conditions: tuple[ConditionFact, ...]

    @property
    def onset(self) -> datetime | None:
        """When the fever was first recorded, as far as the data says."""
        dates = [r.observation.effective for r in self.readings if r.observation.effective is not None]
        dates += [c.onset or c.recorded for c in self.conditions if (c.onset or c.recorded) is not None]
        return min(dates) if dates else None  # type: ignore[type-var]


def recent_fever(record: PatientRecord) -> Fever | None:
    """The fever the patient has now, or None."""
    window_start = record.now - timedelta(days=FEVER_WINDOW_DAYS)
    readings = []
    for obs in record.observations_in(BODY_TEMPERATURE):
        if obs.effective is None or obs.effective < window_start:
            continue
        celsius = obs.value_in("Cel")
        if celsius is not None and celsius >= FEVER_CELSIUS:
            readings.append(FeverReading(obs, celsius))
    conditions = record.active_conditions(FEVER)
    if not readings and not conditions:
        return None
    return Fever(tuple(readings), tuple(conditions))
