"""A fair comparison: every method chosen on the same validation rows by the same rule."""

from __future__ import annotations

import pytest

from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.runs.baselines import COLUMNS, compare_table, fit_with_stopping
from tests.inprocess_grid import run_in_process


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fair")
    fed = generate_federation(root / "fed", hospitals=3, patients=300, seed=1)
    config = TrainConfig(
        data_dir=str(fed.data_dir),
        db=str(root / "m.duckdb"),
        target="hypertension",  # common enough that each hospital's figures are released
        max_rounds=6,
        patience=2,
        lr=0.5,
    )
    detail, _ = run_in_process(config)
    return detail, compare_table(config, detail["run_id"])


def test_compare_says_which_round_or_epoch_each_method_kept(compared):
    detail, table = compared
    assert table.columns == list(COLUMNS)  # method, hospital, n, loss, auc, accuracy, brier, chosen
    rows = {(r["method"], r["hospital"]): r for r in table.iter_rows(named=True)}
    best = detail["best_round"]
    assert rows[("federated (fedavg)", "overall")]["chosen"] == f"round {best}"
    pooled = rows[("pooled (reference)", "overall")]["chosen"]
    assert pooled.startswith("epoch ") and int(pooled.split()[1]) >= 1
    released = [
        r
        for r in table.iter_rows(named=True)
        if r["hospital"] != "overall" and r["auc"] is not None
    ]
    assert len(released) >= 6  # federated and local rows of at least two hospitals
    for row in released:
        unit = "round" if row["method"].startswith("federated") else "epoch"
        assert row["chosen"].startswith(unit), row
        # The per-hospital Brier score a federated run used to leave empty is there now.
        assert row["brier"] is not None and 0 <= row["brier"] <= 1, row


def test_the_federated_figures_are_those_of_the_kept_round(compared):
    detail, table = compared
    kept = detail["rounds"][detail["best_round"] - 1]
    overall = table.filter(
        (table["method"] == "federated (fedavg)") & (table["hospital"] == "overall")
    ).row(0, named=True)
    assert overall["auc"] == pytest.approx(kept["auc"])


def test_a_fixed_number_of_rounds_trains_baselines_as_long_as_before(tmp_path):
    fed = generate_federation(tmp_path / "fed", hospitals=2, patients=60, seed=0)
    from healthsync.ml.features import Scaler, ScalingStats
    from healthsync.ml.training import hospital_arrays

    arrays = hospital_arrays(fed, fed.hospitals[0].id, "diabetes")
    scaler = Scaler.from_stats(ScalingStats.of(arrays.x_train))
    data = arrays.scaled(scaler, validation_share=0.2, seed=0)
    fixed = TrainConfig(data_dir=str(fed.data_dir), rounds=4, local_epochs=3)
    _, epochs = fit_with_stopping(fixed, data.x_train.shape[1], data, seed=0)
    assert epochs == 12  # rounds x local epochs, the last kept, as a fixed run keeps its last
