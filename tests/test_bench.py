"""The stress-test sweep: configuration, measurements kept in the store, ratios and charts."""

import subprocess
import sys

import polars as pl
import pytest

from healthsync.bench import proctree, sweep
from healthsync.cli import main
from healthsync.errors import HealthSyncError
from healthsync.runs.store import MetricsStore
from healthsync.views import bench_charts


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hospitals": (1, 10)}, "at least 2"),
        ({"ways": ("flower", "warp")}, "unknown way or model: warp"),
        ({"models": ("cnn",)}, "unknown way or model: cnn"),
        ({"rounds": 1}, "at least 2 rounds"),
    ],
)
def test_bad_sweeps_are_refused(changes, message):
    with pytest.raises(HealthSyncError, match=message):
        sweep.SweepConfig(**changes)


def test_vectorised_sweep_is_measured_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HEALTHSYNC_ENGINE", "off")
    config = sweep.SweepConfig(
        hospitals=(5, 20),
        models=("logreg",),
        ways=("warm", "vectorised", "flower"),
        rounds=2,
        patients=60,
        work_dir=str(tmp_path / "bench"),
        db=str(tmp_path / "m.duckdb"),
        max_flower_hospitals=1,
    )
    table = sweep.run_sweep(config)
    ok = table.filter(pl.col("status") == "ok")
    assert ok["way"].to_list() == ["vectorised", "vectorised"]
    assert (ok["seconds_per_round"] > 0).all() and (ok["peak_memory_mib"] > 10).all()
    assert ok.filter(pl.col("hospitals") == 20)["updates_per_second"].item() > 0
    skipped = table.filter(pl.col("status") == "skipped")
    assert skipped["way"].to_list() == ["flower", "flower", "warm", "warm"]  # warm ones last
    assert "skipped above 1 hospitals" in skipped["note"][0]
    assert "HEALTHSYNC_ENGINE=off" in skipped["note"][-1]
    assert not (tmp_path / "engine").exists()  # no engine was started
    stored = sweep.sweeps(MetricsStore(config.db))
    assert stored.height == 6 and stored["sweep_id"].n_unique() == 1
    chart = bench_charts.sweep_chart(stored, "seconds_per_round").to_dict()
    assert chart["encoding"]["x"]["title"] == "Hospitals (count, log scale)"


def test_ratios_pair_up_the_ways():
    table = pl.DataFrame(
        {
            "way": ["flower", "healthsync", "vectorised"],
            "model": ["logreg"] * 3,
            "hospitals": [100] * 3,
            "seconds_per_round": [10.0, 0.5, 0.25],
            "status": ["ok"] * 3,
        }
    )
    row = sweep.ratios(table).row(0, named=True)
    assert row["healthsync/vectorised"] == pytest.approx(2.0)
    assert row["flower/healthsync"] == pytest.approx(20.0)


@pytest.mark.slow
@pytest.mark.extended
def test_cli_sweep_through_flower(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--hospitals",
            "6",
            "--models",
            "logreg",
            "--ways",
            "healthsync",
            "vectorised",
            "--rounds",
            "2",
            "--patients",
            "60",
            "--work-dir",
            str(tmp_path / "b"),
            "--db",
            str(tmp_path / "m.duckdb"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "healthsync/vectorised" in out
    assert "load average (1, 5, 15 min): before " in out
    stored = sweep.sweeps(MetricsStore(tmp_path / "m.duckdb"))
    assert sorted(stored.filter(pl.col("status") == "ok")["way"].to_list()) == [
        "healthsync",
        "vectorised",
    ]


@pytest.mark.parametrize("settle", [True, False])
def test_a_measurement_waits_for_the_runs_leftover_processes(settle):
    # The run's process exits first; a child (like Ray's actors) outlives it.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3)']); "
            "print(child.pid, flush=True); time.sleep(0.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    peak = sweep._watch(parent.pid, lambda: parent.poll() is not None, 60, settle=settle)
    assert peak > 0
    assert bool(proctree.alive({child})) is not settle
