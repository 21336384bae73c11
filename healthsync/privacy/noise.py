"""Differential-privacy noise for cohort answers, drawn by OpenDP's samplers.

The unit of privacy is one patient: two federations are neighbours when one
has a patient the other lacks. One patient is in one hospital and one cell,
so adding them changes

- the vector of cell counts (and of case counts, and of histogram bin
  counts) by 1 in one entry: L1 sensitivity 1;
- the vector of sums of clipped, centred values by at most the column's
  radius ``r = (upper - lower) / 2``, and of sums of squares by ``r**2``.

Counts get discrete Laplace noise, exact in integers; sums get continuous
Laplace noise. Each of a query's ``m`` noisy vectors gets ``epsilon / m``, so
by sequential composition a query costs ``epsilon``.

Both come from OpenDP (``opendp.measurements.make_laplace``), whose samplers
draw from the operating system's secure random source and sample exactly:
the textbook ``scale * log(u)`` in floating point leaves gaps in the set of
values it can output that give the exact value away (Mironov, CCS 2012), and
OpenDP's continuous Laplace instead samples on a fine grid with exact
arithmetic. Each measurement also certifies its own privacy loss
(``measurement.map(sensitivity)``), which the tests check against ``epsilon``.
OpenDP ships ``make_laplace`` under its "contrib" flag (components whose
proofs it has not finished reviewing); this module switches it on when it
first draws (the flag is process-wide; nothing else in HealthSync uses OpenDP).

OpenDP cannot be seeded. Tests that need the same draws on every run pass a
seeded numpy generator (``rng``): the same distributions drawn by numpy, for
reproducibility only; the hospitals' site gates never pass one, so every
released number is drawn by OpenDP. The other tests check distributions, or
the fact that a quantity is released once (``healthsync.privacy.site``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np

Kind = Literal["count", "sum"]


def noisy_counts(
    counts: np.ndarray,
    epsilon: float,
    rng: np.random.Generator | None = None,
    *,
    sensitivity: float = 1.0,
) -> np.ndarray:
    """``counts`` plus discrete Laplace noise of scale ``sensitivity / epsilon`` (OpenDP's).

    ``rng``: a seeded generator, for tests that need the same draws every run.
    """
    exact = np.asarray(counts, dtype=np.int64)
    scale = sensitivity / epsilon
    if rng is not None:
        p = -math.expm1(-1.0 / scale)  # success probability of each geometric draw
        noise = rng.geometric(p, exact.shape) - rng.geometric(p, exact.shape)
        return exact + noise.astype(np.int64)
    return _draw("count", scale, exact).astype(np.int64)


def noisy_sums(
    sums: np.ndarray,
    epsilon: float,
    sensitivity: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``sums`` plus Laplace noise of scale ``sensitivity / epsilon`` (OpenDP's).

    ``rng``: a seeded generator, for tests that need the same draws every run.
    """
    exact = np.asarray(sums, dtype=np.float64)
    scale = sensitivity / epsilon
    if rng is not None:
        return exact + rng.laplace(0.0, scale, exact.shape)
    return _draw("sum", scale, exact).astype(np.float64)


def count_noise_sd(epsilon: float, *, sensitivity: float = 1.0) -> float:
    """Standard deviation of :func:`noisy_counts`'s noise at ``epsilon``, for captions and docs."""
    alpha = math.exp(-epsilon / sensitivity)
    return math.sqrt(2 * alpha) / (1 - alpha)


def laplace_measurement(kind: Kind, scale: float) -> Any:
    """OpenDP's Laplace mechanism on a vector of counts (integers) or of sums (floats).

    Built once per kind and scale (building one costs about a millisecond,
    more than a draw); ``.map(sensitivity)`` is the epsilon it spends.
    """
    return _measurement(kind, float(scale))


@functools.lru_cache(maxsize=256)
def _measurement(kind: Kind, scale: float) -> Any:
    import opendp.prelude as dp  # loads OpenDP's native library: only once noise is drawn

    dp.enable_features("contrib")
    if kind == "count":
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    else:
        space = dp.vector_domain(dp.atom_domain(T="f64", nan=False)), dp.l1_distance(T="f64")
    return dp.m.make_laplace(*space, scale=scale)


def _draw(kind: Kind, scale: float, exact: np.ndarray) -> np.ndarray:
    if exact.size == 0:
        return exact.copy()
    noisy = laplace_measurement(kind, scale)(exact.ravel().tolist())
    return np.asarray(noisy).reshape(exact.shape)
