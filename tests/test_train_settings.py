"""Bad training settings are refused with one clear line before anything starts."""

import pytest

from healthsync.cli import main
from healthsync.runs.store import MetricsStore
from tests.engine_helpers import make_federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return make_federation(tmp_path_factory.mktemp("settings"), "fed", hospitals=3, patients=60)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "fedfoo"], "unknown strategy 'fedfoo'"),
        (["--rounds", "0"], "rounds must be >= 1"),
        (["--fraction", "0"], "fraction must be in (0, 1]"),
        (["--fraction", "1.2"], "fraction must be in (0, 1]"),
        (["--min-hospitals", "4"], "4 hospitals required but the data has only 3"),
        (["--target", "cancer"], "target 'cancer' is not in"),
        (["--fraction", "0.1"], "samples no hospital"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        # privacy and robustness (docs/privacy.md)
        (["--dp-noise", "1.0"], "dp noise 1 needs a clipping norm (dp clip > 0)"),
        (["--dp-clip", "1.0"], "dp clip 1 needs a noise multiplier (dp noise > 0)"),
        (["--dp-noise", "-1"], "dp noise must be >= 0"),
        (["--dp-noise", "1", "--dp-clip", "1", "--dp-delta", "1"], "dp delta must be in (0, 1)"),
        (["--dp-epsilon-budget", "5"], "an epsilon budget needs differential privacy"),
        (
            ["--dp-noise", "1", "--dp-clip", "1", "--dp-epsilon-budget", "1"],
            "epsilon budget 1 is below the cost of one round (4.73",
        ),
        (["--dp-noise", "1", "--dp-clip", "1", "--dp-side", "both"], "unknown dp side 'both'"),
        (
            ["--dp-noise", "1", "--dp-clip", "1", "--strategy", "krum"],
            "differential privacy works with strategy fedavg or fedprox only",
        ),
        (
            ["--secagg", "--strategy", "fedmedian"],
            "secure aggregation shows the server only the sum of updates, so it works with "
            "strategy fedavg or fedprox only, not fedmedian",
        ),
        (
            ["--secagg", "--dp-noise", "1", "--dp-clip", "1"],
            "secure aggregation cannot be combined with differential privacy yet",
        ),
        (
            ["--secagg", "--block-size", "2"],
            "secure aggregation needs one Flower node per hospital",
        ),
        (
            ["--secagg", "--fraction", "0.7"],
            "secure aggregation needs at least 3 hospitals sampled per round, got 2",
        ),
        (["--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
        (["--ray-address", "nonsense"], "Ray address 'nonsense' is not HOST:PORT"),
        (["--dropout", "1"], "dropout must be in [0, 1)"),
        (["--dropout", "-0.1"], "dropout must be in [0, 1)"),
        (["--straggler-delay", "-1"], "straggler delay must be >= 0 seconds"),
        (["--round-timeout", "-1"], "round timeout must be >= 0 seconds"),
        (["--attack", "scale"], "attack 'scale' needs adversarial hospitals"),
        (["--adversarial", "1"], "1 adversarial hospital(s) need an attack"),
        (["--adversarial", "1", "--attack", "bribe"], "unknown attack 'bribe'"),
        (
            ["--adversarial", "3", "--attack", "scale"],
            "3 adversarial hospital(s) but the data has only 3",
        ),
    ],
)
def test_bad_setting(fed, tmp_path, capsys, extra, message):
    db = tmp_path / "m.duckdb"
    code = main(["train", "--data", str(fed), "--db", str(db), "--rounds", "2", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    if db.exists():  # nothing was started or recorded
        assert MetricsStore(db).scalar("SELECT count(*) FROM runs") == 0


def test_missing_data_directory(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--db", str(tmp_path / "m.duckdb")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "nowhere" in err
