"""Where the app finds its store, data sets and credentials, and which data set a page opens.

Read once per page from the environment; kept apart from the data shaping in
``healthsync.views.dashboard`` because every page needs it and most need nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from healthsync import auth
from healthsync.data.manifest import MANIFEST_NAME


@dataclass(frozen=True)
class AppSettings:
    """Where the app finds its store, federations and credentials.

    Read from ``HEALTHSYNC_DB``, ``HEALTHSYNC_DATA_ROOT`` and ``HEALTHSYNC_HOME``;
    relative paths are taken from the checkout root, so the app behaves the
    same whatever directory ``streamlit run`` was started from.
    """

    root: Path
    db: Path
    data_root: Path
    home: Path

    @classmethod
    def from_env(cls, root: Path, environ: Mapping[str, str] = os.environ) -> AppSettings:
        def resolve(name: str, default: str) -> Path:
            path = Path(environ.get(name) or default).expanduser()
            return path if path.is_absolute() else root / path

        return cls(
            root=root,
            db=resolve("HEALTHSYNC_DB", "data/healthsync.duckdb"),
            data_root=resolve("HEALTHSYNC_DATA_ROOT", "data"),
            home=resolve("HEALTHSYNC_HOME", auth.DEFAULT_HOME),
        )


def find_federations(data_root: Path) -> list[Path]:
    """Subfolders of ``data_root`` holding a ``federation.json``, by name."""
    if not data_root.is_dir():
        return []
    return sorted(p for p in data_root.iterdir() if (p / MANIFEST_NAME).is_file())


#: The data set pages start on when this browser session has chosen none: the one the
#: README's first command creates.
DEFAULT_DATA_SET = "demo"


def default_data_set(folders: Sequence[Path], last_used: str | None = None) -> Path | None:
    """The data set a page starts on: the one last used in this session, else ``demo``.

    Else the first by name. Never simply the first by name: data sets are
    listed by name, so adding one (``big`` before ``demo``) would silently
    change what every page shows and what Launch starts.
    """
    by_name = {p.name: p for p in folders}
    for name in (last_used, DEFAULT_DATA_SET):
        if name in by_name:
            return by_name[name]
    return folders[0] if folders else None
