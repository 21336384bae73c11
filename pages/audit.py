"""Cohort audit log for admins: a section for the Admin page, or a page of its own.

The Admin page can show it with ``from pages.audit import audit_section``
and ``audit_section(page)``; opened as a page, it checks the admin role first.
"""

import streamlit as st

from healthsync.cohort import audit_log
from pages._guard import PageContext, require


def audit_section(page: PageContext) -> None:
    """The newest cohort requests: who asked what, the epsilon spent, what was hidden."""
    st.subheader("Cohort explorer audit log")
    log = audit_log(page.settings.db, limit=500)
    if log.is_empty():
        st.info("No cohort query yet.")
        return
    st.dataframe(log, hide_index=True)
    st.caption(
        "Every cohort request, newest first: answered (epsilon spent), cached (repeated, "
        "free), refused (budget exhausted), rejected (bad input or role) or failed. "
        "It holds queries and guarded summaries only, never patient data."
    )


if __name__ == "__main__":
    audit_section(require("manage_users"))
