"""How it works: one round on this federation, a picture of it, and every metric in plain words."""

import streamlit as st

from healthsync.runs import runlog
from healthsync.views import explainer, tenancy
from pages._guard import choose_federation, require

page = require("view")
st.title("How it works")
st.caption(
    "Hospitals train one model together without a single patient row leaving any of them. "
    "Here is what happens in one round, on this federation, and what the numbers on every "
    "page mean."
)

federation = choose_federation(page)
runs = runlog.list_runs(
    page.store, kind=runlog.TRAINING, data_dir=federation.data_dir, limit=1
).to_dicts()
story = explainer.round_story(
    federation, runs[0] if runs else None, tenancy.site_labels(federation.data_dir, page.user)
)

st.header("One round, step by step", anchor="round")
left, right = st.columns([3, 2])
with left:
    st.graphviz_chart(story.diagram(), width="stretch")
    st.caption(
        f"One round on {federation.data_dir.name}: the global model goes out to the hospitals "
        f"({story.hospitals} here), each trains it on rows that stay inside, and only the "
        "updated weights come back to be combined into the next global model."
    )
with right:
    for number, step in enumerate(story.steps(), start=1):
        st.markdown(f"{number}. {step}")
    if story.final_auc is not None:
        st.markdown(
            f"After its last round that run's model reached an AUC of **{story.final_auc:.3f}** "
            "on every hospital's test patients ([what is AUC?](#auc))."
        )

st.header("What the numbers mean", anchor="terms")
for term in explainer.GLOSSARY:
    st.subheader(term.title, anchor=term.anchor)
    st.markdown(term.text)
