"""The consortium's cohort policy: caps that can only tighten what each hospital allows.

Each hospital enforces its own policy and ledger (:mod:`healthsync.privacy.site`);
this one, read from ``HEALTHSYNC_HOME/cohort.yaml`` if an admin writes it,
only narrows them further::

    threshold: 11            # the largest of this and every hospital's threshold applies
    epsilon_per_query: 0.5   # a hospital spends at most the smaller of this and its own
    budget: 10               # a user's budget at a hospital is the smaller of this and its own
    max_cells: 500           # largest grouping a query may ask for
    budgets: {alice: 20}     # optional per-user caps

Whoever points ``--home`` at a file of their own can therefore loosen
nothing: a hospital's own policy still holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthsync.errors import HealthSyncError
from healthsync.privacy.release import MIN_CELL
from healthsync.privacy.site import check_limits, read_policy

POLICY_NAME = "cohort.yaml"
#: No configuration may release a count below this (the usual small-number rule).
MIN_THRESHOLD = MIN_CELL
MAX_CELLS_LIMIT = 5000


@dataclass(frozen=True)
class CohortPolicy:
    """How much a cohort query may reveal, and how often.

    Parameters
    ----------
    threshold : smallest count released; smaller counts (and zero) show as ``<threshold``.
    epsilon_per_query : differential-privacy cost of one new query.
    budget : epsilon one user may spend on one federation, unless ``budgets`` says otherwise.
    max_cells : most cells a grouping may produce.
    budgets : per-user budgets that replace ``budget``.
    """

    threshold: int = MIN_THRESHOLD
    epsilon_per_query: float = 0.5
    budget: float = 10.0
    max_cells: int = 500
    budgets: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_limits(
            "cohort",
            threshold=self.threshold,
            epsilon_per_query=self.epsilon_per_query,
            budgets=self.budgets,
            budget=self.budget,
        )
        if not isinstance(self.max_cells, int) or not 1 <= self.max_cells <= MAX_CELLS_LIMIT:
            raise HealthSyncError(f"cohort max_cells must be between 1 and {MAX_CELLS_LIMIT}")

    def budget_for(self, user: str) -> float:
        """The epsilon ``user`` may spend on one federation."""
        return float(self.budgets.get(user, self.budget))

    @property
    def small(self) -> str:
        """How a suppressed small count is shown: ``"<11"``."""
        return f"<{self.threshold}"

    def release_settings(self, user: str) -> dict[str, Any]:
        """What the guards and the hospitals need for ``user``'s query (sent with it)."""
        return {
            "threshold": self.threshold,
            "epsilon_per_query": self.epsilon_per_query,
            "max_cells": self.max_cells,
            "budget": self.budget_for(user),
        }

    @classmethod
    def from_settings(cls, data: Mapping[str, Any]) -> CohortPolicy:
        """Inverse of :meth:`release_settings`, validated again on the receiving side."""
        return cls(
            threshold=data.get("threshold", MIN_THRESHOLD),
            epsilon_per_query=data.get("epsilon_per_query", 0.5),
            budget=data.get("budget", 10.0),
            max_cells=data.get("max_cells", 500),
        )

    @classmethod
    def from_home(cls, home: str | Path) -> CohortPolicy:
        """The policy in ``home/cohort.yaml``, or the defaults if there is none."""
        return read_policy(cls, Path(home) / POLICY_NAME, "cohort")
