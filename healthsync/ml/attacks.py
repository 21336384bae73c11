"""Simulated bad actors, dropouts and stragglers, each decided from the run's seed.

Real federations meet hospitals that send poisoned updates, go offline for a
round, or answer too late. These functions make such hospitals reproducible:
which hospitals attack, who sits out a round and how long each one takes all
follow from the seed, the round and the hospital's index, so the hospital's
client (which acts) and the server (which records what happened) reach the
same answer without telling each other. Knows nothing of Flower.

Attacks (``healthsync.config.ATTACKS``):

- ``label-flip``: the hospital trains on ``1 - y``;
- ``scale``: it sends ``global + SCALE_FACTOR * (update - global)``, a boosted
  and reversed update. A positive factor only lengthens an honest step, which
  on a convex model can even help FedAvg; reversing it is what does harm;
- ``random``: it sends ``global + N(0, RANDOM_STD^2)`` noise in every weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from healthsync.errors import HealthSyncError

SCALE_FACTOR = -10.0
RANDOM_STD = 3.0
# Independent random streams for the independent decisions made from one seed.
_ADVERSARIES, _DROPOUT, _DELAY, _NOISE = 1, 2, 3, 4


def choose_adversaries(hospital_ids: Sequence[str], count: int, seed: int) -> tuple[str, ...]:
    """The ``count`` attacking hospitals of a run, in federation order; at least one stays honest."""
    if count >= len(hospital_ids) and count:
        raise HealthSyncError(
            f"{count} adversarial hospital(s) but the data has only {len(hospital_ids)}; "
            "at least one must be honest"
        )
    rng = np.random.default_rng([seed, _ADVERSARIES])
    chosen = set(rng.choice(len(hospital_ids), size=count, replace=False).tolist())
    return tuple(h for i, h in enumerate(hospital_ids) if i in chosen)


def flip_labels(y: np.ndarray) -> np.ndarray:
    """The ``label-flip`` attacker's training labels."""
    return (1 - y).astype(y.dtype)


def poison(
    attack: str, update: list[np.ndarray], start: list[np.ndarray], *, seed: int
) -> list[np.ndarray]:
    """What an attacking hospital sends instead of ``update``, trained from global ``start``.

    ``label-flip`` acts on the labels before training (``flip_labels``), so its
    update goes out as trained.
    """
    if attack == "scale":
        return [
            (s + SCALE_FACTOR * (u - s)).astype(u.dtype) for u, s in zip(update, start, strict=True)
        ]
    if attack == "random":
        rng = np.random.default_rng([seed, _NOISE])
        return [(s + rng.normal(0.0, RANDOM_STD, s.shape)).astype(s.dtype) for s in start]
    return update


def straggler_delay(seed: int, round: int, hospital: int, max_delay: float) -> float:
    """Seconds hospital number ``hospital`` takes before answering ``round``: uniform in [0, max)."""
    if max_delay <= 0:
        return 0.0
    return float(np.random.default_rng([seed, _DELAY, round, hospital]).uniform(0.0, max_delay))


def absence(
    seed: int,
    round: int,
    hospital: int,
    *,
    dropout: float,
    max_delay: float,
    timeout: float,
) -> str | None:
    """Why hospital number ``hospital`` does not answer ``round``'s training, or ``None``.

    A dropout (probability ``dropout``) comes first; otherwise a hospital whose
    straggler delay exceeds the round ``timeout`` (when set) is too late.
    """
    if dropout > 0 and np.random.default_rng([seed, _DROPOUT, round, hospital]).random() < dropout:
        return f"dropped out of round {round} (simulated, probability {dropout:g})"
    delay = straggler_delay(seed, round, hospital, max_delay)
    if timeout > 0 and delay > timeout:
        return f"no answer within the {timeout:g} s round timeout (simulated delay {delay:.2f} s)"
    return None
