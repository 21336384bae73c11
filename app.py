"""HealthSync's Streamlit entry point: page setup, login, and navigation built from the role.

``st.navigation`` is called in every run, logged out too (with only the login
page): until some session has called it, Streamlit serves every
``pages/*.py`` by URL without this file. Each page still checks the role itself
(``pages/_guard.py``). Users, lockout and session tokens live in
``healthsync.auth``; on first start it creates the credentials file and the
admin password is printed here, once.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from healthsync import auth
from healthsync.dashboard import AppSettings
from healthsync.errors import HealthSyncError
from pages._guard import TOKEN_KEY

ROOT = Path(__file__).resolve().parent
LOGGED_OUT_KEY = "logged_out"
# file, title, icon, permission needed: the one place that lists the pages.
PAGES = {
    "Federation": [("pages/overview.py", "Overview", ":material/hub:", "view")],
    "Training": [
        ("pages/launch.py", "Launch", ":material/rocket_launch:", "launch"),
        ("pages/live.py", "Live training", ":material/monitoring:", "view"),
        ("pages/runs.py", "Runs", ":material/history:", "view"),
    ],
    "Results": [("pages/model.py", "Model", ":material/model_training:", "view")],
    "Administration": [("pages/admin.py", "Users", ":material/manage_accounts:", "manage_users")],
}
# Sets or clears the session cookie in the browser (Python cannot set cookies itself).
COOKIE_JS = """
export default function ({ data }) {
  if (data && data.cookie) {
    const secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = data.cookie + "; Path=/; SameSite=Strict" + secure;
  }
}
"""

settings = AppSettings.from_env(ROOT)
users = auth.UserStore(settings.home)
if (admin_password := users.ensure()) is not None:
    print(
        f"HealthSync: created {users.path} with user 'admin', password: {admin_password}\n"
        "HealthSync: this password is shown only once; change it with "
        "`healthsync users passwd admin`",
        flush=True,
    )
session_store = auth.Sessions(users)
cookie = st.components.v2.component("healthsync_session_cookie", js=COOKIE_JS)
st.set_page_config(page_title="HealthSync", page_icon=":material/health_and_safety:", layout="wide")


def current_user() -> auth.User | None:
    """The user of this session's token (or of the cookie after a reload), checked afresh."""
    token = st.session_state.get(TOKEN_KEY)
    if token is None and not st.session_state.get(LOGGED_OUT_KEY):
        token = st.context.cookies.get(users.cookie_name)
    user = session_store.user_for(token)
    if user is None:
        st.session_state.pop(TOKEN_KEY, None)
    else:
        st.session_state[TOKEN_KEY] = token
    return user


def login_page() -> None:
    st.title("HealthSync")
    st.caption("Federated patient-risk models across hospitals. Please log in.")
    with st.form("login", border=True, width=420):
        name = st.text_input("User name", autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary")
    if submitted:
        try:
            user = session_store.login(name, password)
        except HealthSyncError as err:
            st.error(str(err).capitalize())
            return
        st.session_state.clear()
        st.session_state[TOKEN_KEY] = session_store.issue(user)
        st.rerun()


def logout() -> None:
    """End the session: revoke the token, forget all state, clear the cookie."""
    session_store.revoke(st.session_state.get(TOKEN_KEY))
    st.session_state.clear()
    st.session_state[LOGGED_OUT_KEY] = True


user = current_user()
if user is None:
    page = st.navigation([st.Page(login_page, title="Log in", icon=":material/login:")])
    cookie(data={"cookie": f"{users.cookie_name}=; Max-Age=0"}, key="cookie", height=0)
else:
    page = st.navigation(
        {
            section: [
                st.Page(path, title=title, icon=icon)
                for path, title, icon, permission in entries
                if user.can(permission)
            ]
            for section, entries in PAGES.items()
            if any(user.can(permission) for *_, permission in entries)
        }
    )
    max_age = int(session_store.session_seconds)
    token = st.session_state[TOKEN_KEY]
    cookie(
        data={"cookie": f"{users.cookie_name}={token}; Max-Age={max_age}"}, key="cookie", height=0
    )
    with st.sidebar:
        st.caption(f"Logged in as **{user.name}** ({user.role})")
        st.button("Log out", icon=":material/logout:", on_click=logout, width="stretch")
page.run()
