"""Fixed clinical bands, histogram bins and clipping bounds for numeric columns.

Grouping a numeric column, drawing its histogram, or adding its values up
under differential privacy all need cut points or bounds. Taking them from
the data would itself leak (a minimum *is* a patient's value), so they are
fixed here, from clinical conventions, before any data is seen:

- age: 18–29, 30–39, …, 80+ (decades; HealthSync cohorts are adults, so any
  younger patient of imported data counts in the first band);
- BMI: the WHO adult classes;
- blood pressure: the 2017 ACC/AHA categories (systolic and diastolic apart);
- fasting glucose and HbA1c: the ADA normal / prediabetes / diabetes cut-offs;
- total and HDL cholesterol: the NCEP ATP III categories.

A numeric column of imported data that is not listed here can be filtered
on (``x >= 3``) and counted, but not grouped, averaged or drawn: no bounds
are known for it without looking at its values, and guessing them would
either leak or distort. Add a :class:`NumericScale` here to enable it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from healthsync.data import FeatureSpec


@dataclass(frozen=True)
class NumericScale:
    """What is known about a numeric column without seeing a patient.

    Parameters
    ----------
    unit : the unit the cut points are in; a column with another unit is refused.
    lower, upper : clipping bounds. Sums add ``clip(x, lower, upper)``, so one
        patient changes a sum by at most ``(upper - lower) / 2`` after centring:
        the sensitivity that calibrates the noise.
    band_cuts, band_labels : clinical bands for grouping; band ``i`` holds
        ``band_cuts[i-1] <= x < band_cuts[i]``.
    bin_cuts : finer fixed cut points for histograms (bins merge later until
        each holds enough patients).
    """

    unit: str
    lower: float
    upper: float
    band_cuts: tuple[float, ...]
    band_labels: tuple[str, ...]
    bin_cuts: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.lower < self.upper:
            raise ValueError("a scale needs lower < upper")
        if len(self.band_labels) != len(self.band_cuts) + 1:
            raise ValueError("a scale needs one more band label than band cuts")
        for cuts in (self.band_cuts, self.bin_cuts):
            if list(cuts) != sorted(set(cuts)):
                raise ValueError("cut points must increase")

    @property
    def centre(self) -> float:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> float:
        """Largest distance of a clipped, centred value from zero (the sum's sensitivity)."""
        return (self.upper - self.lower) / 2

    def band_bounds(self, index: int) -> tuple[float, float]:
        """``[low, high)`` of band ``index``, open ends as infinities."""
        return _bounds(self.band_cuts, index)

    def bin_bounds_open(self, index: int) -> tuple[float, float]:
        """``[low, high)`` of histogram bin ``index``, open ends as infinities."""
        return _bounds(self.bin_cuts, index)

    def bin_bounds(self, index: int) -> tuple[float, float]:
        """``[low, high)`` of histogram bin ``index``, open ends at the clipping bounds."""
        low, high = _bounds(self.bin_cuts, index)
        return max(low, self.lower), min(high, self.upper)

    def bin_label(self, start: int, stop: int) -> str:
        """Label of bins ``start`` to ``stop - 1`` merged: ``"<25"``, ``"25–35"``, ``"≥85"``."""
        low, _ = _bounds(self.bin_cuts, start)
        _, high = _bounds(self.bin_cuts, stop - 1)
        if low == -np.inf and high == np.inf:
            return "all"
        if low == -np.inf:
            return f"<{_number(high)}"
        if high == np.inf:
            return f"≥{_number(low)}"
        return f"{_number(low)}–{_number(high)}"

    @property
    def n_bins(self) -> int:
        return len(self.bin_cuts) + 1


def _bounds(cuts: tuple[float, ...], index: int) -> tuple[float, float]:
    low = cuts[index - 1] if index > 0 else -np.inf
    high = cuts[index] if index < len(cuts) else np.inf
    return float(low), float(high)


def _number(value: float) -> str:
    return f"{value:g}"


def _steps(start: float, stop: float, step: float) -> tuple[float, ...]:
    count = round((stop - start) / step)
    return tuple(round(start + i * step, 6) for i in range(count + 1))


SCALES: dict[str, NumericScale] = {
    "age": NumericScale(
        "years",
        18.0,
        100.0,
        (30, 40, 50, 60, 70, 80),
        ("18–29", "30–39", "40–49", "50–59", "60–69", "70–79", "80+"),
        _steps(25, 85, 5),
    ),
    "bmi": NumericScale(
        "kg/m2",
        15.0,
        60.0,
        (18.5, 25, 30, 35, 40),
        (
            "underweight (<18.5)",
            "normal (18.5–24.9)",
            "overweight (25–29.9)",
            "obesity I (30–34.9)",
            "obesity II (35–39.9)",
            "obesity III (≥40)",
        ),
        _steps(16, 44, 2),
    ),
    "systolic_bp": NumericScale(
        "mmHg",
        80.0,
        220.0,
        (120, 130, 140, 180),
        (
            "normal (<120)",
            "elevated (120–129)",
            "stage 1 (130–139)",
            "stage 2 (140–179)",
            "crisis (≥180)",
        ),
        _steps(90, 200, 10),
    ),
    "diastolic_bp": NumericScale(
        "mmHg",
        40.0,
        130.0,
        (80, 90),
        ("normal (<80)", "stage 1 (80–89)", "stage 2 (≥90)"),
        _steps(50, 110, 5),
    ),
    "fasting_glucose": NumericScale(
        "mg/dL",
        50.0,
        400.0,
        (100, 126),
        ("normal (<100)", "prediabetes (100–125)", "diabetes (≥126)"),
        _steps(70, 250, 10),
    ),
    "hba1c": NumericScale(
        "%",
        4.0,
        14.0,
        (5.7, 6.5),
        ("normal (<5.7)", "prediabetes (5.7–6.4)", "diabetes (≥6.5)"),
        _steps(4.5, 10, 0.5),
    ),
    "total_cholesterol": NumericScale(
        "mg/dL",
        100.0,
        400.0,
        (200, 240),
        ("desirable (<200)", "borderline (200–239)", "high (≥240)"),
        _steps(120, 320, 20),
    ),
    "hdl_cholesterol": NumericScale(
        "mg/dL",
        20.0,
        120.0,
        (40, 60),
        ("low (<40)", "normal (40–59)", "high (≥60)"),
        _steps(25, 100, 5),
    ),
}


def scale_for(feature: FeatureSpec) -> NumericScale | None:
    """The documented scale of a numeric feature, or ``None`` if HealthSync knows none.

    A scale applies by column name when the feature's unit is the scale's
    unit or is not recorded (imported data often has no units).
    """
    scale = SCALES.get(feature.name)
    if scale is None or feature.kind != "numeric":
        return None
    if feature.unit not in (None, "", scale.unit):
        return None
    return scale
