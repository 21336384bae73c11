"""Train and evaluate many hospitals in one vectorised call, each on its own rows.

Large federations are fast only when many hospitals train together: a Python
loop of tiny PyTorch steps costs far more in overhead than in arithmetic. Here
each hospital keeps its own copy of the parameters (stacked along a leading
hospital axis) and ``torch.func.vmap`` takes one SGD step for all of them at
once. Every hospital sees exactly the mini-batches ``training.train_local``
would give it (same seeded shuffles, same batch boundaries), so its update
matches the one-hospital-at-a-time path to float32 precision. Hospitals with
fewer batches than the largest simply stop updating (a per-step mask).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata
from torch.func import functional_call, grad_and_value, vmap

from healthsync.metrics import SCORE_BINS, BinaryMetrics
from healthsync.model import build_model
from healthsync.training import LocalData


def _stack(model: torch.nn.Module, arrays: list[np.ndarray], count: int) -> dict[str, torch.Tensor]:
    names = list(model.state_dict().keys())
    return {
        n: torch.from_numpy(np.asarray(a)).expand(count, *a.shape).clone()
        for n, a in zip(names, arrays, strict=True)
    }


def _pad(parts: list[np.ndarray], length: int) -> torch.Tensor:
    out = np.zeros((len(parts), length, *parts[0].shape[1:]), dtype=np.float32)
    for i, part in enumerate(parts):
        out[i, : len(part)] = part
    return torch.from_numpy(out)


def train_block(
    kind: str,
    arrays: list[np.ndarray],
    data: list[LocalData],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seeds: list[int],
    proximal_mu: float = 0.0,
) -> tuple[list[list[np.ndarray]], list[float]]:
    """Local SGD for every hospital in ``data`` from the same global ``arrays``.

    Returns each hospital's new arrays and its mean training loss over the last
    epoch, as ``training.train_local`` would for that hospital alone.
    """
    torch.set_num_threads(1)
    count = len(data)
    width = data[0].x_train.shape[1]
    model = build_model(kind, width)
    params = _stack(model, arrays, count)
    anchor = {n: p[0].clone() for n, p in params.items()}
    sizes = [len(d.y_train) for d in data]
    longest = max(sizes)
    x = _pad([d.x_train for d in data], longest)
    y = _pad([d.y_train for d in data], longest)
    steps = max(math.ceil(n / batch_size) for n in sizes)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    rows = torch.arange(count)[:, None]

    def loss_fn(p, xb, yb, wb):
        logits = functional_call(model, p, (xb,)).squeeze(-1)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb, reduction="none")
        loss = (losses * wb).sum() / wb.sum().clamp(min=1.0)
        if proximal_mu > 0:
            loss = loss + proximal_mu / 2 * sum(((p[n] - anchor[n]) ** 2).sum() for n in p)
        return loss

    step_fn = vmap(grad_and_value(loss_fn))
    last = torch.zeros(count)
    for _ in range(epochs):
        index = torch.zeros((count, steps * batch_size), dtype=torch.long)
        valid = torch.zeros((count, steps * batch_size))
        for i, n in enumerate(sizes):
            index[i, :n] = torch.randperm(n, generator=generators[i])
            valid[i, :n] = 1.0
        index = index.view(count, steps, batch_size)
        valid = valid.view(count, steps, batch_size)
        total = torch.zeros(count)
        for step in range(steps):
            idx, wb = index[:, step], valid[:, step]
            grads, loss = step_fn(params, x[rows, idx], y[rows, idx], wb)
            used = wb.sum(dim=1)
            active = (used > 0).float()
            with torch.no_grad():
                for n in params:
                    shape = (count,) + (1,) * (params[n].dim() - 1)
                    params[n] -= lr * grads[n] * active.view(shape)
            total += loss.detach() * used
        last = total / torch.tensor(sizes, dtype=torch.float32)
    new_arrays = [[params[n][i].detach().numpy().copy() for n in params] for i in range(count)]
    return new_arrays, last.tolist()


@torch.no_grad()
def predict_block(
    kind: str, arrays: list[list[np.ndarray]] | list[np.ndarray], x: list[np.ndarray]
) -> list[np.ndarray]:
    """Predicted probabilities per hospital; ``arrays`` is one model for all or one per hospital."""
    count = len(x)
    model = build_model(kind, x[0].shape[1])
    names = list(model.state_dict().keys())
    if arrays and isinstance(arrays[0], np.ndarray):
        params = _stack(model, arrays, count)
    else:
        params = {
            n: torch.from_numpy(np.stack([a[j] for a in arrays])) for j, n in enumerate(names)
        }
    longest = max(len(part) for part in x)
    padded = _pad(x, longest)
    logits = vmap(lambda p, xb: functional_call(model, p, (xb,)).squeeze(-1))(params, padded)
    probs = torch.sigmoid(logits).double().numpy()
    return [probs[i, : len(part)] for i, part in enumerate(x)]


def evaluate_block(
    kind: str, arrays: list[np.ndarray], data: list[LocalData]
) -> list[tuple[BinaryMetrics, np.ndarray]]:
    """The global model's metrics and score histogram on each hospital's test rows.

    Computed for all hospitals at once on a padded ``(hospitals, rows)`` grid;
    each hospital's numbers equal ``metrics.binary_metrics`` and
    ``metrics.score_histogram`` on its own rows alone.
    """
    probs = predict_block(kind, arrays, [d.x_test for d in data])
    count, longest = len(data), max(len(d.y_test) for d in data)
    valid = np.zeros((count, longest), dtype=bool)
    y = np.zeros((count, longest))
    p = np.full((count, longest), 0.5)
    for i, (d, prob) in enumerate(zip(data, probs, strict=True)):
        valid[i, : len(prob)], y[i, : len(prob)], p[i, : len(prob)] = True, d.y_test, prob
    n = valid.sum(axis=1)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    nll = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(valid, nll, 0).sum(axis=1) / n
        accuracy = np.where(valid, (clipped >= 0.5) == (y == 1), False).sum(axis=1) / n
        brier = np.where(valid, (clipped - y) ** 2, 0).sum(axis=1) / n
        # AUC by rank sums; padding ranks last (+inf) so it never shifts a real rank.
        ranks = rankdata(np.where(valid, p, np.inf), axis=1)
        positives = (y * valid).sum(axis=1)
        negatives = n - positives
        auc = ((ranks * y * valid).sum(axis=1) - positives * (positives + 1) / 2) / (
            positives * negatives
        )
    auc = np.where((positives > 0) & (negatives > 0), auc, np.nan)
    bins = (
        np.minimum((p * SCORE_BINS).astype(int), SCORE_BINS - 1)
        + SCORE_BINS * np.arange(count)[:, None]
    )
    histogram = (
        np.stack(
            [
                np.bincount(bins[valid & (y == 1)], minlength=count * SCORE_BINS),
                np.bincount(bins[valid & (y == 0)], minlength=count * SCORE_BINS),
                np.bincount(bins[valid], weights=p[valid], minlength=count * SCORE_BINS),
            ],
            axis=1,
        )
        .astype(np.float64)
        .reshape(count, SCORE_BINS, 3)
    )
    empty = float("nan")
    return [
        (
            BinaryMetrics(
                int(n[i]), float(loss[i]), float(auc[i]), float(accuracy[i]), float(brier[i])
            )
            if n[i]
            else BinaryMetrics(0, empty, empty, empty, empty),
            histogram[i],
        )
        for i in range(count)
    ]
