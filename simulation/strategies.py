"""Flower's own strategies, chosen by the names in ``healthsync.config.STRATEGIES``."""

from __future__ import annotations

from flwr.serverapp.strategy import (
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

from healthsync.config import TrainConfig


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
        "min_available_nodes": hospitals,
    }
    server_opt = {"eta": config.server_lr, "eta_l": config.lr}
    match config.strategy:
        case "fedavg":
            return FedAvg(**common)
        case "fedprox":
            return FedProx(**common, proximal_mu=config.proximal_mu)
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
