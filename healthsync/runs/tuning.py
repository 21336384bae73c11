"""Federated tuning: successive halving over real federated runs, chosen by validation loss.

``tune`` samples ``budget`` settings (learning rate, local work, strategy and its
knob) from a seeded generator, trains each as a real federated run for a few
rounds (``lifecycle.start_run``: the warm engine when one is running), keeps
the best third by federated validation loss, trains those for three times as
many rounds, and so on until one remains. Only the federated validation loss
(each hospital's held-out training rows, ``rounds.val_loss``) decides; test
figures are never read. Trials are runs named ``tune:<id> trial <k>``; the
tuning and its trials are recorded in the store (``tunings``,
``tuning_trials``) for the Runs page and Launch's "use the tuned settings".
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from healthsync.config import (
    DEFAULT_TUNING_BUDGET,
    DEFAULT_TUNING_MIN_ROUNDS,
    MAX_TUNING_BUDGET,
    TrainConfig,
)
from healthsync.errors import HealthSyncError
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore

#: Share kept at each rung is ``1 / ETA`` (rounded up): the best third.
ETA = 3
#: The settings a tuning searches (``best`` changes only these from the base config).
TUNED_FIELDS = ("strategy", "lr", "local_epochs", "local_steps", "proximal_mu", "server_lr")


@dataclass(frozen=True)
class SearchSpace:
    """Where candidates are drawn from: log-uniform ranges and lists of choices.

    ``proximal_mu`` is drawn for FedProx only and ``server_lr`` for FedAdam and
    FedYogi only; the others keep the base config's value (it does nothing there).
    """

    lr: tuple[float, float] = (0.005, 0.5)
    local_steps: tuple[int, ...] = (5, 10, 20, 40)
    strategies: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedyogi")
    proximal_mu: tuple[float, float] = (0.001, 1.0)
    server_lr: tuple[float, float] = (0.005, 0.5)

    def sample(self, budget: int, seed: int) -> list[dict[str, Any]]:
        """``budget`` settings, the same for the same seed (values to 3 significant digits)."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(budget):
            strategy = str(rng.choice(self.strategies))
            settings: dict[str, Any] = {
                "strategy": strategy,
                "lr": _log_uniform(rng, self.lr),
                "local_epochs": "auto",
                "local_steps": int(rng.choice(self.local_steps)),
            }
            if strategy == "fedprox":
                settings["proximal_mu"] = _log_uniform(rng, self.proximal_mu)
            if strategy in ("fedadam", "fedyogi"):
                settings["server_lr"] = _log_uniform(rng, self.server_lr)
            out.append(settings)
        return out


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")


def check_budget(budget: int) -> int:
    """The budget, or a one-line error: a whole number from 1 to ``MAX_TUNING_BUDGET``."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise HealthSyncError(f"budget must be a whole number of trials, got {budget!r}")
    if not 1 <= budget <= MAX_TUNING_BUDGET:
        raise HealthSyncError(
            f"budget must be between 1 and {MAX_TUNING_BUDGET} trials, got {budget}"
        )
    return budget


def rungs(budget: int, min_rounds: int, max_rounds: int) -> list[tuple[int, int]]:
    """``(trials, rounds)`` of each rung: ``budget`` trials first, the best third after each.

    >>> rungs(9, 3, 50)
    [(9, 3), (3, 9)]

    The best trial of the last rung is the choice; rounds never exceed ``max_rounds``.
    """
    out, trials, rounds = [], budget, min(min_rounds, max_rounds)
    while True:
        out.append((trials, rounds))
        if trials <= ETA:
            return out
        trials, rounds = math.ceil(trials / ETA), min(rounds * ETA, max_rounds)


def validation_loss(store: MetricsStore, run_id: str) -> float | None:
    """The run's lowest federated validation loss (its kept round's); ``None`` if it has none."""
    value = store.scalar("SELECT min(val_loss) FROM rounds WHERE run_id = ?", [run_id])
    return None if value is None or math.isnan(value) else float(value)


def tune(
    base: TrainConfig,
    *,
    budget: int = DEFAULT_TUNING_BUDGET,
    min_rounds: int = DEFAULT_TUNING_MIN_ROUNDS,
    space: SearchSpace | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Search ``space`` by successive halving; return ``{tuning_id, best, best_run_id, trials}``.

    ``base`` gives everything not searched (data, store, target, model, seed,
    validation share). Each trial runs ``rounds="auto"`` with its rung's
    rounds as the most, so a diverging setting stops early; its score is its
    lowest federated validation loss. Failed trials (no validation loss) rank
    last; a tie goes to the earlier candidate. ``on_trial`` is called with each
    finished trial. Ctrl-C cancels the running trial and marks the tuning failed.
    """
    check_budget(budget)
    if base.validation_share <= 0:
        raise HealthSyncError("tuning chooses by validation loss: validation share must be > 0")
    base, _ = lifecycle.check_config(base)  # missing data, bad target: before anything starts
    store = MetricsStore(base.db)
    tuning_id = f"tune-{runlog.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    store.execute(
        "INSERT INTO tunings (tuning_id, created_at, data_dir, target, model, budget, seed,"
        " status) VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
        [tuning_id, runlog.now(), base.data_dir, base.target, base.model, budget, base.seed],
    )
    candidates = (space or SearchSpace()).sample(budget, base.seed)
    alive = list(range(budget))
    trials: list[dict[str, Any]] = []
    try:
        for rung, (_, rounds) in enumerate(rungs(budget, min_rounds, base.max_rounds)):
            scored = []
            for c in alive:
                trial = {"trial": len(trials) + 1, "rung": rung, "rounds": rounds}
                trial |= _run_trial(
                    base.replace(**candidates[c]), tuning_id, trial["trial"], rounds
                )
                trial["settings"] = candidates[c]
                trials.append(trial)
                _record_trial(store, tuning_id, trial)
                scored.append(
                    (math.inf if trial["val_loss"] is None else trial["val_loss"], c, trial)
                )
                if on_trial:
                    on_trial(trial)
            scored.sort(key=lambda s: s[:2])
            alive = [c for _, c, _ in scored[: math.ceil(len(scored) / ETA)]]
        _, winner, winning = scored[0]
        if winning["val_loss"] is None:
            raise HealthSyncError(
                "no trial recorded a federated validation loss (did every trial fail?); "
                f"see `healthsync runs show {winning['run_id']}`"
            )
    except BaseException:
        store.execute("UPDATE tunings SET status = 'failed' WHERE tuning_id = ?", [tuning_id])
        raise
    best = base.replace(**candidates[winner]).to_dict()
    store.execute(
        "UPDATE tunings SET status = 'completed', best = ?, best_run_id = ? WHERE tuning_id = ?",
        [json.dumps(best), winning["run_id"], tuning_id],
    )
    return {
        "tuning_id": tuning_id,
        "best": best,
        "best_run_id": winning["run_id"],
        "trials": trials,
    }


def _run_trial(config: TrainConfig, tuning_id: str, number: int, rounds: int) -> dict[str, Any]:
    """One real federated run of a candidate, at most ``rounds`` rounds; its score from the store.

    The run uses ``rounds="auto"`` so a setting that stops improving ends early.
    """
    config = config.replace(rounds="auto", max_rounds=rounds)
    run_id = lifecycle.start_run(config, name=f"tune:{tuning_id} trial {number}")
    try:
        run = lifecycle.wait_for_run(config.db, run_id)
    except KeyboardInterrupt:
        lifecycle.cancel_run(config.db, run_id)  # no trial left running behind the tuning
        raise
    return {
        "run_id": run_id,
        "status": run["status"],
        "val_loss": validation_loss(MetricsStore(config.db), run_id),
    }


def _record_trial(store: MetricsStore, tuning_id: str, trial: dict[str, Any]) -> None:
    store.execute(
        "INSERT INTO tuning_trials (tuning_id, trial, rung, run_id, rounds, settings, val_loss,"
        " status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            tuning_id,
            trial["trial"],
            trial["rung"],
            trial["run_id"],
            trial["rounds"],
            json.dumps(trial["settings"]),
            trial["val_loss"],
            trial["status"],
        ],
    )


# ---------------------------------------------------------------- reads
def tunings_frame(store: MetricsStore, data_dir: str | Path | None = None) -> pl.DataFrame:
    """Tunings, newest first (``data_dir``: on that federation only, as given or resolved)."""
    where, params = "", []
    if data_dir is not None:
        where, params = " WHERE data_dir IN (?, ?)", [str(data_dir), str(Path(data_dir).resolve())]
    return store.frame(
        "SELECT tuning_id, created_at, data_dir, target, model, budget, seed, status, best,"
        f" best_run_id FROM tunings{where} ORDER BY created_at DESC, tuning_id DESC",
        params,
    )


def trials_frame(store: MetricsStore, tuning_id: str) -> pl.DataFrame:
    """A tuning's trials in the order they ran: trial, rung, rounds, run, settings, val loss."""
    return store.frame(
        "SELECT trial, rung, rounds, run_id, settings, val_loss, status FROM tuning_trials"
        " WHERE tuning_id = ? ORDER BY trial",
        [tuning_id],
    )


def tuned_settings(store: MetricsStore, data_dir: str | Path) -> dict[str, Any] | None:
    """The searched settings of the newest completed tuning on ``data_dir``, or ``None``.

    Only ``TUNED_FIELDS``: Launch keeps its own data, store, outcome and model.
    """
    done = tunings_frame(store, data_dir).filter(pl.col("status") == "completed")
    if done.is_empty():
        return None
    best = json.loads(done["best"][0])
    return {k: best[k] for k in TUNED_FIELDS if k in best}
