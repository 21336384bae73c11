"""Local training and evaluation of one hospital's model, knowing nothing of Flower.

Like ``task.py`` in Flower's examples: the client app and the baselines call
these functions; they see only arrays a hospital's accessor already produced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from healthsync.data import Federation, open_hospital
from healthsync.ml.features import Encoder, Scaler, labels
from healthsync.ml.metrics import BinaryMetrics, binary_metrics, score_histogram
from healthsync.ml.model import get_arrays, predict_proba, set_arrays


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
        validation rows exactly as they score test rows.
        """
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


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> float:
    """Mini-batch SGD on one hospital's rows; returns the mean training loss of the last epoch.

    With ``proximal_mu > 0`` the FedProx term ``mu/2 * ||w - w_global||^2`` keeps
    the local model near the global one it started from.
    """
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(xt[idx]).squeeze(-1), yt[idx])
            if proximal_mu > 0:
                prox = sum(
                    ((p - g) ** 2).sum()
                    for p, g in zip(model.parameters(), global_params, strict=True)
                )
                loss = loss + proximal_mu / 2 * prox
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
            count += len(idx)
        last = total / max(count, 1)
    return last


def local_epochs_for(rows: int, batch_size: int, target_steps: int) -> int:
    """Epochs a hospital of ``rows`` training rows trains per round under automatic local work.

    ``ceil(target_steps / batches per epoch)``, at least 1: a small site repeats
    its few batches until it has taken about ``target_steps`` optimiser steps,
    a large one trains one epoch (more steps than the target, never fewer).
    At most ``target_steps`` epochs (a site of one batch).
    """
    batches = max(-(-rows // batch_size), 1)
    return max(-(-target_steps // batches), 1)


def evaluate_local(
    model: nn.Module, x: np.ndarray, y: np.ndarray
) -> tuple[BinaryMetrics, np.ndarray]:
    """Metrics of ``model`` on one hospital's test rows and its score histogram."""
    p = predict_proba(model, x)
    return binary_metrics(y, p), score_histogram(y, p)


def fit_from(
    model: nn.Module,
    arrays: list[np.ndarray],
    data: LocalData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> tuple[list[np.ndarray], float]:
    """Load ``arrays``, train locally, return the new arrays and the training loss."""
    set_arrays(model, arrays)
    loss = train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        proximal_mu=proximal_mu,
    )
    return get_arrays(model), loss


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


def hospital_arrays(federation: Federation, hospital_id: str, target: str) -> HospitalArrays:
    """One hospital's rows, read through its own accessor and encoded.

    The encoded matrix (features, label, test flag) is kept by the accessor
    beside the partition, so later runs skip reading and checking the rows.
    """
    encoder = Encoder.from_federation(federation, target)
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
