"""Synthetic federations: many hospitals drawn from one calibrated population.

Hospitals are planned first (size, kind, name, site effects) from the seed;
patients are then drawn in fixed blocks of hospitals, each block with its own
seeded generator, and written hospital by hospital. Fixed blocks keep memory
flat for very large federations while the output stays byte-identical for the
same arguments.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from healthsync.data import population
from healthsync.data.manifest import (
    SPLIT_COLUMN,
    FeatureSpec,
    Federation,
    HospitalInfo,
    write_manifest,
)
from healthsync.data.names import hospital_names
from healthsync.data.output import (
    federation_output,
    holdout_mask,
    write_partition,
)
from healthsync.errors import HealthSyncError

if TYPE_CHECKING:
    import polars as pl

GENERATOR = "healthsync-synthetic/2"  # /2 added the incident outcomes
MIN_HOSPITAL_SIZE = 20  # enough for a 16/4 train/test split
MAX_HOSPITALS = 100_000
MAX_PATIENTS = 1_000_000
TEST_FRACTION = 0.2
BLOCK_HOSPITALS = 256  # part of the output's definition: changing it changes the data
WRITER_THREADS = 2

FEATURES = (
    FeatureSpec("age", "numeric", None, "years"),
    FeatureSpec("sex", "categorical", population.SEX, None),
    FeatureSpec("bmi", "numeric", None, "kg/m2"),
    FeatureSpec("systolic_bp", "numeric", None, "mmHg"),
    FeatureSpec("diastolic_bp", "numeric", None, "mmHg"),
    FeatureSpec("fasting_glucose", "numeric", None, "mg/dL"),
    FeatureSpec("hba1c", "numeric", None, "%"),
    FeatureSpec("total_cholesterol", "numeric", None, "mg/dL"),
    FeatureSpec("hdl_cholesterol", "numeric", None, "mg/dL"),
    FeatureSpec("smoking", "categorical", population.SMOKING, None),
    FeatureSpec("physical_activity", "categorical", population.ACTIVITY, None),
    FeatureSpec("family_history_diabetes", "categorical", population.YES_NO, None),
)
PREVALENT = ("diabetes", "hypertension")
#: Incident outcome -> the baseline outcome its patients are free of (empty for the others).
INCIDENT = population.INCIDENT
OUTCOMES = (*PREVALENT, *INCIDENT)
#: The demo's default target: new diabetes within 5 years, where the best
#: achievable AUC is about 0.83 and federating visibly helps small sites.
DEFAULT_TARGET = "diabetes_5y"

Progress = Callable[[int], None]


def generate_federation(
    out: str | Path,
    hospitals: int = 10,
    patients: int = 500,
    seed: int = 0,
    heterogeneity: float = 0.5,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Federation:
    """Generate a synthetic federation into ``out`` and return its manifest.

    Parameters
    ----------
    out
        Federation directory to create; replaced only with ``force`` if it
        already holds a federation. Written atomically.
    hospitals
        Number of hospitals.
    patients
        Mean patients per hospital; every hospital has at least 20.
    seed
        Same arguments and seed give byte-identical files.
    heterogeneity
        0 makes hospitals IID draws of one population of equal size; 1 gives
        strongly skewed sizes, case mix, prevalence and measurement calibration.
    force
        Replace an existing federation in ``out``.
    progress
        Called with the number of hospitals just written, for a progress bar.
    """
    _validate(hospitals, patients, seed, heterogeneity)
    rng = np.random.default_rng([seed, 0])
    sizes = hospital_sizes(rng, hospitals, patients, heterogeneity)
    kinds = hospital_kinds(sizes, patients)
    sites = population.draw_site_effects(rng, kinds == "teaching centre", heterogeneity)
    names = hospital_names(rng, kinds)
    # Own generators, so adding the incident outcomes left every other column as it was.
    incidence = population.draw_incidence_effects(
        np.random.default_rng([seed, 3]), sites, heterogeneity
    )
    width = max(4, len(str(hospitals - 1)))
    ids = [f"h{i:0{width}d}" for i in range(hospitals)]

    with federation_output(out, force=force) as staging:
        splits = _write_hospitals(staging, seed, (sites, incidence), sizes, ids, progress)
        federation = Federation(
            data_dir=staging,
            name=f"synthetic ({hospitals} hospitals, seed {seed})",
            source="synthetic",
            outcomes=OUTCOMES,
            default_target=DEFAULT_TARGET,
            incident=dict(INCIDENT),
            features=FEATURES,
            hospitals=tuple(
                HospitalInfo(ids[i], names[i], n_train, n_test, {"kind": str(kinds[i]), **summary})
                for i, (n_train, n_test, summary) in enumerate(splits)
            ),
            created_with={
                "generator": GENERATOR,
                "hospitals": int(hospitals),
                "patients": int(patients),
                "seed": int(seed),
                "heterogeneity": float(heterogeneity),
            },
        )
        write_manifest(federation, staging)
    return replace(federation, data_dir=Path(out))


def hospital_sizes(
    rng: np.random.Generator, hospitals: int, mean: int, heterogeneity: float
) -> np.ndarray:
    """Patients per hospital: equal when IID, else lognormal (few large, many small).

    Every hospital gets at least :data:`MIN_HOSPITAL_SIZE`; the rest of the
    ``hospitals * mean`` patients is shared in proportion to lognormal weights
    whose spread grows with ``heterogeneity``, so the mean is exactly ``mean``.
    """
    weights = rng.lognormal(0.0, 1.2 * heterogeneity, hospitals)
    if heterogeneity == 0:
        return np.full(hospitals, mean, dtype=np.int64)
    spare = hospitals * (mean - MIN_HOSPITAL_SIZE)
    shares = spare * weights / weights.sum()
    sizes = np.floor(shares).astype(np.int64)
    leftover = spare - int(sizes.sum())
    sizes[np.argsort(sizes - shares, kind="stable")[:leftover]] += 1
    return sizes + MIN_HOSPITAL_SIZE


def hospital_kinds(sizes: np.ndarray, mean: int) -> np.ndarray:
    """Descriptive kind from relative size: referral centres are the big ones."""
    return np.where(
        sizes >= 2.5 * mean,
        "teaching centre",
        np.where(sizes >= 0.75 * mean, "general hospital", "community clinic"),
    )


def _validate(hospitals: int, patients: int, seed: int, heterogeneity: float) -> None:
    if not 1 <= hospitals <= MAX_HOSPITALS:
        raise HealthSyncError(f"hospitals must be between 1 and {MAX_HOSPITALS}, not {hospitals}")
    if not MIN_HOSPITAL_SIZE <= patients <= MAX_PATIENTS:
        raise HealthSyncError(
            f"patients (the mean per hospital) must be between {MIN_HOSPITAL_SIZE} "
            f"and {MAX_PATIENTS}, not {patients}"
        )
    if seed < 0:
        raise HealthSyncError(f"seed must be zero or positive, not {seed}")
    if not (isinstance(heterogeneity, int | float) and 0.0 <= heterogeneity <= 1.0):
        raise HealthSyncError(f"heterogeneity must be between 0 and 1, not {heterogeneity}")


def _write_hospitals(
    staging: Path,
    seed: int,
    sites: tuple[population.SiteEffects, population.IncidenceEffects],
    sizes: np.ndarray,
    ids: list[str],
    progress: Progress | None,
) -> list[tuple[int, int, dict]]:
    """Draw and write every hospital; return each one's (n_train, n_test, outcome summary).

    Parquet writing dominates and releases the GIL, so a couple of writer
    threads overlap it with drawing the next block; at most two blocks are in
    memory at once.
    """
    splits: list[tuple[int, int, dict]] = []
    pending: list[Future[Path]] = []
    with ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:
        for block, first in enumerate(range(0, len(ids), BLOCK_HOSPITALS)):
            last = min(first + BLOCK_HOSPITALS, len(ids))
            frame, bounds, is_test = _draw_block((seed, block), sites, sizes, first, last)
            _finish(pending, progress)
            for i, (a, b) in zip(range(first, last), itertools.pairwise(bounds), strict=True):
                rows = frame.slice(a, b - a)
                pending.append(pool.submit(write_partition, staging, ids[i], rows))
                n_test = int(is_test[a:b].sum())
                splits.append((b - a - n_test, n_test, {}))
        _finish(pending, progress)
    return splits


def _finish(pending: list[Future[Path]], progress: Progress | None) -> None:
    """Wait for queued writes (re-raising their errors) and report them as done."""
    for job in pending:
        job.result()
        if progress is not None:
            progress(1)
    pending.clear()


def _draw_block(
    block_seed: tuple[int, int],
    sites: tuple[population.SiteEffects, population.IncidenceEffects],
    sizes: np.ndarray,
    first: int,
    last: int,
) -> tuple[pl.DataFrame, list[int], np.ndarray]:
    """Patients of hospitals ``first..last-1`` with their split, and each hospital's row bounds.

    Incident outcomes are Int8 with nulls for patients who have the condition
    at baseline (they are not at risk, so that target has no row for them).
    """
    import polars as pl

    seed, block = block_seed
    rng = np.random.default_rng([seed, 1, block])
    incidence = (np.random.default_rng([seed, 2, block]), sites[1])
    block_sizes = sizes[first:last]
    hospital = np.repeat(np.arange(first, last), block_sizes)
    columns = population.draw_patients(rng, sites[0], hospital, incidence)
    strata = 2 * columns["diabetes"] + columns["hypertension"]
    bounds = np.concatenate([[0], np.cumsum(block_sizes)]).tolist()
    is_test = np.concatenate(
        [holdout_mask(rng, strata[a:b], TEST_FRACTION) for a, b in itertools.pairwise(bounds)]
    )
    frame = pl.DataFrame(
        [
            pl.Series(spec.name, spec.categories).gather(columns[spec.name])
            if spec.categories is not None
            else pl.Series(spec.name, columns[spec.name], dtype=pl.Float64)
            for spec in FEATURES
        ]
        + [pl.Series(name, columns[name], dtype=pl.Int8) for name in PREVALENT]
        + [pl.Series(name, columns[name], nan_to_null=True).cast(pl.Int8) for name in INCIDENT]
    ).with_columns(
        pl.when(pl.Series(is_test))
        .then(pl.lit("test"))
        .otherwise(pl.lit("train"))
        .alias(SPLIT_COLUMN)
    )
    return frame, bounds, is_test
