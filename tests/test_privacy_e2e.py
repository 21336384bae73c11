"""A differentially private run end to end: epsilon per round, budget stop, dropouts, stragglers.

One real run (Flower on Ray, block execution) combines the checks, since each
run costs 15-30 s of start-up.
"""

import pytest
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from healthsync.ml import attacks
from tests.engine_helpers import cli_json, make_federation

pytestmark = [pytest.mark.slow, pytest.mark.extended]

HOSPITALS, NOISE, DELTA, BUDGET = 6, 1.0, 1e-5, 10.0


def test_dp_run_records_epsilon_stops_at_budget_and_survives_dropouts(tmp_path, capsys):
    fed = make_federation(tmp_path, "fed", hospitals=HOSPITALS, patients=100)
    db = str(tmp_path / "m.duckdb")
    code, summary = cli_json(
        capsys,
        *("train", "--data", str(fed), "--db", db, "--rounds", "10", "--block-size", "3"),
        *("--dp-noise", str(NOISE), "--dp-clip", "0.5", "--dp-delta", str(DELTA)),
        *("--dp-epsilon-budget", str(BUDGET)),
        *("--dropout", "0.2", "--straggler-delay", "0.3", "--round-timeout", "0.15", "--json"),
    )
    assert code == 0 and summary["status"] == "completed"
    assert "privacy budget reached" in summary["reason"]
    code, detail = cli_json(capsys, "runs", "show", summary["run_id"], "--db", db, "--json")
    rounds = detail["rounds"]
    assert detail["config"]["dp_noise"] == NOISE and detail["config"]["dp_epsilon_budget"] == BUDGET

    # Our epsilon per round is Flower's accountant's figure for the same parameters.
    accountant = RdpAccountant(
        PrivacyConfig(
            DELTA,
            HOSPITALS,
            NeighboringRelation.ADD_OR_REMOVE_ONE,
            SamplingMethod.NO_AMPLIFICATION,
        )
    )
    for r in rounds:
        accountant.compose(GaussianPrivacyEvent(NOISE, HOSPITALS, HOSPITALS))
        assert r["epsilon"] == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)

    # The budget stops the run before the round that would exceed it.
    assert len(rounds) == 3 < 10 and rounds[-1]["epsilon"] <= BUDGET
    accountant.compose(GaussianPrivacyEvent(NOISE, HOSPITALS, HOSPITALS))
    assert accountant.get_epsilon(DELTA) > BUDGET
    kinds = [e["kind"] for e in detail["events"]]
    assert "privacy" in kinds and kinds[-2:] == ["budget_reached", "completed"]

    # Dropped and late hospitals are the seeded ones, named in events, counted per round.
    ids = [f"h{i:04d}" for i in range(HOSPITALS)]
    for r in rounds:
        expected = {
            ids[i]
            for i in range(HOSPITALS)
            if attacks.absence(0, r["round"], i, dropout=0.2, max_delay=0.3, timeout=0.15)
        }
        dropped = {
            e["hospital"]
            for e in detail["events"]
            if e["kind"] == "hospital_dropped" and e["round"] == r["round"]
        }
        assert dropped == expected and expected
        assert r["hospitals_failed"] == len(expected)
        assert r["hospitals_ok"] == HOSPITALS - len(expected)
    assert any("round timeout" in e["message"] for e in detail["events"])
    assert any("dropped out" in e["message"] for e in detail["events"])


def test_secure_aggregation_run_on_ray_recovers_a_dropped_hospital(tmp_path, capsys):
    """SecAgg+ through Flower on Ray: node state (keys) survives between the protocol's stages."""
    fed = make_federation(tmp_path, "fed", hospitals=5, patients=100)
    db = str(tmp_path / "m.duckdb")
    code, summary = cli_json(
        capsys,
        *("train", "--data", str(fed), "--db", db, "--rounds", "2", "--secagg"),
        *("--fail-hospital", "h0003", "--json"),
    )
    assert code == 0 and summary["status"] == "completed" and summary["rounds_done"] == 2
    code, detail = cli_json(capsys, "runs", "show", summary["run_id"], "--db", db, "--json")
    assert detail["config"]["secagg"] is True
    assert [(r["hospitals_sampled"], r["hospitals_ok"]) for r in detail["rounds"]] == [(5, 4)] * 2
    failed = [
        (e["round"], e["hospital"], e["message"].startswith("evaluate"))
        for e in detail["events"]
        if e["kind"] == "hospital_failed"
    ]
    # In training its masks are recovered from the others' shares; it fails evaluation too.
    assert sorted(failed) == [(r, "h0003", ev) for r in (1, 2) for ev in (False, True)]
    assert any(e["message"].startswith("secure aggregation (SecAgg+)") for e in detail["events"])
