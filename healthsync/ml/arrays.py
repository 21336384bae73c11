"""One hospital's rows as arrays: read through its own accessor, encoded, split for validation.

Kept apart from ``healthsync.ml.training`` (which needs PyTorch) so that the
data commands can warm each hospital's encoded matrix when they write its
partition, without importing torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from healthsync.data import Federation, open_hospital
from healthsync.data.accessor import HospitalAccessor
from healthsync.ml.features import Encoder, Scaler, labels


@dataclass(frozen=True)
class LocalData:
    """One hospital's encoded, standardised train, test and validation arrays.

    ``x_train`` holds only the rows training may fit; the validation rows
    (``x_val``, a held-out share of the hospital's training rows, see
    :func:`validation_mask`) choose the round or epoch to keep; the test rows
    only ever score the chosen model. ``None`` validation: none held out.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def validation(self) -> LocalData:
        """The same hospital with its validation rows in the test slot, for the evaluators.

        Both evaluation paths (one hospital, ``blocks.evaluate_block``) then score
        validation rows exactly as they score test rows. The same object every
        time, so a block scores its validation rows every round from the same
        ``blocks.layout``.
        """
        return self._validation

    @cached_property
    def _validation(self) -> LocalData:
        width = self.x_train.shape[1]
        x = self.x_val if self.x_val is not None else np.zeros((0, width), np.float32)
        y = self.y_val if self.y_val is not None else np.zeros(0, np.float32)
        return LocalData(self.x_train, self.y_train, x, y)


def validation_mask(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Which of a hospital's training rows are held out for validation (``True``).

    Stratified: ``round(share * count)`` rows of each class, drawn by a seeded
    shuffle, so the held-out rows keep the hospital's prevalence and the same
    seed always holds out the same rows. A class keeps at least one row for
    training. Only training rows are ever passed in: test rows never choose a model.
    """
    mask = np.zeros(len(y), dtype=bool)
    if share <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for label in (0.0, 1.0):
        rows = np.flatnonzero(y == label)
        take = min(round(share * len(rows)), max(len(rows) - 1, 0))
        mask[rng.permutation(rows)[:take]] = True
    return mask


def split_seed(seed: int, hospital_id: str) -> int:
    """The validation split's seed for one hospital: the run's seed and the hospital's id.

    Hashed rather than Python's ``hash`` so every process, and the baselines,
    draw the same rows.
    """
    digest = hashlib.sha256(f"{seed}:{hospital_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class HospitalArrays:
    """One hospital's encoded but not yet standardised rows (kept inside the hospital)."""

    hospital_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def scaled(self, scaler: Scaler, *, validation_share: float = 0.0, seed: int = 0) -> LocalData:
        """Standardised rows; ``validation_share`` of the training rows held out (seeded)."""
        held = validation_mask(self.y_train, validation_share, split_seed(seed, self.hospital_id))
        x_train = scaler.transform(self.x_train)
        return LocalData(
            x_train[~held],
            self.y_train[~held],
            scaler.transform(self.x_test),
            self.y_test,
            x_train[held],
            self.y_train[held],
        )


ENCODING_VERSION = 1  # bump when encoding changes, so no hospital reuses an old matrix


def hospital_arrays(
    federation: Federation,
    hospital_id: str,
    target: str,
    *,
    accessor: HospitalAccessor | None = None,
) -> HospitalArrays:
    """One hospital's rows, read through its own accessor and encoded.

    The encoded matrix (features, label, test flag) is kept by the accessor
    beside the partition, so later runs skip reading and checking the rows.
    ``accessor``: that hospital's, already open (its rows are then not read again).
    """
    encoder = Encoder.from_federation(federation, target)
    if accessor is None or accessor.hospital.id != hospital_id:
        accessor = open_hospital(federation, hospital_id)

    def encode(rows) -> np.ndarray:
        test = (rows["split"] == "test").to_numpy().astype(np.float32)
        y = labels(rows, target, missing=target in federation.incident)
        return np.column_stack([encoder.encode(rows), y, test])

    matrix = accessor.derived(_encoding_key(encoder, target), encode)
    info = accessor.hospital
    if matrix.shape != (info.n_train + info.n_test, encoder.width + 2) or (
        int(matrix[:, -1].sum()) != info.n_test
    ):  # kept from before the manifest changed: read the rows, which checks them against it
        matrix = encode(accessor.rows())
    x, y, test = matrix[:, :-2], matrix[:, -2], matrix[:, -1] == 1
    at_risk = ~np.isnan(y)  # an incident outcome has no label for patients who had it already
    train, test = at_risk & ~test, at_risk & test
    return HospitalArrays(
        hospital_id=hospital_id,
        x_train=x[train],  # boolean indexing copies: contiguous rows
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
    )


@lru_cache(maxsize=16)
def _encoding_key(encoder: Encoder, target: str) -> str:
    spec = repr((ENCODING_VERSION, encoder.numeric, encoder.categorical, target))
    return "encoded-" + hashlib.sha256(spec.encode()).hexdigest()[:16]
