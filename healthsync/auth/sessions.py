"""Logins: throttled wrong passwords, and which sessions count, around streamlit-authenticator.

streamlit-authenticator 0.4.2 ("stauth") renders the login form, checks the
bcrypt hash and keeps the login in a cookie: a JWT ``{username, exp_date}``
signed (HS256) with the credentials file's random cookie key. The app gives it
a fresh dict from ``login_credentials()`` on every run, never a file path, so
what it writes back (``failed_login_attempts``, ``logged_in``) dies with the run
and the credentials file stays ours. What stauth lacks is added here, in
``logins.json`` next to the credentials (mode 0600; addresses and cookies in it
are keyed HMACs, never in clear).

Wrong passwords. stauth's ``max_login_attempts`` locks a name for good, and any
lock on a name alone lets anyone who knows the name keep its user out (five
wrong passwords every five minutes did). What we chose instead is what identity
providers call smart lockout: failures are counted per user name *and client
address* (``st.context.ip_address``: the connection's peer, or, behind a proxy on
this machine, the address that proxy forwards; uvicorn trusts ``X-Forwarded-For``
only from ``FORWARDED_ALLOW_IPS``, 127.0.0.1 by default):

- five failures in a row from one address make *that address* wait before it
  may try that name again: 5 minutes, then twice as long at each new lock, at
  most an hour, forgotten after a day without failures. Other addresses are
  not affected, so one client can never keep anyone else out;
- addresses a user has logged in from before ("usual" ones, the last 16) are
  never held back by failures elsewhere;
- all other ("new") addresses of a name share one more counter, so that a
  guesser spreading over many addresses is slowed down too: 20 failures in a
  row from new addresses make every new address wait, with the same backoff.
  One address adds at most 4 to it, so it takes at least five addresses to
  trip it, and even then the user still logs in from a usual address.

A waiting address gets, in ``login_credentials()``, a hash no password matches
(checking it costs as much as a real check), so stauth cannot log it in. After a
failed attempt (``authentication_status`` is False) the app reads which entry
stauth marked with ``failed_login_attempts`` and calls ``failed(name, client=)``.
stauth does not say which name was typed when it is no user's, so unknown names
are not counted (``failed(None)`` spends a bcrypt check, as stauth skips it for
them, so an unknown name takes as long as a wrong password). The message for a
wrong password is the same for every name; only the wait message, after five
failures, tells that a name exists. What remains: a user at a new address can
be made to wait by an attacker with many addresses (never by one), and clients
sharing one address (a NAT, a proxy that does not forward addresses) share its
counter; the wait is then bounded by the backoff, and a usual address still works.
We chose this over a CAPTCHA (stauth 0.4.2 offers one, for every login or none,
which would burden every user) and over device cookies (stauth's cookie is its
own and dies at logout; a second cookie would mean a second JavaScript cookie
writer, see below).

Login time on the server. A stauth cookie says nothing about when its login
began, only when stauth means it to expire, and anyone with the key can make
one. So each form login the server accepts is recorded here (``issued_cookie``),
keyed by an HMAC of the cookie's signed claims, with the time the password was
typed. A cookie logs a new session in only if such a record exists
(``from_cookie``), and the session's start is the record's time, whatever the
cookie's ``exp_date`` says. A session then counts only if it began after the
user's ``sessions_after`` in the credentials file (set at logout, password
change and when the user is (re)added), and for ``SESSION_SECONDS`` at most. A
logout thus ends every session of that user, in every browser; a role change
applies at once (the role is read on every check). One cookie, from the library,
with the server deciding what it is worth, is less to get wrong than a second,
revocable cookie of our own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import bcrypt
import jwt

from healthsync.auth.users import (
    LOCK_NAME,
    SESSION_SECONDS,
    Account,
    User,
    UserStore,
    unusable_hash,
)
from healthsync.background.processes import file_lock, write_private

LOGINS_NAME = "logins.json"
MAX_FAILURES = 5
LOCK_SECONDS = 300.0
MAX_LOCK_SECONDS = 3600.0
#: Failures in a row from new addresses (at most MAX_FAILURES - 1 from each) that slow them all.
NEW_ADDRESS_FAILURES = 20
#: A counter without a failure for this long starts again from nothing, its backoff too.
FORGET_SECONDS = 86400.0
USUAL_ADDRESSES = 16
#: The counter all new addresses of a name share (per-address counters are keyed HMACs).
NEW_ADDRESSES = "new"


@dataclass(frozen=True)
class Login:
    """One session's login: whose, and when the password was typed (see the module docstring)."""

    name: str
    issued: float


class Sessions:
    """The throttle on wrong passwords and the checks that decide whether a login still counts.

    Parameters
    ----------
    users : the credentials file.
    max_failures, lock_seconds, max_lock_seconds : this many failures in a row from
        one address make it wait ``lock_seconds``, doubled at each new lock up to
        ``max_lock_seconds``.
    new_address_failures : failures in a row from all new addresses of a name
        that make every new address wait (see the module docstring).

    The clock is the credentials file's (``UserStore.clock``). Methods taking
    ``client`` want the client's address as Streamlit reports it (``None`` for
    this machine).
    """

    def __init__(
        self,
        users: UserStore,
        *,
        max_failures: int = MAX_FAILURES,
        lock_seconds: float = LOCK_SECONDS,
        max_lock_seconds: float = MAX_LOCK_SECONDS,
        new_address_failures: int = NEW_ADDRESS_FAILURES,
    ) -> None:
        self.users = users
        self.path = users.home / LOGINS_NAME
        self.max_failures = max_failures
        self.lock_seconds = lock_seconds
        self.max_lock_seconds = max_lock_seconds
        self.new_address_failures = new_address_failures
        self.clock = users.clock

    # ------------------------------------------------------------ state
    def _state(self) -> dict[str, dict[str, Any]]:
        """The counters, usual addresses and issued cookies, leaving out what is malformed.

        A damaged file must not break the login page: at worst, counts start again.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) else {}

        def part(name: str, ok: Callable[[Any], bool]) -> dict[str, Any]:
            found = data.get(name)
            return {k: v for k, v in found.items() if ok(v)} if isinstance(found, dict) else {}

        def number(value: Any) -> bool:
            return isinstance(value, int | float)

        def entry(value: Any) -> bool:
            return (
                isinstance(value, dict)
                and number(value.get("last"))
                and all(number(value.get(k, 0)) for k in ("locked_until", "locks"))
                and isinstance(value.get("from", {}), dict)
                and all(number(n) for n in value.get("from", {}).values())
            )

        return {
            "throttle": {
                name: {scope: e for scope, e in scopes.items() if entry(e)}
                for name, scopes in part("throttle", lambda v: isinstance(v, dict)).items()
            },
            "usual": {
                name: {a: t for a, t in times.items() if number(t)}
                for name, times in part("usual", lambda v: isinstance(v, dict)).items()
            },
            "cookies": part(
                "cookies",
                lambda v: (
                    isinstance(v, dict)
                    and isinstance(v.get("name"), str)
                    and number(v.get("issued"))
                ),
            ),
        }

    @contextmanager
    def _editing(self) -> Iterator[dict[str, dict[str, Any]]]:
        with file_lock(self.users.home / LOCK_NAME):
            state = self._state()
            yield state
            self._forget_old(state, self.clock())
            write_private(self.path, json.dumps(state, sort_keys=True))

    def _forget_old(self, state: dict[str, dict[str, Any]], now: float) -> None:
        for name, scopes in list(state["throttle"].items()):
            for scope, entry in list(scopes.items()):
                if entry.get("locked_until", 0.0) <= now and now - entry["last"] > FORGET_SECONDS:
                    del scopes[scope]
            if not scopes:
                del state["throttle"][name]
        cookies = state["cookies"]
        for key in [k for k, c in cookies.items() if now >= c["issued"] + SESSION_SECONDS]:
            del cookies[key]

    def _digest(self, kind: str, value: str) -> str:
        """A keyed hash: what the file may hold of an address or a cookie."""
        key = self.users.cookie.key.encode()
        return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]

    # ------------------------------------------------------------ throttle
    def _scopes(self, state: dict[str, Any], name: str, address: str) -> list[str]:
        """The counters a failure of ``name`` from ``address`` (a digest) goes to."""
        usual = address in state["usual"].get(name, {})
        return [address] if usual else [address, NEW_ADDRESSES]

    def _wait(self, state: dict[str, Any], name: str, address: str) -> tuple[float, str | None]:
        """Seconds ``address`` must wait before trying ``name``, and which counter says so."""
        now, scopes = self.clock(), state["throttle"].get(name, {})
        waits = [
            (scopes[s].get("locked_until", 0.0) - now, s)
            for s in self._scopes(state, name, address)
            if s in scopes
        ]
        wait, scope = max(waits, default=(0.0, None))
        return (wait, scope) if wait > 0 else (0.0, None)

    def locked_for(self, name: str, *, client: str | None) -> float:
        """Seconds until ``client`` may try ``name`` again (0 when it may now)."""
        return self._wait(self._state(), name, self._address(client))[0]

    def login_credentials(self, *, client: str | None) -> dict[str, Any]:
        """A fresh credentials dict in stauth's format, for one run of the app.

        Keyed by lower-case name (stauth lower-cases what is typed), with our
        name as ``name``. A name ``client`` must wait for gets a hash no
        password matches.
        """
        state, address = self._state(), self._address(client)

        def password(account: Account) -> str:
            if self._wait(state, account.user.name, address)[0] > 0:
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

    def failed(self, name: str | None, *, client: str | None) -> str:
        """Count a failed login of ``name`` (``None``: no such user) from ``client``; the message.

        Failures while ``client`` must wait are not counted: the wait does not grow.
        """
        if name is None:
            bcrypt.checkpw(b"x", unusable_hash(self.users.rounds).encode())
            return self._wrong()
        address = self._address(client)
        with self._editing() as state:
            wait, scope = self._wait(state, name, address)
            if not wait:
                now, scopes = self.clock(), state["throttle"].setdefault(name, {})
                for counter in self._scopes(state, name, address):
                    scopes[counter] = self._count(scopes.get(counter), now, address, counter)
                wait, scope = self._wait(state, name, address)
        if not wait:
            return self._wrong()
        wait_text = _duration(wait)
        if scope == NEW_ADDRESSES:
            return (
                f"too many failed logins for this user name from new addresses: try again in "
                f"{wait_text}, or from an address you logged in from before"
            )
        return f"too many failed logins from this address: try again in {wait_text}"

    def _count(self, entry: dict[str, Any] | None, now: float, address: str, scope: str) -> dict:
        """``entry`` after one more failure from ``address``: a new lock once it has enough."""
        entry = dict(entry or {})
        if now - entry.get("last", now) > FORGET_SECONDS:
            entry = {}
        if "locked_until" in entry or now - entry.get("last", now) > self.lock_seconds:
            entry.pop("locked_until", None)  # a new row of failures
            entry["from"] = {}
        shared = scope == NEW_ADDRESSES
        sources = entry.setdefault("from", {})
        cap = self.max_failures - 1 if shared else self.max_failures
        sources[address] = min(sources.get(address, 0) + 1, cap)
        entry["last"] = now
        if sum(sources.values()) >= (self.new_address_failures if shared else self.max_failures):
            entry["locks"] = entry.get("locks", 0) + 1
            wait = self.lock_seconds * 2 ** (entry["locks"] - 1)
            entry["locked_until"] = now + min(wait, self.max_lock_seconds)
        return entry

    def _wrong(self) -> str:
        return (
            f"wrong user name or password (after {self.max_failures} failed logins in a row, "
            "this address must wait before trying that name again)"
        )

    def _address(self, client: str | None) -> str:
        return self._digest("address", client or "this machine")

    # ------------------------------------------------------------ sessions
    def start(self, name: str, *, client: str | None) -> Login:
        """The login of a password stauth just accepted: its address is usual for ``name`` now.

        That address's count of failures for ``name`` starts again.
        """
        address = self._address(client)
        with self._editing() as state:
            now = self.clock()
            state["throttle"].get(name, {}).pop(address, None)
            usual = state["usual"].setdefault(name, {})
            usual[address] = now
            for old in sorted(usual, key=usual.get)[:-USUAL_ADDRESSES]:
                del usual[old]
        return Login(name, now)

    def issued_cookie(self, login: Login, expiry: float) -> None:
        """Record that stauth issued the cookie of ``login`` with this ``exp_date``.

        Only a recorded cookie logs a session in (``from_cookie``), as that login.
        """
        key = self._digest("cookie", json.dumps([login.name.lower(), expiry]))
        with self._editing() as state:
            state["cookies"][key] = {"name": login.name, "issued": login.issued}

    def from_cookie(self, token: object) -> Login | None:
        """The recorded login a stauth cookie stands for, if genuine; ``None`` for any other value.

        Anything stauth itself would fail on (another algorithm, missing or
        mistyped claims) is ``None`` here, so the app can keep such a cookie
        away from stauth.
        """
        if not isinstance(token, str):
            return None
        try:
            claims = jwt.decode(token, self.users.cookie.key, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        username, expiry = claims.get("username"), claims.get("exp_date")
        if not isinstance(username, str) or not isinstance(expiry, int | float):
            return None
        recorded = self._state()["cookies"].get(
            self._digest("cookie", json.dumps([username, expiry]))
        )
        account = self._by_login_name().get(username.lower())
        if not isinstance(recorded, dict) or account is None:
            return None
        if recorded.get("name") != account.user.name:
            return None
        return Login(account.user.name, float(recorded["issued"]))

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
        with self._editing() as state:
            cookies = state["cookies"]
            for key in [k for k, c in cookies.items() if c.get("name") == name]:
                del cookies[key]

    def _by_login_name(self) -> dict[str, Account]:
        """Accounts by lower-case name; names that differ only in case are left out."""
        found: dict[str, list[Account]] = {}
        for account in self.users.accounts():
            found.setdefault(account.user.name.lower(), []).append(account)
        return {key: accounts[0] for key, accounts in found.items() if len(accounts) == 1}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.999), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
