"""Users and roles: the credentials file with bcrypt hashes and the session cookie's settings.

Everything lives in ``HEALTHSYNC_HOME`` (default ``.healthsync/`` in the
checkout, never committed), so nothing secret is hard-coded. ``credentials.yaml``
(mode 0600) holds, per user, a role, a bcrypt hash and ``sessions_after``: the
time before which none of their sessions count any more (set when the user is
added, changes password or logs out; see ``healthsync.auth.sessions``). It also
holds the session cookie's name and random signing key. It is created on first
use with one ``admin`` whose generated password is returned once to be shown.
"""

from __future__ import annotations

import functools
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

from healthsync.background.processes import file_lock, write_private
from healthsync.errors import HealthSyncError

ROLES: tuple[str, ...] = ("admin", "analyst", "viewer", "steward")
#: What each role may do; pages and buttons ask ``can(role, permission)``.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"view", "launch", "cancel", "explore", "compare", "manage_users"}),
    "analyst": frozenset({"view", "launch", "cancel", "explore", "compare"}),
    "viewer": frozenset({"view"}),
    # A hospital's data steward: sees what a viewer sees, and governs their own hospital
    # (consent, site policy); bound to one hospital of one federation (``User.hospital``).
    "steward": frozenset({"view", "govern_hospital"}),
}
CHECKOUT = Path(__file__).resolve().parent.parent.parent
DEFAULT_HOME = ".healthsync"
CREDENTIALS_NAME = "credentials.yaml"
LOCK_NAME = ".lock"  # held while the files in the home are read, changed and written back
#: How long a login lasts, counted on the server from the form login whatever its cookie
#: says (``healthsync.auth.sessions``); the cookie is made to expire with it.
SESSION_SECONDS = 12 * 3600.0
MIN_PASSWORD = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class User:
    """A user as the app sees them: a name and one role.

    A steward is bound to one hospital (``hospital``) of one federation
    (``federation``: the data set's directory, resolved); other roles have neither.
    """

    name: str
    role: str
    federation: str | None = None
    hospital: str | None = None

    def stewards(self, data_dir: str | os.PathLike[str], hospital: str) -> bool:
        """Whether this user is the steward of ``hospital`` in the federation at ``data_dir``."""
        return (
            self.role == "steward"
            and self.hospital == hospital
            and self.federation == str(Path(data_dir).resolve())
        )

    def can(self, permission: str) -> bool:
        return can(self.role, permission)


@dataclass(frozen=True)
class Account:
    """A user with what logging in needs: the bcrypt hash and when their sessions start to count."""

    user: User
    password_hash: str
    sessions_after: float


@dataclass(frozen=True)
class CookieSettings:
    """The session cookie: its name and the key that signs it (it lasts ``SESSION_SECONDS``)."""

    name: str
    key: str
    days: float = SESSION_SECONDS / 86400


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
    """Reject passwords too short to be safe, too long for bcrypt, or that the login form trims."""
    if len(password) < MIN_PASSWORD:
        raise HealthSyncError(f"password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise HealthSyncError(f"password must be at most {MAX_PASSWORD_BYTES} bytes")
    if password != password.strip():
        raise HealthSyncError("password must not start or end with a space")
    return password


@functools.cache
def unusable_hash(rounds: int) -> str:
    """A bcrypt hash of a random secret: checking against it costs as much as a real check."""
    return bcrypt.hashpw(secrets.token_urlsafe(32).encode(), bcrypt.gensalt(rounds)).decode()


class UserStore:
    """The credentials file: users, roles, bcrypt hashes and the cookie signing key.

    Parameters
    ----------
    home : directory holding ``credentials.yaml`` (see ``resolve_home``).
    rounds : bcrypt cost; tests lower it to stay fast.
    clock : seconds since the epoch, for ``sessions_after``; tests pass a fake one.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        rounds: int = 12,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = Path(home)
        self.path = self.home / CREDENTIALS_NAME
        self.rounds = rounds
        self.clock = clock

    # ------------------------------------------------------------ file
    def ensure(self) -> str | None:
        """Create the file on first use; return the generated admin password only then."""
        if self.path.exists():
            return None
        with file_lock(self.home / LOCK_NAME):
            if self.path.exists():
                return None
            password = generate_password()
            self._write(
                {
                    "cookie": {"name": "healthsync_session", "key": secrets.token_hex(32)},
                    "users": {"admin": self._new_entry("admin", password)},
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
        write_private(self.path, header + yaml.safe_dump(data, sort_keys=True))

    @contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        with file_lock(self.home / LOCK_NAME):
            data = self._read()
            yield data
            self._write(data)

    def _new_entry(self, role: str, password: str) -> dict[str, Any]:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(self.rounds)).decode()
        return {"role": role, "password": hashed, "sessions_after": self.clock()}

    # ------------------------------------------------------------ reads
    @property
    def cookie(self) -> CookieSettings:
        cookie = self._read()["cookie"]
        return CookieSettings(str(cookie["name"]), str(cookie["key"]))

    def accounts(self) -> list[Account]:
        """Every user with their hash, sorted by name."""
        return [_account(name, entry) for name, entry in sorted(self._read()["users"].items())]

    def account(self, name: str) -> Account | None:
        entry = self._read()["users"].get(name)
        return None if entry is None else _account(name, entry)

    def users(self) -> list[User]:
        """Every user, sorted by name."""
        return [account.user for account in self.accounts()]

    def get(self, name: str) -> User | None:
        account = self.account(name)
        return None if account is None else account.user

    def verify(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else ``None`` (same cost either way)."""
        account = self.account(name)
        candidate = password.encode()
        if account is None or len(candidate) > MAX_PASSWORD_BYTES:
            bcrypt.checkpw(b"x", unusable_hash(self.rounds).encode())
            return None
        return account.user if bcrypt.checkpw(candidate, account.password_hash.encode()) else None

    # ------------------------------------------------------------ changes
    def add(
        self,
        name: str,
        role: str,
        password: str | None = None,
        *,
        federation: str | os.PathLike[str] | None = None,
        hospital: str | None = None,
    ) -> str:
        """Add a user; return the password (generated unless given).

        A steward needs ``federation`` (a data set's directory) and ``hospital`` (one of
        its hospitals); no other role may have them.
        """
        if not NAME_PATTERN.match(name):
            raise HealthSyncError(
                f"invalid user name {name!r}: use letters, digits, '.', '_', '-' or '@'"
            )
        check_role(role)
        binding = _binding(role, federation, hospital)
        password = generate_password() if password is None else check_new_password(password)
        self.ensure()
        with self._editing() as data:
            if name in data["users"]:
                raise HealthSyncError(f"user {name!r} already exists")
            same = [n for n in data["users"] if n.lower() == name.lower()]
            if same:
                raise HealthSyncError(
                    f"user {same[0]!r} already exists (user names ignore case at login)"
                )
            data["users"][name] = {**self._new_entry(role, password), **binding}
        return password

    def set_password(self, name: str, password: str | None = None) -> str:
        """Replace a user's password (which also ends their sessions); return it."""
        password = generate_password() if password is None else check_new_password(password)
        with self._editing() as data:
            entry = self._entry(data, name)
            entry.update(self._new_entry(entry["role"], password))
        return password

    def end_sessions(self, name: str) -> None:
        """Make every session of ``name`` begun until now invalid (logout); unknown names pass."""
        with self._editing() as data:
            if name in data["users"]:
                data["users"][name]["sessions_after"] = self.clock()

    def set_role(self, name: str, role: str) -> None:
        check_role(role)
        with self._editing() as data:
            entry = self._entry(data, name)
            if (role == "steward") != (entry["role"] == "steward"):
                raise HealthSyncError(
                    f"cannot make {name!r} a {role}: a steward is bound to one hospital; remove "
                    "the user and add them again (`users add NAME --role steward --federation "
                    "DIR --hospital ID`)"
                )
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


def _account(name: str, entry: dict[str, Any]) -> Account:
    user = User(name, entry["role"], entry.get("federation"), entry.get("hospital"))
    return Account(user, str(entry["password"]), float(entry.get("sessions_after", 0.0)))


def _binding(
    role: str, federation: str | os.PathLike[str] | None, hospital: str | None
) -> dict[str, str]:
    """A steward's hospital, checked against the federation's manifest; nothing for others."""
    if role != "steward":
        if federation is not None or hospital is not None:
            raise HealthSyncError("only a steward is bound to a federation and a hospital")
        return {}
    if federation is None or not hospital:
        raise HealthSyncError("a steward needs --federation DIR and --hospital HOSPITAL_ID")
    from healthsync.data import load_federation

    loaded = load_federation(federation)
    if hospital not in loaded.hospital_ids:
        raise HealthSyncError(f"{federation}: no hospital {hospital!r} in this federation")
    return {"federation": str(Path(federation).resolve()), "hospital": hospital}
