"""Small-cell suppression: primary, complementary (secondary) and histogram bin merging.

Every decision here is made on *noisy* counts, never on true ones (as
i2b2/SHRINE and NVFlare's filters do): the noise is differentially private,
so whether a cell is shown is too, and a shown count proves nothing about one
patient beyond the documented epsilon. (Deciding on the true count would: a
shown cell would prove its true count is at least the threshold.)

Primary: a count is hidden when its noisy value is below the threshold
(zero included), so no shown number is ever below the threshold.

Complementary: a hidden cell must not be recoverable by subtraction. Along
every grouping dimension, a *line* of cells (all cells that share the
other dimensions' levels) adds up to a total that another query may reveal.
So in every line that hides anything, at least two cells are hidden and the
hidden cells together hold at least ``threshold`` patients (noisy); otherwise the
smallest shown cell of the line is hidden too, and all lines are checked
again until none changes. Totals are only ever computed from shown cells.

Histograms: adjacent bins merge until every bin holds at least
``threshold`` patients after noise; a histogram that cannot reach that is
not shown.
"""

from __future__ import annotations

import numpy as np


def primary(noisy: np.ndarray, threshold: int) -> np.ndarray:
    """Cells to hide because their noisy count is small."""
    return np.asarray(noisy) < threshold


def complementary(sizes: np.ndarray, hidden: np.ndarray, threshold: int) -> np.ndarray:
    """Extend ``hidden`` until no line along any axis gives a hidden cell away.

    Parameters
    ----------
    sizes : the noisy cell sizes, one axis per dimension.
    hidden : cells already hidden, same shape.
    threshold : the smallest total the hidden cells of a line may hold.

    Returns
    -------
    The new mask (a superset of ``hidden``).
    """
    sizes = np.asarray(sizes)
    hidden = np.array(hidden, dtype=bool, copy=True)
    changed = True
    while changed:
        changed = False
        for axis in range(sizes.ndim):
            if sizes.shape[axis] < 2:
                continue
            moved = np.moveaxis(hidden, axis, -1).shape
            line_sizes = np.moveaxis(sizes, axis, -1).reshape(-1, moved[-1])
            line_hidden = np.moveaxis(hidden, axis, -1).reshape(-1, moved[-1]).copy()
            for values, mask in zip(line_sizes, line_hidden, strict=True):
                changed |= _protect_line(values, mask, threshold)
            hidden = np.moveaxis(line_hidden.reshape(moved), -1, axis)
    return hidden


def _protect_line(values: np.ndarray, mask: np.ndarray, threshold: int) -> bool:
    """Hide more cells of one line in place; whether anything changed."""
    changed = False
    while mask.any() and not mask.all() and (mask.sum() < 2 or values[mask].sum() < threshold):
        shown = np.flatnonzero(~mask)
        mask[shown[np.argmin(values[shown])]] = True
        changed = True
    return changed


def merge_bins(noisy: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Runs of adjacent bins ``(start, stop)`` that each hold at least ``threshold`` (noisy).

    The smallest failing run is merged into its smaller neighbour until all
    pass; returns ``[]`` when even all bins together fail.
    """
    runs = [[i, i + 1, int(n)] for i, n in enumerate(noisy)]
    while True:
        failing = [i for i, r in enumerate(runs) if r[2] < threshold]
        if not failing:
            return [(r[0], r[1]) for r in runs]
        if len(runs) == 1:
            return []
        i = min(failing, key=lambda j: (runs[j][2], j))
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(runs)]
        j = min(neighbours, key=lambda k: runs[k][2])
        left, right = sorted((i, j))
        a, b = runs[left], runs[right]
        runs[left : right + 1] = [[a[0], b[1], a[2] + b[2]]]
