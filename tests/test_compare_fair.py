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


def test_personalised_models_are_a_fourth_method_with_their_chosen_epochs(compared):
    _, table = compared
    personalised = table.filter(table["method"] == "personalised (fine-tuned)")
    assert personalised.height == 4  # overall and three hospitals
    shown = personalised.filter(personalised["hospital"] != "overall")["chosen"].drop_nulls()
    assert len(shown) >= 2 and all(c.startswith("epoch ") for c in shown)


def test_fine_tuning_keeps_the_global_model_unless_an_epoch_validates_better(tmp_path):
    from healthsync.ml.features import Scaler, ScalingStats
    from healthsync.ml.metrics import binary_metrics
    from healthsync.ml.model import get_arrays, initial_model, predict_proba, set_arrays
    from healthsync.ml.training import hospital_arrays

    fed = generate_federation(tmp_path / "fed", hospitals=2, patients=200, seed=4)
    arrays = hospital_arrays(fed, fed.hospitals[0].id, "hypertension")
    data = arrays.scaled(
        Scaler.from_stats(ScalingStats.of(arrays.x_train)), validation_share=0.2, seed=0
    )
    width = data.x_train.shape[1]
    config = TrainConfig(data_dir=str(fed.data_dir), patience=2, max_rounds=5, lr=0.2)
    trained, _ = fit_with_stopping(config, width, data, seed=0)  # a "global" model to start from
    start = get_arrays(trained)

    def val_loss(model):
        return binary_metrics(data.y_val, predict_proba(model, data.x_val)).loss

    tuned, epochs = fit_with_stopping(config, width, data, seed=1, start=start)
    global_model = initial_model("logreg", width, 0)
    set_arrays(global_model, start)
    assert val_loss(tuned) <= val_loss(global_model)
    if epochs == 0:  # nothing improved on it: the global model itself is kept
        assert all((a == b).all() for a, b in zip(get_arrays(tuned), start, strict=True))
    no_validation = arrays.scaled(Scaler.from_stats(ScalingStats.of(arrays.x_train)))
    kept, epochs = fit_with_stopping(config, width, no_validation, seed=1, start=start)
    assert epochs == 0 and all((a == b).all() for a, b in zip(get_arrays(kept), start, strict=True))
