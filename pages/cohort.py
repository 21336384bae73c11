"""Cohort explorer: filter, group and summarise patients across hospitals, under privacy guards."""

import streamlit as st

from healthsync.cohort import budget_status, charts, explore, form
from healthsync.data import load_federation
from healthsync.data.labels import column_name
from healthsync.errors import HealthSyncError
from healthsync.views import tenancy
from healthsync.views.explainer import what_is
from pages._guard import choose_data_set, require

page = require("explore")
st.title("Cohort explorer")
st.caption(
    "Every number is computed inside each hospital through the Flower analytics service, and "
    "each hospital adds its own calibrated noise (differential privacy) and charges your budget "
    "in its own ledger. A number released before, to anyone, comes back unchanged and free. "
    "Counts below 11 after noise show as <11, cells that could give one away as suppressed."
)

folder = choose_data_set(page)
try:
    federation = load_federation(folder)
    budget = budget_status(
        folder, db=page.settings.db, user=page.user.name, home=page.settings.home
    )
except HealthSyncError as err:
    st.error(str(err))
    st.stop()
options = form.choices(federation)
names = tenancy.site_labels(folder, page.user)
budget_slot = st.empty()  # filled once any query of this run has spent
budget_slot.metric("Your privacy budget left (epsilon)", f"{budget.left:g} of {budget.total:g}")

filtered = st.multiselect("Filter on", options.names, help="Conditions are joined by *and*.")
with st.form("cohort"):
    values = {}
    for name in filtered:
        column = options.column(name)
        if column.kind == "numeric" and column.bounds:
            values[name] = st.slider(
                column.label,
                *column.slider_range,
                value=column.slider_range,
                step=column.step,
                format=column.number_format,
            )
        elif column.kind == "numeric":
            low, high = st.columns(2)
            values[name] = (
                low.number_input(f"{column.label} at least", value=None),
                high.number_input(f"{column.label} at most", value=None),
            )
        elif column.kind == "categorical":
            values[name] = st.multiselect(name, column.levels, default=column.levels)
        else:  # a hospital (shown by name) or an outcome
            values[name] = st.selectbox(
                name, [form.ANY, *column.levels], format_func=lambda v: names.label(v) or v
            )
    group_by = st.multiselect("Group by", options.groupable, max_selections=3)
    stats = st.multiselect("Statistics", options.stats, default=["count"])
    st.caption(form.cost_preview(federation) + " " + what_is("epsilon", "What is ε?"))
    submitted = st.form_submit_button("Run query", type="primary")

if submitted:
    try:
        where = [c for name, v in values.items() for c in form.conditions(options.column(name), v)]
        with st.status("Asking every hospital…", expanded=False) as status:
            result = explore(
                folder,
                db=page.settings.db,
                user=page.user.name,
                where=where,
                group_by=group_by,
                stats=stats,
                home=page.settings.home,
                progress=lambda line: status.write(names.scrub(line)),
            )
            status.update(label="Answered", state="complete")
    except HealthSyncError as err:
        st.error(names.scrub(str(err)).capitalize())
        st.stop()
    st.session_state["cohort_result"] = (str(folder), result, where)
    budget = result.budget
    budget_slot.metric("Your privacy budget left (epsilon)", f"{budget.left:g} of {budget.total:g}")

shown = st.session_state.get("cohort_result")
if shown is None or shown[0] != str(folder):
    st.info("Choose filters, groups and statistics, then run the query.")
    st.stop()
_, result, where = shown
dims = list(result.release.dimensions)
st.caption(
    ("The same query as before: its cached answer, no budget spent. " if result.cached else "")
    + result.budget.describe().capitalize()
    + "."
    + (f" The answer {result.describe_withdrawn(names)}." if result.withdrawn else "")
)
command = form.command(folder, page.settings.db, page.user.name, where, dims, result.query["stats"])
if names.scrub(command) == command:
    st.code(command)
else:  # it names a hospital by its id, which this federation does not show
    st.caption("The command line for this query is not shown: it names a hospital by its id.")
st.dataframe(result.table(names), hide_index=True)
st.caption(
    "<11: fewer than 11 patients. suppressed: hidden so that a small cell cannot be worked out "
    f"from the others. Total of shown cells only: {result.describe_total()}. "
    + what_is("small-counts")
)
values_frame = result.values(names)
if values_frame["patient_count"].is_null().all():
    st.warning("Every cell was suppressed: the cohort is too small. Filter less or group by less.")
    st.stop()
units = {f.name: f.unit for f in federation.features}
if dims:  # one cell (no grouping) is one bar: the table above says it better
    st.altair_chart(charts.count_bars(values_frame, dims, units))
    st.caption(
        "Patients per cell, with noise; hidden cells have no bar. " + what_is("noisy-counts")
    )
for stat in result.query["stats"]:
    kind, _, column = stat.partition(":")
    if kind in ("prevalence", "mean") and not dims:
        continue
    if kind == "prevalence":
        st.altair_chart(charts.prevalence_bars(values_frame, dims, column, units))
        st.caption(
            f"Share of each cell's patients with {column}; hidden where cases are few. "
            + what_is("noisy-counts")
        )
    elif kind == "mean":
        st.altair_chart(charts.mean_bars(values_frame, dims, column, units))
        st.caption(
            f"Mean {column} per shown cell, from noisy sums clipped to fixed bounds. "
            + what_is("noisy-counts")
        )
    elif kind == "histogram":
        bins = result.histograms(column, names)
        if bins.is_empty():
            st.warning(f"No histogram of {column}: every cell is too small.")
            continue
        cells = list(dict.fromkeys(bins["cell"].to_list()))
        label = f"Histogram of {column_name(column)} for"
        cell = st.selectbox(label, cells) if len(cells) > 1 else cells[0]
        st.altair_chart(charts.histogram(bins, column, units.get(column), cell=cell))
        st.caption(
            "Each bar holds at least 11 patients; sparse bins are merged into wider ones. "
            + what_is("small-counts")
        )
