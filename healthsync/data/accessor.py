"""One hospital's view of its own patients: the only code that reads a partition file.

Federated learning is only meaningful if each hospital trains on its own rows
alone. Every read of ``hospitals/<id>/patients.parquet`` goes through a
:class:`HospitalAccessor`, which is bound to one hospital id taken from the
manifest and refuses any path that leaves that hospital's folder, so no caller
can reach another hospital's rows by a crafted id or a symlink.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from healthsync.data.manifest import (
    HOSPITALS_DIR,
    MANIFEST_NAME,
    PARTITION_NAME,
    SPLIT_COLUMN,
    SPLITS,
    FeatureSpec,
    Federation,
    HospitalInfo,
    load_federation,
)
from healthsync.errors import HealthSyncError

if TYPE_CHECKING:
    import polars as pl

    from healthsync.privacy.site import Site


CACHE_DIR = ".cache"  # in a hospital's folder: matrices derived from its own rows


def hospital_folder(data_dir: str | Path, hospital_id: str) -> Path:
    """A hospital's own folder (rows, cache, site gate and consent); the layout stated once."""
    return Path(data_dir) / HOSPITALS_DIR / hospital_id


def partition_path(data_dir: str | Path, hospital_id: str) -> Path:
    """Where a hospital's rows live; writers use it too, so the layout is stated once."""
    return Path(data_dir) / HOSPITALS_DIR / hospital_id / PARTITION_NAME


def partition_file(data_dir: str | Path, hospital_id: str) -> str:
    """:func:`partition_path` as a plain string, for ``stat`` stamps of 100,000 hospitals at once."""
    return os.sep.join((str(data_dir), HOSPITALS_DIR, hospital_id, PARTITION_NAME))


class HospitalAccessor:
    """Reads one hospital's patients, typed as the manifest says.

    Frames have the feature columns (numeric as ``Float64``, categorical as
    ``String``), the outcome columns as ``Int8`` 0/1, and ``split``. The file
    is read once and kept, since training asks for the same rows every round.
    """

    def __init__(self, federation: Federation, hospital_id: str) -> None:
        self.federation = federation
        # Only ids listed in the manifest (all filesystem-safe) can name a folder.
        self.hospital: HospitalInfo = federation.hospital(hospital_id)
        self._rows: pl.DataFrame | None = None

    @property
    def path(self) -> Path:
        """The partition file, checked to lie inside this hospital's own folder."""
        root = _resolved(self.federation.data_dir / HOSPITALS_DIR)
        expected = root / self.hospital.id / PARTITION_NAME
        actual = Path(os.path.realpath(partition_path(self.federation.data_dir, self.hospital.id)))
        if actual != expected:
            raise HealthSyncError(
                f"{expected}: resolves to {actual}, outside hospital {self.hospital.id!r}'s folder"
            )
        return expected

    def rows(self) -> pl.DataFrame:
        """All of this hospital's patients, both splits, with the ``split`` column."""
        if self._rows is None:
            self._rows = self._read(self.path)
        return self._rows

    def derived(self, key: str, build: Callable[[pl.DataFrame], np.ndarray]) -> np.ndarray:
        """``build(self.rows())``, a matrix kept beside the partition for the next reader.

        Reading and checking a partition takes about 2 ms, and a large
        federation reads thousands of them at the start of every run (10,000
        hospitals: 20 s). The matrix is saved in this hospital's own folder as
        ``.cache/<key>-<size>-<mtime>.npy``, named by the partition file's size
        and modification time, so an edited partition is read and checked
        again; ``key`` must name everything ``build`` depends on. A folder that
        cannot be written to just goes without.
        """
        path = self.path
        try:
            stat = path.stat()
        except OSError:
            return build(self.rows())  # which names the problem
        folder = path.parent / CACHE_DIR
        cached = folder / f"{key}-{stat.st_size}-{stat.st_mtime_ns}.npy"
        if folder.is_symlink() or cached.is_symlink():  # only this hospital's own files
            return build(self.rows())
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            pass
        if self._rows is None:  # the path just checked: not resolved a second time
            self._rows = self._read(path)
        matrix = build(self._rows)
        with contextlib.suppress(OSError):
            folder.mkdir(exist_ok=True)
            for stale in folder.glob(f"{key}-*.npy"):
                stale.unlink()
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
                try:
                    np.save(tmp, matrix, allow_pickle=False)
                except BaseException:
                    os.unlink(tmp.name)  # no half-written file left behind
                    raise
            os.replace(tmp.name, cached)
        return matrix

    def site(self) -> Site:
        """This hospital's own privacy gate (policy and ledger in its own folder)."""
        from healthsync.privacy.site import Site

        return Site(self.path.parent)

    def version(self) -> str:
        """A fingerprint of this hospital's rows as stored: new data never reuses old noise."""
        path = self.path
        stat = path.stat()
        return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)

    def stamp(self) -> list[int]:
        """The partition file's size and modification time: tells a stale publication, unread."""
        stat = self.path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def train(self) -> pl.DataFrame:
        """This hospital's training patients."""
        import polars as pl

        return self.rows().filter(pl.col(SPLIT_COLUMN) == "train")

    def test(self) -> pl.DataFrame:
        """This hospital's held-out patients."""
        import polars as pl

        return self.rows().filter(pl.col(SPLIT_COLUMN) == "test")

    def preflight(self) -> None:
        """Check the partition cheaply against the manifest, without reading a row.

        Only the parquet footer is read: the file exists inside the hospital's
        folder, is a readable parquet file, has the manifest's row count and the
        manifest's columns. A run or a cohort query checks every hospital this
        way before anything starts, so a broken partition stops the start with
        its hospital's name instead of failing that hospital in every round.
        """
        import pyarrow
        import pyarrow.parquet as pq

        path = self.path
        if not path.is_file():
            raise HealthSyncError(f"partition file {path} is missing")
        try:
            with open(path, "rb") as handle:  # a Python file: no Arrow filesystem resolved per file
                meta = pq.ParquetFile(handle).metadata
        except (OSError, pyarrow.ArrowException) as err:
            raise HealthSyncError(
                f"partition file {path} is not readable parquet ({err})"
            ) from None
        if meta.num_rows != self.hospital.n_patients:
            raise HealthSyncError(
                f"partition file {path} has {meta.num_rows} rows, the manifest says "
                f"{self.hospital.n_patients}"
            )
        fed = self.federation
        present = set(meta.schema.names)
        missing = [c for c in (*fed.feature_names, *fed.outcomes, SPLIT_COLUMN) if c not in present]
        if missing:
            raise HealthSyncError(f"partition file {path} lacks columns {', '.join(missing)}")

    def _read(self, path: Path) -> pl.DataFrame:
        """The rows of ``path`` (this hospital's partition, as ``self.path`` checked it)."""
        import polars as pl

        if not path.is_file():
            raise HealthSyncError(f"{path}: partition file is missing")
        try:
            frame = pl.read_parquet(path, glob=False)  # one file: no pattern to expand
        except (OSError, pl.exceptions.PolarsError) as err:
            raise HealthSyncError(f"{path}: unreadable partition ({err})") from None
        fed = self.federation
        wanted = [*fed.feature_names, *fed.outcomes, SPLIT_COLUMN]
        present = set(frame.columns)
        missing = [c for c in wanted if c not in present]
        if missing:
            raise HealthSyncError(f"{path}: missing columns {', '.join(missing)}")
        try:
            frame = frame.select(_typed_columns(fed.features, fed.outcomes))
        except pl.exceptions.PolarsError as err:
            raise HealthSyncError(f"{path}: columns do not match the manifest ({err})") from None
        self._check(frame, path)
        return frame

    def _check(self, frame: pl.DataFrame, path: Path) -> None:
        """Refuse a partition that disagrees with the manifest rather than train on it.

        All checks run as one Polars query (one pass over the rows): opening
        thousands of hospitals is on the critical path of a large simulation.
        """
        fed = self.federation
        categorical = [s for s in fed.features if s.categories is not None]
        incident = tuple(fed.incident.items())
        checks = frame.select(_checks(fed.features, fed.outcomes, incident)).row(0, named=True)
        nulls = [c for c in frame.columns if checks[f"null:{c}"] and c not in fed.incident]
        if nulls:
            raise HealthSyncError(f"{path}: missing values in {', '.join(nulls)}")
        for outcome, baseline in incident:
            if checks[f"at_risk:{outcome}"]:
                raise HealthSyncError(
                    f"{path}: incident outcome {outcome!r} must be empty exactly for "
                    f"patients with {baseline!r} at baseline"
                )
        for spec in categorical:
            if checks[f"cat:{spec.name}"]:
                raise HealthSyncError(
                    f"{path}: column {spec.name!r} has values outside the manifest's categories"
                )
        for outcome in fed.outcomes:
            if checks[f"out:{outcome}"]:
                raise HealthSyncError(f"{path}: outcome {outcome!r} must be 0 or 1 on every row")
        counts = {split: int(checks[f"split:{split}"]) for split in SPLITS}
        if sum(counts.values()) != frame.height:
            raise HealthSyncError(
                f"{path}: {SPLIT_COLUMN!r} must be 'train' or 'test' on every row"
            )
        expected = {"train": self.hospital.n_train, "test": self.hospital.n_test}
        if counts != expected:
            raise HealthSyncError(
                f"{path}: has {counts['train']} train / {counts['test']} test rows, "
                f"the manifest says {expected['train']} / {expected['test']}"
            )


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes (16 hex digits), once per size and modification time."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]


@lru_cache(maxsize=16)
def _resolved(folder: Path) -> Path:
    """A federation's ``hospitals`` folder, resolved once (each partition is still resolved)."""
    return folder.resolve()


# Thousands of hospitals share one schema: build its Polars expressions once
# (building them costs about as much as running them on a 500-row partition).
@lru_cache(maxsize=16)
def _typed_columns(features: tuple[FeatureSpec, ...], outcomes: tuple[str, ...]) -> list[pl.Expr]:
    """The manifest's types: numeric features ``Float64``, categorical ``String``, outcomes ``Int8``."""
    import polars as pl

    return [
        *[pl.col(s.name).cast(pl.Float64 if s.kind == "numeric" else pl.String) for s in features],
        *[pl.col(o).cast(pl.Int8) for o in outcomes],
        pl.col(SPLIT_COLUMN).cast(pl.String),
    ]


@lru_cache(maxsize=16)
def _checks(
    features: tuple[FeatureSpec, ...],
    outcomes: tuple[str, ...],
    incident: tuple[tuple[str, str], ...] = (),
) -> list[pl.Expr]:
    """One row of counts: nulls per column, values outside the schema, rows per split.

    An incident outcome counts the rows where it is empty but the patient was
    free of its baseline outcome, or filled although the patient had it.
    """
    import polars as pl

    return [
        *[
            (pl.col(o).is_null() != (pl.col(b) == 1)).sum().alias(f"at_risk:{o}")
            for o, b in incident
        ],
        pl.all().null_count().name.prefix("null:"),
        *[
            (~pl.col(s.name).is_in(s.categories)).sum().alias(f"cat:{s.name}")
            for s in features
            if s.categories is not None
        ],
        *[
            (~pl.col(o).is_in([0, 1])).sum().alias(f"out:{o}") for o in outcomes
        ],  # null: not counted
        *[(pl.col(SPLIT_COLUMN) == split).sum().alias(f"split:{split}") for split in SPLITS],
    ]


PREFLIGHT_MEMO = ".preflight.json"  # in a federation's folder: partitions checked, by file stamp


def preflight(federation: Federation, hospital_ids: Sequence[str] | None = None) -> None:
    """Check every hospital's partition (``HospitalAccessor.preflight``) before a start.

    Reading the footers of 100,000 hospitals took 50 s (and, on eight
    threads, 3 GiB of allocator arenas) before every run.
    So each partition that passes is remembered in ``DIR/.preflight.json`` by
    its stamp (``_partition_stamp``) under this version of the manifest; the
    next start reads only the footers of partitions that changed since, plus
    two ``lstat`` calls each. The memo holds no patient data,
    and a folder that cannot be written to just goes without it. The first
    broken hospital, in manifest order, is named in the error.
    """
    ids = list(federation.hospital_ids if hospital_ids is None else hospital_ids)
    memo_path = federation.data_dir / PREFLIGHT_MEMO
    manifest = _stamp(federation.data_dir / MANIFEST_NAME, follow=True)
    memo = _read_memo(memo_path, manifest)
    stamps = {h: _partition_stamp(federation.data_dir, h) for h in ids}
    unchecked = [h for h in ids if stamps[h] is None or memo.get(h) != stamps[h]]

    # In this thread: footer reads on eight threads were slower on two cores and grew the
    # heap by about 30 kB a hospital (3 GiB at 100,000); one after another, 0.2 ms each.
    for hospital_id in unchecked:  # the first broken one stops the start: nothing written
        try:
            HospitalAccessor(federation, hospital_id).preflight()
        except HealthSyncError as err:
            name = federation.hospital(hospital_id).name
            raise HealthSyncError(f"hospital {name!r} ({hospital_id}): {err}") from None
    passed = [h for h in unchecked if stamps[h] is not None]
    if passed and manifest is not None:
        memo.update((h, stamps[h]) for h in passed)
        _write_memo(memo_path, manifest, memo)


def _stamp(path: Path, *, follow: bool = False) -> list[int] | None:
    """A file's identity: inode, size, modification and change times, mode.

    Without ``follow`` a symlink is its own file, never its target. The change
    time moves with any rewrite, even one that restores the modification time.
    """
    try:
        stat = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_mode]


def _partition_stamp(data_dir: Path, hospital_id: str) -> list[int] | None:
    """The partition's stamp, and its hospital folder's inode and mode: a folder moved
    behind a symlink keeps the file's own stamp, but not the folder's (its times are left
    out, since they move whenever the hospital writes its cache or its ledger)."""
    try:
        folder = os.lstat(hospital_folder(data_dir, hospital_id))
    except OSError:
        return None
    file = _stamp(partition_path(data_dir, hospital_id))
    return None if file is None else [folder.st_ino, folder.st_mode, *file]


def _read_memo(path: Path, manifest: list[int] | None) -> dict[str, list[int]]:
    """The partitions a preflight passed under this manifest (empty if none or unreadable)."""
    import json

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("manifest") != manifest:
        return {}
    hospitals = raw.get("hospitals")
    return hospitals if isinstance(hospitals, dict) else {}


def _write_memo(path: Path, manifest: list[int], memo: dict[str, list[int]]) -> None:
    """Replace the memo atomically; a read-only federation goes without one."""
    import json

    with contextlib.suppress(OSError):
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as tmp:
            try:
                json.dump({"manifest": manifest, "hospitals": memo}, tmp, separators=(",", ":"))
            except BaseException:
                os.unlink(tmp.name)
                raise
        try:
            os.replace(tmp.name, path)
        except OSError:
            os.unlink(tmp.name)
            raise


def open_hospital(data_dir: str | Path | Federation, hospital_id: str) -> HospitalAccessor:
    """The accessor for one hospital of the federation in ``data_dir``.

    ``data_dir`` may also be an already loaded :class:`Federation`, which
    saves re-reading the manifest when opening many hospitals.

    Raises
    ------
    HealthSyncError
        If the federation is invalid or has no hospital ``hospital_id``.
    """
    federation = data_dir if isinstance(data_dir, Federation) else load_federation(data_dir)
    return HospitalAccessor(federation, hospital_id)
