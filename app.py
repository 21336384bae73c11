"""HealthSync's Streamlit entry point: page setup, login, and navigation built from the role.

The login is streamlit-authenticator's: its form, its bcrypt check, and its
signed cookie that logs a browser back in. ``healthsync.auth`` adds what it
lacks (``healthsync/auth/sessions.py`` says how and why): wrong passwords
throttled per user name and client address, each form login recorded on the
server, and server-side logout. A cookie logs a session in only if the server
recorded the login that issued it; any other cookie, malformed ones included,
is kept away from streamlit-authenticator, which crashes on some. Every run
then accepts the session only if ``pages/_guard.py`` does; a session it no
longer accepts (logged out, new password, user removed, expired) is logged out
of streamlit-authenticator too, which deletes the cookie. ``st.navigation`` is
called in every run, logged out too (with only the login page): until some
session has called it, Streamlit serves every ``pages/*.py`` by URL without
this file, so each page, and each live fragment, checks the session itself. On
first start the credentials file is created and the admin password printed
here, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
import streamlit_authenticator as stauth

from healthsync import auth
from healthsync.auth.stauth_compat import SKIP_COOKIE, issued_cookie_expiry, mark_cookie_secure
from healthsync.views.settings import AppSettings
from healthsync.views.theme import theme_memory_html
from pages._guard import LOGIN_KEY, STATUS_KEY, session_user
from pages._streamlit_compat import HIDE_EMPTY_FRAMES

ROOT = Path(__file__).resolve().parent
LOGIN_FIELDS = {
    "Form name": "Log in",
    "Username": "User name",
    "Password": "Password",
    "Login": "Log in",
}
# file, title, icon, permission needed: the one place that lists the pages.
PAGES = {
    "Federation": [
        ("pages/overview.py", "Overview", ":material/hub:", "view"),
        ("pages/how_it_works.py", "How it works", ":material/school:", "view"),
        ("pages/my_hospital.py", "My hospital", ":material/local_hospital:", "govern_hospital"),
    ],
    "Training": [
        ("pages/launch.py", "Launch", ":material/rocket_launch:", "launch"),
        ("pages/live.py", "Live training", ":material/monitoring:", "view"),
        ("pages/runs.py", "Runs", ":material/history:", "view"),
    ],
    "Results": [
        ("pages/model.py", "Model", ":material/model_training:", "view"),
        ("pages/cohort.py", "Cohort explorer", ":material/groups:", "explore"),
        ("pages/stress.py", "Stress test", ":material/speed:", "view"),
    ],
    "Administration": [("pages/admin.py", "Users", ":material/manage_accounts:", "manage_users")],
}

settings = AppSettings.from_env(ROOT)
users = auth.UserStore(settings.home)
if (admin_password := users.ensure()) is not None:
    print(
        f"HealthSync: created {users.path} with user 'admin', password: {admin_password}\n"
        "HealthSync: this password is shown only once; change it with "
        "`healthsync users passwd admin`",
        flush=True,
    )
sessions = auth.Sessions(users)
cookie = users.cookie
st.set_page_config(page_title="HealthSync", page_icon=":material/health_and_safety:", layout="wide")
# streamlit-authenticator's cookie components are invisible iframes: let them take no space.
st.html(HIDE_EMPTY_FRAMES)
client = st.context.ip_address  # None on this machine; see healthsync/auth/sessions.py
# Built afresh each run: what streamlit-authenticator writes into it is dropped with the run.
credentials = sessions.login_credentials(client=client)
authenticator = stauth.Authenticate(
    credentials,
    cookie.name,
    cookie.key,
    cookie.days,
    auto_hash=False,  # the file holds bcrypt hashes only
    login_sleep_time=0,  # it reads its cookie from the request: nothing to wait for
)
if st.get_option("server.sslCertFile"):  # served over HTTPS: never send the login over HTTP
    mark_cookie_secure(authenticator)


def current_user() -> auth.User | None:
    """This session's user: logged in by the form or the cookie, and still accepted by us."""
    if not st.session_state.get(STATUS_KEY):
        log_in_from_cookie()
    user = session_user(sessions)
    if user is None and st.session_state.get(STATUS_KEY):
        end_session()
    return user


def log_in_from_cookie() -> None:
    """Let streamlit-authenticator log in from its cookie, if the server recorded that login.

    Any other cookie is never shown to it: it would accept some we do not
    (see ``Sessions.from_cookie``) and crash on others.
    """
    login = sessions.from_cookie(st.context.cookies.get(cookie.name))
    if login is None:
        st.session_state[SKIP_COOKIE] = True
        return
    try:
        authenticator.login(location="unrendered")
    except stauth.LoginError:  # removed since from_cookie looked: ignore the cookie from now on
        st.session_state[SKIP_COOKIE] = True
    if st.session_state.get(STATUS_KEY):
        st.session_state[LOGIN_KEY] = login


def end_session() -> None:
    """Log out of streamlit-authenticator (its state, and its cookie) and forget all else."""
    if st.session_state.get(STATUS_KEY):
        authenticator.logout(location="unrendered")
    for key in [k for k in st.session_state if k != SKIP_COOKIE]:
        del st.session_state[key]


def logged_in(event: dict[str, Any]) -> None:
    """streamlit-authenticator accepted a password: start our record of the login."""
    # event["username"] is the lower-cased name; "name" is ours.
    st.session_state[LOGIN_KEY] = sessions.start(event["name"], client=client)


def login_page() -> None:
    st.title("HealthSync")
    st.caption("Federated patient-risk models across hospitals. Please log in.")
    st.session_state[STATUS_KEY] = None  # so that False below means: this attempt failed
    with st.container(width=420):
        authenticator.login(key="login", fields=LOGIN_FIELDS, callback=logged_in)
        if st.session_state.get(STATUS_KEY) is False:
            message = sessions.failed(sessions.failed_name(credentials), client=client)
            st.error(message[0].upper() + message[1:])
        elif st.session_state.get(STATUS_KEY):
            expiry = issued_cookie_expiry(authenticator)
            if expiry is not None:  # only a cookie the server recorded logs a browser back in
                sessions.issued_cookie(st.session_state[LOGIN_KEY], expiry)
            # Its cookie is being set in the browser, which then reruns the app, logged in.
            st.success("Logged in, opening HealthSync…")


user = current_user()
login = st.Page(login_page, title="Log in", icon=":material/login:")
# The Light/Dark choice of the app menu holds on every page's URL (healthsync/views/theme.py).
# The paths are read before st.navigation, which gives its default page the path "".
url_paths = [login.url_path] + [st.Page(e[0]).url_path for es in PAGES.values() for e in es]
st.html(theme_memory_html(url_paths), unsafe_allow_javascript=True)
if user is None:
    page = st.navigation([login])
else:
    # Every page is registered, so a page the role may not open says so by URL (its guard's
    # "Not available for your role") instead of "Page not found"; the menu lists only the
    # role's own.
    page = st.navigation(
        {
            section: [
                st.Page(
                    path,
                    title=title,
                    icon=icon,
                    visibility="visible" if user.can(permission) else "hidden",
                )
                for path, title, icon, permission in entries
            ]
            for section, entries in PAGES.items()
        }
    )
    with st.sidebar:
        st.caption(f"Logged in as **{user.name}** ({user.role})")
        # Ends every session of this user; the run that follows logs this one out.
        st.button(
            "Log out",
            icon=":material/logout:",
            on_click=sessions.end,
            args=(user.name,),
            width="stretch",
        )
page.run()
