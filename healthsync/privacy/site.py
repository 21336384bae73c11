"""A hospital's own privacy gate: its policy, its ledger, and the noise it adds itself.

The hospital is the enforcement point. Every noisy number that leaves a
hospital is drawn here, inside that hospital's client, against a policy and a
ledger kept in the hospital's own folder (``hospitals/<id>/site/``):

- ``policy.yaml`` (optional; the defaults below otherwise): the smallest
  count the hospital lets anyone show, epsilon per query, and how much epsilon
  each user may spend on this hospital's patients;
- ``ledger.sqlite``: every value this hospital ever released (keyed by what
  it measures, never by how a query was spelled) and every charge, per user.

Nothing outside this module writes either file. The policy changes only
through :func:`change_policy` (``healthsync hospitals policy``): a steward can
only tighten it, an admin can loosen it only with a forced, recorded reason,
and every change is appended to ``site/policy-history.jsonl``. No caller can
loosen it at query time: the metrics store, the credentials home and the CLI's flags are not
read here. A request that would take a user past their budget is refused
before any noise is drawn.

**Released once.** A released value is stored under a *measurement key*: a
canonical, data-independent description of the quantity (for a count, the
predicate over columns that selects the patients; for a sum, the same plus
the column and its clipping bounds). Asking for the same quantity again, by
any user, in any spelling or inside any other query, returns the stored value
and costs nothing, so repeating or respelling a question cannot average the
noise away, and two pages showing the same quantity show the same number.
Keys never depend on the rows themselves: whether two queries share noise is
decided by their words and the schema alone (a row-set fingerprint would let
an analyst test set equality, which is exactly a membership attack).

**Accounting.** A request is a list of measurement *vectors*, each over
disjoint patient sets (cells, bins), with sensitivity 1 for counts and the
clipping radius (or its square) for sums. A vector that needs any fresh value
costs ``epsilon_per_query / len(vectors)`` (parallel composition within a
vector, sequential across vectors), so a wholly new query costs
``epsilon_per_query`` and a wholly repeated one costs 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import yaml

from healthsync.background.processes import file_lock
from healthsync.errors import HealthSyncError
from healthsync.privacy.noise import noisy_counts, noisy_sums
from healthsync.privacy.release import MIN_CELL

SITE_DIR = "site"
POLICY_NAME = "policy.yaml"
LEDGER_NAME = "ledger.sqlite"
#: Above this a query's noise stops protecting anyone; no site policy may go higher.
MAX_EPSILON_PER_QUERY = 5.0
#: The principal charged for what every viewer sees (Overview's facts).
PUBLIC = "consortium"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    key TEXT PRIMARY KEY, value REAL NOT NULL, epsilon REAL NOT NULL,
    user_name TEXT NOT NULL, released_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    user_name TEXT NOT NULL, epsilon REAL NOT NULL, charged_at REAL NOT NULL,
    query TEXT NOT NULL, fresh INTEGER NOT NULL, reused INTEGER NOT NULL
);
"""


_P = TypeVar("_P")


class SiteRefusal(HealthSyncError):
    """A hospital refused a request under its own policy (nothing was released or charged)."""


@dataclass(frozen=True)
class SitePolicy:
    """What one hospital lets leave, and how often.

    Parameters
    ----------
    threshold : smallest count shown anywhere a figure rests on this hospital's patients.
    epsilon_per_query : differential-privacy cost of one wholly new query.
    budget : epsilon each user may spend on this hospital's patients, unless ``budgets`` says.
    total_budget : epsilon all users together may spend here: bounds what any number of
        identities (colluding analysts, or names made up by someone who can edit the
        credentials file) can learn about this hospital's patients.
    budgets : per-user budgets that replace ``budget`` (0 shuts a user out).
    """

    threshold: int = MIN_CELL
    epsilon_per_query: float = 0.5
    budget: float = 10.0
    total_budget: float = 200.0
    budgets: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_limits(
            "site",
            threshold=self.threshold,
            epsilon_per_query=self.epsilon_per_query,
            budgets=self.budgets,
            budget=self.budget,
            total_budget=self.total_budget,
        )

    def budget_for(self, user: str) -> float:
        """The epsilon ``user`` may spend on this hospital's patients."""
        return float(self.budgets.get(user, self.budget))

    @classmethod
    def read(cls, path: Path) -> SitePolicy:
        """The policy in ``path``, or the defaults if there is none."""
        return read_policy(cls, path, "site")


def check_limits(
    kind: str,
    *,
    threshold: object,
    epsilon_per_query: object,
    budgets: object,
    **positive: object,
) -> None:
    """Refuse a policy that would release too much, with one line naming the setting.

    Shared by each hospital's policy and the consortium's caps
    (:class:`~healthsync.cohort.policy.CohortPolicy`).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise HealthSyncError(f"{kind} threshold must be a whole number")
    if threshold < MIN_CELL:
        raise HealthSyncError(f"{kind} threshold must be at least {MIN_CELL}")
    for name, value in {"epsilon_per_query": epsilon_per_query, **positive}.items():
        if not _positive(value):
            raise HealthSyncError(f"{kind} {name} must be a positive number")
    if epsilon_per_query > MAX_EPSILON_PER_QUERY:
        raise HealthSyncError(f"{kind} epsilon_per_query must be at most {MAX_EPSILON_PER_QUERY}")
    if not isinstance(budgets, Mapping):
        raise HealthSyncError(f"{kind} budgets must map user names to numbers")
    for user, value in budgets.items():
        if not isinstance(user, str) or not (_positive(value) or value == 0):
            raise HealthSyncError(f"{kind} budget of {user!r} must be a number >= 0")


def read_policy(cls: type[_P], path: Path, kind: str) -> _P:
    """A policy dataclass from a YAML file of its fields, or its defaults if there is none."""
    if not path.is_file():
        return cls()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        reason = " ".join(str(err).split())  # YAML errors span lines
        raise HealthSyncError(f"{path}: unreadable {kind} policy ({reason})") from None
    known = {f.name for f in fields(cls)}
    if not isinstance(data, dict) or set(data) - known:
        raise HealthSyncError(f"{path}: expected only the keys {', '.join(sorted(known))}")
    return cls(**data)


#: ``healthsync hospitals policy`` flags -> the policy fields they set, and which way is tighter.
POLICY_SETTINGS: dict[str, tuple[str, int]] = {
    "min_cell": ("threshold", +1),  # larger is tighter
    "epsilon_per_query": ("epsilon_per_query", -1),  # smaller is tighter
    "epsilon_total": ("budget", -1),  # each analyst's total on this hospital; smaller is tighter
}
POLICY_HISTORY_NAME = "policy-history.jsonl"


@dataclass(frozen=True)
class PolicyChange:
    """What one ``change_policy`` call did, as recorded in ``site/policy-history.jsonl``."""

    by: str
    role: str
    at: str
    before: dict[str, float]
    after: dict[str, float]
    loosened: list[str]
    reason: str


def change_policy(
    folder: Path,
    *,
    by: str,
    role: str,
    settings: Mapping[str, float | int | None],
    force: bool = False,
    reason: str = "",
) -> PolicyChange:
    """Set some of a hospital's policy settings, tighten-only unless an admin forces it.

    Parameters
    ----------
    folder : the hospital's own folder (``hospitals/<id>``).
    by, role : who changes it (already authenticated and allowed for this hospital).
    settings : ``min_cell``, ``epsilon_per_query``, ``epsilon_total`` (``None``: unchanged).
    force, reason : an admin may loosen a setting only with ``force`` and a ``reason``;
        a steward never may (they tighten, or ask an admin, whose loosening is recorded).

    Every change, refused ones excepted, is appended to ``site/policy-history.jsonl``
    with who, when, the settings before and after, what was loosened and why.
    """
    site_dir = Path(folder) / SITE_DIR
    wanted = {k: v for k, v in settings.items() if v is not None}
    unknown = set(wanted) - set(POLICY_SETTINGS)
    if unknown:
        raise HealthSyncError(f"unknown policy setting(s): {', '.join(sorted(unknown))}")
    if not wanted:
        raise HealthSyncError(
            "nothing to change: give --min-cell, --epsilon-per-query or --epsilon-total"
        )
    reason = " ".join(reason.split())
    with _policy_lock(site_dir):
        current = SitePolicy.read(site_dir / POLICY_NAME)
        data = _policy_fields(current)
        updated = dict(data)
        for name, value in wanted.items():
            updated[POLICY_SETTINGS[name][0]] = value
        SitePolicy(**updated)  # refuses values out of bounds (min cell below 11 ...), one line
        loosened = [
            name
            for name, value in wanted.items()
            if (value - data[POLICY_SETTINGS[name][0]]) * POLICY_SETTINGS[name][1] < 0
        ]
        if loosened and role != "admin":
            raise HealthSyncError(
                f"a {role} may only tighten this hospital's policy; loosening "
                f"{', '.join(loosened)} needs an admin (with --force and --reason, recorded)"
            )
        if loosened and not (force and reason):
            raise HealthSyncError(
                f"loosening {', '.join(loosened)} is refused without --force and --reason: it "
                "is recorded in the hospital's policy history for its steward to see"
            )
        text = yaml.safe_dump(
            {k: v for k, v in updated.items() if k != "budgets" or v}, sort_keys=True
        )
        temporary = site_dir / f".{POLICY_NAME}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, site_dir / POLICY_NAME)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        shown = {name: field for name, (field, _) in POLICY_SETTINGS.items()}
        change = PolicyChange(
            by,
            role,
            at,
            {n: data[f] for n, f in shown.items()},
            {n: updated[f] for n, f in shown.items()},
            loosened,
            reason,
        )
        line = json.dumps(change.__dict__) + "\n"
        fd = os.open(site_dir / POLICY_HISTORY_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line)
    return change


def policy_history(folder: Path) -> list[dict[str, Any]]:
    """Every recorded change of a hospital's policy, oldest first."""
    path = Path(folder) / SITE_DIR / POLICY_HISTORY_NAME
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise HealthSyncError(f"{path}: unreadable policy history ({err})") from None


def _policy_fields(policy: SitePolicy) -> dict[str, Any]:
    return {f.name: getattr(policy, f.name) for f in fields(policy)} | {
        "budgets": dict(policy.budgets)
    }


def _policy_lock(site_dir: Path) -> contextlib.AbstractContextManager[None]:
    """One writer of the site's policy and its history at a time."""
    return file_lock(site_dir / ".policy.lock")


@dataclass(frozen=True)
class Measure:
    """One vector of a request: what each element measures, its exact value, its sensitivity.

    ``keys[i]`` names what ``exact[i]`` measures (see the module docstring);
    the elements must be disjoint patient sets. ``kind`` is ``count`` (integer
    noise, sensitivity 1) or ``sum`` (real noise, sensitivity ``sensitivity``).
    """

    keys: Sequence[str]
    exact: np.ndarray
    kind: Literal["count", "sum"] = "count"
    sensitivity: float = 1.0


@dataclass(frozen=True)
class SiteAnswer:
    """What a hospital releases for one request, with its accounting."""

    values: list[np.ndarray]
    charged: float
    spent: float
    budget: float
    threshold: int
    fresh: int
    reused: int


def published_path(folder: Path | str, name: str) -> str:
    """Where the hospital in ``folder`` publishes ``name`` (:meth:`Site.publish`).

    A plain string: a reader checks 100,000 of these at a time.
    """
    return os.path.join(folder, SITE_DIR, f"published-{name}.json")


class Site:
    """One hospital's privacy gate over its own folder.

    Parameters
    ----------
    folder : the hospital's own folder (``hospitals/<id>``); the gate keeps its
        files in ``folder/site``.
    """

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder) / SITE_DIR
        self.policy = SitePolicy.read(self.dir / POLICY_NAME)

    @property
    def ledger_path(self) -> Path:
        return self.dir / LEDGER_NAME

    def release(
        self,
        user: str,
        measures: Sequence[Measure],
        *,
        query: str,
        epsilon: float | None = None,
        budget_cap: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> SiteAnswer:
        """Noisy values for ``measures``, charging ``user`` for what is new.

        Parameters
        ----------
        user : who asks (already authenticated by the caller).
        measures : the request's vectors.
        query : one line for this hospital's own audit of what touched its data.
        epsilon : the whole request's epsilon (default: this hospital's ``epsilon_per_query``);
            never more than the policy's.
        budget_cap : a cap the consortium puts on ``user``'s budget; never more than the policy's.
        rng : a seeded noise source for tests; OpenDP's samplers otherwise.

        Raises
        ------
        SiteRefusal
            When the fresh values would take ``user`` past this hospital's budget.
        """
        if not user:
            raise SiteRefusal("a request must name its user")
        per_query = min(epsilon or self.policy.epsilon_per_query, self.policy.epsilon_per_query)
        each = per_query / max(len(measures), 1)
        budget = self.policy.budget_for(user)
        if budget_cap is not None:
            budget = min(budget, budget_cap)
        with self._ledger(write=True) as con:
            known = _lookup(con, [k for m in measures for k in m.keys])
            new = [m for m in measures if any(k not in known for k in m.keys)]
            charged = each * len(new)
            spent = _spent(con, user)
            if charged and spent + charged > budget + 1e-9:
                raise SiteRefusal(
                    f"privacy budget exhausted at this hospital: {user} has spent {spent:g} of "
                    f"{budget:g} (epsilon) and this query needs {charged:g} more; repeat an "
                    "earlier query (free) or ask the hospital's data steward for more"
                )
            everyone = _spent(con, None)
            if charged and everyone + charged > self.policy.total_budget + 1e-9:
                raise SiteRefusal(
                    f"this hospital's total privacy budget is spent ({everyone:g} of "
                    f"{self.policy.total_budget:g} epsilon, all users together); only numbers "
                    "released before can still be asked for"
                )
            now = time.time()
            fresh = 0
            for measure in new:
                fresh += _draw(con, measure, known, each, rng, user, now)
            values = [
                np.asarray([known[k] for k in m.keys], dtype=np.float64).astype(
                    np.int64 if m.kind == "count" else np.float64
                )
                for m in measures
            ]
            reused = sum(len(m.keys) for m in measures) - fresh
            con.execute(
                "INSERT INTO charges VALUES (?, ?, ?, ?, ?, ?)",
                [user, charged, now, query, fresh, reused],
            )
        return SiteAnswer(
            values, charged, spent + charged, budget, self.policy.threshold, fresh, reused
        )

    def publish(self, name: str, payload: Mapping[str, Any]) -> None:
        """Write already-released values for everyone to read (``site/published-<name>.json``).

        Only values this gate released belong here; the file is replaced
        atomically, so a reader never sees half of it.
        """
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = Path(published_path(self.dir.parent, name))
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(temporary, target)

    def published(self, name: str) -> dict[str, Any] | None:
        """What :meth:`publish` wrote under ``name``, or ``None``."""
        try:
            data = json.loads(Path(published_path(self.dir.parent, name)).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def released(self, keys: Sequence[str]) -> dict[str, float]:
        """Values already released under ``keys`` (read-only; nothing is drawn or charged)."""
        if not self.ledger_path.is_file():
            return {}
        with self._ledger(write=False) as con:
            return _lookup(con, list(keys))

    def spent(self, user: str) -> float:
        """Epsilon ``user`` has spent on this hospital's patients."""
        if not self.ledger_path.is_file():
            return 0.0
        with self._ledger(write=False) as con:
            return _spent(con, user)

    def charges(self) -> list[dict[str, Any]]:
        """This hospital's audit: every request that touched its data, oldest first."""
        if not self.ledger_path.is_file():
            return []
        with self._ledger(write=False) as con:
            rows = con.execute(
                "SELECT user_name, epsilon, charged_at, query, fresh, reused FROM charges "
                "ORDER BY rowid"
            ).fetchall()
        names = ("user", "epsilon", "time", "query", "fresh", "reused")
        return [dict(zip(names, row, strict=True)) for row in rows]

    @contextlib.contextmanager
    def _ledger(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction on the ledger; SQLite's own lock serialises concurrent writers."""
        if write:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            uri = f"file:{self.ledger_path}?mode=rwc"
        else:
            uri = f"file:{self.ledger_path}?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        except sqlite3.Error as err:
            raise HealthSyncError(
                f"{self.ledger_path}: cannot open the site ledger ({err})"
            ) from None
        try:
            if write:
                # WAL: readers (the app's budget display) never block the hospital's writer;
                # NORMAL sync: a crash of the process loses nothing, only a power cut could.
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                con.executescript(_SCHEMA)
                con.execute("BEGIN IMMEDIATE")  # no other writer until we commit
            yield con
            if write:
                con.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            raise HealthSyncError(f"{self.ledger_path}: site ledger unusable ({err})") from None
        finally:
            con.close()


def _draw(
    con: sqlite3.Connection,
    measure: Measure,
    known: dict[str, float],
    epsilon: float,
    rng: np.random.Generator | None,
    user: str,
    now: float,
) -> int:
    """Fresh noise for the elements of ``measure`` not released before; how many there were."""
    fresh: dict[str, float] = {}
    for key, value in zip(measure.keys, np.asarray(measure.exact).tolist(), strict=True):
        if key not in known:
            fresh.setdefault(key, value)  # one draw per quantity, even if a vector repeats it
    exact = np.asarray(list(fresh.values()))
    if measure.kind == "count":
        noisy = noisy_counts(np.rint(exact).astype(np.int64), epsilon, rng)
    else:
        noisy = noisy_sums(exact, epsilon, measure.sensitivity, rng)
    rows = [(k, float(v), epsilon, user, now) for k, v in zip(fresh, noisy.tolist(), strict=True)]
    con.executemany("INSERT INTO releases VALUES (?, ?, ?, ?, ?)", rows)
    known.update({k: float(v) for k, v in zip(fresh, noisy.tolist(), strict=True)})
    return len(rows)


def _lookup(con: sqlite3.Connection, keys: list[str]) -> dict[str, float]:
    unique = sorted(set(keys))
    found: dict[str, float] = {}
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(
            con.execute(f"SELECT key, value FROM releases WHERE key IN ({marks})", chunk).fetchall()
        )
    return found


def _spent(con: sqlite3.Connection, user: str | None) -> float:
    """Epsilon charged to ``user``, or to everyone together for ``None``."""
    sql = "SELECT coalesce(sum(epsilon), 0) FROM charges"
    row = con.execute(sql + " WHERE user_name = ?", [user]) if user else con.execute(sql)
    return float(row.fetchone()[0])


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
