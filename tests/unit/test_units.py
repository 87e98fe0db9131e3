"""Units: every unit a lab really uses is read; anything else is refused, never guessed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cds_service.record import Quantity
from cds_service.terminology import units

UCUM = units.UCUM_SYSTEM


def q(value: str, unit: str | None, *, code: str | None = None, system: str | None = UCUM) -> Quantity:
    ucum_code = code if code is not None else unit
    return Quantity(Decimal(value), unit, ucum_code, system if unit or code else None)


@pytest.mark.parametrize(
    ("quantity", "target", "expected"),
    [
        (q("212", "U/L"), "U/L", "212"),
        (q("212", "[IU]/L"), "U/L", "212"),
        (q("1.2", "ukat/L"), "U/L", "72"),
        (q("1.2", "µkat/L"), "U/L", "72"),
        (q("60", "U/L"), "ukat/L", "1"),
        (q("154", "[lb_av]"), "kg", "69.85322498"),
        (q("154", "lb", code=""), "kg", "69.85322498"),  # a bare human unit, no UCUM code
        (q("64000", "g"), "kg", "64"),
        (q("45", "mm[Hg]"), "kPa", "5.9995"),
        (q("6", "kPa"), "mm[Hg]", "45.0038"),
        (q("40", "cm[H2O]"), "kPa", "3.92266"),
        (q("3.2", "L"), "L", "3.2"),
        (q("3200", "mL"), "L", "3.2"),
        (q("1.4", "10*9/L"), "10*9/L", "1.4"),
        (q("1.4", "10*3/uL"), "10*9/L", "1.4"),
        (q("1400", "/uL"), "10*9/L", "1.4"),
        (q("1400", "/mm3"), "10*9/L", "1.4"),
        (q("38.5", "Cel"), "Cel", "38.5"),
        (q("100.4", "[degF]"), "Cel", "38"),
        (q("38", "Cel"), "[degF]", "100.4"),
        (q("1.2", "mg/dL"), "umol/L", "20.5248"),
        (q("93", "%"), "%", "93"),
    ],
)
def test_known_units_convert(quantity: Quantity, target: str, expected: str) -> None:
    result = units.convert(quantity, target)
    assert result is not None
    assert abs(result - Decimal(expected)) < Decimal("0.001")


@pytest.mark.parametrize(
    ("quantity", "target"),
    [
        (q("3.2", "L"), "%"),  # FVC in litres is not a percentage of predicted
        (q("212", "U/L"), "kg"),  # another dimension
        (q("5", "furlongs"), "kg"),  # unknown unit
        (q("5", None), "kg"),  # no unit at all
        (q("38", "Cel"), "kPa"),
        (q("1.2", "mg/dL"), "U/L"),
    ],
)
def test_unreadable_or_mismatched_units_give_none(quantity: Quantity, target: str) -> None:
    assert units.convert(quantity, target) is None


def test_a_ucum_code_wins_over_a_misleading_display_unit() -> None:
    quantity = Quantity(Decimal("1.2"), "U/L", "ukat/L", UCUM)
    assert units.convert(quantity, "U/L") == Decimal("72.0")


def test_none_quantity_is_none() -> None:
    assert units.convert(None, "U/L") is None


@pytest.mark.parametrize(
    ("unit", "shown"),
    [
        ("[IU]/L", "IU/L"),
        ("umol/L", "µmol/L"),
        ("ukat/L", "µkat/L"),
        ("10*9/L", "× 10⁹/L"),
        ("10*3/uL", "× 10³/µL"),
        ("{pill}", "pill"),
        ("{beats}/min", "beats/min"),
        ("Cel", "°C"),
        ("[degF]", "°F"),
        ("mm[Hg]", "mmHg"),
        ("cm[H2O]", "cmH2O"),
        ("kg/m2", "kg/m²"),
        ("[lb_av]", "lb"),
        ("U/L", "U/L"),
        ("units/L", "units/L"),  # 'u' of a word is not micro
        ("[arb'U]", "[arb'U]"),  # a bracketed atom without a plain name is shown as sent
    ],
)
def test_units_are_shown_as_a_clinician_writes_them_not_as_ucum_codes(unit: str, shown: str) -> None:
    assert units.human(unit) == shown
