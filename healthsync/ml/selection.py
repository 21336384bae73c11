"""Model selection by validation loss: the one stopping rule every method shares.

A federated run (``simulation.round_hooks.EarlyStopping``) and the pooled and
local-only baselines (``healthsync.runs.baselines``) feed it one validation
loss per round and keep the round it calls best, so ``compare`` sets like
against like. Validation losses come from each hospital's held-out training
rows (``training.validation_mask``), never from test rows.
"""

from __future__ import annotations

import math


class Patience:
    """Keep the lowest validation loss; stop after ``patience`` rounds without a lower one.

    ``update(round, loss)`` returns whether this round is the new best; ``stop``
    then says whether to end. A NaN loss (no validation rows) is never better
    and never counts towards the patience: without validation rows nothing
    stops early and the caller keeps its last round.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_round = 0
        self.stop = False

    def update(self, rnd: int, loss: float | None) -> bool:
        if loss is None or math.isnan(loss):
            return False
        if loss < self.best_loss:
            self.best_loss, self.best_round = loss, rnd
            return True
        self.stop = rnd - self.best_round >= self.patience
        return False
