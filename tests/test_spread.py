"""views.spread: per-hospital figures of a large federation as distributions, from the store."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from healthsync.config import TrainConfig
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from healthsync.views import dashboard, spread

HOSPITALS = 60
SMALL = {"h0000", "h0001", "h0002"}  # too few positives: withheld by the release policy


def hospital_auc(i: int, rnd: int) -> float:
    """Small hospitals have the lowest AUCs: they would top the worst-k if they were shown."""
    return 0.30 + 0.01 * i if i < 3 else 0.50 + 0.004 * i + 0.01 * rnd


@pytest.fixture
def store(tmp_path) -> MetricsStore:
    store = MetricsStore(tmp_path / "m.duckdb")
    runlog.create_run(store, "run-big", TrainConfig(db=store.path, rounds=3), status="running")
    for rnd in (1, 2, 3):
        runlog.record_round(
            store,
            "run-big",
            {"round": rnd, "loss": 0.6, "auc": 0.7, "accuracy": 0.7, "seconds": 1.0},
            [
                {
                    "hospital": f"h{i:04d}",
                    "round": rnd,
                    "n": 40,
                    "positives": 3 if i < 3 else 12,
                    "negatives": 28,
                    "loss": 0.6,
                    "auc": hospital_auc(i, rnd),
                    "accuracy": 0.7,
                }
                for i in range(HOSPITALS)
            ],
        )
    return store


def test_round_bands_are_quantiles_of_released_figures_only(store):
    bands = spread.round_bands(store, "run-big")
    assert bands["round"].to_list() == [1, 2, 3]
    assert bands["hospitals"].to_list() == [HOSPITALS] * 3
    assert bands["released"].to_list() == [HOSPITALS - len(SMALL)] * 3
    for row in bands.iter_rows(named=True):
        shown = [round(hospital_auc(i, row["round"]), 3) for i in range(3, HOSPITALS)]
        for column, p in spread.QUANTILES.items():
            assert row[column] == pytest.approx(np.quantile(shown, p), abs=1e-3), column
    assert spread.hospitals_in_run(bands) == HOSPITALS and spread.is_large(HOSPITALS)
    assert spread.round_bands(store, "run-big", after=2).equals(bands.filter(pl.col("round") == 3))
    assert not spread.is_large(spread.MANY_HOSPITALS)


def test_round_bands_of_a_run_without_rows_or_a_bad_metric(store):
    assert spread.round_bands(store, "no-such-run").is_empty()
    assert spread.hospitals_in_run(spread.round_bands(store, "no-such-run")) == 0
    with pytest.raises(ValueError, match="per-hospital metric"):
        spread.round_bands(store, "run-big", "auc; DROP TABLE runs")


def test_the_lowest_skip_withheld_hospitals(store):
    last = dashboard.last_round_hospitals(store, "run-big")
    worst = spread.lowest(last, k=4)
    assert worst["hospital"].to_list() == ["h0003", "h0004", "h0005", "h0006"]
    assert worst["auc"].to_list() == sorted(worst["auc"].to_list())
    assert not SMALL & set(spread.lowest(last)["hospital"].to_list())
    assert spread.lowest(last).height == spread.WORST_K


def test_hospital_rounds_reads_the_named_hospitals_as_released(store):
    rows = spread.hospital_rounds(store, "run-big", ["h0000", "h0010"])
    assert rows.columns == ["hospital", "round", "value"]
    assert rows.filter(pl.col("hospital") == "h0000")["value"].null_count() == 3  # withheld
    assert rows.filter(pl.col("hospital") == "h0010")["value"].to_list() == [
        round(hospital_auc(10, r), 3) for r in (1, 2, 3)
    ]
    assert spread.hospital_rounds(store, "run-big", []).is_empty()


def test_find_hospitals_searches_shown_labels_only():
    names = {"h1": "Site C", "h2": "Site A", "h0": "Site B"}
    figures = pl.DataFrame({"hospital": ["h0", "h1"], "auc": [0.7, None]})
    found, total = spread.find_hospitals(names, figures, "  site ", limit=2)
    assert total == 3 and found["name"].to_list() == ["Site A", "Site B"]
    assert found["auc"].to_list() == [None, 0.7]  # h2 had no row; order kept
    assert spread.find_hospitals(names, figures, "c")[0]["hospital"].to_list() == ["h1"]
    assert spread.find_hospitals(names, figures, "h1")[1] == 0  # ids are not searched
    assert spread.find_hospitals(names, figures, "")[1] == 3


def test_histogram_counts_every_shown_value_once():
    frame = pl.DataFrame({"auc": [0.5, 0.5, 0.75, 1.0, None, float("nan")]})
    bins = spread.histogram(frame, "auc", bins=4)
    assert bins.height == 4 and bins["hospitals"].sum() == 4
    assert bins["lower"][0] == 0.5 and bins["upper"][-1] == 1.0
    assert bins["hospitals"].to_list() == [2, 0, 1, 1]  # the maximum falls in the last bin
    one = spread.histogram(pl.DataFrame({"auc": [0.7, 0.7]}), "auc")
    assert one["hospitals"].to_list() == [2]
    assert spread.histogram(
        pl.DataFrame({"auc": [None]}, schema={"auc": pl.Float64}), "auc"
    ).is_empty()


def test_quantiles_by_group():
    frame = pl.DataFrame(
        {"outcome": ["a"] * 5 + ["b"], "prevalence": [0.1, 0.2, 0.3, 0.4, None, 0.5]}
    )
    boxes = spread.quantiles_by(frame, "prevalence", "outcome")
    a = boxes.row(0, named=True)
    assert (a["hospitals"], a["min"], a["median"], a["max"]) == (4, 0.1, 0.25, 0.4)
    assert a["q25"] == pytest.approx(0.175)
    assert boxes["outcome"].to_list() == ["a", "b"]
