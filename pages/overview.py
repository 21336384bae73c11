"""Overview: the federation at a glance, as aggregates only, and the latest run's numbers."""

import streamlit as st

from healthsync import charts, dashboard, runlog
from pages._guard import choose_federation, require

page = require("view")
st.title("Federation overview")

federation = choose_federation(page)

facts = dashboard.federation_facts(federation)
st.caption(f"{facts['name']} · source: {facts['source']} · outcomes: {facts['outcomes']}")
cols = st.columns(4)
cols[0].metric("Hospitals", f"{facts['hospitals']:,}")
cols[1].metric("Patients", f"{facts['patients']:,}")
cols[2].metric("Hospital size", f"{facts['smallest']:,}–{facts['largest']:,}")
cols[3].metric("Heterogeneity", facts["heterogeneity"])

hospitals = dashboard.hospitals_frame(federation)
st.altair_chart(charts.hospital_sizes(hospitals))
st.caption(
    "Patients each hospital holds, split into the rows it trains on and the rows it keeps "
    "for testing. Counts come from the manifest; no patient row leaves a hospital."
)

prevalence = dashboard.prevalence_frame(federation)
if prevalence.is_empty():
    st.info("This federation's manifest records no per-hospital outcome prevalence.")
else:
    st.altair_chart(charts.prevalence_bars(prevalence))
    withheld = prevalence["prevalence"].null_count()
    st.caption(
        "Share of each hospital's patients with each outcome, as its manifest records it."
        + (
            f" {withheld} figure(s) withheld (no bar): too few patients with or without the "
            "outcome at that hospital to publish the share safely."
            if withheld
            else ""
        )
    )

st.subheader("Latest run")
runs = runlog.list_runs(page.store, limit=1)
if runs.is_empty():
    st.info("No training run yet. Start one on the Launch page.")
else:
    run = runs.row(0, named=True)
    cols = st.columns(5)
    cols[0].metric("Status", run["status"])
    cols[1].metric("Rounds", f"{run['rounds_done']} of {run['rounds_planned']}")
    cols[2].metric("AUC", dashboard.format_metric(run["final_auc"]))
    cols[3].metric("Accuracy", dashboard.format_metric(run["final_accuracy"]))
    cols[4].metric("Log loss", dashboard.format_metric(run["final_loss"]))
    st.caption(f"{run['run_id']}: {run['strategy']} / {run['model']} predicting {run['target']}.")
