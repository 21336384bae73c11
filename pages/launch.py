"""Launch: every training setting in one form; the run starts in the warm engine or its own process."""

import streamlit as st

from healthsync.cohort.facts import published_patients
from healthsync.config import ATTACKS, DP_SIDES, DP_STRATEGIES, MODELS, STRATEGIES, TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.runs import engine, lifecycle, runlog, tuning
from healthsync.views import tenancy
from pages._guard import choose_federation, require

page = require("launch")
st.title("Launch a training run")

federation = choose_federation(page)
st.caption(
    f"{federation.name}: {len(federation.hospitals)} hospitals, {published_patients(federation)}. "
    + engine.launch_note(page.settings.db)
)
labels = tenancy.site_labels(federation.data_dir, page.user)
notice = tenancy.withdrawn_notice(federation, labels)
if notice:
    st.warning(notice, icon=":material/block:")

tuned = tuning.tuned_settings(page.store, federation.data_dir)
if tuned:
    with st.container(horizontal=True, vertical_alignment="center"):
        if st.button("Use the tuned settings", icon=":material/tune:"):
            st.session_state["launch_tuned"] = {"data": str(federation.data_dir), **tuned}
            st.rerun()
        st.caption(
            "From the newest `healthsync tune` on this data set: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in tuned.items())
            + ". Chosen by federated validation loss; the trials are on the Runs page."
        )
# The form starts from the defaults, or from the tuned settings once asked for (a changed
# default is a new widget to Streamlit, so the form shows the new values).
chosen = st.session_state.get("launch_tuned", {})
d = TrainConfig()
if chosen.get("data") == str(federation.data_dir):
    d = d.replace(**{k: v for k, v in chosen.items() if k != "data"})
with st.form("launch"):
    left, right = st.columns(2)
    settings = {  # TrainConfig field -> widget value (ints stay ints, floats floats)
        "target": left.selectbox(
            "Outcome to predict",
            federation.outcomes,
            index=federation.outcomes.index(federation.default_target),
        ),
        "model": left.selectbox(
            "Model", MODELS, help="logreg: logistic regression; mlp: small neural net"
        ),
        "strategy": left.selectbox(
            "Aggregation strategy", STRATEGIES, index=STRATEGIES.index(d.strategy)
        ),
        "rounds": left.number_input(
            "Rounds",
            value=d.max_rounds,
            step=1,
            help="With automatic rounds: the most the run may train. Otherwise: exactly "
            "this many, keeping the last round's model.",
        ),
        "fraction": left.number_input("Share of hospitals per round", value=d.fraction, step=0.1),
        "local_epochs": right.number_input(
            "Local epochs per round (0: automatic)",
            value=0 if d.local_epochs == "auto" else d.local_epochs,
            min_value=0,
            step=1,
            help="0: each hospital trains about the optimiser steps below each round, "
            "ceil(steps / its batches per epoch) epochs, chosen from its own size.",
        ),
        "local_steps": right.number_input(
            "Optimiser steps per round (automatic local epochs)",
            value=d.local_steps,
            min_value=1,
            step=5,
        ),
        "batch_size": right.number_input("Batch size (patients)", value=d.batch_size, step=8),
        "lr": right.number_input("Learning rate", value=d.lr, step=0.01, format="%.4f"),
        "seed": right.number_input("Seed", value=d.seed, step=1),
    }
    auto = left.toggle(
        "Choose rounds automatically",
        value=d.auto_rounds,
        help=f"Stop when the federated validation loss has not improved for {d.patience} "
        "rounds and keep the best round's model; validation rows are "
        f"{d.validation_share:.0%} of each hospital's training rows, never test patients.",
    )
    with st.expander("Strategy options, scaling and fault drill"):
        a, b = st.columns(2)
        settings |= {
            "proximal_mu": a.number_input("FedProx μ", value=d.proximal_mu, format="%.3f"),
            "server_lr": a.number_input(
                "Server learning rate (FedAdam/Yogi/Adagrad)", value=d.server_lr, format="%.3f"
            ),
            "trim_beta": a.number_input(
                "Trimmed share (FedTrimmedAvg)", value=d.trim_beta, step=0.05
            ),
            "krum_f": b.number_input("Tolerated attackers (Krum)", value=d.krum_f, step=1),
            "min_hospitals": b.number_input(
                "Minimum hospitals per round", value=d.min_hospitals, step=1
            ),
            "block_size": b.number_input(
                "Hospitals per Flower client (0: automatic)", value=d.block_size, step=1
            ),
            "fail_hospitals": b.multiselect(
                "Hospitals that fail every round (drill)",
                federation.hospital_ids,
                format_func=lambda h: labels.label(h) or h,
            ),
        }
    with st.expander("Privacy and robustness"):
        a, b = st.columns(2)
        settings |= {
            "dp_noise": a.number_input(
                "DP noise multiplier (0: off)",
                value=d.dp_noise,
                min_value=0.0,
                step=0.1,
                help="Gaussian noise z of hospital-level differential privacy; "
                f"needs a clipping norm and strategy {' or '.join(DP_STRATEGIES)}.",
            ),
            "dp_clip": a.number_input(
                "DP clipping norm (0: off)",
                value=d.dp_clip,
                min_value=0.0,
                step=0.1,
                help="L2 norm each hospital's update is clipped to.",
            ),
            "dp_delta": a.number_input(
                "DP delta", value=d.dp_delta, step=1e-5, format="%.1e", help="δ of the reported ε."
            ),
            "dp_epsilon_budget": a.number_input(
                "Epsilon budget (0: none)",
                value=d.dp_epsilon_budget,
                min_value=0.0,
                step=1.0,
                help="The run stops, completed, before a round would spend more.",
            ),
            "dp_side": a.selectbox(
                "Clipping side",
                DP_SIDES,
                help="server: the server clips updates; client: each hospital clips its own.",
            ),
            "adversarial": b.number_input(
                "Adversarial hospitals (drill)", value=d.adversarial, min_value=0, step=1
            ),
            "attack": b.selectbox(
                "Attack", ATTACKS, index=None, placeholder="none", help="What the attackers send."
            ),
            "dropout": b.number_input(
                "Dropout probability per round", value=d.dropout, min_value=0.0, step=0.05
            ),
            "straggler_delay": b.number_input(
                "Straggler delay, up to (seconds)", value=d.straggler_delay, min_value=0.0, step=0.1
            ),
            "round_timeout": b.number_input(
                "Round timeout (seconds, 0: none)", value=d.round_timeout, min_value=0.0, step=0.1
            ),
            "secagg": b.checkbox(
                "Secure aggregation (SecAgg+)",
                value=d.secagg,
                help="The server sees only the sum of the hospitals' models, never one "
                "hospital's. Works with FedAvg or FedProx, one Flower client per hospital, "
                "at least 3 hospitals a round, and without DP.",
            ),
        }
        st.caption(
            "Differential privacy needs both noise and clipping; ε grows with rounds "
            "(noise 1.0 at δ 1e-5: 4.7 after 1 round, 19 after 10). Attackers are chosen from "
            "the seed; pair an attack with median, trimmed mean or Krum to see what holds up. "
            "Secure aggregation hides each hospital's model behind masks that cancel in the sum."
        )
    name = st.text_input(
        "Run name (optional)",
        max_chars=runlog.NAME_LENGTH,
        placeholder="e.g. FedProx against the scale attack",
        help="Shown with the run's id wherever runs are picked; names need not be unique.",
    )
    submitted = st.form_submit_button(
        "Start training", type="primary", icon=":material/play_arrow:"
    )

if submitted:
    try:
        if not settings["local_epochs"]:
            settings["local_epochs"] = "auto"
        if auto:  # the number is the most rounds the run may take
            settings |= {"rounds": "auto", "max_rounds": settings["rounds"]}
        config = TrainConfig(
            data_dir=str(federation.data_dir), db=str(page.settings.db), **settings
        )
        run_id = lifecycle.start_run(config, name=name)
    except HealthSyncError as err:
        st.error(f"Cannot start this run: {err}")
    else:
        st.session_state["live_run"] = run_id
        st.switch_page("pages/live.py", query_params={"run": run_id})
