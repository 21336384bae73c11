"""Live training: one run's rounds as they land in the store, redrawn without a page reload."""

import polars as pl
import streamlit as st

from healthsync.runs import runlog
from healthsync.runs.lifecycle import cancel_run, cancel_signalled, run_phase, signal_cancel
from healthsync.views import (
    charts,
    dashboard,
    drilldown,
    explainer,
    privacy_charts,
    spread,
    tenancy,
)
from healthsync.views import privacy_dashboard as safety
from pages._guard import live_fragment, require

page = require("view")
st.title("Live training")

store = page.store
runlog.reconcile_dead_runs(store)
all_runs = tenancy.visible_runs(  # stress-test runs: their own page
    runlog.list_runs(store, kind=runlog.TRAINING), page.user, page.access
)
if all_runs.is_empty():
    st.info("No run to watch yet. Start one on the Launch page; it shows up here as it trains.")
    st.stop()
labels = safety.run_labels(store, all_runs)
wanted = st.query_params.get("run") or st.session_state.get("live_run")
run_ids = list(labels)
default = wanted if wanted in labels else dashboard.default_run(all_runs)
run_id = st.selectbox("Run", run_ids, index=run_ids.index(default), format_func=labels.get)
st.query_params["run"] = run_id
chosen = runlog.get_run(store, run_id)
active = chosen["status"] in runlog.ACTIVE
sites = tenancy.site_labels(chosen["data_dir"], page.user)
if not active:  # finished: what it reached, against training alone, and where to go next
    summary = drilldown.run_summary(store, run_id)
    with st.container(border=True):
        st.subheader("Run finished" if summary.status == "completed" else f"Run {summary.status}")
        st.markdown(summary.headline())
        cells = st.columns(4)
        cells[0].metric("Federated AUC", dashboard.format_metric(summary.auc))
        cells[1].metric(
            "Local-only AUC",
            dashboard.format_metric(summary.local_auc),
            help="Each hospital training on its own rows alone, all test patients together.",
        )
        cells[2].metric("Accuracy", dashboard.format_metric(summary.accuracy))
        cells[3].metric("Log loss", dashboard.format_metric(summary.loss))
        if not summary.compared:
            st.caption(
                "No comparison with training alone stored yet: press “Train baselines and "
                "compare” on the Runs page (analysts), or run "
                f"`{drilldown.compare_command(store, run_id)}`. "
                + explainer.what_is("auc", "What is AUC?")
            )
        with st.container(horizontal=True):
            st.page_link(
                "pages/runs.py", label="Compare with other runs", icon=":material/history:"
            )
            st.page_link(
                "pages/model.py", label="Inspect the model", icon=":material/model_training:"
            )
            st.page_link("pages/how_it_works.py", label="How it works", icon=":material/school:")


@live_fragment("view", run_every=1.0 if active else None)
def watch() -> None:
    run = runlog.get_run(store, run_id)
    if active and run["status"] not in runlog.ACTIVE:
        st.rerun()  # finished: redraw once more as a whole and stop polling
    rounds = runlog.rounds_frame(store, run_id)
    progress = dashboard.progress(rounds, run["rounds_planned"])
    status = run["status"]
    if status in runlog.ACTIVE and cancel_signalled(store.path, run_id):
        status = "cancel requested, stopping after this round"  # no time left to estimate
    st.progress(progress.fraction, text=progress.text(status))
    if run["reason"]:
        st.warning(f"{run['status'].capitalize()}: {sites.scrub(run['reason'])}")
    for warning in runlog.run_warnings(store, run_id, sites):
        st.warning(warning.capitalize(), icon=":material/report:")
    if rounds.is_empty():
        if run["status"] not in runlog.ACTIVE:
            st.info("The run ended before its first round.")
            return
        # What the run says it is doing (Ray, nodes, reading hospitals' data), not a guess.
        phase = run_phase(store.path, run_id) or "the run is starting"
        st.info(f"Waiting for the first round: {phase}.")
        return
    left, right = st.columns(2)
    with left:
        scores = dashboard.metrics_long(rounds, ("auc", "accuracy"))
        st.altair_chart(
            charts.metric_lines(scores, title="Global AUC and accuracy", y_title="Score (0–1)")
        )
        st.caption(
            "The global model on every hospital's test patients, weighted by test size. "
            + explainer.what_is("auc")
        )
    with right:
        loss = dashboard.metrics_long(rounds, ("loss", "val_loss")).drop_nulls("value")
        st.altair_chart(
            charts.loss_with_choice(
                loss,
                best_round=run.get("best_round"),
                title="Global and validation loss",
                y_title="Log loss (nats)",
            )
        )
        st.caption(
            "Lower is better. Log loss is on the hospitals' test patients; validation loss "
            "on the share of their training rows held out to choose the model, never test "
            "patients. The dashed rule marks the round whose model the run keeps: "
            + (
                "the lowest validation loss so far (automatic rounds)."
                if run["config"].get("rounds") == "auto"
                else "the last round (a fixed number of rounds)."
            )
            + " "
            + explainer.what_is("log-loss")
        )
    bands = round_bands(int(rounds["round"].max()))
    large = spread.is_large(spread.hospitals_in_run(bands))
    if large:
        figures = tenancy.own_hospital_only(  # the last round's, read once for both views
            dashboard.last_round_hospitals(store, run_id), page.user, run["data_dir"]
        )
        hospital_spread(run, bands, figures)
    else:
        hospital_heatmap(run)
    st.altair_chart(charts.hospital_status_bars(dashboard.hospital_status_long(rounds)))
    st.caption(
        "Hospitals whose training answer arrived (ok) or failed, per round. "
        + explainer.what_is("round")
    )
    round_time(store, run_id)
    safeguards(run, rounds)
    if large:
        found = hospital_search(figures)
        if found:
            hospital_drill_down(run, found, first=False)
    else:
        hospital_drill_down(run, drilldown.run_hospitals(store, run_id, sites))


def round_bands(last_round: int) -> pl.DataFrame:
    """The run's bands up to ``last_round``: this session's earlier rounds, and the new ones read.

    A polled page reads only the rounds that landed since its last poll
    (``spread.round_bands(after=...)``), not 2 million hospital rows a second.
    """
    known = st.session_state.setdefault("live_bands", {}).get(run_id)
    if known is None or known.is_empty():
        bands = spread.round_bands(store, run_id)
    else:
        seen = int(known["round"].max())
        new = spread.round_bands(store, run_id, after=seen) if last_round > seen else None
        bands = known if new is None or new.is_empty() else pl.concat([known, new])
    st.session_state["live_bands"][run_id] = bands
    return bands


#: Says why a hospital may have no AUC: for the heatmap's and the bands' captions.
WITHHELD_NOTE = (
    "A hospital whose test split holds fewer than 11 patients with or without the outcome has "
    "no AUC (and, if it is the only one, neither has the next smallest). "
)


def no_hospital_auc() -> None:
    st.info(
        "No hospital's own AUC can be shown for this run: each one's test split holds "
        "fewer than 11 patients with or without the outcome (a rare outcome, such as new "
        "cases within 5 years, needs larger hospitals). The federation's figures above "
        "cover them all. " + explainer.what_is("small-counts"),
        icon=":material/visibility_off:",
    )


def hospital_heatmap(run: dict) -> None:
    """Each hospital's AUC in each round, one row per hospital: for small federations."""
    heat = dashboard.heatmap_frame(
        tenancy.own_hospital_only(
            runlog.hospital_rounds_frame(store, run_id), page.user, run["data_dir"]
        )
    )
    heat = tenancy.with_site_labels(heat, sites)
    if heat["value"].drop_nulls().is_empty():
        no_hospital_auc()
        return
    st.altair_chart(charts.hospital_heatmap(heat))
    st.caption(
        "Each hospital's AUC for the global model in each round; dark cells lag behind. "
        + WITHHELD_NOTE
        + explainer.what_is("small-counts")
    )


def hospital_spread(run: dict, bands: pl.DataFrame, figures: pl.DataFrame) -> None:
    """Above ``spread.MANY_HOSPITALS`` hospitals: the spread of their AUC, and the lowest by name.

    A steward sees the consortium's bands (no hospital named in them) with
    their own hospital's line, and no other hospital by name (docs/tenancy.md).
    """
    if not (bands["released"] > 0).any():
        no_hospital_auc()
        return
    steward = page.user.role == "steward"
    own = None
    if steward:
        own = tenancy.with_site_labels(
            tenancy.own_hospital_only(
                spread.hospital_rounds(store, run_id, list(sites)), page.user, run["data_dir"]
            ),
            sites,
        )
    st.altair_chart(charts.hospital_bands(bands, own=own))
    last = bands.row(-1, named=True)
    st.caption(
        f"{last['hospitals']:,} hospitals are too many to draw one by one, so the bands show "
        "how their AUC for the global model spreads in each round: half of the hospitals lie "
        "in the dark band (25th to 75th percentile), 80% in the light one (10th to 90th), and "
        f"the line is the median. In round {last['round']}, {last['released']:,} hospitals' AUCs "
        "are released and counted. "
        + ("The dashed line is your hospital. " if own is not None and own.height else "")
        + WITHHELD_NOTE
        + explainer.what_is("small-counts")
    )
    if steward:
        return
    worst = tenancy.with_site_labels(spread.lowest(figures), sites)
    if worst.is_empty():
        return
    st.altair_chart(
        charts.hospital_metric_bars(
            worst, title=f"The {worst.height} lowest AUCs in round {last['round']}"
        )
    )
    st.caption(
        f"The hospitals where the global model does worst in round {last['round']}, lowest "
        "first: where a fair model needs work. Hospitals whose AUC is withheld are not ranked."
    )


def hospital_search(figures: pl.DataFrame) -> dict[str, str]:
    """Search the last round's hospitals (``figures``) by name; ``id -> label`` of those found."""
    st.subheader("Find a hospital")
    text = st.text_input(
        "Hospital name contains", key="hospital_search", placeholder="Type part of a name"
    )
    names = sites if sites.names else drilldown.run_hospitals(store, run_id, sites)
    found, total = spread.find_hospitals(names, figures, text)
    if found.is_empty():
        st.info(f"No hospital's name contains “{text}”." if text else "No hospital to show.")
        return {}
    st.dataframe(
        found.select(
            pl.col("name").alias("Hospital"),
            pl.col("n").alias("Test patients"),
            pl.col("auc").alias("AUC"),
            pl.col("accuracy").alias("Accuracy"),
            pl.col("loss").alias("Log loss"),
        ),
        hide_index=True,
        height=min(38 + 35 * found.height, 320),
    )
    st.caption(
        f"{total:,} hospital(s) "
        + (f"with “{text}” in their name" if text else "in this run")
        + (f"; the first {found.height:,} by name are listed" if total > found.height else "")
        + ". Each one's figures in the last round, as released: empty where withheld. Pick one "
        "below for its rounds."
    )
    return dict(found.select("hospital", "name").iter_rows())


def round_time(store, run_id: str) -> None:
    """Where each round's time went, by phase, as the run's coordinator timed it."""
    phases = dashboard.round_phases(runlog.phases_frame(store, run_id))
    if phases.is_empty():
        st.caption("This run recorded no phase timings (runs before they were kept).")
        return
    st.altair_chart(charts.round_phase_bars(phases))
    st.caption(
        "Seconds of each round by phase, as the coordinating server timed them: configure "
        "(sampling hospitals, building messages), train (from sending the model to the last "
        "hospital's update), aggregate, evaluate (every hospital's test split) and record "
        "(writing the round to the metrics store). The same phases are OpenTelemetry spans "
        "when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/telemetry.md)."
    )


def hospital_drill_down(run: dict, names: dict[str, str], *, first: bool = True) -> None:
    """One hospital, picked by name among ``names`` (id -> label): its rows, weight, AUC, events.

    Without ``first``, nothing is picked (nor read) until the reader picks: among
    thousands of hospitals the first by name is no better a default than any.
    """
    st.subheader("One hospital")
    federation = drilldown.federation_of(run["data_dir"])
    if not names:
        st.info("No hospital has answered a round yet.")
        return
    hospital = st.selectbox(
        "Hospital",
        list(names),
        format_func=names.get,
        key="drill_hospital",
        index=0 if first else None,
        placeholder="Pick a hospital found above",
    )
    if hospital is None:
        return
    detail = drilldown.hospital_detail(store, run_id, hospital, federation, sites)
    cells = st.columns(4)
    cells[0].metric("Training rows", f"{detail.train_rows:,}" if detail.train_rows else "–")
    cells[1].metric("Test patients", f"{detail.test_rows:,}" if detail.test_rows else "–")
    cells[2].metric(
        "Weight in the average",
        f"{detail.weight:.1%}" if detail.weight is not None else "–",
        help="Its share of all training rows: its update's weight in FedAvg/FedProx when "
        "every hospital answers.",
    )
    cells[3].metric("Rounds answered", f"{detail.answered} of {run['rounds_planned']}")
    if detail.withheld:
        st.info(
            f"{detail.name}'s figures are withheld: its test split holds fewer than 11 patients "
            "with or without the outcome, so its AUC could give patients away. "
            + explainer.what_is("small-counts", "Why?")
        )
    else:
        scores = dashboard.metrics_long(detail.rounds, ("auc", "accuracy")).drop_nulls("value")
        st.altair_chart(
            charts.metric_lines(
                scores, title=f"{detail.name}: AUC and accuracy by round", y_title="Score (0–1)"
            )
        )
        st.caption(
            f"The global model of each round on {detail.name}'s own test patients, as "
            "released (rounded to 3 decimals). " + explainer.what_is("auc")
        )
    if detail.events.is_empty():
        st.caption(
            f"{detail.name}: no failure, drop-out or attack drill recorded. Update size is not "
            "recorded per hospital: every update is one full copy of the model's weights."
        )
    else:
        st.dataframe(detail.events, hide_index=True)
        st.caption(f"What happened to {detail.name} in this run: failures, drop-outs, drills.")


def safeguards(run: dict, rounds: pl.DataFrame) -> None:
    """Epsilon spent (DP runs), attackers and dropped hospitals, when the run has any."""
    config, events = run["config"], runlog.events_frame(store, run_id)
    epsilon = safety.epsilon_spent(rounds)
    if epsilon is not None:
        st.subheader("Privacy")
        budget = config.get("dp_epsilon_budget") or None
        left, right = st.columns([1, 3])
        left.metric(
            "Privacy spent (ε)",
            f"{epsilon:.3g}",
            help=f"At δ = {config.get('dp_delta', 1e-5):g}; lower is more private.",
        )
        if budget:
            left.metric("Budget (ε)", f"{budget:g}", delta=f"{budget - epsilon:.3g} left")
        with right:
            st.altair_chart(
                privacy_charts.epsilon_by_round(
                    safety.epsilon_frame(rounds), delta=config.get("dp_delta", 1e-5), budget=budget
                )
            )
            st.caption(
                f"{safety.privacy_summary(config)} ε adds up over rounds (Flower's RDP "
                "accountant, no sampling amplification: an upper bound)."
            )
    secure = safety.secure_aggregation_line(events)
    if secure:
        st.subheader("Secure aggregation")
        st.caption(
            f"{secure[0].upper()}{secure[1:]}. The server received only masked models; each "
            "round's global model is their unmasked sum, never one hospital's model."
        )
    withdrawn = tenancy.run_consent_line(events, sites)
    if withdrawn:
        st.subheader("Consent")
        st.caption(withdrawn)
    adversaries = safety.adversaries_line(events, config.get("attack"), sites)
    dropped = safety.dropped_frame(events, sites)
    if adversaries or not dropped.is_empty():
        st.subheader("Attackers and dropouts")
        if adversaries:
            st.caption(f"{adversaries}: they attack every round, chosen from the seed.")
        if not dropped.is_empty():
            st.dataframe(dropped, hide_index=True, height=min(38 + 35 * dropped.height, 250))
            st.caption(
                "Hospitals dropped from each round's training (simulated dropout or timeout)."
            )


def request_cancel(db: str, run: str) -> None:
    """On the click, before the page reruns: raise the run's flag and say so, then record it.

    The flag file needs no lock, so the run sees it before its next round
    and the toast shows at once; the store's record waits for its lock.
    """
    signal_cancel(db, run)
    st.toast("Cancel requested: the run stops after its current round.")
    cancel_run(db, run)


watch()
if active and page.can("cancel"):
    st.button(
        "Cancel run",
        icon=":material/stop_circle:",
        on_click=request_cancel,
        args=(store.path, run_id),
    )
