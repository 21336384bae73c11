"""TrainConfig: validation with clear messages, and lossless round trips."""

import pytest

from healthsync.config import STRATEGIES, TrainConfig
from healthsync.errors import HealthSyncError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "fedfoo"}, "unknown strategy 'fedfoo'"),
        ({"model": "cnn"}, "unknown model 'cnn'"),
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"fraction": 0.0}, "fraction must be in (0, 1]"),
        ({"fraction": 1.5}, "fraction must be in (0, 1]"),
        ({"lr": 0}, "learning rate must be > 0"),
        ({"local_epochs": 0}, "local epochs must be >= 1"),
        ({"trim_beta": 0.5}, "trim beta must be in [0, 0.5)"),
    ],
)
def test_bad_settings_are_refused_with_a_named_problem(changes, message):
    with pytest.raises(
        HealthSyncError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        TrainConfig(**changes)


def test_every_strategy_name_is_accepted():
    assert [TrainConfig(strategy=s).strategy for s in STRATEGIES] == list(STRATEGIES)


def test_json_and_flower_run_config_round_trip():
    config = TrainConfig(
        strategy="fedprox", rounds=3, fraction=0.5, lr=0.1, fail_hospitals=("h0001", "h0002")
    )
    assert TrainConfig.from_json(config.to_json()) == config
    flat = config.to_run_config()
    assert flat["local-epochs"] == "auto" and flat["fail-hospitals"] == "h0001,h0002"
    assert TrainConfig.from_run_config(flat) == config


def test_unknown_keys_are_an_error_not_dropped():
    with pytest.raises(HealthSyncError, match="unknown training setting"):
        TrainConfig.from_dict({"rounds": 2, "epochs": 3})
