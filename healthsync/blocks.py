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
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch.func import functional_call, vmap

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


def _forward(model: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor):
    """Logits of every hospital's own model on its own rows: ``x`` is ``(hospitals, rows, width)``.

    Walks ``model`` (a ``Sequential`` of ``Linear`` and activation layers) with
    batched matrix products over the stacked ``params``, so one autograd graph
    holds all hospitals while each hospital's gradient depends only on its rows.
    """
    h = x
    for name, layer in model.named_children():
        if isinstance(layer, torch.nn.Linear):
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        else:
            h = layer(h)
    return h.squeeze(-1)


def _epoch_order(
    generators: list[torch.Generator], sizes: list[int], slots: int, valid: torch.Tensor
) -> torch.Tensor:
    """Row order for one epoch: hospital i's own seeded shuffle, padded to ``slots`` rows."""
    order = torch.zeros((len(sizes), slots), dtype=torch.long)
    order[valid] = torch.cat(
        [torch.randperm(n, generator=g) for g, n in zip(generators, sizes, strict=True)]
    )
    return order


def train_stacked(
    kind: str,
    arrays: list[np.ndarray],
    data: list[LocalData],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seeds: list[int],
    proximal_mu: float = 0.0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Local SGD for every hospital in ``data`` from the same global ``arrays``.

    Returns the new parameters stacked along a leading hospital axis (one array
    per model parameter, row ``i`` is hospital ``i``'s) and each hospital's mean
    training loss over the last epoch, as ``training.train_local`` would give
    for that hospital alone.
    """
    torch.set_num_threads(1)
    count = len(data)
    model = build_model(kind, data[0].x_train.shape[1])
    params = {n: p.requires_grad_() for n, p in _stack(model, arrays, count).items()}
    anchor = {n: p.detach().clone() for n, p in params.items()} if proximal_mu > 0 else {}
    sizes = [len(d.y_train) for d in data]
    longest = max(sizes)
    x = _pad([d.x_train for d in data], longest)
    flat_x, flat_y = x.view(count * longest, -1), _pad([d.y_train for d in data], longest).view(-1)
    steps = max(math.ceil(n / batch_size) for n in sizes)
    slots = steps * batch_size
    valid = torch.arange(slots)[None, :] < torch.tensor(sizes)[:, None]
    weights = valid.float()
    offsets = (torch.arange(count) * longest)[:, None]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    last = torch.zeros(count)
    for _ in range(epochs):
        order = _epoch_order(generators, sizes, slots, valid) + offsets
        total = torch.zeros(count)
        for step in range(steps):
            cols = slice(step * batch_size, (step + 1) * batch_size)
            rows, wb = order[:, cols].reshape(-1), weights[:, cols]
            xb = flat_x.index_select(0, rows).view(count, batch_size, -1)
            yb = flat_y.index_select(0, rows).view(count, batch_size)
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                _forward(model, params, xb), yb, reduction="none"
            )
            used = wb.sum(dim=1)
            loss = (losses * wb).sum(dim=1) / used.clamp(min=1.0)
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(
                    ((params[n] - anchor[n]) ** 2).flatten(1).sum(dim=1) for n in params
                )
            grads = torch.autograd.grad(loss.sum(), list(params.values()))
            active = (used > 0).float()
            with torch.no_grad():
                for p, g in zip(params.values(), grads, strict=True):
                    p -= lr * g * active.view((count,) + (1,) * (p.dim() - 1))
            total += loss.detach() * used
        last = total / torch.tensor(sizes, dtype=torch.float32)
    return [p.detach().numpy() for p in params.values()], last.numpy()


def train_block(
    kind: str, arrays: list[np.ndarray], data: list[LocalData], **settings: Any
) -> tuple[list[list[np.ndarray]], list[float]]:
    """``train_stacked`` (same keyword settings), as each hospital's own list of arrays.

    The arrays are views of the stacked result: one row each, no copies.
    """
    stacked, losses = train_stacked(kind, arrays, data, **settings)
    return [[a[i] for a in stacked] for i in range(len(data))], losses.tolist()


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
