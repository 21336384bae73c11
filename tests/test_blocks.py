"""Block execution: many hospitals in one vectorised call give each hospital's own update."""

import numpy as np
import pytest

from healthsync.blocks import evaluate_block, train_block
from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.features import Scaler, ScalingStats
from healthsync.model import build_model, get_arrays, initial_model, set_arrays
from healthsync.training import evaluate_local, hospital_arrays, train_local


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    fed = generate_federation(
        tmp_path_factory.mktemp("blocks") / "fed",
        hospitals=64,
        patients=60,
        seed=3,
        heterogeneity=1.0,
    )
    arrays = [hospital_arrays(fed, h.id, "diabetes") for h in fed.hospitals]
    scaler = Scaler.from_stats(ScalingStats.combine(ScalingStats.of(a.x_train) for a in arrays))
    return [a.scaled(scaler) for a in arrays]


@pytest.mark.parametrize(("kind", "mu"), [("logreg", 0.0), ("mlp", 0.0), ("mlp", 0.5)])
def test_block_of_64_matches_one_hospital_at_a_time(hospitals, kind, mu):
    start = get_arrays(initial_model(kind, hospitals[0].x_train.shape[1], seed=0))
    seeds = [1000 + i for i in range(len(hospitals))]
    settings = {"epochs": 2, "batch_size": 16, "lr": 0.1, "proximal_mu": mu}
    block, block_losses = train_block(kind, start, hospitals, seeds=seeds, **settings)
    assert len({len(d.y_train) for d in hospitals}) > 5  # sizes differ: masking is exercised
    for i, data in enumerate(hospitals):
        model = build_model(kind, data.x_train.shape[1])
        set_arrays(model, start)
        loss = train_local(model, data.x_train, data.y_train, seed=seeds[i], **settings)
        for ours, theirs in zip(block[i], get_arrays(model), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert block_losses[i] == pytest.approx(loss, abs=1e-5)


def test_block_evaluation_matches(hospitals):
    arrays = get_arrays(initial_model("mlp", hospitals[0].x_train.shape[1], seed=1))
    model = build_model("mlp", hospitals[0].x_train.shape[1])
    set_arrays(model, arrays)
    for (ours, hist), data in zip(evaluate_block("mlp", arrays, hospitals), hospitals, strict=True):
        theirs, their_hist = evaluate_local(model, data.x_test, data.y_test)
        assert ours.n == theirs.n and ours.loss == pytest.approx(theirs.loss, abs=1e-6)
        np.testing.assert_array_equal(hist[:, :2], their_hist[:, :2])


def test_automatic_block_size():
    config = TrainConfig()
    assert config.block_size_for(10, cpus=2) == 1  # small federations: one client per hospital
    assert config.block_size_for(1000, cpus=2) == 500
    assert config.block_size_for(100_000, cpus=2) == 2048
    assert TrainConfig(block_size=64).block_size_for(10) == 10
