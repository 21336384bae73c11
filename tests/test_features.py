"""Federated scaling equals pooled scaling; encoding follows the schema only."""

import numpy as np
import polars as pl
import pytest

from healthsync.errors import HealthSyncError
from healthsync.ml.features import Encoder, Scaler, ScalingStats, labels


def test_federated_mean_std_equals_pooled():
    rng = np.random.default_rng(1)
    parts = [
        rng.normal(i, i + 1, size=(n, 3)).astype(np.float32) for i, n in enumerate((5, 40, 300))
    ]
    stats = ScalingStats.combine(ScalingStats.of(p) for p in parts)
    mean, std = stats.mean_std()
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, pooled.std(axis=0), rtol=1e-4)


def test_encoder_one_hot_and_errors():
    encoder = Encoder(numeric=("age",), categorical=(("sex", ("F", "M")),))
    x = encoder.encode(pl.DataFrame({"age": [50.0, 60.0], "sex": ["M", "F"], "other": [1, 2]}))
    assert encoder.columns == ["age", "sex=F", "sex=M"]
    np.testing.assert_array_equal(x, [[50, 0, 1], [60, 1, 0]])
    with pytest.raises(HealthSyncError, match="missing column"):
        encoder.encode(pl.DataFrame({"age": [1.0]}))
    with pytest.raises(HealthSyncError, match="non-numeric values in column"):
        encoder.encode(pl.DataFrame({"age": ["old"], "sex": ["F"]}))


def test_constant_columns_do_not_divide_by_zero():
    scaler = Scaler.from_stats(ScalingStats.of(np.ones((4, 2), dtype=np.float32)))
    assert np.isfinite(scaler.transform(np.ones((1, 2), dtype=np.float32))).all()


def test_labels_must_be_binary():
    assert labels(pl.DataFrame({"y": [0, 1]}), "y").tolist() == [0.0, 1.0]
    with pytest.raises(HealthSyncError, match="only 0 and 1"):
        labels(pl.DataFrame({"y": [0, 2]}), "y")
