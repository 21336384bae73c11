"""Which federations (data sets) each analyst and viewer may see: per-federation access lists.

Kept in ``HEALTHSYNC_HOME/access.yaml`` beside the credentials: a mapping
from a federation's resolved directory to the user names granted it.

- **Admins** see every federation.
- A **steward** sees only the federation of their hospital (``User.federation``).
- An **analyst or viewer** sees a federation without a list (every data set
  until an admin first restricts it, the demo data set included: existing
  data sets keep working), and a federation with a list only if it names them.

The first ``grant`` or ``revoke`` on a federation gives it a list, starting
from every analyst and viewer who could see it then, so restricting one user
never locks out the others silently; from then on, users added later see it
only when granted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import yaml

from healthsync.auth.users import LOCK_NAME, User, UserStore
from healthsync.background.processes import file_lock, write_private
from healthsync.errors import HealthSyncError

ACCESS_NAME = "access.yaml"
LISTED_ROLES = ("analyst", "viewer")


def federation_key(data_dir: str | os.PathLike[str]) -> str:
    """How a federation is named in the lists: its resolved directory."""
    return str(Path(data_dir).resolve())


class AccessLists:
    """The access lists in ``home`` (see the module docstring)."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.path = self.home / ACCESS_NAME

    def lists(self) -> dict[str, list[str]]:
        """``federation key -> granted user names`` for the federations that have a list."""
        if not self.path.is_file():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise HealthSyncError(f"{self.path}: unreadable access lists ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise HealthSyncError(f"{self.path}: expected federation directories mapped to lists")
        return {str(k): sorted(str(n) for n in v) for k, v in data.items()}

    def allowed(self, user: User, data_dir: str | os.PathLike[str]) -> bool:
        """Whether ``user`` may see the federation at ``data_dir`` (its runs, data and answers)."""
        return self._allowed(user, Path(data_dir), None if user.role == "admin" else self.lists())

    def visible(self, user: User, folders: Iterable[Path]) -> list[Path]:
        """The federation folders ``user`` may see, in the given order."""
        lists = None if user.role == "admin" else self.lists()
        return [f for f in folders if self._allowed(user, f, lists)]

    def check(self, user: User, data_dir: str | os.PathLike[str]) -> None:
        """Refuse, in one line, a user without access to ``data_dir``."""
        if not self.allowed(user, data_dir):
            raise HealthSyncError(
                f"{user.name} has no access to the data set {Path(data_dir).name}; an admin "
                f"grants it with `healthsync federations grant {data_dir} {user.name}`"
            )

    def grant(self, data_dir: str | os.PathLike[str], name: str, users: UserStore) -> None:
        self._change(data_dir, name, users, add=True)

    def revoke(self, data_dir: str | os.PathLike[str], name: str, users: UserStore) -> None:
        self._change(data_dir, name, users, add=False)

    def _change(
        self, data_dir: str | os.PathLike[str], name: str, users: UserStore, *, add: bool
    ) -> None:
        from healthsync.data import load_federation

        load_federation(data_dir)  # a clear error for a folder that is not a federation
        user = users.get(name)
        if user is None:
            raise HealthSyncError(f"unknown user {name!r}")
        if user.role not in LISTED_ROLES:
            raise HealthSyncError(
                f"{name} is a {user.role}: access lists are for analysts and viewers (admins "
                "see every data set, a steward their own hospital's)"
            )
        key = federation_key(data_dir)
        with file_lock(self.home / LOCK_NAME):
            lists = self.lists()
            if key not in lists:  # first restriction: everyone who could see it keeps it
                lists[key] = [u.name for u in users.users() if u.role in LISTED_ROLES]
            granted = set(lists[key])
            granted = granted | {name} if add else granted - {name}
            lists[key] = sorted(granted)
            header = "# HealthSync: who may see each federation (analysts and viewers).\n"
            write_private(self.path, header + yaml.safe_dump(lists, sort_keys=True))

    @staticmethod
    def _allowed(user: User, folder: Path, lists: dict[str, list[str]] | None) -> bool:
        if lists is None:
            return True
        key = federation_key(folder)
        if user.role == "steward":
            return user.federation == key
        granted = lists.get(key)
        return granted is None or user.name in granted
