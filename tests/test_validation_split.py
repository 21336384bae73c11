"""Validation rows held out inside each hospital: seeded, stratified, never a test row."""

from __future__ import annotations

import numpy as np
import pytest

from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.errors import HealthSyncError
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.model import get_arrays, initial_model
from healthsync.ml.training import HospitalArrays, hospital_arrays, split_seed, validation_mask
from simulation import client_app


def test_the_mask_is_stratified_and_seeded():
    y = np.array([1.0] * 30 + [0.0] * 70)
    mask = validation_mask(y, 0.2, seed=7)
    assert (mask & (y == 1)).sum() == 6 and (mask & (y == 0)).sum() == 14
    assert np.array_equal(mask, validation_mask(y, 0.2, seed=7))
    assert not np.array_equal(mask, validation_mask(y, 0.2, seed=8))
    assert not validation_mask(y, 0.0, seed=7).any()


def test_a_rare_class_keeps_a_training_row():
    y = np.array([1.0] + [0.0] * 9)
    mask = validation_mask(y, 0.6, seed=0)  # round(0.6) would take the only positive
    assert not mask[0] and mask.sum() == 5  # it stays in training


def test_no_test_row_is_ever_held_out_for_validation_and_no_training_row_is_lost():
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(50, 3)).astype(np.float32)
    x_test = np.full((20, 3), 1000.0, np.float32)  # marked: any test row would show
    hospital = HospitalArrays(
        "h1", x_train, (rng.random(50) < 0.3).astype(np.float32), x_test, np.ones(20, np.float32)
    )
    scaler = Scaler(np.zeros(3), np.ones(3))
    data = hospital.scaled(scaler, validation_share=0.2, seed=4)
    assert len(data.y_val) == 10 and len(data.y_train) == 40
    assert not np.isin(data.x_val, 1000.0).any() and not np.isin(data.x_train, 1000.0).any()
    together = np.concatenate([data.x_train, data.x_val])
    assert sorted(map(tuple, together)) == sorted(map(tuple, x_train))
    np.testing.assert_array_equal(data.x_test, x_test)
    again = hospital.scaled(scaler, validation_share=0.2, seed=4)
    np.testing.assert_array_equal(again.x_val, data.x_val)
    assert split_seed(4, "h1") != split_seed(4, "h2")  # hospitals draw their own rows


def test_the_share_is_a_validated_setting():
    assert TrainConfig().validation_share == 0.2
    with pytest.raises(HealthSyncError, match="validation share"):
        TrainConfig(validation_share=0.9)


def test_the_block_path_and_the_one_hospital_path_hold_out_and_score_the_same_rows(tmp_path):
    fed = generate_federation(tmp_path / "fed", hospitals=5, patients=80, seed=2)
    arrays = [hospital_arrays(fed, h.id, "diabetes") for h in fed.hospitals]
    scaler = Scaler.from_stats(ScalingStats.combine(ScalingStats.of(a.x_train) for a in arrays))
    config = {
        "target": "diabetes",
        "scale-mean": scaler.mean.tolist(),
        "scale-std": scaler.std.tolist(),
        "validation-share": 0.2,
        "seed": 3,
    }
    data = [client_app._standardised(i, a, config) for i, a in enumerate(arrays)]
    for d, a in zip(data, arrays, strict=True):  # the client's split is the library's
        expected = a.scaled(scaler, validation_share=0.2, seed=3)
        np.testing.assert_array_equal(d.x_val, expected.x_val)
        np.testing.assert_array_equal(d.x_train, expected.x_train)
    model = get_arrays(initial_model("mlp", data[0].x_train.shape[1], seed=0))
    block = client_app._evaluated("mlp", model, [d.validation() for d in data])
    for d, (together, _) in zip(data, block, strict=True):
        (alone, _) = client_app._evaluated("mlp", model, [d.validation()])[0]
        assert alone.n == together.n == len(d.y_val) > 0
        assert alone.loss == pytest.approx(together.loss, abs=1e-6)
