"""Flower's own strategies, chosen by the names in ``healthsync.config.STRATEGIES``.

A differentially private run wraps the chosen strategy in Flower's fixed-clipping
DP wrapper, with Flower's privacy accountant: the wrapper clips (server side) or
expects clipped updates (client side), adds Gaussian noise to the mean, counts
epsilon per released round and refuses a round that would exceed the budget.
"""

from __future__ import annotations

from flwr.serverapp import PrivacySpent
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from healthsync import privacy
from healthsync.config import TrainConfig
from simulation.hospital_grid import BlockFedAvg, BlockFedProx

# Every hospital's training reply carries this metric, always 1: a DP mean weighs
# hospitals equally, since clipping bounds a hospital's influence only then.
HOSPITAL_WEIGHT = "hospital-weight"
DP_WRAPPERS = {
    "server": DifferentialPrivacyServerSideFixedClipping,
    "client": DifferentialPrivacyClientSideFixedClipping,
}


def build_strategy(config: TrainConfig, hospitals: int) -> Strategy:
    """The configured strategy, sampling ``fraction`` of ``hospitals`` for training.

    Evaluation always covers every hospital, so each round's global metrics are
    measured on the whole federation's test rows.
    """
    common = {
        "fraction_train": config.fraction,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": hospitals,
        # HospitalGrid waits for every node before the first round; it then lists only the
        # hospitals that take part (a withdrawn one is never sampled), so no waiting here.
        "min_available_nodes": 1,
    }
    if config.dp:
        common["weighted_by_key"] = HOSPITAL_WEIGHT
    strategy = _base(config, common)
    if not config.dp:
        return strategy
    return DP_WRAPPERS[config.dp_side](
        strategy,
        config.dp_noise,
        config.dp_clip,
        sampled_hospitals(config, hospitals),
        accountant=privacy.new_accountant(hospitals, config.dp_delta, config.dp_epsilon_budget),
    )


def _base(config: TrainConfig, common: dict) -> Strategy:
    server_opt = {"eta": config.server_lr, "eta_l": config.lr}
    match config.strategy:
        # Flower's DP accountant accepts only FedAvg's own aggregate_train, so DP
        # runs keep Flower's classes; others get the stacked-array fast path.
        case "fedavg":
            return FedAvg(**common) if config.dp else BlockFedAvg(**common)
        case "fedprox":
            fedprox = FedProx if config.dp else BlockFedProx
            return fedprox(**common, proximal_mu=config.proximal_mu)
        case "fedadam":
            return FedAdam(**common, **server_opt)
        case "fedyogi":
            return FedYogi(**common, **server_opt)
        case "fedadagrad":
            return FedAdagrad(**common, **server_opt)
        case "fedmedian":
            return FedMedian(**common)
        case "fedtrimmedavg":
            return FedTrimmedAvg(**common, beta=config.trim_beta)
        case "krum":
            return Krum(**common, num_malicious_nodes=config.krum_f)
    raise ValueError(f"unknown strategy {config.strategy!r}")  # config validation prevents this


def sampled_hospitals(config: TrainConfig, hospitals: int) -> int:
    """How many hospitals Flower's sampling picks for training each round (as ``FedAvg`` does)."""
    return max(int(hospitals * config.fraction), 1)


def privacy_spent(strategy: Strategy) -> PrivacySpent | None:
    """Epsilon spent so far by a DP strategy's accountant; ``None`` without DP."""
    spent = getattr(strategy, "privacy_spent", None)
    return spent() if spent else None
