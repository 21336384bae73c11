"""Model: how well a finished run's global model ranks and calibrates, per site, and a risk calculator."""

import polars as pl
import streamlit as st

from healthsync.data import load_federation
from healthsync.data.labels import column_name
from healthsync.errors import HealthSyncError
from healthsync.runs import runlog
from healthsync.views import charts, dashboard, explainer, spread, tenancy
from pages._guard import require

page = require("view")
st.title("Global model")

store = page.store
runs = dashboard.finished_runs(
    tenancy.visible_runs(runlog.list_runs(store, kind=runlog.TRAINING), page.user, page.access)
)
if runs.is_empty():
    st.info("No finished run yet. Launch one, and its model appears here when it ends.")
    st.stop()
labels = dashboard.run_labels(runs)
run_ids = list(labels)
wanted = st.query_params.get("run")
run_id = st.selectbox(
    "Run", run_ids, index=run_ids.index(wanted) if wanted in labels else 0, format_func=labels.get
)
st.query_params["run"] = run_id
run = runlog.get_run(store, run_id)

left, right = st.columns(2)
bins = runlog.score_bins_frame(store, run_id)  # released bins only
if bins.height < 2:
    st.info(
        f"No ROC or calibration plot for this run (its AUC was {dashboard.format_metric(run['final_auc'])}): "
        "a curve needs at least two bands of predicted risk that each hold 11 test patients with "
        "and 11 without the outcome, and this run's test patients are too few for that (or it "
        "stored no score histogram). A larger federation draws one."
    )
else:
    left.altair_chart(charts.roc_curve(dashboard.roc_points(bins), auc=run["final_auc"]))
    left.caption(
        "How well the model ranks patients with the outcome above those without, pooled over every "
        "hospital's test patients. The AUC is the run's recorded one; the curve is an "
        "approximation, drawn from bands of predicted risk that each hold at least 11 patients "
        "with and 11 without the outcome. " + explainer.what_is("auc")
    )
    right.altair_chart(charts.calibration_plot(dashboard.calibration_points(bins)))
    right.caption(
        "Each dot is a band of predicted risk: on the dashed line, predicted risk matches what "
        "happened. Bands are widened until each holds at least 11 patients with and 11 without "
        "the outcome. " + explainer.what_is("brier")
    )

sites = tenancy.own_hospital_only(
    dashboard.last_round_hospitals(store, run_id), page.user, run["data_dir"]
)
labels = tenancy.site_labels(run["data_dir"], page.user)
withheld = sites.filter(pl.col("auc").is_null()).height
shown = sites.drop_nulls("auc")
if spread.is_large(sites.height):  # the spread, binned here, and the lowest by name
    if not shown.is_empty():
        st.altair_chart(charts.metric_histogram(shown))  # however many are shown: no names
        worst = tenancy.with_site_labels(spread.lowest(shown), labels)
        st.altair_chart(charts.hospital_metric_bars(worst, title=f"The {worst.height} lowest AUCs"))
elif not shown.is_empty():
    st.altair_chart(charts.hospital_metric_bars(tenancy.with_site_labels(shown, labels)))
st.caption(
    "The final global model's AUC at each hospital: a fair model does well at every site, not "
    "only on average."
    + (
        f" {sites.height:,} hospitals are too many for a bar each: the first chart counts "
        "hospitals by AUC, the second names the lowest."
        if spread.is_large(sites.height)
        else ""
    )
    + (
        f" {withheld:,} of {sites.height:,} hospitals are withheld: those whose test split holds "
        "fewer than 11 patients with or without the outcome (their AUC would all but reveal "
        "those patients) and, when that is one hospital alone, the next smallest with it, so "
        "the overall AUC cannot be worked back to it. Runs recorded before this rule show none."
        if withheld
        else ""
    )
    + " "
    + explainer.what_is("small-counts")
)


@st.cache_resource(max_entries=8, show_spinner="Loading the model…")
def saved_model(db: str, run_id: str):
    from healthsync.runs.predict import load_saved_model  # imports torch: only when needed

    return load_saved_model(db, run_id)


try:
    model = saved_model(str(page.settings.db), run_id)
except HealthSyncError as err:
    st.info(f"No model to score with: {err}")
    st.stop()
st.subheader(f"Risk calculator: {model.target}")
try:
    federation = load_federation(run["data_dir"])
except HealthSyncError:
    federation = None  # units are optional
inputs = dashboard.feature_inputs(model, federation)
with st.form("risk"):
    cols = st.columns(3)
    values = {}
    for i, item in enumerate(inputs):
        with cols[i % 3]:
            if item.kind == "numeric":
                values[item.name] = st.number_input(
                    item.label, value=float(item.default), format="%.1f"
                )
            else:
                values[item.name] = st.selectbox(item.label, item.categories)
    scored = st.form_submit_button("Estimate risk", type="primary")
if scored:
    try:
        risk = float(model.predict(dashboard.patient_frame(values, inputs))[0])
    except HealthSyncError as err:
        st.error(str(err))
    else:
        st.metric(f"Predicted risk of {column_name(model.target)}", f"{risk:.1%}")
        st.caption(
            "From the run's final global model for one hypothetical patient. A demonstration, not clinical advice."
        )
