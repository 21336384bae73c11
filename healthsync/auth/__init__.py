"""Who may use the app: users and roles (``users``), and logins (``sessions``).

The login itself is streamlit-authenticator's, wired in ``app.py``; this
package holds what it works from and what it lacks: the credentials file
(bcrypt hashes, roles, a random cookie key), a throttle on wrong passwords per
client address, the server's record of each login and the check that a session
still counts. The app and ``healthsync users``
share it; it never imports Streamlit.
"""

from healthsync.auth.access import AccessLists
from healthsync.auth.sessions import LOCK_SECONDS, MAX_FAILURES, Login, Sessions
from healthsync.auth.users import (
    DEFAULT_HOME,
    PERMISSIONS,
    ROLES,
    SESSION_SECONDS,
    Account,
    CookieSettings,
    User,
    UserStore,
    can,
    check_new_password,
    check_role,
    generate_password,
    resolve_home,
)

__all__ = [
    "DEFAULT_HOME",
    "LOCK_SECONDS",
    "MAX_FAILURES",
    "PERMISSIONS",
    "ROLES",
    "SESSION_SECONDS",
    "AccessLists",
    "Account",
    "CookieSettings",
    "Login",
    "Sessions",
    "User",
    "UserStore",
    "can",
    "check_new_password",
    "check_role",
    "generate_password",
    "resolve_home",
]
