"""Who may use the app: users and roles, password hashing, login lockout and session tokens.

Everything lives in ``HEALTHSYNC_HOME`` (default ``.healthsync/`` in the
checkout, never committed), so nothing secret is hard-coded:

- ``credentials.yaml`` (mode 0600): bcrypt password hashes, each user's role
  and a random key that signs session cookies. It is created on first use
  with one ``admin`` whose generated password is returned once to be shown.
- ``logins.json`` (mode 0600): recent failed logins (for a lockout that
  expires) and logged-out session tokens (so a copied cookie dies at logout).

The app and ``healthsync users`` share this module; it never imports Streamlit.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from healthsync.errors import HealthSyncError

ROLES: tuple[str, ...] = ("admin", "analyst", "viewer")
#: What each role may do; pages and buttons ask ``can(role, permission)``.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"view", "launch", "cancel", "explore", "compare", "manage_users"}),
    "analyst": frozenset({"view", "launch", "cancel", "explore", "compare"}),
    "viewer": frozenset({"view"}),
}
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = ".healthsync"
CREDENTIALS_NAME = "credentials.yaml"
LOGINS_NAME = "logins.json"
MAX_FAILURES = 5
LOCK_SECONDS = 300.0
SESSION_SECONDS = 12 * 3600.0
MIN_PASSWORD = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# Checked against when the user is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"healthsync-dummy", bcrypt.gensalt(4))


@dataclass(frozen=True)
class User:
    """A user as the app sees them: a name and one role."""

    name: str
    role: str

    def can(self, permission: str) -> bool:
        return can(self.role, permission)


def can(role: str, permission: str) -> bool:
    """Whether ``role`` grants ``permission`` (unknown roles grant nothing)."""
    return permission in PERMISSIONS.get(role, frozenset())


def resolve_home(value: str | os.PathLike[str] | None = None, *, root: Path = CHECKOUT) -> Path:
    """``HEALTHSYNC_HOME`` (or ``value``), relative paths taken from the checkout root."""
    raw = value if value is not None else os.environ.get("HEALTHSYNC_HOME", DEFAULT_HOME)
    path = Path(raw).expanduser()
    return path if path.is_absolute() else root / path


def generate_password() -> str:
    """A random 16-character password, for new users and resets."""
    return secrets.token_urlsafe(12)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise HealthSyncError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return role


def check_new_password(password: str) -> str:
    """Reject passwords too short to be safe or too long for bcrypt."""
    if len(password) < MIN_PASSWORD:
        raise HealthSyncError(f"password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise HealthSyncError(f"password must be at most {MAX_PASSWORD_BYTES} bytes")
    return password


@contextmanager
def _file_lock(home: Path) -> Iterator[None]:
    """Serialise read-modify-write of the files in ``home`` across threads and processes."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(home / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class UserStore:
    """The credentials file: users, roles, bcrypt hashes and the cookie signing key.

    Parameters
    ----------
    home : directory holding ``credentials.yaml`` (see ``resolve_home``).
    rounds : bcrypt cost; tests lower it to stay fast.
    """

    def __init__(self, home: str | os.PathLike[str], *, rounds: int = 12) -> None:
        self.home = Path(home)
        self.path = self.home / CREDENTIALS_NAME
        self.rounds = rounds

    # ------------------------------------------------------------ file
    def ensure(self) -> str | None:
        """Create the file on first use; return the generated admin password only then."""
        if self.path.exists():
            return None
        with _file_lock(self.home):
            if self.path.exists():
                return None
            password = generate_password()
            self._write(
                {
                    "cookie": {"name": "healthsync_session", "key": secrets.token_hex(32)},
                    "users": {"admin": {"role": "admin", "password": self._hash(password)}},
                }
            )
            return password

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            raise HealthSyncError(
                f"{self.path}: no credentials yet; start the app or run `healthsync users list`"
            )
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise HealthSyncError(f"{self.path}: unreadable credentials ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
            raise HealthSyncError(f"{self.path}: not a HealthSync credentials file")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        header = "# HealthSync app users (bcrypt hashes) and cookie key. Never commit this file.\n"
        _write_private(self.path, header + yaml.safe_dump(data, sort_keys=True))

    @contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        with _file_lock(self.home):
            data = self._read()
            yield data
            self._write(data)

    def _hash(self, password: str) -> str:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(self.rounds)).decode()

    # ------------------------------------------------------------ reads
    @property
    def cookie_name(self) -> str:
        return str(self._read()["cookie"]["name"])

    @property
    def cookie_key(self) -> bytes:
        return str(self._read()["cookie"]["key"]).encode()

    def users(self) -> list[User]:
        """Every user, sorted by name."""
        users = self._read()["users"]
        return [User(name, entry["role"]) for name, entry in sorted(users.items())]

    def get(self, name: str) -> User | None:
        entry = self._read()["users"].get(name)
        return None if entry is None else User(name, entry["role"])

    def password_hash(self, name: str) -> str | None:
        entry = self._read()["users"].get(name)
        return None if entry is None else str(entry["password"])

    def verify(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else ``None`` (same cost either way)."""
        stored = self.password_hash(name)
        candidate = password.encode()
        if stored is None or len(candidate) > MAX_PASSWORD_BYTES:
            bcrypt.checkpw(b"x", _DUMMY_HASH)
            return None
        return self.get(name) if bcrypt.checkpw(candidate, stored.encode()) else None

    # ------------------------------------------------------------ changes
    def add(self, name: str, role: str, password: str | None = None) -> str:
        """Add a user; return the password (generated unless given)."""
        if not NAME_PATTERN.match(name):
            raise HealthSyncError(
                f"invalid user name {name!r}: use letters, digits, '.', '_', '-' or '@'"
            )
        check_role(role)
        password = generate_password() if password is None else check_new_password(password)
        self.ensure()
        with self._editing() as data:
            if name in data["users"]:
                raise HealthSyncError(f"user {name!r} already exists")
            data["users"][name] = {"role": role, "password": self._hash(password)}
        return password

    def set_password(self, name: str, password: str | None = None) -> str:
        """Replace a user's password (which also ends their sessions); return it."""
        password = generate_password() if password is None else check_new_password(password)
        with self._editing() as data:
            self._entry(data, name)["password"] = self._hash(password)
        return password

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        with self._editing() as data:
            entry = self._entry(data, name)
            if entry["role"] == "admin" and role != "admin":
                self._keep_an_admin(data, name, f"cannot make {name!r} a {role}")
            entry["role"] = role

    def remove(self, name: str) -> None:
        with self._editing() as data:
            if self._entry(data, name)["role"] == "admin":
                self._keep_an_admin(data, name, f"cannot remove {name!r}")
            del data["users"][name]

    def _entry(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        if name not in data["users"]:
            raise HealthSyncError(f"unknown user {name!r}")
        return data["users"][name]

    @staticmethod
    def _keep_an_admin(data: dict[str, Any], name: str, action: str) -> None:
        admins = [n for n, e in data["users"].items() if e["role"] == "admin"]
        if admins == [name]:
            raise HealthSyncError(f"{action}: it is the last admin")


class Sessions:
    """Logins with an expiring lockout, and signed session tokens that logout revokes.

    A token names the user, an expiry, a random id and a fingerprint of the
    user's password hash, signed with the credentials' cookie key: it stops
    working when it expires, at logout (its id is revoked), when the password
    changes, or when the user is removed. The role is read afresh on every
    check, so a role change applies at once.

    Parameters
    ----------
    users : the credentials file.
    max_failures, lock_seconds : this many failed logins in a row lock the name
        for this long; the lock then expires and the count starts again.
    session_seconds : lifetime of a token (and of the cookie holding it).
    clock : seconds since the epoch; tests pass a fake one.
    """

    def __init__(
        self,
        users: UserStore,
        *,
        max_failures: int = MAX_FAILURES,
        lock_seconds: float = LOCK_SECONDS,
        session_seconds: float = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.users = users
        self.path = users.home / LOGINS_NAME
        self.max_failures = max_failures
        self.lock_seconds = lock_seconds
        self.session_seconds = session_seconds
        self.clock = clock

    # ------------------------------------------------------------ state file
    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data.setdefault("failures", {})
        data.setdefault("revoked", {})
        return data

    @contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        with _file_lock(self.users.home):
            data = self._state()
            yield data
            now = self.clock()
            data["revoked"] = {k: exp for k, exp in data["revoked"].items() if exp > now}
            _write_private(self.path, json.dumps(data, sort_keys=True))

    # ------------------------------------------------------------ lockout
    def locked_for(self, name: str) -> float:
        """Seconds until ``name`` may try again (0 when not locked)."""
        entry = self._state()["failures"].get(name, {})
        return max(0.0, float(entry.get("locked_until", 0.0)) - self.clock())

    def login(self, name: str, password: str) -> User:
        """The user for a correct password; ``HealthSyncError`` for a wrong one or a lockout.

        While a name is locked, its password is not even checked, so guessing
        cannot continue; unknown names lock the same way, so the lockout does
        not reveal which names exist.
        """
        name = name.strip()
        wait = self.locked_for(name)
        if wait > 0:
            raise HealthSyncError(_locked_message(wait))
        user = self.users.verify(name, password)
        with self._editing() as data:
            failures = data["failures"]
            if user is not None:
                failures.pop(name, None)
                return user
            now = self.clock()
            entry = failures.get(name, {})
            lock_over = "locked_until" in entry and entry["locked_until"] <= now
            stale = now - entry.get("last", now) > self.lock_seconds
            count = 1 if lock_over or stale else int(entry.get("count", 0)) + 1
            entry = {"count": count, "last": now}
            if count >= self.max_failures:
                entry["locked_until"] = now + self.lock_seconds
            failures[name] = entry
        if count >= self.max_failures:
            raise HealthSyncError(_locked_message(self.lock_seconds))
        left = self.max_failures - count
        raise HealthSyncError(
            f"wrong user name or password ({left} attempt{'s' if left != 1 else ''} left "
            "before a lockout)"
        )

    # ------------------------------------------------------------ tokens
    def issue(self, user: User) -> str:
        """A signed session token for ``user``, to keep in session state and a cookie."""
        payload = {
            "u": user.name,
            "exp": int(self.clock() + self.session_seconds),
            "id": secrets.token_hex(8),
            "pw": self._fingerprint(user.name),
        }
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def user_for(self, token: str | None) -> User | None:
        """The token's user with their current role, or ``None`` if it no longer counts."""
        payload = self._payload(token)
        if payload is None or payload["id"] in self._state()["revoked"]:
            return None
        if payload["pw"] != self._fingerprint(payload["u"]):
            return None
        return self.users.get(payload["u"])

    def revoke(self, token: str | None) -> None:
        """End the token's session for good (logout)."""
        payload = self._payload(token)
        if payload is not None:
            with self._editing() as data:
                data["revoked"][payload["id"]] = payload["exp"]

    def _payload(self, token: str | None) -> dict[str, Any] | None:
        if not token or token.count(".") != 1:
            return None
        body, signature = token.split(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) <= self.clock():
            return None
        return payload

    def _sign(self, body: str) -> str:
        return hmac.new(self.users.cookie_key, body.encode(), hashlib.sha256).hexdigest()

    def _fingerprint(self, name: str) -> str | None:
        stored = self.users.password_hash(name)
        return None if stored is None else hashlib.sha256(stored.encode()).hexdigest()[:16]


def _locked_message(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.999), 60)
    wait = f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
    return f"too many failed logins: this user name is locked, try again in {wait}"
