"""Data shaping for the privacy and robustness parts of the app's pages.

A run's safeguards (differential privacy, attack drill, dropouts and
stragglers) are recorded with its settings, its rounds (``epsilon``) and its
events (``privacy``, ``adversary``, ``hospital_dropped``, ``budget_reached``).
This module turns them into short labels, ready-to-draw frames and one-line
summaries, so the Live and Runs pages stay thin. No Streamlit here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from healthsync.data.pseudonyms import SiteLabels
from healthsync.runs.store import MetricsStore
from healthsync.views import dashboard

NO_DP = "no DP (reference)"
#: Hospital ids listed in one round's summary before the rest is counted.
MAX_LISTED = 8


# ---------------------------------------------------------------- settings
def safeguards_label(config: Mapping[str, Any]) -> str:
    """A run's privacy and robustness settings in a few words, e.g. ``"scale×3 · DP z=1"``.

    Empty for a plain run, so labels of ordinary runs stay as they were.
    """
    parts = []
    if config.get("adversarial"):
        parts.append(f"{config.get('attack')}×{config['adversarial']}")
    if config.get("dp_noise") and config.get("dp_clip"):
        budget = config.get("dp_epsilon_budget")
        parts.append(f"DP z={config['dp_noise']:g}" + (f" ε≤{budget:g}" if budget else ""))
    if config.get("secagg"):
        parts.append("SecAgg+")
    if config.get("dropout"):
        parts.append(f"dropout {config['dropout']:g}")
    if config.get("straggler_delay"):
        timeout = config.get("round_timeout")
        parts.append(
            f"stragglers <{config['straggler_delay']:g} s"
            + (f", timeout {timeout:g} s" if timeout else "")
        )
    return " · ".join(parts)


def run_configs(store: MetricsStore, run_ids: Sequence[str] | None = None) -> dict[str, dict]:
    """``run_id -> recorded settings`` (all runs, or only ``run_ids``), in one query."""
    sql, params = "SELECT run_id, config FROM runs", []
    if run_ids is not None:
        if not run_ids:
            return {}
        sql += f" WHERE run_id IN ({', '.join('?' for _ in run_ids)})"
        params = list(run_ids)
    return {r["run_id"]: json.loads(r["config"]) for r in store.frame(sql, params).to_dicts()}


def run_labels(store: MetricsStore, runs: pl.DataFrame) -> dict[str, str]:
    """``dashboard.run_labels`` with each run's safeguards appended (``… · scale×3 · DP z=1``)."""
    configs = run_configs(store)
    labels = dashboard.run_labels(runs)
    for run_id, label in labels.items():
        extra = safeguards_label(configs.get(run_id, {}))
        labels[run_id] = f"{label} · {extra}" if extra else label
    return labels


def labelled_curves(store: MetricsStore, run_ids: Sequence[str], metric: str) -> pl.DataFrame:
    """``dashboard.compare_curves`` plus a ``label`` for the legend: name, strategy, safeguards, run.

    E.g. ``"fedavg · scale×3 (run-…)"``, so FedAvg and a robust strategy under
    the same attack are told apart at a glance; a named run's label starts
    with its name (``"baseline: fedavg (run-…)"``).
    """
    configs = run_configs(store, run_ids)
    names = dict(
        store.frame(
            f"SELECT run_id, name FROM runs WHERE run_id IN ({', '.join('?' for _ in run_ids)})",
            list(run_ids),
        ).rows()
        if run_ids
        else []
    )
    labels = {}
    for run_id in run_ids:
        config = configs.get(run_id, {})
        setting = " · ".join(
            p for p in (config.get("strategy", "?"), safeguards_label(config)) if p
        )
        named = f"{names[run_id]}: " if names.get(run_id) else ""
        labels[run_id] = f"{named}{setting} ({run_id})"
    curves = dashboard.compare_curves(store, run_ids, metric)
    return curves.with_columns(label=pl.col("run_id").replace_strict(labels, default=None))


def privacy_summary(config: Mapping[str, Any]) -> str | None:
    """One line on a run's differential privacy settings, or ``None`` without DP."""
    if not (config.get("dp_noise") and config.get("dp_clip")):
        return None
    budget = config.get("dp_epsilon_budget")
    return (
        f"Differential privacy: noise multiplier {config['dp_noise']:g}, clipping norm "
        f"{config['dp_clip']:g} ({config.get('dp_side', 'server')} side), "
        f"δ = {config.get('dp_delta', 1e-5):g}"
        + (f", budget ε ≤ {budget:g}." if budget else ", no ε budget.")
    )


# ---------------------------------------------------------------- live
def epsilon_frame(rounds: pl.DataFrame) -> pl.DataFrame:
    """``round, epsilon`` of the rounds that recorded one (empty for a run without DP)."""
    if rounds.is_empty() or "epsilon" not in rounds.columns:
        return pl.DataFrame(schema={"round": pl.Int64, "epsilon": pl.Float64})
    return rounds.select(pl.col("round").cast(pl.Int64), pl.col("epsilon").cast(pl.Float64)).filter(
        pl.col("epsilon").is_not_null() & pl.col("epsilon").is_not_nan()
    )


def epsilon_spent(rounds: pl.DataFrame) -> float | None:
    """The epsilon spent so far (the last recorded round's), or ``None`` without DP."""
    frame = epsilon_frame(rounds)
    return None if frame.is_empty() else float(frame["epsilon"][-1])


def dropped_frame(events: pl.DataFrame, labels: SiteLabels | None = None) -> pl.DataFrame:
    """Per round, the hospitals dropped (dropout or timeout): ``round, dropped, hospitals``.

    ``hospitals`` lists the first ``MAX_LISTED`` as the reader sees them
    (``labels``, from ``tenancy.site_labels``; ids without) and counts the
    rest, so a federation of thousands still gives a short line. ``dropped``
    counts every hospital, named or not: the consortium's figure.
    """
    schema = {"round": pl.Int64, "dropped": pl.Int64, "hospitals": pl.String}
    if events.is_empty():
        return pl.DataFrame(schema=schema)
    grouped = (
        events.filter(pl.col("kind") == "hospital_dropped")
        .group_by("round")
        .agg(pl.col("hospital").drop_nulls().sort())
        .sort("round")
    )
    rows = [
        {
            "round": r["round"],
            "dropped": len(r["hospital"]),
            "hospitals": _listed(r["hospital"], labels),
        }
        for r in grouped.to_dicts()
    ]
    return pl.DataFrame(rows, schema=schema)


def adversaries_line(
    events: pl.DataFrame, attack: str | None, labels: SiteLabels | None = None
) -> str | None:
    """``"Adversarial: h0001, h0005 (scale)"``, or ``None`` when no hospital attacks.

    Hospitals as the reader sees them (``labels``), as ``dropped_frame`` lists them.
    """
    if events.is_empty():
        return None
    hospitals = (
        events.filter(pl.col("kind") == "adversary")["hospital"].drop_nulls().unique().sort()
    )
    if hospitals.is_empty():
        return None
    return f"Adversarial: {_listed(hospitals.to_list(), labels)} ({attack or 'attack'})"


def secure_aggregation_line(events: pl.DataFrame) -> str | None:
    """The protocol settings a SecAgg+ run recorded when it started, or ``None``."""
    if events.is_empty():
        return None
    lines = events.filter(
        (pl.col("kind") == "privacy") & pl.col("message").str.starts_with("secure aggregation")
    )["message"]
    return lines[0] if len(lines) else None


def _listed(hospitals: Sequence[str], labels: SiteLabels | None) -> str:
    """The first ``MAX_LISTED`` hospitals the reader may see named, then how many more."""
    named = list(hospitals) if labels is None else [labels.label(h) for h in hospitals]
    visible = sorted(n for n in named if n is not None)
    shown = ", ".join(visible[:MAX_LISTED])
    rest = len(named) - min(len(visible), MAX_LISTED)
    if not shown:
        return f"{rest} hospital{'s' if rest > 1 else ''}"
    return f"{shown} and {rest} more" if rest > 0 else shown


# ---------------------------------------------------------------- runs
def utility_points(utility: pl.DataFrame) -> pl.DataFrame:
    """``privacy.utility_frame`` ready to draw: adds ``series`` (strategy, or ``NO_DP``).

    Runs without DP keep a null epsilon and become the ``NO_DP`` reference;
    AUC NaNs become missing.
    """
    return utility.with_columns(
        pl.when(pl.col("epsilon").is_null())
        .then(pl.lit(NO_DP))
        .otherwise(pl.col("strategy"))
        .alias("series"),
        pl.col("auc").fill_nan(None),
    )
