"""Differential privacy: epsilon as Flower's accountant counts it, budgets, clipping per hospital.

Runs here go through ``FederatedRun`` and the real client app on an in-process
grid (no Ray), so they take about a second each.
"""

import logging

import numpy as np
import pytest
from flwr.supercore.differential_privacy import get_norm
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from healthsync import privacy
from healthsync.config import TrainConfig
from healthsync.runs.store import MetricsStore
from tests.engine_helpers import make_federation
from tests.inprocess_grid import run_in_process, trained_models

logging.getLogger("flwr").setLevel(logging.WARNING)
HOSPITALS = 6


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return make_federation(tmp_path_factory.mktemp("dp"), "fed", hospitals=HOSPITALS, patients=80)


def _flower_epsilons(noise: float, rounds: int, delta: float, population: int) -> list[float]:
    accountant = RdpAccountant(
        PrivacyConfig(
            delta,
            population,
            NeighboringRelation.ADD_OR_REMOVE_ONE,
            SamplingMethod.NO_AMPLIFICATION,
        )
    )
    out = []
    for _ in range(rounds):
        accountant.compose(GaussianPrivacyEvent(noise, population, population))
        out.append(accountant.get_epsilon(delta))
    return out


@pytest.mark.parametrize(("noise", "delta"), [(0.7, 1e-5), (1.0, 1e-5), (2.0, 1e-3)])
def test_epsilon_for_is_flowers_accountant(noise, delta):
    expected = _flower_epsilons(noise, 5, delta, population=10)
    ours = [privacy.epsilon_for(noise, r, delta) for r in range(1, 6)]
    assert ours == pytest.approx(expected, rel=1e-12)
    assert privacy.epsilon_for(noise, 0, delta) == 0.0


def test_rounds_within_a_budget():
    fits = privacy.rounds_within(1.0, 1e-5, 10.0, limit=100)
    assert fits == 3
    assert privacy.epsilon_for(1.0, 3, 1e-5) <= 10.0 < privacy.epsilon_for(1.0, 4, 1e-5)
    assert privacy.rounds_within(5.0, 1e-5, 1e9, limit=7) == 7


def test_settings_convert_at_the_flower_boundary():
    config = TrainConfig(
        dp_noise=1.1,
        dp_clip=0.5,
        dp_delta=1e-6,
        dp_epsilon_budget=20.0,
        dp_side="client",
        dropout=0.25,
        straggler_delay=2.0,
        round_timeout=1.0,
        adversarial=2,
        attack="label-flip",
    )
    assert config.dp and not TrainConfig().dp
    assert TrainConfig.from_json(config.to_json()) == config
    flat = config.to_run_config()
    assert flat["dp-noise"] == 1.1 and flat["attack"] == "label-flip" and flat["secagg"] is False
    assert TrainConfig.from_run_config(flat) == config
    as_strings = {k: str(v) for k, v in flat.items()}  # `flwr run --run-config` may give strings
    assert TrainConfig.from_run_config(as_strings) == config


def test_dp_run_records_flowers_epsilon_and_stops_at_its_budget(fed, tmp_path):
    db = str(tmp_path / "m.duckdb")
    common = {"data_dir": str(fed), "db": db}
    detail, _ = run_in_process(
        TrainConfig(
            **common,
            rounds=6,
            dp_noise=1.0,
            dp_clip=0.5,
            dp_epsilon_budget=10.0,
            dropout=0.3,
            seed=1,
        )
    )
    rounds = detail["rounds"]
    assert detail["status"] == "completed" and len(rounds) == 3
    epsilons = [r["epsilon"] for r in rounds]
    assert epsilons == pytest.approx(_flower_epsilons(1.0, 3, 1e-5, HOSPITALS), rel=1e-12)
    assert epsilons[-1] <= 10.0
    assert detail["reason"].startswith("privacy budget reached: epsilon 9.01 of 10 spent after 3")
    assert [e["kind"] for e in detail["events"]][-2:] == ["budget_reached", "completed"]
    # Dropped hospitals count as unchanged models, so every round is still released.
    assert sum(r["hospitals_failed"] for r in rounds) > 0
    assert all(r["hospitals_sampled"] == HOSPITALS for r in rounds)

    plain, _ = run_in_process(TrainConfig(**common, rounds=2))
    assert all(r["epsilon"] is None for r in plain["rounds"])
    frame = privacy.utility_frame(MetricsStore(db))
    rows = {r["run_id"]: r for r in frame.iter_rows(named=True)}
    assert rows[detail["run_id"]]["epsilon"] == pytest.approx(epsilons[-1])
    assert rows[detail["run_id"]]["auc"] == pytest.approx(detail["final"]["auc"])
    assert rows[detail["run_id"]]["dp_noise"] == 1.0 and rows[detail["run_id"]]["rounds_done"] == 3
    assert rows[plain["run_id"]]["epsilon"] is None and rows[plain["run_id"]]["dp_noise"] == 0.0


def test_client_side_dp_clips_each_hospital_inside_a_block(fed, tmp_path):
    clip = 0.05
    detail, grid = run_in_process(
        TrainConfig(
            data_dir=str(fed),
            db=str(tmp_path / "m.duckdb"),
            rounds=1,
            lr=0.5,
            block_size=3,
            dp_noise=1.0,
            dp_clip=clip,
            dp_side="client",
            adversarial=1,
            attack="scale",
        )
    )
    assert detail["status"] == "completed" and detail["rounds"][0]["epsilon"] > 0
    attacker = next(e["hospital"] for e in detail["events"] if e["kind"] == "adversary")
    sent = next(m for m in grid.sent if m.metadata.message_type == "train")
    start = sent.content["arrays"].to_numpy_ndarrays()
    norms = {}
    for index, update in trained_models(grid).items():
        norms[f"h{index:04d}"] = get_norm([u - s for u, s in zip(update, start, strict=True)])
    assert len(norms) == HOSPITALS
    honest = [n for h, n in norms.items() if h != attacker]
    assert max(honest) == pytest.approx(clip, rel=1e-4)  # lr 0.5: every update needed clipping
    # The attacker does not honour clipping: its update is the clipped one, boosted tenfold.
    assert norms[attacker] == pytest.approx(10 * clip, rel=1e-4)
    assert np.isfinite(detail["final"]["auc"])
