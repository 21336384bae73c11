"""Attackers, dropouts and stragglers: seeded decisions, per-hospital effects, recorded rounds.

Runs here use the in-process grid (no Ray); ``test_attacks_e2e`` has the real ones.
"""

import logging

import numpy as np
import pytest

from healthsync.config import ATTACKS, TrainConfig
from healthsync.ml import attacks
from tests.engine_helpers import make_federation
from tests.inprocess_grid import run_in_process, trained_models

logging.getLogger("flwr").setLevel(logging.WARNING)
IDS = [f"h{i:04d}" for i in range(8)]


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return make_federation(tmp_path_factory.mktemp("attacks"), "fed", hospitals=8, patients=80)


def test_adversaries_follow_the_seed():
    chosen = attacks.choose_adversaries(IDS, 3, seed=5)
    assert chosen == attacks.choose_adversaries(IDS, 3, seed=5)
    assert len(set(chosen)) == 3 and set(chosen) <= set(IDS) and list(chosen) == sorted(chosen)
    assert len({attacks.choose_adversaries(IDS, 3, seed=s) for s in range(10)}) > 1
    assert attacks.choose_adversaries(IDS, 0, seed=5) == ()
    with pytest.raises(ValueError, match="8 adversarial hospital"):
        attacks.choose_adversaries(IDS, 8, seed=5)


def test_poisoned_updates():
    start = [np.ones((2, 3), np.float32), np.zeros(3, np.float32)]
    update = [s + 0.1 for s in start]
    scaled = attacks.poison("scale", update, start, seed=0)
    for s, u, p in zip(start, update, scaled, strict=True):
        np.testing.assert_allclose(p - s, attacks.SCALE_FACTOR * (u - s), rtol=1e-5)
        assert p.dtype == np.float32
    noisy = attacks.poison("random", update, start, seed=3)
    assert np.std(np.concatenate([(p - s).ravel() for p, s in zip(noisy, start, strict=True)])) > 1
    np.testing.assert_array_equal(noisy[0], attacks.poison("random", update, start, seed=3)[0])
    assert attacks.poison("label-flip", update, start, seed=0) is update
    np.testing.assert_array_equal(attacks.flip_labels(np.array([0.0, 1.0, 1.0])), [1.0, 0.0, 0.0])


def test_absences_follow_seed_round_and_hospital():
    def absent(round, hospital, **kw):
        return attacks.absence(
            0, round, hospital, **{"dropout": 0, "max_delay": 0, "timeout": 0, **kw}
        )

    draws = [absent(r, h, dropout=0.3) for r in range(1, 51) for h in range(40)]
    assert 0.25 < sum(d is not None for d in draws) / len(draws) < 0.35
    assert draws == [absent(r, h, dropout=0.3) for r in range(1, 51) for h in range(40)]
    late = [absent(r, h, max_delay=1.0, timeout=0.25) for r in range(1, 51) for h in range(40)]
    assert 0.7 < sum(d is not None for d in late) / len(late) < 0.8
    assert all("round timeout" in d for d in late if d)
    assert all(absent(r, h, max_delay=1.0) is None for r in range(1, 5) for h in range(8))


@pytest.mark.parametrize("attack", ATTACKS)
def test_block_execution_attacks_each_hospital_like_one_client_per_hospital(fed, tmp_path, attack):
    updates = []
    for block in (1, 4):
        config = TrainConfig(
            data_dir=str(fed),
            db=str(tmp_path / "m.duckdb"),
            rounds=1,
            block_size=block,
            adversarial=3,
            attack=attack,
        )
        detail, grid = run_in_process(config)
        assert detail["status"] == "completed"
        updates.append(trained_models(grid))
    one, blocked = updates
    assert sorted(one) == sorted(blocked) == list(range(8))
    for key in one:
        for ours, theirs in zip(blocked[key], one[key], strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_dropouts_and_stragglers_are_recorded_and_the_run_goes_on(fed, tmp_path):
    drill = {"dropout": 0.25, "straggler_delay": 0.2, "round_timeout": 0.1}
    detail, _ = run_in_process(
        TrainConfig(
            data_dir=str(fed),
            db=str(tmp_path / "m.duckdb"),
            rounds=3,
            local_epochs=1,  # the work the time bound below was set for (not chosen by size)
            block_size=4,
            fail_hospitals=("h0001",),
            **drill,
        )
    )
    assert detail["status"] == "completed" and len(detail["rounds"]) == 3
    for r in detail["rounds"]:
        events = [e for e in detail["events"] if e["round"] == r["round"]]
        absent = {
            IDS[i]
            for i in range(8)
            if attacks.absence(0, r["round"], i, dropout=0.25, max_delay=0.2, timeout=0.1)
        }
        assert {e["hospital"] for e in events if e["kind"] == "hospital_dropped"} == absent
        failed = {
            e["hospital"]
            for e in events
            if e["kind"] == "hospital_failed" and not e["message"].startswith("evaluate")
        }
        assert failed == ({"h0001"} - absent)  # a real failure is not mistaken for a dropout
        assert r["hospitals_failed"] == len(absent | failed) and r["hospitals_ok"] == 8 - len(
            absent | failed
        )
        assert r["seconds"] < 2.0  # blocks never sleep past the round timeout
    assert any(e["kind"] == "hospital_dropped" for e in detail["events"])
