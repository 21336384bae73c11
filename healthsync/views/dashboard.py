"""Data shaping for the app's pages: federation overview, run progress, curves.

Pages stay thin by asking this module for frames that are ready to draw
(Polars in, Polars out) and for a few aggregations done in SQL so that a store
with thousands of runs and millions of per-hospital rows still renders fast.
Nothing here imports Streamlit, so it is unit-tested directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from healthsync.auth import User
from healthsync.data import Federation
from healthsync.data.labels import column_label
from healthsync.privacy import training
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from healthsync.views.tenancy import (
    SiteLabels,
    runs_own_hospital_only,
    site_labels,
    with_site_labels,
)

METRICS = {"auc": "AUC", "accuracy": "accuracy", "loss": "log loss"}
#: The federated validation loss: what chooses the round a run keeps (``--rounds auto``).
VALIDATION = {"val_loss": "validation loss"}
#: What the CSV exports hold: table -> columns in order, aggregates only.
EXPORTS = {
    "rounds": ("run_id", *runlog.ROUND_KEYS),
    "hospital_rounds": ("run_id", "round", "hospital", "n", "loss", "auc", "accuracy"),
}


# ---------------------------------------------------------------- overview
def heterogeneity_label(federation: Federation) -> str:
    """How different the hospitals were made to be, in words (from ``created_with``)."""
    value = federation.created_with.get("heterogeneity")
    if not isinstance(value, int | float):
        return "not recorded" + (" (imported data)" if federation.source == "import" else "")
    if value == 0:
        return "0 (identical hospitals)"
    word = "low" if value < 0.34 else "moderate" if value < 0.67 else "strong"
    return f"{value:g} ({word})"


# ---------------------------------------------------------------- runs
def default_run(runs: pl.DataFrame) -> str | None:
    """The run to watch when none is chosen: the newest active one, else the newest."""
    if runs.is_empty():
        return None
    active = runs.filter(pl.col("status").is_in(runlog.ACTIVE))
    return str((active if not active.is_empty() else runs)["run_id"][0])


def run_labels(runs: pl.DataFrame) -> dict[str, str]:
    """``run_id -> "[name · ]run_id · status · strategy/model · target · data set D"`` for pickers.

    The data set is the federation folder's name, as the data-set pickers show it.
    """
    return {
        r["run_id"]: (f"{r['name']} · " if r.get("name") else "")
        + f"{r['run_id']} · {r['status']} · {r['strategy']}/{r['model']} · {r['target']}"
        + (f" · data set {Path(r['data_dir']).name}" if r["data_dir"] else "")
        for r in runs.iter_rows(named=True)
    }


def runs_table(
    runs: pl.DataFrame, labels: Callable[[str | None], SiteLabels] | None = None
) -> pl.DataFrame:
    """The run history as shown: settings, progress and final numbers.

    ``labels`` (a data set -> the reader's ``tenancy.site_labels``) scrubs
    the notes of hospitals the reader may not see named.
    """
    if labels is not None and not runs.is_empty():
        runs = runs.with_columns(
            reason=pl.Series(
                [
                    None if reason is None else labels(data_dir).scrub(reason)
                    for reason, data_dir in runs.select("reason", "data_dir").iter_rows()
                ],
                dtype=pl.String,
            )
        )
    return runs.select(
        pl.col("run_id").alias("run"),
        "status",
        pl.col("data_dir").str.split("/").list.last().alias("data set"),
        pl.col("name").fill_null(""),
        pl.col("target").alias("outcome"),
        "strategy",
        "model",
        pl.format("{}/{}", "rounds_done", "rounds_planned").alias("rounds"),
        pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M").alias("started"),
        pl.col("final_auc").fill_nan(None).round(3).alias("AUC"),
        pl.col("final_accuracy").fill_nan(None).round(3).alias("accuracy"),
        pl.col("final_loss").fill_nan(None).round(3).alias("loss"),
        pl.col("reason").fill_null("").alias("note"),
    )


def format_metric(value: float | None) -> str:
    """Three decimals, or a dash for a missing number (None or NaN)."""
    return "–" if value is None or value != value else f"{value:.3f}"


def hospital_names(data_dir: str | Path | None) -> dict[str, str]:
    """``hospital id -> real name`` from a run's federation manifest (empty if it is gone).

    The operator's view; pages name hospitals with ``tenancy.site_labels``.
    """
    return dict(site_labels(data_dir, None))


def finished_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """Runs that ended after at least one round (they have a model and final numbers)."""
    return runs.filter(~pl.col("status").is_in(runlog.ACTIVE) & (pl.col("rounds_done") > 0))


@dataclass(frozen=True)
class Progress:
    """How far a run is, and a rough estimate of the time left."""

    done: int
    planned: int
    seconds_left: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.planned) if self.planned else 0.0

    def text(self, status: str) -> str:
        head = f"Round {self.done} of {self.planned}"
        if status not in runlog.ACTIVE:
            return f"{head} · {status}"
        if self.seconds_left is None:
            return f"{head} · starting hospitals, estimating time left…"
        return f"{head} · about {format_duration(self.seconds_left)} left"


def progress(rounds: pl.DataFrame, planned: int) -> Progress:
    """Rounds done and time left, from the median duration of the last five rounds."""
    done = rounds.height
    if done == 0 or "seconds" not in rounds.columns:
        return Progress(done, planned, None)
    recent = rounds["seconds"].drop_nulls().tail(5)
    per_round = recent.median() if recent.len() else None
    left = None if per_round is None else float(per_round) * max(planned - done, 0)
    return Progress(done, planned, left)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 05 s"`` or ``"2 h 10 min"``."""
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def metrics_long(rounds: pl.DataFrame, metrics: Sequence[str] = tuple(METRICS)) -> pl.DataFrame:
    """``round, metric, value`` rows for line charts of the global metrics."""
    if rounds.is_empty():
        return pl.DataFrame(schema={"round": pl.Int64, "metric": pl.String, "value": pl.Float64})
    return (
        rounds.select(pl.col("round").cast(pl.Int64), *metrics)
        .unpivot(index="round", variable_name="metric", value_name="value")
        .with_columns(
            pl.col("metric").replace_strict({**METRICS, **VALIDATION}),
            pl.col("value").fill_nan(None),
        )
    )


def hospital_status_long(rounds: pl.DataFrame) -> pl.DataFrame:
    """``round, status (ok/failed), hospitals`` rows for the per-round stacked bars."""
    if rounds.is_empty():
        return pl.DataFrame(schema={"round": pl.Int64, "status": pl.String, "hospitals": pl.Int64})
    return (
        rounds.select(
            pl.col("round").cast(pl.Int64),
            pl.col("hospitals_ok").fill_null(0).alias("ok"),
            pl.col("hospitals_failed").fill_null(0).alias("failed"),
        )
        .unpivot(index="round", variable_name="status", value_name="hospitals")
        .with_columns(pl.col("hospitals").cast(pl.Int64))
    )


#: How each phase of a round reads on the "where a round's time goes" bars, in round order.
PHASE_LABELS = {
    "configure": "configure",
    "train": "train (hospitals)",
    "aggregate": "aggregate",
    "evaluate": "evaluate (hospitals)",
    "record": "record (metrics store)",
}


def round_phases(phases: pl.DataFrame) -> pl.DataFrame:
    """``round, phase (label), order, seconds`` for the stacked bars of where a round's time goes.

    ``phases`` is ``runlog.phases_frame``; a phase the loop did not name in
    ``PHASE_LABELS`` keeps its own name and stacks last.
    """
    schema = {"round": pl.Int64, "phase": pl.String, "order": pl.Int64, "seconds": pl.Float64}
    if phases.is_empty():
        return pl.DataFrame(schema=schema)
    known = list(PHASE_LABELS)
    return (
        phases.group_by("round", "phase")
        .agg(pl.col("seconds").sum())
        .select(
            pl.col("round").cast(pl.Int64),
            pl.col("phase").replace_strict(PHASE_LABELS, default=pl.col("phase")),
            pl.col("phase")
            .replace_strict({p: i for i, p in enumerate(known)}, default=len(known))
            .cast(pl.Int64)
            .alias("order"),
            pl.col("seconds").cast(pl.Float64),
        )
        .sort("round", "order")
    )


def heatmap_frame(hospital_rounds: pl.DataFrame, metric: str = "auc") -> pl.DataFrame:
    """``hospital, round, value`` cells for the hospital-by-round heatmap (NaN as missing)."""
    return hospital_rounds.select(
        "hospital",
        pl.col("round").cast(pl.Int64),
        pl.col(metric).fill_nan(None).alias("value"),
    )


def _in(run_ids: Sequence[str]) -> str:
    return ", ".join("?" for _ in run_ids)


def compare_curves(store: MetricsStore, run_ids: Sequence[str], metric: str) -> pl.DataFrame:
    """``run_id, round, value`` of one global metric for several runs, in one query."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if not run_ids:
        return pl.DataFrame(schema={"run_id": pl.String, "round": pl.Int64, "value": pl.Float64})
    return store.frame(
        f"SELECT run_id, round::BIGINT AS round, {metric} AS value FROM rounds"
        f" WHERE run_id IN ({_in(run_ids)}) ORDER BY run_id, round",
        list(run_ids),
    ).with_columns(pl.col("value").fill_nan(None))


def last_round_hospitals(store: MetricsStore, run_id: str) -> pl.DataFrame:
    """Each hospital's released metrics in the run's last recorded round (fairness across sites).

    A withheld hospital's figures are missing (``privacy.training``).
    """
    return training.released_hospital_metrics(
        store.frame(
            "SELECT hospital, n, auc, accuracy, loss, released FROM hospital_rounds WHERE run_id = ?"
            " AND round = (SELECT max(round) FROM hospital_rounds WHERE run_id = ?)"
            " ORDER BY hospital",
            [run_id, run_id],
        )
    )


def latest_comparison(store: MetricsStore, run_id: str) -> pl.DataFrame:
    """The newest stored pooled / local / federated table for the run (may be empty).

    Per-hospital figures as released (``privacy.training``); a comparison stored
    before the policy shows only its overall rows' figures.
    """
    return training.released_hospital_metrics(
        store.frame(
            "SELECT method, hospital, n, auc, accuracy, loss, brier, chosen,"
            " coalesce(released, hospital = 'overall') AS released FROM comparisons"
            " WHERE comparison_id = (SELECT comparison_id FROM comparisons WHERE run_id = ?"
            " ORDER BY created_at DESC LIMIT 1)"
            " ORDER BY method, hospital <> 'overall', hospital",
            [run_id],
        )
    )


def comparison_view(table: pl.DataFrame, labels: SiteLabels) -> pl.DataFrame:
    """The comparison table as shown: hospitals by label, figures as text, "–" where missing.

    A missing figure is withheld (release policy) or never recorded (runs
    recorded before per-hospital Brier scores were); Streamlit would print
    either as "None". ``chosen`` says which round or epoch each method kept.
    """
    figures = [c for c in ("loss", "auc", "accuracy", "brier") if c in table.columns]
    return with_site_labels(table, labels, into="hospital").with_columns(
        *(
            pl.col(c).map_elements(format_metric, return_dtype=pl.String).fill_null("–")
            for c in figures
        ),
        *([pl.col("chosen").fill_null("–")] if "chosen" in table.columns else []),
    )


#: A tuning trial's settings as shown, in order: setting -> column title.
TRIAL_SETTINGS = {
    "strategy": "strategy",
    "lr": "learning rate",
    "local_steps": "local steps",
    "proximal_mu": "FedProx μ",
    "server_lr": "server learning rate",
}


def trials_view(trials: pl.DataFrame, best_run_id: str | None) -> pl.DataFrame:
    """A tuning's trials as shown: one row per trial, its settings as columns, the choice marked.

    ``trials`` from ``healthsync.runs.tuning.trials_frame``; a setting a trial's
    strategy does not use is "–". ``val_loss`` stays a number, for the chart.
    """
    settings = [json.loads(s) for s in trials["settings"]]
    return pl.DataFrame(
        {
            "trial": trials["trial"],
            "rung": trials["rung"],
            "rounds (most)": trials["rounds"],
            **{
                title: [str(s[key]) if key in s else "–" for s in settings]
                for key, title in TRIAL_SETTINGS.items()
            },
            "val_loss": trials["val_loss"],
            "status": trials["status"],
            "run": trials["run_id"],
            "chosen": ["best" if run == best_run_id else "" for run in trials["run_id"].to_list()],
        },
        schema_overrides={"val_loss": pl.Float64},
    )


def metrics_csv(
    store: MetricsStore, run_ids: Sequence[str], table: str = "rounds", viewer: User | None = None
) -> str:
    """The runs' global rounds (``rounds``) or per-hospital rounds (``hospital_rounds``) as CSV.

    For a steward (``viewer``), per-hospital rows are only their own hospital's
    (``views.tenancy.own_hospital_only``).

    Per-hospital figures as released (``privacy.training``): withheld ones are empty.
    Per-hospital rows carry ``hospital_name`` as ``viewer`` sees each run's
    hospitals (``tenancy.site_labels``: real names without a viewer, the id
    when the manifest is gone); where the viewer may not see ids, the
    ``hospital`` column holds the pseudonym too.
    """
    columns = EXPORTS[table]
    released = ", released" if table == "hospital_rounds" else ""
    frame = store.frame(
        f"SELECT {', '.join(columns)}{released} FROM {table} WHERE run_id IN ({_in(run_ids)})"
        f" ORDER BY {', '.join(columns[:3])}",
        list(run_ids),
    )
    if not released:
        return frame.write_csv()
    frame = training.released_hospital_metrics(frame)
    data_dirs = dict(
        store.frame(
            f"SELECT run_id, data_dir FROM runs WHERE run_id IN ({_in(run_ids)})", list(run_ids)
        ).iter_rows()
    )
    if viewer is not None:
        frame = runs_own_hospital_only(frame, viewer, data_dirs)
    parts = [
        with_site_labels(
            frame.filter(pl.col("run_id") == run_id),
            site_labels(data_dir, viewer),
            into="hospital_name",
        )
        for run_id, data_dir in data_dirs.items()
    ]
    named = pl.concat(parts) if parts else frame.with_columns(hospital_name=pl.lit(None, pl.String))
    order = list(frame.columns)
    order.insert(order.index("hospital") + 1, "hospital_name")
    return named.select(order).sort(*columns[:3]).write_csv()


# ---------------------------------------------------------------- model
def roc_points(bins: pl.DataFrame) -> pl.DataFrame:
    """ROC curve from the released score bins: ``threshold, fpr, tpr``, from (0, 0) to (1, 1).

    Each bin's lower edge is a threshold; patients in bins at or above it are
    called positive. Coarse (one point per released bin, each bin holding at
    least 11 patients of each class) but exact at those thresholds; its area
    only approximates the run's AUC (pairs within one bin count as ties).
    """
    ordered = bins.sort("bin", descending=True)
    positives = max(int(ordered["positives"].sum()), 1)
    negatives = max(int(ordered["negatives"].sum()), 1)
    curve = ordered.select(
        pl.col("lower").alias("threshold"),
        (pl.col("negatives").cum_sum() / negatives).alias("fpr"),
        (pl.col("positives").cum_sum() / positives).alias("tpr"),
    )
    start = pl.DataFrame({"threshold": [1.0], "fpr": [0.0], "tpr": [0.0]})
    return pl.concat([start, curve.cast(pl.Float64)])


def auc_from_roc(points: pl.DataFrame) -> float:
    """Area under the binned ROC curve (trapezoids)."""
    fpr, tpr = points["fpr"].to_list(), points["tpr"].to_list()
    return sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr)))


def calibration_points(bins: pl.DataFrame) -> pl.DataFrame:
    """Per released score bin: mean predicted risk, observed event rate and number of patients.

    The bins come from ``runlog.score_bins_frame``, already merged by the
    release policy so that each holds at least 11 patients with and 11 without
    the outcome: an observed rate over one or two patients would all but show
    their outcomes, and deciding that here as well would be a second policy.
    """
    return (
        bins.with_columns(patients=pl.col("positives") + pl.col("negatives"))
        .filter(pl.col("patients") > 0)
        .select(
            (pl.col("score_sum") / pl.col("patients")).alias("predicted"),
            (pl.col("positives") / pl.col("patients")).alias("observed"),
            pl.col("patients").cast(pl.Int64),
        )
    )


@dataclass(frozen=True)
class FeatureInput:
    """One input of the risk calculator: a model feature with a sensible default."""

    name: str
    kind: str
    default: float | str
    categories: tuple[str, ...] = ()
    unit: str | None = None

    @property
    def label(self) -> str:
        """The schema's name and unit, as every axis shows them: "BMI (kg/m²)"."""
        return column_label(self.name, self.unit)


def feature_inputs(model: Any, federation: Federation | None = None) -> list[FeatureInput]:
    """The saved model's features; numeric defaults are the federation means it was scaled with."""
    units = {f.name: f.unit for f in federation.features} if federation else {}
    means = [float(v) for v in model.scaler.mean]
    inputs = [
        FeatureInput(name, "numeric", round(means[i], 1), unit=units.get(name))
        for i, name in enumerate(model.encoder.numeric)
    ]
    inputs += [
        FeatureInput(name, "categorical", categories[0], tuple(categories), units.get(name))
        for name, categories in model.encoder.categorical
    ]
    return inputs


def patient_frame(
    values: Mapping[str, float | str], inputs: Sequence[FeatureInput]
) -> pl.DataFrame:
    """A one-patient frame with the right column types for ``SavedModel.predict``."""
    return pl.DataFrame(
        {
            i.name: [float(values[i.name]) if i.kind == "numeric" else str(values[i.name])]
            for i in inputs
        }
    )
