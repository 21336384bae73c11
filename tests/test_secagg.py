"""Secure aggregation (SecAgg+): the server never receives one hospital's model in the clear.

The round loop runs on the in-process grid, which records every message the
server sends and receives (contents copied as serialisation would, node state
kept per node as Flower does), so each check looks at exactly what reached the
server. A plain FedAvg run with the same seed gives each hospital's true model,
since local training is deterministic per seed, round and hospital.
"""

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from healthsync.config import TrainConfig
from healthsync.data import load_federation
from healthsync.ml.model import SavedModel
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from simulation.secagg import CLIPPING_RANGE, neighbourhood
from tests.engine_helpers import make_federation
from tests.inprocess_grid import run_in_process, trained_models

HOSPITALS = 6
QUANTIZATION_RANGE = 2**22  # Flower's default, which SecureAggregation keeps
MOD_RANGE = 2**32


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return make_federation(
        tmp_path_factory.mktemp("secagg"), "fed", hospitals=HOSPITALS, patients=120
    )


def _config(fed, tmp_path, **changes) -> TrainConfig:
    return TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), **{"rounds": 1, **changes})


def _plain_models(grid) -> dict[int, list[np.ndarray]]:
    """Each hospital's trained model as a plain run's server received it."""
    return trained_models(grid)


def _masked_models(grid) -> dict[int, list[np.ndarray]]:
    """What each hospital sent in SecAgg+'s masked-model stage, as the server received it."""
    masked = {}
    for reply in grid.received:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            hospital = grid.partitions[reply.metadata.src_node_id]
            masked[hospital] = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
    return masked


def test_server_receives_masked_models_whose_sum_is_fedavg(fed, tmp_path):
    plain, plain_grid = run_in_process(_config(fed, tmp_path))
    secure, grid = run_in_process(_config(fed, tmp_path, secagg=True))
    assert secure["status"] == "completed" and secure["config"]["secagg"] is True
    models = _plain_models(plain_grid)
    masked = _masked_models(grid)
    assert sorted(models) == sorted(masked) == list(range(HOSPITALS))

    # No reply in the secure run carries a model in the clear (the plain run's do).
    assert not _plain_models(grid)
    for reply in grid.received:
        arrays = {key for record in reply.content.array_records.values() for key in record}
        if reply.metadata.message_type == "train":
            assert not arrays
        else:  # scaling statistics and score histograms, never weights
            assert arrays <= {"sums", "sumsq", "histogram"}

    # Each masked vector is far from what that hospital would send unmasked:
    # its example-weighted, quantised model (what SecAgg+ sums).
    sizes = {i: load_federation(fed).hospitals[i].n_patients for i in range(HOSPITALS)}
    for hospital, model in models.items():
        ratio = round(_train_examples(fed, hospital) / max(sizes.values()) * QUANTIZATION_RANGE)
        weighted = [a * (ratio / QUANTIZATION_RANGE) for a in model]
        quantised = factor_combine(ratio, quantize(weighted, CLIPPING_RANGE, QUANTIZATION_RANGE))
        received = masked[hospital]
        assert [a.shape for a in received] == [a.shape for a in quantised]
        flat_received = np.concatenate([a.ravel() for a in received]).astype(np.int64)
        flat_true = np.concatenate([a.ravel() for a in quantised]).astype(np.int64)
        assert np.mean(flat_received == flat_true) < 0.01
        # Masks are uniform over [0, 2**32): the received values spread over that
        # range, while the true values stay below the quantisation range.
        assert flat_true.max() < QUANTIZATION_RANGE + ratio + 1
        assert np.mean(flat_received >= QUANTIZATION_RANGE) > 0.9

    # The masks cancel: the masked sum, unmasked, is FedAvg's weighted mean.
    (secure_round,) = secure["rounds"]
    (plain_round,) = plain["rounds"]
    for key in ("loss", "auc", "accuracy", "brier"):
        assert secure_round[key] == pytest.approx(plain_round[key], rel=1e-4, abs=1e-5)
    assert secure_round["hospitals_ok"] == secure_round["hospitals_sampled"] == HOSPITALS
    # The saved global model keeps the model's float32 weights (Flower dequantises to float64).
    store = MetricsStore(secure["config"]["db"])
    saved = SavedModel.from_bytes(runlog.load_model_blob(store, secure["run_id"]))
    plain_saved = SavedModel.from_bytes(runlog.load_model_blob(store, plain["run_id"]))
    assert [a.dtype for a in saved.arrays] == [a.dtype for a in plain_saved.arrays]
    for ours, theirs in zip(saved.arrays, plain_saved.arrays, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    kinds = [e["kind"] for e in secure["events"]]
    assert "privacy" in kinds and "secure aggregation (SecAgg+)" in secure["events"][1]["message"]


def _train_examples(fed, hospital: int) -> int:
    from healthsync.ml.training import hospital_arrays

    federation = load_federation(fed)
    arrays = hospital_arrays(
        federation, federation.hospitals[hospital].id, federation.default_target
    )
    return len(arrays.y_train)


def test_dropped_hospitals_are_recovered_and_recorded(fed, tmp_path):
    """Hospitals that drop out before sending their masked model: the others' masks still cancel.

    Seed 1 drops 2, 1 and 2 of the 6 hospitals in rounds 1-3; 4 of each
    hospital's 6 neighbours (itself included) are enough to unmask.
    """
    settings = {"rounds": 3, "dropout": 0.2, "seed": 1}
    plain, _ = run_in_process(_config(fed, tmp_path, **settings))
    secure, _ = run_in_process(_config(fed, tmp_path, secagg=True, **settings))
    assert secure["status"] == "completed"
    dropped = [e for e in secure["events"] if e["kind"] == "hospital_dropped"]
    assert dropped, "the seeded dropouts should drop someone in 3 rounds"
    assert sorted((e["round"], e["hospital"]) for e in dropped) == sorted(
        (e["round"], e["hospital"]) for e in plain["events"] if e["kind"] == "hospital_dropped"
    )
    assert len(dropped) == 5
    for s, p in zip(secure["rounds"], plain["rounds"], strict=True):
        assert (s["hospitals_ok"], s["hospitals_failed"]) == (
            p["hospitals_ok"],
            p["hospitals_failed"],
        )
        # FedAvg over the hospitals that answered, with or without masks.
        assert s["loss"] == pytest.approx(p["loss"], rel=1e-4, abs=1e-5)


def test_too_many_dropouts_stop_the_run_with_a_reason(fed, tmp_path):
    """Seed 3 drops 3 of 6 hospitals in round 2: too few shares are left to unmask the sum."""
    secure, _ = run_in_process(_config(fed, tmp_path, secagg=True, rounds=3, dropout=0.2, seed=3))
    assert secure["status"] == "failed" and len(secure["rounds"]) == 1
    assert secure["reason"] == (
        "round 2: secure aggregation could not finish: 3 of 6 hospitals did not answer, "
        "and each hospital needs 4 of its neighbours to unmask the sum"
    )


@pytest.mark.parametrize(
    ("sampled", "expected"),
    [(3, (3, 2)), (5, (5, 4)), (10, (9, 6)), (100, (15, 10)), (1000, (21, 14))],
)
def test_neighbourhoods_grow_logarithmically(sampled, expected):
    shares, threshold = neighbourhood(sampled)
    assert (shares, threshold) == expected
    assert 2 <= threshold < shares <= sampled


def test_fedprox_under_secure_aggregation_matches_plain_fedprox(fed, tmp_path):
    """FedProx's mu reaches the hospitals through the legacy workflow too."""
    settings = {"strategy": "fedprox", "proximal_mu": 5.0, "rounds": 2}
    plain, _ = run_in_process(_config(fed, tmp_path, **settings))
    secure, _ = run_in_process(_config(fed, tmp_path, secagg=True, **settings))
    without_mu, _ = run_in_process(_config(fed, tmp_path, secagg=True, rounds=2))
    for s, p, w in zip(secure["rounds"], plain["rounds"], without_mu["rounds"], strict=True):
        assert s["loss"] == pytest.approx(p["loss"], rel=1e-4, abs=1e-5)
        assert abs(s["loss"] - w["loss"]) > 1e-4  # mu = 5 changes training
