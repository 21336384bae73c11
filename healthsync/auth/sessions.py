"""Logins: an expiring lockout around streamlit-authenticator, and which sessions still count.

streamlit-authenticator 0.4.2 ("stauth") renders the login form, checks the
bcrypt hash and keeps the login in a cookie: a JWT ``{username, exp_date}``
signed (HS256) with the credentials file's random cookie key. The app gives it
a fresh dict from ``login_credentials()`` on every run, never a file path, so
what it writes back (``failed_login_attempts``, ``logged_in``) dies with the run
and the credentials file stays ours. What stauth lacks is added here:

Lockout. stauth's ``max_login_attempts`` locks a name for good, so the app does
not pass it. Instead a name locked here gets, in ``login_credentials()``, a hash
no password matches: stauth cannot log it in while the lock lasts. After a
failed attempt (``authentication_status`` is False) the app reads which entry
stauth marked with ``failed_login_attempts`` and calls ``failed(name)``: five
failures in a row lock the name for five minutes, then the lock expires and the
count starts again. stauth does not say which name was typed when it is no
user's, so unknown names are not counted (``failed(None)`` only spends a bcrypt
check, as stauth skips it for them, so an unknown name takes as long as a wrong
password); the message for a wrong password is the same for every name, and
only the lock message, after five failures, tells that a name exists.

Revocation. A stauth cookie stays valid until its ``exp_date``, whatever
happens, and can be copied; logging out only deletes it from one browser. So
each user has ``sessions_after`` in the credentials file, set at logout,
password change and when the user is (re)added, and a session counts only if it
began later. A session's start (``Login.issued``) is the time of the form login,
or, for a session stauth restored from its cookie, the cookie's ``exp_date``
minus the cookie lifetime, which is a constant (``SESSION_SECONDS``): stauth's
JWT has no issue time but is always made ``now + lifetime``. Logout thus ends
every session of that user, in every browser. We chose this over a second,
revocable cookie of our own next to stauth's: one cookie, from the library, is
less to get wrong, and ending all of a user's sessions at logout errs on the
safe side. A session also ends ``SESSION_SECONDS`` after it began, as its cookie
does, and a role change applies at once (the role is read on every check).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import bcrypt
import jwt

from healthsync.auth.users import (
    SESSION_SECONDS,
    Account,
    User,
    UserStore,
    file_lock,
    unusable_hash,
    write_private,
)

LOGINS_NAME = "logins.json"
MAX_FAILURES = 5
LOCK_SECONDS = 300.0


@dataclass(frozen=True)
class Login:
    """One session's login: whose, and when it began (see the module docstring)."""

    name: str
    issued: float


class Sessions:
    """The lockout and the checks that decide whether a login still counts.

    Parameters
    ----------
    users : the credentials file.
    max_failures, lock_seconds : this many failed logins in a row lock the name
        for this long; the lock then expires and the count starts again.

    The clock is the credentials file's (``UserStore.clock``).
    """

    def __init__(
        self,
        users: UserStore,
        *,
        max_failures: int = MAX_FAILURES,
        lock_seconds: float = LOCK_SECONDS,
    ) -> None:
        self.users = users
        self.path = users.home / LOGINS_NAME
        self.max_failures = max_failures
        self.lock_seconds = lock_seconds
        self.clock = users.clock

    # ------------------------------------------------------------ lockout
    def _failures(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        return data.get("failures", {}) if isinstance(data, dict) else {}

    @contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        with file_lock(self.users.home):
            failures = self._failures()
            yield failures
            write_private(self.path, json.dumps({"failures": failures}, sort_keys=True))

    def locked_for(self, name: str) -> float:
        """Seconds until ``name`` may try again (0 when not locked)."""
        entry = self._failures().get(name, {})
        return max(0.0, float(entry.get("locked_until", 0.0)) - self.clock())

    def login_credentials(self) -> dict[str, Any]:
        """A fresh credentials dict in stauth's format, for one run of the app.

        Keyed by lower-case name (stauth lower-cases what is typed), with our
        name as ``name``. A locked user's hash matches no password.
        """
        now = self.clock()
        locked = {n for n, e in self._failures().items() if e.get("locked_until", 0.0) > now}

        def password(account: Account) -> str:
            if account.user.name in locked:
                return unusable_hash(self.users.rounds)
            return account.password_hash

        accounts = self._by_login_name().items()
        return {
            "usernames": {k: {"name": a.user.name, "password": password(a)} for k, a in accounts}
        }

    @staticmethod
    def failed_name(credentials: dict[str, Any]) -> str | None:
        """The user stauth counted a failed login for in ``credentials``, if any."""
        entries = credentials["usernames"].values()
        return next((e["name"] for e in entries if e.get("failed_login_attempts")), None)

    def failed(self, name: str | None) -> str:
        """Count a failed login of ``name`` (``None``: no such user); what to tell the user.

        Failures while a name is locked are not counted: the lock does not grow.
        """
        if name is None:
            bcrypt.checkpw(b"x", unusable_hash(self.users.rounds).encode())
            return self._wrong()
        with self._editing() as failures:
            now = self.clock()
            entry = failures.get(name, {})
            if entry.get("locked_until", 0.0) > now:
                return _locked_message(entry["locked_until"] - now)
            stale = "locked_until" in entry or now - entry.get("last", now) > self.lock_seconds
            count = 1 if stale else int(entry.get("count", 0)) + 1
            failures[name] = {"count": count, "last": now}
            if count >= self.max_failures:
                failures[name]["locked_until"] = now + self.lock_seconds
        return _locked_message(self.lock_seconds) if count >= self.max_failures else self._wrong()

    def _wrong(self) -> str:
        return (
            f"wrong user name or password ({self.max_failures} failed logins in a row lock "
            f"a user name for {self.lock_seconds / 60:g} minutes)"
        )

    # ------------------------------------------------------------ sessions
    def start(self, name: str) -> Login:
        """The login of a password stauth just accepted; the count of failures starts again."""
        if name in self._failures():
            with self._editing() as failures:
                failures.pop(name, None)
        return Login(name, self.clock())

    def from_cookie(self, token: object) -> Login | None:
        """The login a stauth cookie stands for, if it is genuine and names a user."""
        if not isinstance(token, str):
            return None
        try:
            payload = jwt.decode(token, self.users.cookie.key, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        username, expires = payload.get("username"), payload.get("exp_date")
        if not isinstance(username, str) or not isinstance(expires, int | float):
            return None
        account = self._by_login_name().get(username.lower())
        return None if account is None else Login(account.user.name, expires - SESSION_SECONDS)

    def user_for(self, login: Login | None) -> User | None:
        """The login's user with their current role, or ``None`` if the login no longer counts."""
        if not isinstance(login, Login):
            return None
        account = self.users.account(login.name)
        if account is None or login.issued <= account.sessions_after:
            return None  # removed, or logged out, or a new password since
        if self.clock() >= login.issued + SESSION_SECONDS:
            return None  # expired
        return account.user

    def end(self, name: str) -> None:
        """Log ``name`` out everywhere: no session of theirs begun until now counts any more."""
        self.users.end_sessions(name)

    def _by_login_name(self) -> dict[str, Account]:
        """Accounts by lower-case name; names that differ only in case are left out."""
        found: dict[str, list[Account]] = {}
        for account in self.users.accounts():
            found.setdefault(account.user.name.lower(), []).append(account)
        return {key: accounts[0] for key, accounts in found.items() if len(accounts) == 1}


def _locked_message(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.999), 60)
    wait = f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
    return f"too many failed logins: this user name is locked, try again in {wait}"
