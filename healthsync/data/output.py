"""Writing a federation directory: all or nothing, and the same bytes every time.

Both ``data generate`` and ``data import`` build the whole federation in a
temporary directory next to the target and rename it into place only when
everything succeeded, so an error or an interrupt never leaves a half-written
federation that the engine could mistake for a real one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from healthsync.data.accessor import partition_path
from healthsync.data.manifest import MANIFEST_NAME
from healthsync.errors import HealthSyncError

if TYPE_CHECKING:
    import polars as pl


def check_output(out: Path, *, force: bool) -> None:
    """Refuse to overwrite anything but an empty folder or (with ``force``) a federation.

    A non-empty folder without ``federation.json`` is never replaced, even
    with ``force``: it is probably not ours, and replacing it would delete it.
    """
    if out.exists() and not out.is_dir():
        raise HealthSyncError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / MANIFEST_NAME).is_file():
        raise HealthSyncError(
            f"{out}: directory is not empty and holds no federation; choose another --out"
        )
    if not force:
        raise HealthSyncError(f"{out}: already holds a federation; pass --force to replace it")


@contextmanager
def federation_output(out: str | Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``out`` when the block succeeds.

    On any exception the staging directory (and any parent folders created
    for it) is removed and ``out`` is left exactly as it was.
    """
    out = Path(out)
    check_output(out, force=force)
    created = _make_parents(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging
        _swap_into_place(staging, out, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            _remove_if_empty(folder)
        raise


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; return those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return missing


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()


def _swap_into_place(staging: Path, out: Path, *, force: bool) -> None:
    # Re-check: another process may have written to ``out`` while we worked.
    check_output(out, force=force)
    if not out.exists():
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / "previous")
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old / "previous", out)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_partition(directory: Path, hospital_id: str, rows: pl.DataFrame) -> Path:
    """Write one hospital's rows to its own folder with fixed, reproducible settings."""
    path = partition_path(directory, hospital_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.write_parquet(path, compression="zstd", compression_level=3, statistics=True)
    return path


def holdout_mask(rng: np.random.Generator, target: np.ndarray, test_fraction: float) -> np.ndarray:
    """Choose held-out patients, stratified by ``target``; ``True`` marks a test row.

    Each outcome class contributes its share of test rows (rounded at random so
    small hospitals are not biased), and both splits always get at least one
    patient, since a hospital must be able to train and to evaluate.
    """
    n = len(target)
    if n < 2:
        raise HealthSyncError("a hospital needs at least two patients to split train and test")
    is_test = np.zeros(n, dtype=bool)
    for value in np.unique(target):
        members = rng.permutation(np.flatnonzero(target == value))
        k = int(np.floor(len(members) * test_fraction + rng.random()))
        is_test[members[:k]] = True
    n_test = int(is_test.sum())
    if n_test == 0:
        is_test[rng.integers(n)] = True
    elif n_test == n:
        is_test[rng.integers(n)] = False
    return is_test
