"""Pseudonymous sites: a federation setting that shows its hospitals as "Site A, Site B…".

Hospital names and ids can identify a site (ids are often real site codes), and
a consortium may not want analysts and viewers to know which hospital did
worse. The setting is the federation's own: ``DIR/site-names.json`` (mode
0600, written atomically), ``{"pseudonymous": true, "by": ..., "at": ...}``.
An admin turns it on or off (``healthsync federations pseudonymise DIR
--on|--off`` or the Users page). Who sees what is decided in one place,
``healthsync.views.tenancy.site_labels``; this module holds the setting, the
pseudonyms and :class:`SiteLabels`, the id -> label mapping every page,
download and run warning names hospitals through.

Pseudonyms follow the hospital ids in sorted order ("Site A" is the smallest
id), so they are the same on every page and for every user, and stay the same
as long as the federation's hospitals do; beyond 26 they go on "Site AA",
"Site AB"… as spreadsheet columns do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from healthsync.background.processes import read_json, write_private
from healthsync.data.manifest import Federation, load_federation

SETTINGS_NAME = "site-names.json"
#: The consortium's own rows in per-hospital frames: never a hospital, always shown.
CONSORTIUM_ROWS = ("overall",)
#: How a hospital the viewer may not see named is written in text (scrubbed messages).
OTHER_SITE = "another hospital"


def pseudonym(index: int) -> str:
    """The ``index``-th pseudonym (from 0): "Site A" … "Site Z", "Site AA", "Site AB"…"""
    if index < 0:
        raise ValueError(f"a pseudonym's index must be 0 or more, not {index}")
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return f"Site {letters}"


def pseudonyms(hospital_ids: Iterable[str]) -> dict[str, str]:
    """``hospital id -> pseudonym``, lettered in sorted id order."""
    return {h: pseudonym(i) for i, h in enumerate(sorted(hospital_ids))}


def is_pseudonymous(data_dir: str | Path) -> bool:
    """Whether the federation at ``data_dir`` shows its hospitals by pseudonym."""
    settings = read_json(Path(data_dir) / SETTINGS_NAME)
    return bool(settings and settings.get("pseudonymous") is True)


def set_pseudonymous(data_dir: str | Path, on: bool, *, by: str) -> Federation:
    """Turn pseudonyms on or off for the federation at ``data_dir``, saying who did it.

    Refuses a folder that is not a federation (``HealthSyncError``), so a typo
    never leaves a setting where no federation reads it.
    """
    federation = load_federation(data_dir)
    write_private(
        federation.data_dir / SETTINGS_NAME,
        {"pseudonymous": bool(on), "by": by, "at": datetime.now(UTC).isoformat()},
    )
    return federation


@dataclass(frozen=True)
class SiteLabels(Mapping[str, str]):
    """How one viewer sees a federation's hospitals: ``hospital id -> label``.

    ``labels`` holds the hospitals the viewer may see named, by the label they
    see (a real name, a pseudonym, or both for admins). ``hide_ids``: ids must
    not be shown either (pseudonymous sites for analysts and viewers), so
    frames show labels in their id columns. ``open``: a hospital missing from
    ``labels`` (a federation without manifest) is shown by its id; when not
    open (stewards, pseudonymous sites) it is not named at all, only counted.
    ``names`` is every hospital's real name, to find them in free text.
    """

    labels: Mapping[str, str]
    hide_ids: bool = False
    open: bool = True
    names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def real(cls, federation: Federation | None) -> SiteLabels:
        """Every hospital by its real name, ids shown: the operator's view (CLI, files)."""
        names = {h.id: h.name for h in federation.hospitals} if federation else {}
        return cls(names, names=names)

    def __getitem__(self, hospital: str) -> str:
        return self.labels[hospital]

    def __iter__(self) -> Iterator[str]:
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, hospital: str) -> str | None:
        """What the viewer sees for ``hospital``, or ``None`` if they may not see it named."""
        if hospital in self.labels:
            return self.labels[hospital]
        if hospital in CONSORTIUM_ROWS or self.open:
            return hospital
        return None

    def describe(self, hospital: str) -> str | None:
        """``'Name' (id)`` where ids may be shown, ``'Site C'`` where not, ``None`` if hidden."""
        label = self.label(hospital)
        if label is None:
            return None
        return repr(label) if self.hide_ids or label == hospital else f"{label!r} ({hospital})"

    def scrub(self, text: str) -> str:
        """``text`` with every id and real name the viewer may not see replaced by what they may.

        For messages recorded by a run (failures, withdrawals): a pseudonymous
        viewer reads "Site C", a steward reads "another hospital" for any
        hospital but their own. Unchanged for viewers who may see everything.
        Runs of words are looked up in one table, not matched against every
        name, so a federation of 10,000 hospitals scrubs a message as fast as three.
        """
        if (self.open and not self.hide_ids) or not self.names or not text:
            return text
        table, longest = self._surfaces
        words = list(_WORD.finditer(text))
        out, done, i = [], 0, 0
        while i < len(words):
            start = words[i].start()
            for k in range(min(longest, len(words) - i), 0, -1):
                surface = text[start : words[i + k - 1].end()]
                if surface in table:
                    out += [text[done:start], self._replacement(surface, table[surface])]
                    done, i = start + len(surface), i + k
                    break
            else:
                i += 1
        return "".join(out) + text[done:]

    def _replacement(self, surface: str, hospital: str) -> str:
        label = self.label(hospital)
        if label is None:
            return OTHER_SITE
        return label if self.hide_ids else surface

    @cached_property
    def _surfaces(self) -> tuple[dict[str, str], int]:
        """Every id and name (from its first word to its last) -> hospital; most words in one."""
        table: dict[str, str] = {}
        for hospital, name in self.names.items():
            for surface in (hospital, name):
                words = list(_WORD.finditer(surface))
                if words:
                    table[surface[words[0].start() : words[-1].end()]] = hospital
        longest = max((len(_WORD.findall(s)) for s in table), default=1)
        return table, longest


_WORD = re.compile(r"\w+")
