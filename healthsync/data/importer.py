"""Importing real hospital exports: one CSV or Parquet file per hospital.

Each file becomes that hospital's partition and nothing else: rows are never
pooled, and the manifest records only the shared schema (column names, kinds,
the sorted union of category labels) and each hospital's split sizes. Every
file is checked before anything is written, and the federation is written
atomically, so a bad file leaves the output directory untouched.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from healthsync.data.manifest import (
    SPLIT_COLUMN,
    FeatureSpec,
    Federation,
    HospitalInfo,
    write_manifest,
)
from healthsync.data.output import (
    federation_output,
    holdout_mask,
    write_partition,
)
from healthsync.data.tables import (
    binary_column,
    feature_column,
    first_non_numeric,
    read_table,
)
from healthsync.errors import HealthSyncError

if TYPE_CHECKING:
    import polars as pl

IMPORTER = "healthsync-import/1"
MIN_ROWS = 10  # below this a hospital cannot both train and evaluate meaningfully


@dataclass(frozen=True)
class HospitalFile:
    """A hospital's display name and the export file holding its patients."""

    name: str
    path: Path


def parse_source(spec: str) -> HospitalFile:
    """Parse a command-line ``NAME=FILE`` argument (the name may contain spaces)."""
    name, sep, file = spec.partition("=")
    if not sep or not name.strip() or not file.strip():
        raise HealthSyncError(f"{spec!r}: expected NAME=FILE, for example 'St Anne=exports/a.csv'")
    return HospitalFile(name.strip(), Path(file.strip()))


def hospital_id(name: str) -> str:
    """A filesystem-safe id derived from a hospital's name (``"St. Anne's"`` → ``"st-anne-s"``).

    Names in any script are welcome. Accents fold to ASCII (``"Hôpital"`` →
    ``"hopital"``); letters with no ASCII form (``"病院"``) cannot shape the id,
    so a name that has any gets a short digest of the whole name appended
    (``"病院 A"`` → ``"a-3f9c2e"``, ``"病院"`` → ``"site-9b1d4a"``): ids stay
    ASCII, filesystem-safe and distinct whenever the names are.
    """
    folded = unicodedata.normalize("NFKD", name)
    ascii_name = folded.encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:56].rstrip("-")
    dropped = any(ch.isalnum() and not ch.isascii() for ch in folded)
    if not slug and not dropped:
        raise HealthSyncError(f"hospital name {name!r} needs at least one letter or digit")
    if dropped:
        digest = hashlib.sha256(name.strip().encode()).hexdigest()[:6]
        slug = f"{slug or 'site'}-{digest}"
    return slug


def import_federation(
    out: str | Path,
    files: Sequence[HospitalFile],
    target: str,
    *,
    split_column: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    name: str | None = None,
    force: bool = False,
) -> Federation:
    """Build a federation in ``out`` from one export file per hospital.

    Parameters
    ----------
    out
        Federation directory to create (replaced only with ``force``).
    files
        The hospitals, in the order they should appear.
    target
        Binary outcome column (0/1, true/false or yes/no); every other column
        except ``split_column`` becomes a feature.
    split_column
        Column whose values ``train``/``test`` are kept as the split; without
        it each hospital gets a seeded split stratified by the target.
    seed, test_fraction
        The seeded split, when there is no ``split_column``.
    name
        The federation's display name (defaults to the directory name).

    Raises
    ------
    HealthSyncError
        Naming the file and the problem; nothing is written in that case.
    """
    _validate_options(files, target, split_column, seed, test_fraction)
    ids = _hospital_ids(files)
    tables = [read_table(f.path) for f in files]
    feature_names = _feature_names(files, tables, target, split_column)
    columns = [
        {c: feature_column(t, c, f.path) for c in feature_names}
        for f, t in zip(files, tables, strict=True)
    ]
    features = _feature_specs(files, columns, feature_names)
    targets = [binary_column(t, target, f.path) for f, t in zip(files, tables, strict=True)]
    _require_both_classes(files, targets, target)
    is_test = [
        _split(f, t, y, split_column, np.random.default_rng([seed, i]), test_fraction)
        for i, (f, t, y) in enumerate(zip(files, tables, targets, strict=True))
    ]

    import polars as pl

    with federation_output(out, force=force) as staging:
        hospitals = []
        for i, f in enumerate(files):
            rows = pl.DataFrame(
                [*columns[i].values(), targets[i]],
            ).with_columns(
                pl.when(pl.Series(is_test[i]))
                .then(pl.lit("test"))
                .otherwise(pl.lit("train"))
                .alias(SPLIT_COLUMN)
            )
            write_partition(staging, ids[i], rows)
            n_test = int(is_test[i].sum())
            hospitals.append(
                HospitalInfo(
                    ids[i],
                    f.name,
                    len(is_test[i]) - n_test,
                    n_test,
                )
            )
        federation = Federation(
            data_dir=staging,
            name=name or Path(out).name or "imported",
            source="import",
            outcomes=(target,),
            default_target=target,
            features=features,
            hospitals=tuple(hospitals),
            created_with={
                "importer": IMPORTER,
                "target": target,
                "split_column": split_column,
                "seed": int(seed),
                "test_fraction": float(test_fraction),
                "files": {f.name: str(f.path) for f in files},
            },
        )
        write_manifest(federation, staging)
    return replace(federation, data_dir=Path(out))


def _validate_options(
    files: Sequence[HospitalFile],
    target: str,
    split_column: str | None,
    seed: int,
    test_fraction: float,
) -> None:
    if not files:
        raise HealthSyncError("give at least one hospital as NAME=FILE")
    if not target:
        raise HealthSyncError("--target must name the outcome column")
    if split_column is not None and split_column == target:
        raise HealthSyncError(f"--split-column and --target are both {target!r}")
    if seed < 0:
        raise HealthSyncError(f"--seed must be zero or positive, not {seed}")
    if not 0.0 < test_fraction < 1.0:
        raise HealthSyncError(f"--test-fraction must be between 0 and 1, not {test_fraction}")


def _hospital_ids(files: Sequence[HospitalFile]) -> list[str]:
    by_name: dict[str, HospitalFile] = {}
    by_id: dict[str, HospitalFile] = {}
    for f in files:
        if f.name in by_name:
            raise HealthSyncError(
                f"{f.path}: duplicated hospital name {f.name!r} (also used for {by_name[f.name].path})"
            )
        by_name[f.name] = f
        hid = hospital_id(f.name)
        if hid in by_id:
            raise HealthSyncError(
                f"{f.path}: hospital names {by_id[hid].name!r} and {f.name!r} "
                f"both give the id {hid!r}; rename one"
            )
        by_id[hid] = f
    return list(by_id)


def _feature_names(
    files: Sequence[HospitalFile],
    tables: Sequence[pl.DataFrame],
    target: str,
    split_column: str | None,
) -> list[str]:
    """Feature columns (first file's order), once every file is known to share them."""
    first = tables[0].columns
    for f, table in zip(files, tables, strict=True):
        if target not in table.columns:
            raise HealthSyncError(f"{f.path}: no target column {target!r}")
        if split_column is not None and split_column not in table.columns:
            raise HealthSyncError(f"{f.path}: no split column {split_column!r}")
        missing = [c for c in first if c not in table.columns]
        extra = [c for c in table.columns if c not in first]
        if missing or extra:
            parts = [f"missing {', '.join(missing)}"] if missing else []
            parts += [f"extra {', '.join(extra)}"] if extra else []
            raise HealthSyncError(
                f"{f.path}: columns differ from {files[0].path}: {'; '.join(parts)}"
            )
    if SPLIT_COLUMN in first and split_column != SPLIT_COLUMN:
        raise HealthSyncError(
            f"{files[0].path}: column {SPLIT_COLUMN!r} is reserved; "
            f"pass --split-column {SPLIT_COLUMN} to use it as the split, or rename it"
        )
    names = [c for c in first if c not in (target, split_column)]
    if not names:
        raise HealthSyncError(f"{files[0].path}: no feature columns besides the target")
    return names


def _feature_specs(
    files: Sequence[HospitalFile],
    columns: Sequence[dict[str, pl.Series]],
    names: Sequence[str],
) -> tuple[FeatureSpec, ...]:
    """One spec per feature; a column must be numeric in every file or in none."""
    import polars as pl

    specs = []
    for name in names:
        numeric = [i for i, cols in enumerate(columns) if cols[name].dtype == pl.Float64]
        if numeric and len(numeric) < len(columns):
            text = next(i for i in range(len(columns)) if i not in numeric)
            value = first_non_numeric(columns[text][name])
            raise HealthSyncError(
                f"{files[text].path}: column {name!r} has non-numeric value {value!r} "
                f"but is numeric in {files[numeric[0]].path}"
            )
        if numeric:
            specs.append(FeatureSpec(name, "numeric", None, None))
        else:
            labels = set().union(*(cols[name].unique().to_list() for cols in columns))
            specs.append(FeatureSpec(name, "categorical", tuple(sorted(labels)), None))
    return tuple(specs)


def _require_both_classes(
    files: Sequence[HospitalFile], targets: Sequence[pl.Series], target: str
) -> None:
    seen = set().union(*(y.unique().to_list() for y in targets))
    if len(seen) < 2:
        shown = ", ".join(str(f.path) for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise HealthSyncError(
            f"{shown}: target {target!r} is {seen.pop()} on every row; a model needs both 0 and 1"
        )


def _split(
    f: HospitalFile,
    table: pl.DataFrame,
    target: pl.Series,
    split_column: str | None,
    rng: np.random.Generator,
    test_fraction: float,
) -> np.ndarray:
    """``True`` for each test row: from ``split_column`` as given, else a seeded draw."""
    import polars as pl

    if table.height < MIN_ROWS:
        raise HealthSyncError(
            f"{f.path}: only {table.height} rows; a hospital needs at least {MIN_ROWS} "
            "to train and test"
        )
    if split_column is None:
        return holdout_mask(rng, target.to_numpy(), test_fraction)
    labels = table.get_column(split_column).cast(pl.String).str.strip_chars()
    bad = sorted(set(labels.drop_nulls().unique().to_list()) - {"train", "test"})
    if bad or labels.null_count():
        shown = ", ".join(repr(v) for v in bad[:3]) or "missing values"
        raise HealthSyncError(
            f"{f.path}: split column {split_column!r} must be 'train' or 'test', found {shown}"
        )
    is_test = (labels == "test").to_numpy()
    for split, count in (("train", int((~is_test).sum())), ("test", int(is_test.sum()))):
        if count == 0:
            raise HealthSyncError(f"{f.path}: split column {split_column!r} has no {split} rows")
    return is_test
