"""Stress test: how many hospitals can be simulated, several ways side by side, kept for comparison."""

import streamlit as st

from healthsync.bench import sweep
from healthsync.errors import HealthSyncError
from healthsync.runs import runlog
from healthsync.views import bench_charts, charts, dashboard
from pages._guard import live_fragment, require

page = require("view")
st.title("Stress test")
st.caption(
    "The same federated workload (data, model, rounds, seed) run several ways: stock Flower with one "
    "client per hospital, HealthSync's block execution in a cold process and on the warm training "
    "engine (started beforehand, as the app does), a single-process vectorised loop with no "
    "Flower or Ray, and the roofline: the same multiply-adds as a round as single large matrix "
    "products over all patients' rows with one shared model, as if keeping hospitals apart cost "
    "nothing, which is what this machine allows per core. Every measurement is kept in the "
    "metrics store."
)
store = page.store

if page.user.can("launch"):
    with st.form("sweep"):
        left, right = st.columns(2)
        hospitals = left.multiselect(
            "Hospital counts", [10, 30, 100, 300, 1000, 3000, 10000], default=[10, 100]
        )
        models = right.multiselect("Models", ["logreg", "mlp"], default=["logreg"])
        ways = left.multiselect(
            "Ways to run",
            list(sweep.WAYS),
            default=list(sweep.WAYS),
            format_func=bench_charts.WAY_LABELS.get,
        )
        rounds = right.number_input("Rounds (the first includes warm-up)", 2, 20, 4)
        patients = left.number_input("Mean patients per hospital", 50, 5000, 500, step=50)
        limit = right.number_input(
            "Skip one-client-per-hospital above (hospitals)", 10, 10000, 1000
        )
        submitted = st.form_submit_button("Run sweep", type="primary")
    if submitted:
        try:
            config = sweep.SweepConfig(
                hospitals=tuple(sorted(hospitals)),
                models=tuple(models),
                ways=tuple(ways),
                rounds=int(rounds),
                patients=int(patients),
                max_flower_hospitals=int(limit),
                work_dir=str(page.settings.data_root / "bench"),
                db=str(page.settings.db),
            )
            with st.spinner("Starting the sweep…"):
                sweep.start_sweep(config)  # runs in its own process; found below as running
        except HealthSyncError as err:
            st.error(str(err))

running = sweep.running_sweep(store)
results = sweep.sweeps(store)


@live_fragment("view", run_every=2.0 if running else None)
def progress() -> None:
    state = sweep.sweep_progress(store, running)
    st.progress(state.fraction, text=state.text())
    if state.done != landed or not state.alive:
        st.rerun()  # a measurement landed, or the sweep ended: redraw the charts


if running:
    landed = sweep.sweep_progress(store, running).done  # measurements the charts below show
    progress()

if results.is_empty():
    if not running:
        st.info(
            "No sweep yet. "
            + (
                "Choose hospital counts, models and ways above and press Run sweep"
                if page.can("launch")
                else "Analysts and admins start sweeps on this page, and the results appear "
                "here for every role"
            )
            + "; `healthsync bench` runs the full sweep from a terminal."
        )
else:
    chosen = st.multiselect(
        "Sweeps to compare",
        results["sweep_id"].unique(maintain_order=True).to_list(),
        default=results["sweep_id"].unique(maintain_order=True).to_list()[:1],
    )
    shown = results.filter(results["sweep_id"].is_in(chosen))
    for measure in bench_charts.MEASURES:
        st.altair_chart(bench_charts.sweep_chart(shown, measure), width="stretch")
        st.caption(
            f"{bench_charts.MEASURES[measure][1]} against the number of simulated hospitals, per execution way and model."
            + bench_charts.CAPTION_NOTES.get(measure, "")
        )
    st.subheader("Ratios")
    st.dataframe(sweep.ratios(shown), hide_index=True)
    st.caption(
        "Seconds per round of each way, then ratios of them. healthsync/vectorised: HealthSync's "
        "time per round over the single-process loop's (target: at most 2 at 10,000 hospitals); "
        "flower/healthsync: how many times faster blocks are than stock Flower with one client per "
        "hospital; each way/roofline: how many times the way's round takes over the roofline's, "
        "the same arithmetic without per-hospital separation (1 would be the hardware's limit per "
        "core; target for HealthSync at 10,000 hospitals: at most 1.5)."
    )
    st.dataframe(shown, hide_index=True)

benchmark_runs = runlog.list_runs(store, kind=runlog.BENCHMARK)
if not benchmark_runs.is_empty():
    with st.expander(f"Training runs the sweeps started ({benchmark_runs.height})"):
        st.dataframe(dashboard.runs_table(benchmark_runs), hide_index=True)
        st.caption(
            "Each cold or warm measurement is a real training run, kept here and left out of "
            "Live training, Run history, Model and Overview, which show training runs only."
        )
    st.subheader("Where a round's time goes")
    labels = dashboard.run_labels(benchmark_runs)
    picked = st.selectbox("Stress-test run", list(labels), format_func=labels.get, key="phase_run")
    phases = dashboard.round_phases(runlog.phases_frame(store, picked))
    if phases.is_empty():
        st.info("This run recorded no phase timings (runs before they were kept, or no round).")
    else:
        st.altair_chart(charts.round_phase_bars(phases), width="stretch")
        st.caption(
            "Seconds of each round of this measurement by phase, as the coordinating server "
            "timed them: configure, train (sending the model to the last hospital's update), "
            "aggregate, evaluate and record (the metrics store). The first round includes "
            "warm-up. The vectorised loop and the roofline have no rounds of this kind."
        )
