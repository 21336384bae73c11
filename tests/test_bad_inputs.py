"""Every bad input is stopped at the door: a one-line error naming it, exit 2, nothing left behind.

One table of command lines, each with the words its error must contain. Each
runs in this process against a small federation; nothing may start (a process
spawn or a hand-over to the warm engine fails the test), and the folder holding
the data, the store and the credentials must look the same afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from healthsync import auth
from healthsync.cli import main
from healthsync.data.accessor import partition_path
from healthsync.data.synthetic import generate_federation
from healthsync.runs.store import MetricsStore

PASSWORD = "a-long-password"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    generate_federation(root / "fed", hospitals=3, patients=60, seed=0)
    for name in ("truncated", "missing", "short", "schema"):
        shutil.copytree(root / "fed", root / name)
    truncated = partition_path(root / "truncated", "h0001")
    truncated.write_bytes(truncated.read_bytes()[:2000])
    shutil.rmtree(partition_path(root / "missing", "h0002").parent)
    short = partition_path(root / "short", "h0000")
    pl.read_parquet(short).head(5).write_parquet(short)
    schema = partition_path(root / "schema", "h0000")
    pl.read_parquet(schema).drop("age").write_parquet(schema)
    (root / "nomanifest").mkdir()
    (root / "notduck.duckdb").write_text("not a database\n")
    (root / "patients.csv").write_text("age,sex\n50,F\n")
    MetricsStore(root / "m.duckdb").check()
    users = auth.UserStore(root / "home", rounds=4)
    users.ensure()
    users.add("alice", "analyst", PASSWORD)
    users.add("val", "viewer", PASSWORD)
    return root


TRAIN = "train --data {root}/fed --db {root}/m.duckdb"
TUNE = "tune --data {root}/fed --db {root}/m.duckdb"
COHORT = "cohort --data {root}/fed --db {root}/m.duckdb --user alice --home {root}/home"
#: (command line, words the error must contain)
BAD = [
    # settings: ranges, finiteness, consistency (one validation layer, before anything starts)
    (f"{TRAIN} --seed 99999999999999999999999", "seed must be between 0 and 4294967295"),
    (f"{TRAIN} --seed -1", "seed must be >= 0"),
    (f"{TRAIN} --lr inf", "learning rate must be a finite number"),
    (f"{TRAIN} --lr nan", "learning rate must be > 0"),
    (f"{TRAIN} --lr 0", "learning rate must be > 0"),
    (f"{TRAIN} --lr 11", "learning rate must be between 0 and 10"),
    (f"{TRAIN} --lr abc", "invalid float value: 'abc'"),
    (f"{TRAIN} --rounds 1000000000", "rounds must be between 1 and 10000"),
    (f"{TRAIN} --rounds 0", "rounds must be"),
    (f"{TRAIN} --strategy krum --krum-f 100", "krum f 100 is too large for 3 hospital(s)"),
    (f"{TRAIN} --strategy krum --krum-f 1", "f must be at most 0"),
    (f"{TRAIN} --krum-f -1", "krum f must be >= 0"),
    (f"{TRAIN} --strategy nope", "unknown strategy 'nope'"),
    (f"{TRAIN} --model cnn", "unknown model 'cnn'"),
    (f"{TRAIN} --fraction 0", "fraction must be in (0, 1]"),
    (f"{TRAIN} --fraction 1.5", "fraction must be in (0, 1]"),
    (f"{TRAIN} --fraction 0.1", "samples no hospital"),
    (f"{TRAIN} --local-epochs 0", "local epochs must be >= 1"),
    (f"{TRAIN} --local-epochs 5000", "local epochs must be between 1 and 1000"),
    (f"{TRAIN} --batch-size 0", "batch size must be >= 1"),
    (f"{TRAIN} --batch-size 10000000", "batch size must be between 1 and 1000000"),
    (f"{TRAIN} --proximal-mu -1", "proximal mu must be >= 0"),
    (f"{TRAIN} --proximal-mu inf", "proximal mu must be a finite number"),
    (f"{TRAIN} --server-lr 0", "server learning rate must be > 0"),
    (f"{TRAIN} --server-lr inf", "server learning rate must be a finite number"),
    (f"{TRAIN} --trim-beta 0.5", "trim beta must be in [0, 0.5)"),
    (f"{TRAIN} --trim-beta -0.1", "trim beta must be in [0, 0.5)"),
    (f"{TRAIN} --min-hospitals 0", "min hospitals must be >= 1"),
    (f"{TRAIN} --min-hospitals 99", "99 hospitals required but the data has only 3"),
    (f"{TRAIN} --fail-hospital nope", "unknown hospital id(s) in fail_hospitals: nope"),
    (f"{TRAIN} --block-size -1", "block size must be >= 0"),
    (f"{TRAIN} --dp-noise 1", "needs a clipping norm"),
    (f"{TRAIN} --dp-clip 1", "needs a noise multiplier"),
    (f"{TRAIN} --dp-noise -1", "dp noise must be >= 0"),
    (f"{TRAIN} --dp-noise inf --dp-clip 1", "dp noise must be a finite number"),
    (f"{TRAIN} --dp-delta 0", "dp delta must be in (0, 1)"),
    (f"{TRAIN} --dp-delta 1", "dp delta must be in (0, 1)"),
    (f"{TRAIN} --dp-side middle", "unknown dp side 'middle'"),
    (f"{TRAIN} --dp-epsilon-budget 5", "an epsilon budget needs differential privacy"),
    (f"{TRAIN} --secagg --strategy krum", "secure aggregation"),
    (f"{TRAIN} --secagg --dp-noise 1 --dp-clip 1", "cannot be combined with differential"),
    (f"{TRAIN} --dropout 1", "dropout must be in [0, 1)"),
    (f"{TRAIN} --dropout -0.1", "dropout must be in [0, 1)"),
    (f"{TRAIN} --straggler-delay -1", "straggler delay must be >= 0"),
    (f"{TRAIN} --straggler-delay 1e9", "straggler delay must be between 0 and 3600"),
    (f"{TRAIN} --round-timeout -1", "round timeout must be >= 0"),
    (f"{TRAIN} --adversarial 1", "need an attack"),
    (f"{TRAIN} --attack scale", "needs adversarial hospitals"),
    (f"{TRAIN} --attack nuke --adversarial 1", "unknown attack 'nuke'"),
    (f"{TRAIN} --target nope", "target 'nope' is not in"),
    (f"{TRAIN} --ray-address nohost", "is not HOST:PORT"),
    # data: pre-flight checks name the broken hospital before anything starts
    ("train --data {root}/missing-dir --db {root}/m.duckdb", "missing-dir"),
    ("train --data {root}/nomanifest --db {root}/m.duckdb", "nomanifest"),
    ("train --data {root}/truncated --db {root}/m.duckdb", "(h0001): partition file"),
    ("train --data {root}/missing --db {root}/m.duckdb", "(h0002): partition file"),
    ("train --data {root}/short --db {root}/m.duckdb", "has 5 rows, the manifest says"),
    ("train --data {root}/schema --db {root}/m.duckdb", "lacks columns age"),
    # stores: read-only commands never create one; a wrong file is named
    ("runs list --db {root}/missing.duckdb", "no metrics store at"),
    ("runs show run-x --db {root}/missing.duckdb", "no metrics store at"),
    ("runs cancel run-x --db {root}/missing.duckdb", "no metrics store at"),
    ("runs list --db {root}/notduck.duckdb", "cannot open metrics store"),
    ("runs show run-nope --db {root}/m.duckdb", "no run 'run-nope'"),
    (
        "predict --run run-x --db {root}/missing.duckdb --input {root}/patients.csv",
        "no metrics store at",
    ),
    # cohort queries
    (COHORT, "alice's password is needed"),
    (
        "cohort --data {root}/fed --db {root}/notduck.duckdb --user alice --home {root}/home",
        "cannot open metrics store",
    ),
    (
        "cohort --data {root}/truncated --db {root}/m.duckdb --user alice --home {root}/home",
        "(h0001): partition file",
    ),
    (
        "cohort --data {root}/fed --db {root}/m.duckdb --user val --home {root}/home",
        "val",
    ),
    (f"{COHORT} --where 'age >>> 3'", "age >>> 3"),
    (f"{COHORT} --where 'shoe_size > 3'", "shoe_size"),
    (f"{COHORT} --stat median:nope", "median:nope"),
    # data sets and users
    ("data generate --out {root}/x --hospitals 0", "hospitals must be between 1 and 100000"),
    ("data generate --out {root}/x --patients -5", "patients (the mean per hospital) must be"),
    ("data generate --out {root}/fed", "already holds a federation"),
    ("data generate --out {root}/x --seed -1", "seed must be zero or positive"),
    ("data import --out {root}/y --target y a={root}/nope.csv", "nope.csv: no such file"),
    ("data import --out {root}/y --target y noequals", "expected NAME=FILE"),
    ("data import --out {root}/y --target y !!!={root}/patients.csv", "needs at least one letter"),
    ("data publish --data {root}/nope", "no such federation directory"),
    ("users add bob --role king --home {root}/home", "unknown role 'king'"),
    ("users add bob --role king --home {root}/fresh-home", "unknown role 'king'"),
    ("users remove nobody --home {root}/home", "unknown user 'nobody'"),
    # tuning: the budget bounded (each trial is a real run), the data there, a score to choose by
    (f"{TUNE} --budget 0", "budget must be between 1 and 100 trials, got 0"),
    (f"{TUNE} --budget -2", "budget must be between 1 and 100 trials, got -2"),
    (f"{TUNE} --budget 1000000", "budget must be between 1 and 100 trials, got 1000000"),
    (f"{TUNE} --budget two", "invalid int value: 'two'"),
    ("tune --data {root}/nowhere --db {root}/m.duckdb", "no such federation directory"),
    (f"{TUNE} --validation-share 0", "validation share must be > 0"),
    (f"{TUNE} --min-rounds 0", "min rounds must be >= 1"),
    (f"{TUNE} --target nope", "target 'nope' is not in"),
]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def nothing_starts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bad input started a process")

    monkeypatch.setattr("healthsync.runs.lifecycle.spawn_detached", refuse)
    monkeypatch.setattr("healthsync.runs.engine.submit", refuse)
    monkeypatch.setattr("healthsync.cohort.explorer.FlowerExecutor", refuse)


def test_the_table_covers_at_least_sixty_bad_inputs():
    assert len(BAD) >= 60
    assert len({line for line, _ in BAD}) == len(BAD)


@pytest.mark.parametrize(("line", "words"), BAD, ids=[line for line, _ in BAD])
def test_a_bad_input_gets_one_line_naming_it_and_leaves_nothing(
    line, words, world, capsys, monkeypatch, nothing_starts
):
    import shlex

    monkeypatch.delenv("HEALTHSYNC_PASSWORD", raising=False)
    if "--user" in line and "password" not in words:
        monkeypatch.setenv("HEALTHSYNC_PASSWORD", PASSWORD)
    before = _listing(world)
    try:
        code = main(shlex.split(line.format(root=world)))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err, "no error message"
    assert "error:" in err[-1] and words in err[-1], err
    if not err[0].startswith("usage:"):
        assert len(err) == 1, err  # ours: exactly one line
    assert _listing(world) == before
