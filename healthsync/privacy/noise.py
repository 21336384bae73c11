"""Differential-privacy noise for cohort answers.

The unit of privacy is one patient: two federations are neighbours when one
has a patient the other lacks. One patient is in one hospital and one cell,
so adding them changes

- the vector of cell counts (and of case counts, and of histogram bin
  counts) by 1 in one entry: L1 sensitivity 1;
- the vector of sums of clipped, centred values by at most the column's
  radius ``r = (upper - lower) / 2``, and of sums of squares by ``r**2``.

Counts get discrete Laplace noise (the difference of two geometric draws),
which is exact in integers and so avoids the floating-point weaknesses of
continuous Laplace on small counts; sums get Laplace noise. Each of a
query's ``m`` noisy vectors gets ``epsilon / m``, so by sequential
composition a query costs ``epsilon``. Generators are seeded from the
operating system's entropy for every query.
"""

from __future__ import annotations

import math
import secrets

import numpy as np


def fresh_generator() -> np.random.Generator:
    """A generator seeded from 128 bits of OS entropy (never reused across queries)."""
    return np.random.default_rng(secrets.randbits(128))


def noisy_counts(
    counts: np.ndarray, epsilon: float, rng: np.random.Generator, *, sensitivity: float = 1.0
) -> np.ndarray:
    """``counts`` plus discrete Laplace noise of scale ``sensitivity / epsilon``."""
    scale = sensitivity / epsilon
    p = -math.expm1(-1.0 / scale)  # success probability of each geometric draw
    shape = np.shape(counts)
    noise = rng.geometric(p, shape) - rng.geometric(p, shape)
    return np.asarray(counts, dtype=np.int64) + noise.astype(np.int64)


def noisy_sums(
    sums: np.ndarray, epsilon: float, sensitivity: float, rng: np.random.Generator
) -> np.ndarray:
    """``sums`` plus Laplace noise of scale ``sensitivity / epsilon``."""
    return np.asarray(sums, dtype=np.float64) + rng.laplace(
        0.0, sensitivity / epsilon, np.shape(sums)
    )


def count_noise_sd(epsilon: float, *, sensitivity: float = 1.0) -> float:
    """Standard deviation of :func:`noisy_counts`'s noise at ``epsilon``, for captions and docs."""
    alpha = math.exp(-epsilon / sensitivity)
    return math.sqrt(2 * alpha) / (1 - alpha)
