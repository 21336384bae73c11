"""How a schema column and its unit read on screen: ``bmi`` is "BMI", ``kg/m2`` is "kg/m²".

Manifests keep plain ASCII names and units (they are typed on command lines and
in imported files); every chart axis, slider and table heading shows them
through these two functions, so one column reads the same on every page.
"""

from __future__ import annotations

#: Names whose capitals carry meaning (acronyms); any other column is its name in words.
NAMES = {
    "bmi": "BMI",
    "hba1c": "HbA1c",
    "hdl_cholesterol": "HDL cholesterol",
    "ldl_cholesterol": "LDL cholesterol",
    "systolic_bp": "systolic BP",
    "diastolic_bp": "diastolic BP",
    "diabetes_5y": "diabetes within 5 years",
    "hypertension_5y": "hypertension within 5 years",
}
#: Units written as a reader expects them.
UNITS = {"kg/m2": "kg/m²", "m2": "m²"}


def column_name(column: str, *, capital: bool = False) -> str:
    """``column`` in words ("fasting glucose", "BMI"); ``capital`` starts a title with it."""
    name = NAMES.get(column, column.replace("_", " "))
    return name[0].upper() + name[1:] if capital and name else name


def unit_label(unit: str | None) -> str | None:
    """``unit`` as shown ("kg/m²"), or ``None`` when the schema names none."""
    return UNITS.get(unit, unit) if unit else None


def column_label(column: str, unit: str | None, *, capital: bool = True) -> str:
    """A column with its unit, as an axis or widget reads: "BMI (kg/m²)", "Age (years)"."""
    name = column_name(column, capital=capital)
    shown = unit_label(unit)
    return f"{name} ({shown})" if shown else name
