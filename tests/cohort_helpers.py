"""Test-only cohort plumbing: hospitals answered in this process, with their real site gates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from healthsync.cohort.guards import answer
from healthsync.cohort.local import hospital_release
from healthsync.data import Federation, load_federation, open_hospital


class InProcess:
    """Each hospital released through its own site gate here, then the same guards.

    The same code as the Flower analytics service's client and server, without
    starting Flower, to keep tests fast (``test_cohort_flower.py`` covers that path).
    """

    def __init__(self, federation: Federation, seed: int | None = None) -> None:
        self.accessors = {h: open_hospital(federation, h) for h in federation.hospital_ids}
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.calls = 0

    def release(self, federation, plan, policy, user):
        self.calls += 1
        replies = {
            h: hospital_release(
                self.accessors[h],
                plan,
                user,
                epsilon=policy.epsilon_per_query,
                budget_cap=policy.budget_for(user),
                rng=self.rng,
            )
            for h in plan.hospitals
        }
        return answer(replies, plan, policy)


def private_copy(federation: Federation, folder: Path) -> Federation:
    """A copy of ``federation`` with no site ledger, so a test starts with nothing spent."""
    target = Path(folder) / "federation"
    shutil.copytree(federation.data_dir, target, ignore=shutil.ignore_patterns("site", ".cache"))
    return load_federation(target)
