"""Reading a hospital's own CSV or Parquet export and typing its columns.

Hospital exports disagree in small ways (CSV has no types, Parquet does;
targets are written 0/1, yes/no or true/false). These helpers turn one file
into typed columns or fail with one line that names the file and the column,
so a user can fix the export without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from healthsync.errors import HealthSyncError

if TYPE_CHECKING:
    import polars as pl

SUFFIXES = (".csv", ".parquet")
_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n"})


def read_table(path: Path) -> pl.DataFrame:
    """Read a ``.csv`` (every column as text) or ``.parquet`` file with at least one row."""
    import polars as pl

    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise HealthSyncError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    if not path.is_file():
        raise HealthSyncError(f"{path}: no such file")
    try:
        frame = pl.read_csv(path, infer_schema=False) if suffix == ".csv" else pl.read_parquet(path)
    except pl.exceptions.NoDataError:
        raise HealthSyncError(f"{path}: empty file") from None
    except (OSError, pl.exceptions.PolarsError) as err:
        raise HealthSyncError(f"{path}: unreadable ({first_line(err)})") from None
    if frame.height == 0:
        raise HealthSyncError(f"{path}: no rows")
    return frame


def first_line(err: BaseException) -> str:
    """An error's message cut to its first line, to keep CLI errors to one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def binary_column(frame: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """The column as ``Int8`` 0/1, accepting 0/1, true/false, yes/no (any case)."""
    import polars as pl

    series = frame.get_column(column)
    _refuse_missing(series, path)
    if series.dtype == pl.Boolean:
        return series.cast(pl.Int8)
    text = series.cast(pl.String).str.strip_chars().str.to_lowercase()
    unknown = sorted(set(text.unique().to_list()) - _TRUE - _FALSE)
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:3])
        raise HealthSyncError(
            f"{path}: target {column!r} is not binary: found {shown} "
            "(expected 0/1, true/false or yes/no)"
        )
    return text.is_in(list(_TRUE)).cast(pl.Int8).alias(column)


def feature_column(frame: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """The column as ``Float64`` if every value is a number, else as stripped ``String``."""
    import polars as pl

    series = frame.get_column(column)
    _refuse_missing(series, path)
    if series.dtype.is_numeric():
        numbers = series.cast(pl.Float64)
    elif series.dtype == pl.Boolean:
        return series.cast(pl.String)
    elif series.dtype in (pl.String, pl.Categorical) or isinstance(series.dtype, pl.Enum):
        text = series.cast(pl.String).str.strip_chars()
        if (text == "").any():
            raise HealthSyncError(f"{path}: column {column!r} has empty values")
        numbers = text.cast(pl.Float64, strict=False)
        if numbers.null_count():
            return text
    else:
        raise HealthSyncError(f"{path}: column {column!r} has unsupported type {series.dtype}")
    if not numbers.is_finite().all():
        raise HealthSyncError(f"{path}: column {column!r} has NaN or infinite values")
    return numbers


def first_non_numeric(series: pl.Series) -> str:
    """A value of a text column that is not a number, to quote in an error."""
    import polars as pl

    bad = series.filter(series.cast(pl.Float64, strict=False).is_null())
    return str(bad[0]) if bad.len() else ""


def _refuse_missing(series: pl.Series, path: Path) -> None:
    # Models cannot train on missing values, and imputing them would invent data.
    missing = series.null_count()
    if missing:
        raise HealthSyncError(
            f"{path}: column {series.name!r} has {missing} missing value(s); "
            "fill or drop them before importing"
        )
