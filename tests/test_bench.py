"""The stress-test sweep: configuration, measurements kept in the store, ratios and charts."""

import json
import math
import os
import subprocess
import sys

import polars as pl
import pytest
import torch

from healthsync.bench import BENCH_WORK, proctree, roofline, sweep, vectorised
from healthsync.cli import main
from healthsync.config import TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.ml.model import MLP_HIDDEN
from healthsync.ml.training import hospital_arrays
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


def test_one_process_ways_are_measured_and_kept(tmp_path, monkeypatch):
    # One such process (vectorised runs the same way; its loop is run in-process below).
    monkeypatch.setenv("HEALTHSYNC_ENGINE", "off")
    config = sweep.SweepConfig(
        hospitals=(20,),
        models=("logreg",),
        ways=("warm", "roofline", "flower"),
        rounds=2,
        patients=60,
        work_dir=str(tmp_path / "bench"),
        db=str(tmp_path / "m.duckdb"),
        max_flower_hospitals=1,
    )
    table = sweep.run_sweep(config)
    ok = table.filter(pl.col("status") == "ok")
    assert ok["way"].to_list() == ["roofline"]
    assert (ok["seconds_per_round"] > 0).all() and (ok["peak_memory_mib"] > 10).all()
    assert (ok["updates_per_second"] > 0).all()
    assert ok["note"][0].endswith("/s") and "multiply-adds a round" in ok["note"][0]
    skipped = table.filter(pl.col("status") == "skipped")
    assert skipped["way"].to_list() == ["flower", "warm"]  # warm ones last
    assert "skipped above 1 hospitals" in skipped["note"][0]
    assert "HEALTHSYNC_ENGINE=off" in skipped["note"][-1]
    assert not (tmp_path / "engine").exists()  # no engine was started
    stored = sweep.sweeps(MetricsStore(config.db))
    assert stored.height == 3 and stored["sweep_id"].n_unique() == 1
    assert sorted(stored["way"]) == ["flower", "roofline", "warm"]
    chart = bench_charts.sweep_chart(stored, "seconds_per_round").to_dict()
    assert chart["encoding"]["x"]["title"] == "Hospitals (count, log scale)"


def _count_products(monkeypatch) -> list[int]:
    """Count the multiply-adds of every matrix product torch is asked for, from its shapes."""
    counted = [0]

    def counting(product, rows, inner, outer):
        def wrapper(*args, **kwargs):
            counted[0] += rows(*args) * inner(*args) * outer(*args)
            return product(*args, **kwargs)

        return wrapper

    def rows(a, b):
        return math.prod(a.shape[:-1])  # (hospitals x) rows

    for name in ("mm", "bmm"):  # (..., n, k) @ (..., k, m)
        monkeypatch.setattr(
            torch,
            name,
            counting(
                getattr(torch, name), rows, lambda a, b: a.shape[-1], lambda a, b: b.shape[-1]
            ),
        )
    for name in ("addmm", "baddbmm"):  # c + a @ b
        monkeypatch.setattr(
            torch,
            name,
            counting(
                getattr(torch, name),
                lambda c, a, b: rows(a, b),
                lambda c, a, b: a.shape[-1],
                lambda c, a, b: b.shape[-1],
            ),
        )
    monkeypatch.setattr(  # a Linear layer's x @ w.T (the evaluation's forward pass)
        torch.nn.functional,
        "linear",
        counting(
            torch.nn.functional.linear,
            lambda x, w, b=None: rows(x, w),
            lambda x, w, b=None: w.shape[1],
            lambda x, w, b=None: w.shape[0],
        ),
    )
    return counted


@pytest.mark.parametrize("batch_size", [1, 32])
def test_the_roofline_does_the_multiply_adds_of_a_vectorised_round(
    data_federation, monkeypatch, batch_size
):
    config = TrainConfig(
        data_dir=str(data_federation.data_dir), rounds=1, model="mlp", batch_size=batch_size
    ).replace(**BENCH_WORK)
    arrays = [hospital_arrays(data_federation, h.id, "diabetes") for h in data_federation.hospitals]
    train = [len(a.y_train) for a in arrays]
    test = sum(len(a.y_test) for a in arrays)
    width = arrays[0].x_train.shape[1]
    forward = width * MLP_HIDDEN + MLP_HIDDEN  # per row: two layers, width -> 32 -> 1
    per_train_row = (
        forward + forward + MLP_HIDDEN
    )  # + weight gradients + the hidden layer's input's
    padded = sum(-(-n // batch_size) * batch_size for n in train)  # a short last batch's full size

    counted = _count_products(monkeypatch)
    vectorised.run(config, emit=lambda line: None)
    assert counted[0] == padded * per_train_row + test * forward  # the loop, padding included
    counted[0] = 0
    lines = []
    roofline.run(config, emit=lines.append)
    expected = sum(train) * per_train_row + test * forward  # every real row, nothing else
    assert counted[0] == expected
    assert json.loads(lines[-1])["multiply_adds"] == expected
    assert roofline.multiply_adds([(width, MLP_HIDDEN), (MLP_HIDDEN, 1)], sum(train), test, 1) == (
        expected
    )
    assert (padded == sum(train)) is (batch_size == 1)  # batch 1 pads nothing: the same count


def test_the_cli_prints_each_ways_ratio_to_the_roofline(tmp_path, monkeypatch, capsys):
    measured = pl.DataFrame(
        {
            "way": ["healthsync", "vectorised", "roofline"],
            "model": ["mlp"] * 3,
            "hospitals": [1000] * 3,
            "seconds_per_round": [0.4, 0.3, 0.1],
            "status": ["ok"] * 3,
            "note": [None, None, "1.2 G multiply-adds a round, 12 G/s"],
        }
    )
    monkeypatch.setattr(sweep, "run_sweep", lambda config, **_: measured)
    code = main(["bench", "--hospitals", "1000", "--models", "mlp", "--db", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert code == 0
    assert "1.2 G multiply-adds a round, 12 G/s" in out
    header = next(line for line in out.splitlines() if "healthsync/roofline" in line)
    names = [cell.strip() for cell in header.strip("│").split("┆")]
    assert names[-4:] == [
        "flower/roofline",
        "healthsync/roofline",
        "warm/roofline",
        "vectorised/roofline",
    ]
    values = next(line for line in out.splitlines() if line.startswith("│ 1000"))
    assert [cell.strip() for cell in values.strip("│").split("┆")][-3:] == [
        "4.000",
        "null",
        "3.000",
    ]


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
    ratios = sweep.ratios(table)
    row = ratios.row(0, named=True)
    assert row["healthsync/vectorised"] == pytest.approx(2.0)
    assert row["flower/healthsync"] == pytest.approx(20.0)
    # The columns of the table before the roofline came stay first, in their order.
    assert ratios.columns[:8] == [
        "hospitals",
        "model",
        "flower",
        "healthsync",
        "warm",
        "vectorised",
        "healthsync/vectorised",
        "flower/healthsync",
    ]
    assert row["roofline"] is None and row["vectorised/roofline"] is None  # not measured


def test_ratios_to_the_roofline():
    table = pl.DataFrame(
        {
            "way": ["flower", "healthsync", "warm", "vectorised", "roofline"],
            "model": ["mlp"] * 5,
            "hospitals": [1000] * 5,
            "seconds_per_round": [20.0, 0.5, 0.4, 0.3, 0.2],
            "status": ["ok"] * 5,
        }
    )
    row = sweep.ratios(table).row(0, named=True)
    assert [row[f"{way}/roofline"] for way in ("flower", "healthsync", "warm", "vectorised")] == (
        pytest.approx([100.0, 2.5, 2.0, 1.5])
    )
    assert row["healthsync/vectorised"] == pytest.approx(0.5 / 0.3)


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


def test_a_runs_status_is_read_every_few_seconds_not_every_poll(monkeypatch):
    """Reading the status opens the metrics store; at every 0.2 s poll it took a sixth of a
    core from the measured run. Memory is still sampled at every poll."""
    clock = [0.0]
    monkeypatch.setattr(sweep.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sweep.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    samples = []
    monkeypatch.setattr(sweep, "rss_bytes", lambda tree: samples.append(clock[0]) or 2**20)
    asked = []

    def done() -> bool:
        asked.append(clock[0])
        return clock[0] >= 10.0

    sweep._watch(os.getpid(), done, 60, settle=False, ask_every=sweep.STATUS_POLL_SECONDS)
    assert len(asked) <= 10 / sweep.STATUS_POLL_SECONDS + 2
    assert len(samples) >= 10 / 0.5


def test_a_run_that_ends_between_two_status_reads_is_not_a_timeout(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(sweep.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sweep.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(sweep, "rss_bytes", lambda tree: 2**20)
    # status last read at 9.0 s (running); it ends at 9.5 s; the deadline is 10 s
    sweep._watch(os.getpid(), lambda: clock[0] >= 9.5, 10.0, settle=False, ask_every=3.0)


def test_the_roofline_refuses_more_threads_than_cores(capsys):
    with pytest.raises(SystemExit) as exit_:
        roofline.main(["--data", "anywhere", "--threads", "0"])
    assert exit_.value.code == 2
    assert "--threads must be between 1 and" in capsys.readouterr().err
