"""My hospital: a data steward's window on their own hospital (stewards only)."""

import streamlit as st

from healthsync.data import own_statistics
from healthsync.errors import HealthSyncError
from healthsync.privacy import consent
from healthsync.privacy.site import Site, change_policy
from healthsync.views import my_hospital
from pages._guard import require

page = require("govern_hospital")
try:
    site = my_hospital.my_site(page.user)
except HealthSyncError as err:
    st.title("My hospital")
    st.error(str(err))
    st.stop()
st.title(f"My hospital: {site.name}")
if flash := st.session_state.pop("my_hospital_flash", None):
    st.success(flash)

withdrawn = site.withdrawal()
st.caption(
    f"{site.hospital} in {site.federation.name}. Only you, its data steward, see this page's "
    "figures; everyone else sees your hospital only through the consortium's released aggregates."
)

st.subheader("Taking part")
if withdrawn:
    st.warning(withdrawn.describe(site.name), icon=":material/block:")
else:
    st.success("Your hospital takes part in training runs and cohort queries.")
with st.form("consent"):
    reason = st.text_input("Reason (recorded)")
    label = "Rejoin the consortium" if withdrawn else "Withdraw my hospital"
    if st.form_submit_button(label, type="primary"):
        action = "rejoin" if withdrawn else "withdraw"
        try:
            change = consent.record(
                site.site_dir, action, f"{page.user.name} ({page.user.role})", reason
            )
        except HealthSyncError as err:
            st.error(str(err).capitalize())
        else:
            st.session_state["my_hospital_flash"] = change.describe(site.name)
            st.rerun()
st.caption(
    "Withdrawing takes effect at once: new runs and cohort answers leave your hospital out, a "
    "run in progress drops it from its next round, and your hospital's own node refuses any "
    "work it is still sent. Every change is kept in your hospital's folder."
)
history = my_hospital.consent_history(site)
if not history.is_empty():
    st.dataframe(history, hide_index=True)

st.subheader("Your data")
stats = my_hospital.statistics(site)
if stats is None:
    st.info(
        "Your hospital has not computed its own statistics yet. Run "
        f"`healthsync data publish --data {site.federation.data_dir}` where its data lives."
    )
else:
    numeric, categorical, outcomes = own_statistics.frames(stats)
    cols = st.columns(3)
    cols[0].metric("Patients", f"{stats['patients']:,}")
    cols[1].metric("Training rows", f"{stats['splits'].get('train', 0):,}")
    cols[2].metric("Test rows", f"{stats['splits'].get('test', 0):,}")
    st.dataframe(numeric, hide_index=True)
    st.caption("Each numeric feature over all your patients (exact: this is your own data).")
    left, right = st.columns(2)
    left.dataframe(categorical, hide_index=True)
    left.caption("Patients per category.")
    right.dataframe(outcomes, hide_index=True)
    right.caption("Cases and prevalence of each outcome.")

st.subheader("Runs")
runs = my_hospital.site_runs(page.store, site)
if runs.is_empty():
    st.info("No training run on your hospital's federation yet.")
else:
    st.dataframe(runs, hide_index=True)
    st.caption(
        "Per run: rounds your site answered, rounds it missed (failed or dropped), whether it "
        "was left out because it withdrew, and how many of its test patients each round "
        "evaluated (training used its whole training split)."
    )
gave = my_hospital.what_federation_gave(page.store, site)
if not gave.is_empty():
    st.dataframe(gave, hide_index=True)
    st.caption(
        "What the federation gave your hospital: AUC on your test patients of the federated "
        "model, a model trained on your data alone (local-only) and a pooled reference."
    )

st.subheader("Privacy spent on your patients")
spent = my_hospital.privacy_by_analyst(site)
if spent.is_empty():
    st.info("No query has touched your hospital's data yet.")
else:
    st.dataframe(spent, hide_index=True)
    st.caption("Epsilon each user has spent on your patients, from your hospital's own ledger.")
    with st.expander("Every query that touched your data"):
        st.dataframe(my_hospital.query_audit(site), hide_index=True)

st.subheader("Your hospital's policy")
policy = Site(site.folder).policy
with st.form("policy"):
    a, b, c = st.columns(3)
    min_cell = a.number_input("Minimum cell size", value=policy.threshold, min_value=11, step=1)
    per_query = b.number_input(
        "Epsilon per query", value=policy.epsilon_per_query, min_value=0.01, format="%.2f"
    )
    total = c.number_input(
        "Epsilon per analyst (total)", value=policy.budget, min_value=0.01, format="%.2f"
    )
    reason = st.text_input("Reason (recorded)", key="policy_reason")
    if st.form_submit_button("Tighten policy"):
        try:
            change_policy(
                site.folder,
                by=page.user.name,
                role=page.user.role,
                settings={
                    "min_cell": int(min_cell),
                    "epsilon_per_query": float(per_query),
                    "epsilon_total": float(total),
                },
                reason=reason,
            )
        except HealthSyncError as err:
            st.error(str(err).capitalize())
        else:
            st.session_state["my_hospital_flash"] = "Policy updated."
            st.rerun()
st.caption(
    "You can only tighten your hospital's policy; only an admin can loosen it, with a reason "
    "that is recorded here. Your hospital's own node enforces it for every user, admins too."
)
changes = my_hospital.policy_changes(site)
if not changes.is_empty():
    st.dataframe(changes, hide_index=True)
