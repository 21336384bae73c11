"""Users: who may log in, and with which role (admins only)."""

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from healthsync import auth
from healthsync.data import pseudonyms
from healthsync.errors import HealthSyncError
from healthsync.views.settings import find_federations
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
st.dataframe(
    [{"user": u.name, "role": u.role, "hospital": u.hospital or ""} for u in listed],
    hide_index=True,
    width=640,
)
st.caption(
    "Admin: everything, including this page. Analyst: launches and cancels runs, computes "
    "comparisons. Viewer: dashboards, run history and models, read-only. Steward: a "
    "hospital's data steward, who sees what a viewer sees but only their own hospital's "
    "per-hospital figures, plus My hospital (consent, policy, privacy spent)."
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
add, change, reset, remove, grants, site_names = st.tabs(
    ["Add user", "Change role", "Reset password", "Remove user", "Data set access", "Site names"]
)
with add, st.form("add_user"):
    name = st.text_input("User name").strip()
    role = st.selectbox("Role", auth.ROLES, index=auth.ROLES.index("viewer"))
    folders = find_federations(page.settings.data_root)
    left, right = st.columns(2)
    folder = left.selectbox(
        "Steward's data set", folders, format_func=lambda p: p.name, key="steward_data"
    )
    hospital = right.text_input("Steward's hospital id (e.g. h0001)").strip()
    password = st.text_input("Password (leave empty to generate one)", type="password")
    if st.form_submit_button("Add user", type="primary"):
        steward = role == "steward"
        act(
            lambda: users.add(
                name,
                role,
                password or None,
                federation=folder if steward else None,
                hospital=(hospital or None) if steward else None,
            ),
            f"Added {name} as {role}" + (f" of hospital {hospital}." if steward else "."),
            show=not password,
        )
    st.caption("The data set and hospital are used only for a steward.")
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

with grants, st.form("grants"):
    access = auth.AccessLists(page.settings.home)
    listed_users = [u.name for u in listed if u.role in ("analyst", "viewer")]
    left, right = st.columns(2)
    who = left.selectbox("Analyst or viewer", listed_users, key="grant_user")
    data_set = right.selectbox(
        "Data set",
        find_federations(page.settings.data_root),
        format_func=lambda p: p.name,
        key="grant_data",
    )
    grant_clicked = left.form_submit_button("Grant access")
    revoke_clicked = right.form_submit_button("Revoke access")
    if (grant_clicked or revoke_clicked) and who and data_set:
        change_access = access.grant if grant_clicked else access.revoke
        act(
            lambda: change_access(data_set, who, users),
            f"{who} {'may' if grant_clicked else 'may no longer'} see {data_set.name}.",
        )
    lists = access.lists()
    st.caption(
        "Admins see every data set and a steward their own hospital's. A data set without a "
        "list is open to every analyst and viewer; the first grant or revoke starts its list "
        "from everyone who could see it. "
        + (
            " ".join(f"{Path(k).name}: {', '.join(v) or 'nobody'}." for k, v in lists.items())
            if lists
            else "No data set is restricted yet."
        )
    )


with site_names:
    folders = find_federations(page.settings.data_root)
    folder = st.selectbox("Data set", folders, format_func=lambda p: p.name, key="pseudo_data")
    if folder is not None:
        hidden = pseudonyms.is_pseudonymous(folder)
        wanted = st.toggle(
            "Pseudonymous sites: analysts and viewers see “Site A, Site B…”",
            value=hidden,
            key=f"pseudo_{folder.name}",
        )
        if wanted != hidden:
            act(
                lambda: (
                    pseudonyms.set_pseudonymous(folder, wanted, by=f"{page.user.name} (admin)")
                    and None
                ),
                f"{folder.name}: hospitals are shown "
                + ("by pseudonym to analysts and viewers." if wanted else "by name again."),
            )
    st.caption(
        "When on, analysts and viewers see every hospital of the data set as “Site A”, "
        "“Site B”… (in hospital id order) and never its name or id, on every page and "
        "download. You see “Name (Site C)”; a steward sees their own hospital by name. "
        "Also `healthsync federations pseudonymise DIR --on|--off`."
    )


audit_section(page)
