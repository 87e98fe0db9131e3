"""Units: read a FHIR Quantity in whatever unit the lab used, or refuse to.

A value is only ever compared after conversion to the unit the rule's threshold is written in.
A unit this table does not know, or one of another dimension (FVC in litres where a threshold is
in % predicted), gives `None`, and rules treat `None` as "cannot tell", never as normal.

The UCUM code (`Quantity.code` with system http://unitsofmeasure.org) is preferred; the
human-readable `Quantity.unit` is read as a fallback, since many EHRs fill only that.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

UCUM_SYSTEM = "http://unitsofmeasure.org"


class QuantityLike(Protocol):
    value: Decimal
    unit: str | None
    code: str | None
    system: str | None


# Each unit: (dimension, factor to the dimension's base unit). Keys are compared after
# `_normalise` (case kept where UCUM is case-sensitive: 'mL' vs 'ML' do not collide here).
_D = Decimal
_UNITS: dict[str, tuple[str, Decimal]] = {}


def _add(dimension: str, factor: str, *spellings: str) -> None:
    for spelling in spellings:
        _UNITS[_normalise(spelling)] = (dimension, _D(factor))


@lru_cache(maxsize=4096)
def _normalise(unit: str) -> str:
    # Cached: a chart repeats a handful of unit spellings thousands of times.
    return unit.strip().replace("µ", "u").replace("μ", "u").replace(" ", "").replace("^", "*").lower()


# Catalytic activity concentration, base U/L. 1 µkat = 60 µmol/min = 60 U.
_add("catalytic", "1", "U/L", "[IU]/L", "IU/L", "U/l", "IU/l", "unit/L", "units/L")
_add("catalytic", "60", "ukat/L", "µkat/L", "umol/s/L")
_add("catalytic", "0.06", "nkat/L")
# Mass (body weight, drug doses), base kg.
_add("mass", "1", "kg", "kilogram", "kilograms")
_add("mass", "0.001", "g", "gram", "grams")
_add("mass", "0.45359237", "[lb_av]", "lb", "lbs", "pound", "pounds")
_add("mass", "0.028349523125", "[oz_av]", "oz")
_add("mass", "0.000001", "mg", "milligram", "milligrams")
_add("mass", "0.000000001", "ug", "mcg", "µg", "microgram", "micrograms")
# Pressure, base kPa. 1 mm[Hg] = 0.133322387415 kPa; 1 cm[H2O] = 0.0980665 kPa.
_add("pressure", "1", "kPa", "kilopascal")
_add("pressure", "0.133322387415", "mm[Hg]", "mmHg", "mm Hg", "torr")
_add("pressure", "0.0980665", "cm[H2O]", "cmH2O", "cm H2O")
# Volume, base L.
_add("volume", "1", "L", "l", "litre", "liter", "litres", "liters")
_add("volume", "0.001", "mL", "ml")
# Fractions, base %.
_add("percent", "1", "%", "percent", "%{saturation}", "% predicted", "%{predicted}")
# Cell number concentration, base 10*9/L (= 10*3/uL = 1/nL).
_add(
    "cells",
    "1",
    "10*9/L",
    "10^9/L",
    "x10*9/L",
    "x10^9/L",
    "10*3/uL",
    "10^3/uL",
    "x10*3/uL",
    "x10^3/uL",
    "10*3/mm3",
    "K/uL",
    "thou/uL",
    "/nL",
    "10.*9/L",
    "10.*3/uL",
    "GI/L",
    "x10E9/L",
    "x10E3/uL",
)
_add("cells", "0.001", "/uL", "/mm3", "cells/uL", "{cells}/uL", "/mm[3]")
_add("cells", "0.001", "10*6/L", "10^6/L")
# Bilirubin (mass or substance concentration), base umol/L. 1 mg/dL = 17.104 umol/L (M = 584.66 g/mol).
_add("bilirubin", "1", "umol/L", "µmol/L", "micromol/L")
_add("bilirubin", "17.104", "mg/dL", "mg/dl")

#: What each dimension's base unit is called, for rules that ask "in which unit?".
BASE_UNITS = {
    "catalytic": "U/L",
    "mass": "kg",
    "pressure": "kPa",
    "volume": "L",
    "percent": "%",
    "cells": "10*9/L",
    "bilirubin": "umol/L",
}

_TEMPERATURE_C = {_normalise(u) for u in ("Cel", "°C", "C", "degC", "celsius", "deg C")}
_TEMPERATURE_F = {_normalise(u) for u in ("[degF]", "°F", "F", "degF", "fahrenheit", "deg F")}
_TEMPERATURE = frozenset(_TEMPERATURE_C | _TEMPERATURE_F)


def _unit_of(quantity: QuantityLike) -> str | None:
    if quantity.code and (quantity.system in (None, UCUM_SYSTEM)):
        return quantity.code
    return quantity.unit or quantity.code


def convert(quantity: QuantityLike | None, target: str) -> Decimal | None:
    """The quantity's value in `target` units, or None if it cannot be known safely."""
    if quantity is None or quantity.value is None:
        return None
    source = _unit_of(quantity)
    if source is None:
        return None
    plan = _plans.get((source, target))
    if plan is None:
        plan = _plan(source, target)
    if plan is _BY_TEMPERATURE:
        return _convert_temperature(quantity.value, source, target)
    # Multiplied then divided, as before the cache: a factor such as 1/60 taken first would leave a
    # rounding residue in the last digit, and a value exactly at a threshold would cross it.
    return None if plan is _UNKNOWN else quantity.value * plan[0] / plan[1]


#: How to convert from one unit string to another, by (source, target): factors, or one of the
#: two markers below. A dict looked up first, not only `lru_cache`: the rules convert every result
#: of a chart they read (each ALT and its range), and normalising the target's spelling and the
#: cache's own call were most of a conversion. Bounded: the strings are the senders'.
_plans: dict[tuple[str, str], Any] = {}
_PLANS_MAX = 4096
_BY_TEMPERATURE = object()
_UNKNOWN = object()


def _plan(source: str, target: str) -> Any:
    if _normalise(target) in _TEMPERATURE:
        plan: Any = _BY_TEMPERATURE
    else:
        factors = _factors(source, target)
        plan = _UNKNOWN if factors is None else factors
    if len(_plans) >= _PLANS_MAX:
        _plans.clear()
    _plans[(source, target)] = plan
    return plan


@lru_cache(maxsize=4096)
def _factors(source: str, target: str) -> tuple[Decimal, Decimal] | None:
    """(source's factor to the base unit, target's), or None when the conversion cannot be known."""
    src = _UNITS.get(_normalise(source))
    dst = _UNITS.get(_normalise(target))
    if src is None or dst is None or src[0] != dst[0]:
        return None
    return src[1], dst[1]


def _convert_temperature(value: Decimal, source: str, target: str) -> Decimal | None:
    src, dst = _normalise(source), _normalise(target)
    if src in _TEMPERATURE_C:
        celsius = value
    elif src in _TEMPERATURE_F:
        celsius = (value - 32) * 5 / 9
    else:
        return None
    return celsius if dst in _TEMPERATURE_C else celsius * 9 / 5 + 32


def dimension(unit: str) -> str | None:
    """The dimension of a unit spelling ('catalytic', 'mass', ...), or None if unknown."""
    if _normalise(unit) in _TEMPERATURE:
        return "temperature"
    found = _UNITS.get(_normalise(unit))
    return found[0] if found else None


# --------------------------------------------------------------------------------------------
# Units as a clinician reads them

_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_HUMAN_WHOLE = {"Cel": "°C", "%": "%", "1": ""}
# UCUM's bracketed atoms that have a plain name; any other is shown as sent.
_BRACKETED = {
    "[degF]": "°F",
    "[IU]": "IU",
    "[iU]": "IU",
    "[lb_av]": "lb",
    "[oz_av]": "oz",
    "[in_i]": "in",
    "[ft_i]": "ft",
    "[Hg]": "Hg",
    "[H2O]": "H2O",
}
# A micro prefix written 'u' (UCUM's ASCII spelling) before the units where it can only mean micro.
_MICRO = re.compile(r"(?<![A-Za-z])u(?=(?:mol|g|L|l|kat|m|mL|s)\b)")
_POWER_OF_TEN = re.compile(r"^10[*^](-?\d+)")
_SQUARED = re.compile(r"(?<=[a-zA-Z])2\b")


@lru_cache(maxsize=512)
def human(unit: str) -> str:
    """A unit as a card shows it: '[IU]/L' -> 'IU/L', 'umol/L' -> 'µmol/L', '10*9/L' -> '× 10⁹/L',
    '{pill}' -> 'pill', 'Cel' -> '°C'.

    UCUM codes are for machines ("no machine text in clinician view"); the value is unchanged, only
    its unit's spelling. What this does not recognise is shown as it was sent, never guessed at.
    """
    text = unit.strip()
    if text in _HUMAN_WHOLE:
        return _HUMAN_WHOLE[text]
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)  # annotations: '{pill}' is 'pill'
    for atom, shown in _BRACKETED.items():
        text = text.replace(atom, shown)
    text = _POWER_OF_TEN.sub(lambda m: "× 10" + m.group(1).translate(_SUPERSCRIPT), text)
    text = _MICRO.sub("µ", text)
    if text.endswith("/m2") or text.endswith(".m2"):
        text = _SQUARED.sub("²", text)
    return text
