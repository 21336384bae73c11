"""What differential privacy and the robustness drills add to a training round.

The round loop (``simulation.server_app``) stays a loop; this module says what
the hospitals are told (attackers, dropout, delays), how long the server waits,
how a missing hospital is recorded and, under DP, how it is counted.

Simulated absences (``healthsync.ml.attacks``): a hospital that drops out, or
whose simulated delay exceeds ``round_timeout``, answers nothing for that
round's training; the round goes on with the others and records who was
missing. The simulated delay alone decides who is late (real compute time does
not count, so runs are reproducible on any machine); the server still stops
waiting for a node ``GRACE_SECONDS`` after the round timeout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from healthsync.config import TrainConfig
from healthsync.ml import attacks
from healthsync.privacy.consent import WITHDRAWN_MARK
from simulation.strategies import HOSPITAL_WEIGHT

GRACE_SECONDS = 30.0


def client_settings(config: TrainConfig, adversaries: tuple[str, ...]) -> dict[str, Any]:
    """What each hospital's client needs to act out the drills (Flower config keys)."""
    return {
        "adversaries": ",".join(adversaries),
        "attack": config.attack or "",
        "dropout": config.dropout,
        "straggler-delay": config.straggler_delay,
        "round-timeout": config.round_timeout,
    }


def train_timeout(config: TrainConfig, default: float) -> float:
    """How long the server waits for training replies (simulated lateness is decided earlier)."""
    return config.round_timeout + GRACE_SECONDS if config.round_timeout else default


def setup_events(
    config: TrainConfig, adversaries: tuple[str, ...]
) -> list[tuple[str, str, str | None]]:
    """``(kind, message, hospital)`` events naming the run's privacy settings and attackers."""
    events: list[tuple[str, str, str | None]] = []
    if config.dp:
        budget = (
            f", budget epsilon {config.dp_epsilon_budget:g}" if config.dp_epsilon_budget else ""
        )
        events.append(
            (
                "privacy",
                f"differential privacy: noise multiplier {config.dp_noise:g}, clipping norm "
                f"{config.dp_clip:g} ({config.dp_side} side), delta {config.dp_delta:g}{budget}",
                None,
            )
        )
    events += [
        ("adversary", f"simulated attacker in every round: {config.attack}", hospital)
        for hospital in adversaries
    ]
    return events


def missing_event(config: TrainConfig, rnd: int, hospital: int, error: str) -> tuple[str, str]:
    """``(kind, message)`` for hospital number ``hospital`` missing from ``rnd``'s training.

    The same seeded decision the client acted on tells a simulated absence
    (``hospital_dropped``) from a real failure (``hospital_failed``); a hospital that
    withdrew its consent is ``hospital_withdrawn``.
    """
    why = attacks.absence(
        config.seed,
        rnd,
        hospital,
        dropout=config.dropout,
        max_delay=config.straggler_delay,
        timeout=config.round_timeout,
    )
    if WITHDRAWN_MARK in error:
        return "hospital_withdrawn", error  # its node refused: consent, not a failure
    return ("hospital_dropped", why) if why else ("hospital_failed", error)


def budget_reason(config: TrainConfig, rounds_done: int, epsilon: float) -> str:
    return (
        f"privacy budget reached: epsilon {epsilon:.4g} of {config.dp_epsilon_budget:g} spent "
        f"after {rounds_done} of {config.round_limit} rounds; another round would exceed it"
    )


def unchanged_for_missing(
    replies: list[Message], sent: list[Message], arrays: ArrayRecord
) -> list[Message]:
    """Under DP, a sampled hospital that did not answer counts as sending the global model back.

    Its update is zero, so the mean keeps its fixed denominator (every sampled
    hospital), as in DP-FedAvg (McMahan et al., 2018): one hospital then moves
    the mean by at most ``clip / sampled``, which is what Flower's noise and
    accountant assume. Flower's wrapper would otherwise skip the whole round.
    Flower's server-side clipping divides by the update's norm, so the "zero"
    update moves one weight by one floating-point step, far below the noise.
    """
    by_hospital = {m.metadata.dst_node_id: m for m in sent}
    values = [np.array(a) for a in arrays.to_numpy_ndarrays()]
    first = values[0].reshape(-1)
    first[0] = np.nextafter(first[0], np.inf)
    out = []
    for reply in replies:
        if reply.has_error():
            unchanged = RecordDict(
                {
                    "arrays": ArrayRecord(numpy_ndarrays=values),
                    "metrics": MetricRecord(
                        {"num-examples": 0, "train-loss": 0.0, HOSPITAL_WEIGHT: 1}
                    ),
                }
            )
            reply = Message(unchanged, reply_to=by_hospital[reply.metadata.src_node_id])
        out.append(reply)
    return out
