"""Turn a hospital's patient frame into model inputs, with federated standardisation.

The encoding (numeric columns as they are, categorical ones one-hot over the
categories in the federation's schema) depends only on the schema, so every
hospital builds the same columns. Standardisation uses the federation-wide
mean and standard deviation, assembled from per-hospital counts, sums and sums
of squares (``ScalingStats``): no hospital ever shares a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from healthsync.errors import HealthSyncError


@dataclass(frozen=True)
class Encoder:
    """Schema-driven encoding of feature columns into a float32 matrix."""

    numeric: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_federation(cls, federation, target: str) -> Encoder:
        """Every feature of the federation except the outcomes."""
        outcomes = set(federation.outcomes) | {target}
        numeric = tuple(
            f.name for f in federation.features if f.kind == "numeric" and f.name not in outcomes
        )
        categorical = tuple(
            (f.name, tuple(f.categories or ()))
            for f in federation.features
            if f.kind == "categorical" and f.name not in outcomes
        )
        return cls(numeric=numeric, categorical=categorical)

    @property
    def columns(self) -> list[str]:
        """Names of the encoded columns, e.g. ``age`` or ``smoking=current``."""
        names = list(self.numeric)
        for name, categories in self.categorical:
            names.extend(f"{name}={c}" for c in categories)
        return names

    @property
    def width(self) -> int:
        return len(self.columns)

    def encode(self, frame: pl.DataFrame) -> np.ndarray:
        """The ``(rows, width)`` float32 matrix for ``frame``; errors name missing columns."""
        missing = [
            c for c in (*self.numeric, *(n for n, _ in self.categorical)) if c not in frame.columns
        ]
        if missing:
            raise HealthSyncError(f"missing column(s): {', '.join(missing)}")
        x = frame.select(_encoding(self)).to_numpy().astype(np.float32, copy=False)
        if np.isnan(x).any():  # slow path, only to name the culprits
            self._explain_missing(frame, x)
        return x

    def _explain_missing(self, frame: pl.DataFrame, x: np.ndarray) -> None:
        broken = [c for c, bad in zip(self.columns, np.isnan(x).any(axis=0), strict=True) if bad]
        non_numeric = [
            c
            for c in self.numeric
            if c in broken and frame[c].null_count() < np.isnan(x[:, self.columns.index(c)]).sum()
        ]
        if non_numeric:
            raise HealthSyncError(f"non-numeric values in column(s): {', '.join(non_numeric)}")
        raise HealthSyncError(f"missing values in column(s): {', '.join(broken)}")


@lru_cache(maxsize=16)
def _encoding(encoder: Encoder) -> list[pl.Expr]:
    """The encoder's Polars expressions, built once: every hospital uses the same ones."""
    exprs: list[pl.Expr] = []
    for name in encoder.numeric:
        exprs.append(pl.col(name).cast(pl.Float32, strict=False).alias(name))
    for name, categories in encoder.categorical:
        col = pl.col(name).cast(pl.String)
        exprs.extend((col == c).cast(pl.Float32).alias(f"{name}={c}") for c in categories)
    return exprs


@dataclass(frozen=True)
class ScalingStats:
    """Count, per-column sums and sums of squares: all a hospital shares for scaling."""

    count: int
    sums: np.ndarray
    sumsq: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> ScalingStats:
        x64 = x.astype(np.float64)
        return cls(count=int(x.shape[0]), sums=x64.sum(axis=0), sumsq=(x64**2).sum(axis=0))

    @classmethod
    def combine(cls, parts: Iterable[ScalingStats]) -> ScalingStats:
        parts = list(parts)
        if not parts:
            raise HealthSyncError("no hospital reported scaling statistics")
        return cls(
            count=sum(p.count for p in parts),
            sums=np.sum([p.sums for p in parts], axis=0),
            sumsq=np.sum([p.sumsq for p in parts], axis=0),
        )

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Federation mean and standard deviation (1 where a column is constant)."""
        mean = self.sums / max(self.count, 1)
        var = np.maximum(self.sumsq / max(self.count, 1) - mean**2, 0.0)
        std = np.sqrt(var)
        std[std < 1e-8] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)


@dataclass(frozen=True)
class Scaler:
    """Standardisation with federation-wide mean and std."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_stats(cls, stats: ScalingStats) -> Scaler:
        mean, std = stats.mean_std()
        return cls(mean=mean, std=std)

    @classmethod
    def from_lists(cls, mean: Sequence[float], std: Sequence[float]) -> Scaler:
        return cls(mean=np.asarray(mean, dtype=np.float32), std=np.asarray(std, dtype=np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)


def labels(frame: pl.DataFrame, target: str, *, missing: bool = False) -> np.ndarray:
    """The 0/1 target column as float32; clear error if it is missing or not binary.

    ``missing`` allows empty values (returned as ``NaN``): an incident outcome
    is empty for patients who had the condition at baseline, and the caller
    leaves those rows out.
    """
    if target not in frame.columns:
        raise HealthSyncError(f"target column {target!r} is missing")
    y = frame[target].cast(pl.Float32, strict=False).to_numpy()
    known = y[~np.isnan(y)] if missing else y
    if np.isnan(known).any() or not np.isin(known, (0.0, 1.0)).all():
        raise HealthSyncError(f"target column {target!r} must hold only 0 and 1")
    return y.astype(np.float32)
