"""Runs: history, curves, tuning trials, utility vs privacy, pooled/local/federated/personalised, CSV."""

from functools import cache, partial
from pathlib import Path

import streamlit as st

from healthsync import privacy
from healthsync.config import TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.runs import runlog, tuning
from healthsync.views import charts, dashboard, explainer, privacy_charts, tenancy
from healthsync.views import privacy_dashboard as safety
from pages._guard import require

page = require("view")
st.title("Run history")

store = page.store
runlog.reconcile_dead_runs(store)
runs = tenancy.visible_runs(  # stress-test runs: their own page
    runlog.list_runs(store, kind=runlog.TRAINING), page.user, page.access
)
if runs.is_empty():
    st.info("No runs recorded yet. Start one on the Launch page (or with `healthsync train`).")
    st.stop()
labels = safety.run_labels(store, runs)
site_labels = cache(partial(tenancy.site_labels, user=page.user))  # per data set, once
st.dataframe(
    dashboard.runs_table(runs, site_labels),
    hide_index=True,
    height=min(38 + 35 * runs.height, 400),
)
st.caption(
    "Every run in the metrics store, newest first, with its settings and final global numbers."
)
for warned_run, warnings in runlog.warnings_by_run(
    store, runs["run_id"].to_list(), site_labels
).items():
    for warning in warnings:
        st.warning(f"{labels.get(warned_run, warned_run)}: {warning}", icon=":material/report:")

st.subheader("Compare runs")
metric = (
    st.segmented_control(
        "Metric", list(dashboard.METRICS), default="auc", format_func=dashboard.METRICS.get
    )
    or "auc"
)
chosen = st.multiselect("Runs", list(labels), default=list(labels)[:2], format_func=labels.get)
if len(chosen) < 2:
    st.info("Pick two or more runs to compare their curves.")
else:
    curves = safety.labelled_curves(store, chosen, metric)
    st.altair_chart(charts.run_curves(curves, metric_title=dashboard.METRICS[metric]))
    st.caption(
        "The global metric of each chosen run, round by round, on the same axes. Labels name "
        "the strategy and any attack drill (e.g. scale×3: three hospitals sending scaled "
        "updates), so FedAvg and median, trimmed mean or Krum under one attack compare directly. "
        + explainer.what_is({"auc": "auc", "accuracy": "accuracy", "loss": "log-loss"}[metric])
    )

st.subheader("Tuning trials")
tunings = tuning.tunings_frame(store)
if tunings.is_empty():
    st.info(
        "No tuning yet. `healthsync tune --data DIR --db FILE` searches learning rate, local "
        "work and strategy by federated validation loss; its trials appear here, and Launch "
        "then offers the tuned settings."
    )
else:
    tuned = {r["tuning_id"]: r for r in tunings.iter_rows(named=True)}
    tuning_id = st.selectbox(
        "Tuning",
        list(tuned),
        format_func=lambda t: f"{t} · {Path(tuned[t]['data_dir']).name} · {tuned[t]['status']}",
    )
    trials = dashboard.trials_view(
        tuning.trials_frame(store, tuning_id), tuned[tuning_id]["best_run_id"]
    )
    if trials.is_empty():
        st.info("This tuning has no finished trial yet; trials appear as they end.")
    else:
        st.altair_chart(charts.tuning_trials(trials))
        st.caption(
            "Each point is one trial, a real federated run: its lowest federated validation loss "
            "(log loss on each hospital's held-out training rows, never test rows), coloured by "
            "rung. Each rung keeps the best third and trains them three times as many rounds; "
            "the ringed trial was chosen."
        )
        st.dataframe(trials.rename({"val_loss": "validation loss"}), hide_index=True)

st.subheader("Utility versus privacy")
utility = safety.utility_points(privacy.utility_frame(store))
if not utility["epsilon"].is_not_null().any():
    st.info(
        "No completed run with differential privacy yet. On the Launch page, set a noise "
        "multiplier and a clipping norm under “Privacy and robustness” (fedavg or fedprox) "
        "to see what privacy costs in AUC."
    )
else:
    st.altair_chart(privacy_charts.utility_vs_epsilon(utility))
    st.caption(
        "Each point is a completed DP run: the epsilon it spent against its final AUC; further "
        "left is more private. Dashed lines are runs without DP, the reference to compare with. "
        "Runs on other data sets or outcomes are not directly comparable. "
        + explainer.what_is("epsilon")
    )

st.subheader("Pooled, local-only, federated and personalised")
finished = dashboard.finished_runs(runs)
if finished.is_empty():
    st.info("Once a run has finished, compare it here with the pooled and local-only baselines.")
else:
    run_id = st.selectbox("Finished run", finished["run_id"].to_list(), format_func=labels.get)
    if page.can("compare") and st.button("Train baselines and compare", icon=":material/balance:"):
        with st.spinner(
            "Training the pooled and local-only baselines and the personalised models (takes a few "
            "seconds)…"
        ):
            from healthsync.runs.baselines import compare_table  # imports torch: only when needed

            try:
                compare_table(TrainConfig(db=str(page.settings.db)), run_id)
            except HealthSyncError as err:
                st.error(str(err))
    table = dashboard.latest_comparison(store, run_id)
    if table.is_empty():
        hint = (
            "Use the button above to compute it."
            if page.can("compare")
            else "Ask an analyst to compute it."
        )
        st.info(f"No comparison stored for this run yet. {hint}")
    else:
        data_dir = runlog.get_run(store, run_id)["data_dir"]
        table = tenancy.own_hospital_only(table, page.user, data_dir)
        st.dataframe(dashboard.comparison_view(table, site_labels(data_dir)), hide_index=True)
        st.caption(
            "Each method on every hospital's test patients. Pooled is a simulation-only "
            "reference (all data in one place); local-only trains each hospital alone; "
            "personalised fine-tunes the federated model at each hospital on its own rows. "
            "A hospital with fewer than 11 test patients with or without the outcome has its "
            "figures withheld (–). Every method fits the same rows and is chosen on the same "
            "validation rows by the same rule; “chosen” says which round (federated) or epoch "
            "(baselines) it kept."
        )

st.subheader("Download metrics")
export = st.multiselect("Runs to export", list(labels), default=chosen, format_func=labels.get)
with st.container(horizontal=True):
    for label, table in (("Rounds", "rounds"), ("Per-hospital rounds", "hospital_rounds")):
        st.download_button(
            f"{label} (CSV)",
            partial(dashboard.metrics_csv, store, export, table, page.user),
            file_name=f"healthsync-{table.replace('_', '-')}.csv",
            mime="text/csv",
            disabled=not export,
            icon=":material/download:",
        )
st.caption(
    "Aggregated metrics only: one row per round, or per hospital and round. No patient data. "
    "Per-hospital figures are rounded to 3 decimals and left empty where withheld, as on "
    "every page."
)
