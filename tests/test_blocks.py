"""Block execution: many hospitals in one vectorised call give each hospital's own update."""

import dataclasses

import numpy as np
import pytest

from healthsync.blocks import evaluate_block, train_block
from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.features import Scaler, ScalingStats
from healthsync.model import build_model, get_arrays, initial_model, set_arrays
from healthsync.training import LocalData, evaluate_local, hospital_arrays, train_local


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
    # add a hospital whose test split has one class only (AUC undefined)
    one_class = dataclasses.replace(hospitals[0], y_test=np.zeros_like(hospitals[0].y_test))
    data = [*hospitals, one_class]
    for (ours, hist), d in zip(evaluate_block("mlp", arrays, data), data, strict=True):
        theirs, their_hist = evaluate_local(model, d.x_test, d.y_test)
        assert ours.n == theirs.n
        for key in ("loss", "auc", "accuracy", "brier"):
            assert getattr(ours, key) == pytest.approx(
                getattr(theirs, key), abs=1e-6, nan_ok=True
            ), key
        np.testing.assert_allclose(hist, their_hist, atol=1e-6)
    assert np.isnan(evaluate_block("mlp", arrays, [one_class])[0][0].auc)


def test_block_auc_handles_ties():
    from healthsync.blocks import evaluate_block as block_eval
    from healthsync.metrics import auc_score

    rng = np.random.default_rng(0)
    x = np.zeros((40, 3), dtype=np.float32)  # every score equal: all ties, AUC 0.5
    y = (rng.random(40) < 0.4).astype(np.float32)
    data = LocalData(x, y, x, y)
    arrays = [np.zeros((1, 3), np.float32), np.zeros(1, np.float32)]
    ((metrics, _),) = block_eval("logreg", arrays, [data, data])[:1]
    assert metrics.auc == pytest.approx(auc_score(y, np.full(40, 0.5))) == pytest.approx(0.5)


def test_automatic_block_size():
    config = TrainConfig()
    assert config.block_size_for(10, cpus=2) == 1  # small federations: one client per hospital
    assert config.block_size_for(1000, cpus=2) == 500
    assert config.block_size_for(100_000, cpus=2) == 2048
    assert TrainConfig(block_size=64).block_size_for(10) == 10
