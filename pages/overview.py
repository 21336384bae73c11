"""Overview: the federation at a glance, as released aggregates only, and the latest run."""

from datetime import datetime

import streamlit as st

from healthsync.cohort.facts import facts_frames, facts_noise_sd, published_facts
from healthsync.data import Federation
from healthsync.data.manifest import MANIFEST_NAME
from healthsync.runs import runlog
from healthsync.views import charts, dashboard, explainer, tenancy
from pages._guard import choose_federation, require

page = require("view")
st.title("Federation overview")

#: Above this many hospitals, every hospital's published facts are read at most every
#: ``FACTS_TTL`` seconds: one read opens each hospital's publication (about a minute at
#: 100,000 hospitals), and publications change rarely (new data, a hospital's first query).
FACTS_CACHED_ABOVE = 1_000
FACTS_TTL = 300


def read_facts(federation: Federation) -> tuple:
    """The released facts, the hospitals missing, the chart frames and when they were read."""
    released, missing = published_facts(federation)
    frames = facts_frames(federation, released) if released is not None else None
    return released, missing, frames, datetime.now()


@st.cache_resource(ttl=FACTS_TTL, max_entries=4, show_spinner="Reading every hospital's facts…")
def cached_facts(data_dir: str, manifest_version: int, _federation: Federation) -> tuple:
    return read_facts(_federation)


federation = choose_federation(page)
labels = tenancy.site_labels(federation.data_dir, page.user)
large = len(federation.hospitals) > FACTS_CACHED_ABOVE
released, missing, frames, read_at = (
    cached_facts(
        str(federation.data_dir),
        (federation.data_dir / MANIFEST_NAME).stat().st_mtime_ns,
        federation,
    )
    if large
    else read_facts(federation)
)

cols = st.columns(4)
cols[0].metric("Hospitals", f"{len(federation.hospitals):,}")
if released is not None:
    sizes, prevalence = (
        tenancy.with_site_labels(
            tenancy.own_hospital_only(f, page.user, federation.data_dir), labels
        )
        for f in frames
    )
    shown = sizes["n_patients"].drop_nulls()
    total = released.total.get("patient_count")
    cols[1].metric("Patients (noisy)", f"≈ {total:,}" if isinstance(total, int) else "withheld")
    cols[2].metric(
        "Hospital size (noisy)",
        f"{shown.min():,}–{shown.max():,}" if shown.len() else "withheld",
    )
cols[3].metric("Heterogeneity", dashboard.heterogeneity_label(federation))
st.caption(
    f"{federation.name} · source: {federation.source} · outcomes: {', '.join(federation.outcomes)}"
)

notice = tenancy.withdrawn_notice(federation, labels)
if notice:
    st.warning(notice, icon=":material/block:")

if released is None:
    st.info(
        "No hospital has published its facts yet. Each hospital releases its size and "
        "outcome prevalences itself, through its own privacy gate, when its data is created "
        "or when the first cohort query reaches it. An admin can ask every hospital now "
        f"with `healthsync data publish --data {federation.data_dir}`."
    )
else:
    withheld = sizes["n_patients"].null_count()
    st.altair_chart(charts.hospital_sizes(sizes))
    st.caption(
        "Patients each hospital holds, as each hospital released it: a count with "
        "differential-privacy noise added inside the hospital (standard deviation about "
        f"{facts_noise_sd(federation):.0f} patients), released once and shown the same way "
        "everywhere, the cohort explorer included. "
        + (
            f"{withheld} hospital(s) withheld (fewer than 11 patients, after noise). "
            if withheld
            else ""
        )
        + (f"{len(missing):,} hospital(s) have not published yet. " if missing else "")
        + (
            f"With {len(federation.hospitals):,} hospitals, their facts are read at most every "
            f"{FACTS_TTL // 60} minutes (last at {read_at:%H:%M}). "
            if large
            else ""
        )
        + explainer.what_is("noisy-counts")
    )
    if prevalence["prevalence"].drop_nulls().is_empty():
        st.info("No hospital's outcome prevalence can be shown: every one is withheld.")
    else:
        st.altair_chart(charts.prevalence_bars(prevalence))
        hidden = prevalence["prevalence"].null_count()
        st.caption(
            "Share of each hospital's patients with each outcome, from the same noisy released "
            "counts. "
            + explainer.what_is("noisy-counts")
            + (
                f" {hidden} figure(s) withheld (no bar): fewer than 11 patients with or without "
                "the outcome at that hospital, after noise."
                if hidden
                else ""
            )
        )

st.subheader("Latest run")
data_set = federation.data_dir.name
runs = runlog.list_runs(page.store, limit=1, kind=runlog.TRAINING, data_dir=federation.data_dir)
if runs.is_empty():
    st.info(f"No training run yet on {data_set}. Start one on the Launch page.")
else:
    run = runs.row(0, named=True)
    cols = st.columns(5)
    cols[0].metric("Status", run["status"])
    cols[1].metric("Rounds", f"{run['rounds_done']} of {run['rounds_planned']}")
    cols[2].metric("AUC", dashboard.format_metric(run["final_auc"]))
    cols[3].metric("Accuracy", dashboard.format_metric(run["final_accuracy"]))
    cols[4].metric("Log loss", dashboard.format_metric(run["final_loss"]))
    st.caption(
        (f"{run['name']} · " if run["name"] else "")
        + f"{run['run_id']}: {run['strategy']} / {run['model']} predicting {run['target']}"
        + f" on {data_set}."
    )
