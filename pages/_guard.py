"""The shared top of every page, and of every live fragment: check the user's role first.

Each page starts with ``page = require("<permission>")``. It checks this
session itself rather than trusting ``app.py`` to have run (until some session
has called ``st.navigation``, Streamlit serves ``pages/*.py`` by URL without
``app.py``): streamlit-authenticator must have it logged in, and our record of
the login must still count (the user exists, has not logged out or changed
password since, the login has not expired; ``healthsync.auth.sessions``). The
role is the user's current one. Without a user whose role grants the
permission, the page says why and stops before it reads any data.

A fragment's reruns (``st.fragment(run_every=...)`` polling the store) run
neither ``app.py`` nor the page's top, so a page never calls ``st.fragment``
itself: ``live_fragment`` makes the same check at the start of every rerun, and
a user logged out or removed meanwhile gets the login hint instead of the next
round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from healthsync import auth
from healthsync.data import Federation, load_federation
from healthsync.errors import HealthSyncError
from healthsync.runs.store import MetricsStore
from healthsync.views.settings import AppSettings, default_data_set, find_federations

ROOT = Path(__file__).resolve().parent.parent
#: Our record of this session's login (an ``auth.Login``), set by ``app.py`` only.
LOGIN_KEY = "healthsync_login"
#: streamlit-authenticator's own session state: whether, and as whom (lower case), it logged in.
STATUS_KEY = "authentication_status"
USERNAME_KEY = "username"


@dataclass(frozen=True)
class PageContext:
    """What a page may use once its permission is checked."""

    user: auth.User
    settings: AppSettings

    @property
    def store(self) -> MetricsStore:
        return MetricsStore(self.settings.db)

    @property
    def access(self) -> auth.AccessLists:
        """Which data sets this user may see (``healthsync.auth.access``)."""
        return auth.AccessLists(self.settings.home)

    def can(self, permission: str) -> bool:
        return self.user.can(permission)


def session_user(sessions: auth.Sessions) -> auth.User | None:
    """This session's user, if streamlit-authenticator logged it in and the login still counts."""
    login = st.session_state.get(LOGIN_KEY)
    if st.session_state.get(STATUS_KEY) is not True or not isinstance(login, auth.Login):
        return None
    if st.session_state.get(USERNAME_KEY) != login.name.lower():
        return None
    return sessions.user_for(login)


def require(permission: str) -> PageContext:
    """Stop the page unless the logged-in user's role grants ``permission``."""
    settings = AppSettings.from_env(ROOT)
    user = session_user(auth.Sessions(auth.UserStore(settings.home)))
    if user is None:
        st.title("Please log in")
        st.info("This page is only for logged-in users.")
        st.markdown("[Go to the login page](/)")
        st.stop()
    if not user.can(permission):
        st.title("Not available for your role")
        st.error(f"Your role ({user.role}) cannot open this page. Ask an admin if you need access.")
        st.stop()
    return PageContext(user, settings)


def live_fragment(
    permission: str, *, run_every: float | None = None
) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """``st.fragment(run_every=...)`` whose every rerun first checks as ``require`` does.

    The check runs inside the fragment, so on a rerun that the session no
    longer passes, the fragment shows the login hint and stops; nothing after
    it is read or sent.
    """

    def decorate(body: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(body)
        def checked() -> None:
            require(permission)
            body()

        return st.fragment(checked, run_every=run_every)

    return decorate


#: The data set this browser session chose last (its folder name), for every page's picker.
DATA_SET_KEY = "healthsync_data_set"


def choose_data_set(page: PageContext) -> Path:
    """The data-set picker that data pages start with; stops with a hint when there is none.

    It starts on the data set chosen last in this session, else ``demo``
    (``dashboard.default_data_set``), so adding a data set changes no page's default.
    """
    found = find_federations(page.settings.data_root)
    folders = page.access.visible(page.user, found)
    if not found:
        st.info(
            f"No federation found in `{page.settings.data_root}`. Create one with "
            "`healthsync data generate --out data/demo` (or `healthsync data import`), then reload."
        )
        st.stop()
    if not folders:
        st.info("No data set is shared with you yet. Ask an admin to grant you one.")
        st.stop()
    default = default_data_set(folders, st.session_state.get(DATA_SET_KEY))
    folder = st.selectbox(
        "Data set", folders, index=folders.index(default), format_func=lambda p: p.name
    )
    st.session_state[DATA_SET_KEY] = folder.name
    return folder


def choose_federation(page: PageContext) -> Federation:
    """``choose_data_set``, loaded; stops with the reason when the data set cannot be read."""
    try:
        return load_federation(choose_data_set(page))
    except HealthSyncError as err:
        st.error(str(err))
        st.stop()


if __name__ == "__main__":  # opened as a page by URL: nothing to show but the guard itself
    require("manage_users")
