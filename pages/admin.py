"""Users: who may log in, and with which role (admins only)."""

from collections.abc import Callable

import streamlit as st

from healthsync import auth
from healthsync.errors import HealthSyncError
from pages._guard import require
from pages.audit import audit_section

page = require("manage_users")
st.title("Users and roles")
users = auth.UserStore(page.settings.home)

if flash := st.session_state.pop("admin_flash", None):
    message, password = flash
    st.success(message)
    if password:
        st.code(password, language=None)
        st.caption(
            "This password is shown once: pass it on securely. Only a bcrypt hash is stored."
        )

listed = users.users()
st.dataframe([{"user": u.name, "role": u.role} for u in listed], hide_index=True, width=480)
st.caption(
    "Admin: everything, including this page. Analyst: launches and cancels runs, computes "
    "comparisons. Viewer: dashboards, run history and models, read-only."
)


def act(change: Callable[[], str | None], message: str, *, show: bool = False) -> None:
    """Apply a change; on success show ``message`` (and a generated password) after a rerun."""
    try:
        result = change()
    except HealthSyncError as err:
        st.error(str(err).capitalize())
        return
    st.session_state["admin_flash"] = (message, result if show else None)
    st.rerun()


names = [u.name for u in listed]
add, change, reset, remove = st.tabs(["Add user", "Change role", "Reset password", "Remove user"])
with add, st.form("add_user"):
    name = st.text_input("User name").strip()
    role = st.selectbox("Role", auth.ROLES, index=auth.ROLES.index("viewer"))
    password = st.text_input("Password (leave empty to generate one)", type="password")
    if st.form_submit_button("Add user", type="primary"):
        act(
            lambda: users.add(name, role, password or None),
            f"Added {name} as {role}.",
            show=not password,
        )
with change, st.form("change_role"):
    name = st.selectbox("User", names, key="role_user")
    role = st.selectbox("New role", auth.ROLES, key="role_new")
    if st.form_submit_button("Change role"):
        act(lambda: users.set_role(name, role), f"{name} is now {role}.")
with reset, st.form("reset_password"):
    name = st.selectbox("User", names, key="reset_user")
    if st.form_submit_button("Generate a new password"):
        act(
            lambda: users.set_password(name),
            f"New password for {name}; their sessions have ended.",
            show=True,
        )
with remove, st.form("remove_user"):
    others = [n for n in names if n != page.user.name]
    name = st.selectbox("User (not yourself)", others, key="remove_user")
    sure = st.checkbox("Yes, remove this user")
    if st.form_submit_button("Remove user"):
        if sure and name:
            act(lambda: users.remove(name), f"Removed {name}.")
        else:
            st.warning("Choose a user and tick the box to confirm.")


audit_section(page)
