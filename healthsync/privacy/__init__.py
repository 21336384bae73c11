"""What differential privacy costs a training run, in epsilon, as Flower's accountant counts it.

A DP run clips each hospital's update to a fixed L2 norm and adds Gaussian
noise to the mean (``simulation.strategies``). Every round that releases a new
global model composes one Gaussian mechanism with the run's noise multiplier;
the epsilon spent so far, at the run's delta, is what Flower's Rényi DP
accountant reports. This module builds that accountant and answers the same
question without a run (how much would N rounds cost? how many rounds fit in a
budget?), so the number on a chart is the number the run recorded. It imports
Flower (its public ``flwr.serverapp``, which re-exports the accountant) only
when called.

Flower's accounted fixed-clipping wrappers support no privacy amplification by
sampling, so ``fraction`` < 1 does not lower epsilon here: the figures are an
upper bound for runs that sample hospitals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from flwr.serverapp import PrivacyAccountant

    from healthsync.runs.store import MetricsStore


def new_accountant(hospitals: int, delta: float, budget: float = 0.0) -> PrivacyAccountant:
    """Flower's RDP accountant for one run over ``hospitals`` (no sampling amplification).

    Parameters
    ----------
    hospitals : the federation's size (the accountant's population).
    delta : the delta at which epsilon is reported.
    budget : epsilon no release may push the total past; 0 for none. Flower's
        DP wrapper then refuses the round that would exceed it.
    """
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    config = PrivacyConfig(
        target_delta=delta,
        population_size=hospitals,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=budget or None,
    )
    return RdpAccountant(config)


def epsilon_for(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon spent after ``rounds`` released rounds at ``noise_multiplier``, reported at ``delta``.

    The same figure a DP run records in its last round's ``epsilon``: without
    sampling amplification it depends on neither the federation's size nor
    ``fraction``.
    """
    from flwr.serverapp import GaussianPrivacyEvent

    if rounds <= 0:
        return 0.0
    accountant = new_accountant(1, delta)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, 1, 1), count=rounds)
    return accountant.get_epsilon(delta)


def rounds_within(noise_multiplier: float, delta: float, budget: float, limit: int) -> int:
    """How many rounds (at most ``limit``) fit within an epsilon ``budget``; for a launch form."""
    low, high = 0, limit  # epsilon grows with rounds: bisect on the largest affordable count
    while low < high:
        middle = (low + high + 1) // 2
        if epsilon_for(noise_multiplier, middle, delta) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def utility_frame(store: MetricsStore) -> pl.DataFrame:
    """One row per completed run: its DP settings, final epsilon and final AUC.

    The data of a utility-versus-privacy chart. Runs without DP have a null
    ``epsilon`` (no guarantee, the non-private reference), so a chart can draw
    them as a baseline. Columns: run_id, data_dir, target, strategy, dp_noise,
    dp_clip, rounds_done, epsilon, auc.
    """
    return store.frame(
        """
        SELECT r.run_id, r.data_dir, r.target, r.strategy,
               CAST(json_extract(r.config, '$.dp_noise') AS DOUBLE) AS dp_noise,
               CAST(json_extract(r.config, '$.dp_clip') AS DOUBLE) AS dp_clip,
               last.rounds_done, last.epsilon, r.final_auc AS auc
        FROM runs r
        JOIN (SELECT run_id, count(*) AS rounds_done, arg_max(epsilon, round) AS epsilon
              FROM rounds GROUP BY run_id) last USING (run_id)
        WHERE r.status = 'completed' AND r.kind = 'federated'
        ORDER BY r.created_at
        """
    )
