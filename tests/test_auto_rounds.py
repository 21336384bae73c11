"""``--rounds auto`` end to end: Flower on Ray, stopped by the federated validation loss.

One real run (about 30-70 s on a busy 2-core machine, mostly Ray's start): three
small hospitals and much local work per round, so the validation loss turns
after round 3 and patience 2 stops the run at round 5 of at most 8.
"""

import pytest

from tests.engine_helpers import cli_json, make_federation

pytestmark = pytest.mark.slow


def test_auto_rounds_keep_the_best_round_and_runs_show_says_which(tmp_path, capsys):
    fed = make_federation(tmp_path, "fed", hospitals=3, patients=80, heterogeneity=0.9)
    db = str(tmp_path / "m.duckdb")
    code, summary = cli_json(
        capsys,
        *("train", "--data", str(fed), "--db", db, "--rounds", "auto"),
        *("--patience", "2", "--max-rounds", "8", "--lr", "1.0", "--local-epochs", "10", "--json"),
    )
    assert code == 0 and summary["status"] == "completed"
    code, detail = cli_json(capsys, "runs", "show", summary["run_id"], "--db", db, "--json")
    rounds = detail["rounds"]
    assert detail["config"]["rounds"] == "auto" and detail["config"]["validation_share"] == 0.2
    losses = [r["val_loss"] for r in rounds]
    assert all(loss is not None and loss > 0 for loss in losses)
    best = detail["best_round"]
    assert best == 1 + losses.index(min(losses))  # the lowest federated validation loss
    # It stopped after `patience` rounds without a better loss, well before the maximum.
    assert best > 1 and len(rounds) == best + 2 < 8
    assert summary["reason"].startswith("validation loss has not improved for 2 rounds")
    # The run's final figures (and its saved model) are the best round's, not the last's.
    kept = rounds[best - 1]
    assert detail["final"] == {k: kept[k] for k in ("loss", "auc", "accuracy", "brier")}
