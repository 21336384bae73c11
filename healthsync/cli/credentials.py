"""Who runs a command: ``--user`` and a password checked as the app's login checks it.

Shared by the commands a user (not only the operator) may run with their own
credentials: ``cohort``, ``hospitals withdraw|rejoin|policy`` and
``runs list|show --user``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from healthsync.errors import HealthSyncError

PASSWORD_VARIABLE = "HEALTHSYNC_PASSWORD"
#: The throttle's "address" for passwords typed at this machine's command line.
CLI_CLIENT = "command line"


def authenticate(user: str, password: str | None, home: str | Path | None) -> None:
    """Refuse unless ``password`` is ``user``'s, checked against the credentials file.

    Wrong passwords count towards the same throttle as the app's login form,
    with this machine's command line as the client address.
    """
    from healthsync import auth

    if not password:
        raise HealthSyncError(
            f"{user}'s password is needed: pass --password-stdin or set {PASSWORD_VARIABLE}"
        )
    users = auth.UserStore(auth.resolve_home(home))
    sessions = auth.Sessions(users)
    if sessions.locked_for(user, client=CLI_CLIENT) > 0:
        raise HealthSyncError(sessions.failed(user, client=CLI_CLIENT))
    if users.verify(user, password) is None:
        known = users.get(user) is not None
        reason = sessions.failed(user if known else None, client=CLI_CLIENT)
        wrong = "wrong user name or password"
        raise HealthSyncError(reason.replace(wrong, f"{wrong} for {user!r}", 1))


def read_password(from_stdin: bool) -> str | None:
    """The password from standard input's first line, or else ``$HEALTHSYNC_PASSWORD``."""
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n") or None
    return os.environ.get(PASSWORD_VARIABLE) or None
