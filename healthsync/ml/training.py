"""Local training and evaluation of one hospital's model, knowing nothing of Flower.

Like ``task.py`` in Flower's examples: the client app and the baselines call
these functions; they see only arrays a hospital's accessor already produced.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from healthsync.ml.arrays import (  # noqa: F401  (re-exported: callers import them from here)
    ENCODING_VERSION,
    HospitalArrays,
    LocalData,
    hospital_arrays,
    split_seed,
    validation_mask,
)
from healthsync.ml.metrics import BinaryMetrics, binary_metrics, score_histogram
from healthsync.ml.model import get_arrays, predict_proba, set_arrays


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
    the local model near the global one it started from. Each step is what
    ``torch.optim.SGD(lr=lr)`` does (``w -= lr * grad``; a test holds them
    equal), taken by hand: PyTorch's first optimiser in a process imports
    ``torch._dynamo``, 0.75 s that a cold run's first round would wait for.
    """
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    params = list(model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for p in params:
                p.grad = None
            loss = loss_fn(model(xt[idx]).squeeze(-1), yt[idx])
            if proximal_mu > 0:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(params, global_params, strict=True))
                loss = loss + proximal_mu / 2 * prox
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-lr)
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
