"""Train and evaluate many hospitals in one vectorised call, each on its own rows.

Large federations are fast only when many hospitals train together: a Python
loop of tiny PyTorch steps costs far more in overhead than in arithmetic. Here
each hospital keeps its own copy of the parameters (stacked along a leading
hospital axis) and batched matrix products take one SGD step for all of them
at once, backpropagated by hand (no autograd graph per step). Every hospital
sees exactly the mini-batches ``training.train_local`` would give it (same
seeded shuffles, same batch boundaries), so its update matches the
one-hospital-at-a-time path to float32 precision. A hospital whose epoch has
no batch left stops updating; such hospitals are left out of the step's
arithmetic altogether.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from healthsync.metrics import SCORE_BINS, BinaryMetrics
from healthsync.model import build_model, predict_proba, set_arrays
from healthsync.training import LocalData


def _stack(model: torch.nn.Module, arrays: list[np.ndarray], count: int) -> dict[str, torch.Tensor]:
    names = list(model.state_dict().keys())
    return {
        n: torch.from_numpy(np.asarray(a)).expand(count, *a.shape).clone()
        for n, a in zip(names, arrays, strict=True)
    }


def _loss_and_grads(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each hospital's mean loss on its batch and its gradient, for all hospitals at once.

    ``x`` is ``(hospitals, rows, width)``, ``params`` the hospitals' stacked
    parameters, ``weights`` 1 for a real row and 0 for padding. ``model`` (a
    ``Sequential`` of ``Linear`` and ``ReLU`` layers) is walked with batched
    matrix products, then backpropagated by hand: the same gradient autograd
    gives (the equivalence tests hold it to 1e-5 of one hospital's own
    PyTorch loop), without building a graph each step, which took a third of
    a block's training time. Each hospital's gradient depends only on its rows.
    """
    h, saved = x, []  # per layer: a Linear's input, or where a ReLU let values through
    for name, layer in model.named_children():
        if isinstance(layer, torch.nn.Linear):
            saved.append((name, "linear", h))
            h = torch.baddbmm(
                params[f"{name}.bias"].unsqueeze(1), h, params[f"{name}.weight"].transpose(1, 2)
            )
        elif isinstance(layer, torch.nn.ReLU):
            h = torch.relu(h)
            saved.append((name, "relu", h > 0))
        else:
            raise TypeError(f"block training supports Linear and ReLU layers, not {layer}")
    logits = h.squeeze(-1)
    used = weights.sum(dim=1)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    loss = (losses * weights).sum(dim=1) / used
    grad = ((torch.sigmoid(logits) - y) * weights / used[:, None]).unsqueeze(-1)
    grads = {}
    for position, (name, kind, tensor) in reversed(list(enumerate(saved))):
        if kind == "relu":
            grad = grad * tensor
            continue
        grads[f"{name}.weight"] = torch.bmm(grad.transpose(1, 2), tensor)
        grads[f"{name}.bias"] = grad.sum(dim=1)
        if position:  # the model's input needs no gradient
            grad = torch.bmm(grad, params[f"{name}.weight"])
    return loss, grads


def _epoch_order(
    generators: list[torch.Generator], sizes: torch.Tensor, first: torch.Tensor, slots: int
) -> torch.Tensor:
    """Rows (into the concatenated rows) for one epoch, ``(hospitals, slots)``.

    Hospital ``i`` gets its own seeded shuffle of its rows; slots past its
    last row point at row 0 (they are masked out of the loss). The shuffles
    are scattered into place in one indexed write, not through a mask.
    """
    shuffles = torch.cat(
        [torch.randperm(int(n), generator=g) for g, n in zip(generators, sizes, strict=True)]
    )
    hospital = torch.repeat_interleave(torch.arange(len(generators)), sizes)
    start = first[hospital]  # where each hospital's rows begin in the concatenation
    slot = torch.arange(len(shuffles)) - start  # 0 .. size - 1 within each hospital
    order = torch.zeros(len(generators), slots, dtype=torch.long)
    order.view(-1)[hospital * slots + slot] = start + shuffles
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

    Hospitals differ in size, so in an epoch's later steps only the larger ones
    still have a batch. Hospitals are therefore taken largest first, and step
    ``s`` computes only the leading ones that still have rows left; rows are
    read from one concatenation of all hospitals' rows, without padding.
    """
    torch.set_num_threads(1)
    count = len(data)
    largest_first = sorted(range(count), key=lambda i: -len(data[i].y_train))
    data = [data[i] for i in largest_first]
    generators = [torch.Generator().manual_seed(seeds[i]) for i in largest_first]
    model = build_model(kind, data[0].x_train.shape[1])
    params = _stack(model, arrays, count)
    anchor = {n: p.clone() for n, p in params.items()} if proximal_mu > 0 else {}
    sizes = torch.tensor([len(d.y_train) for d in data])
    first = torch.cumsum(sizes, 0) - sizes
    flat_x = torch.from_numpy(np.concatenate([d.x_train for d in data]))
    flat_y = torch.from_numpy(np.concatenate([d.y_train for d in data]))
    steps = -(-sizes // batch_size)  # per hospital, largest first
    slots = int(steps[0]) * batch_size
    weights = (torch.arange(slots)[None, :] < sizes[:, None]).float()
    active = [int((steps > s).sum()) for s in range(int(steps[0]))]  # a leading run
    last = torch.zeros(count)
    for _ in range(epochs):
        order = _epoch_order(generators, sizes, first, slots)
        total = torch.zeros(count)
        for step, k in enumerate(active):
            cols = slice(step * batch_size, (step + 1) * batch_size)
            rows, wb = order[:k, cols].reshape(-1), weights[:k, cols]
            xb = flat_x.index_select(0, rows).view(k, batch_size, -1)
            yb = flat_y.index_select(0, rows).view(k, batch_size)
            live = {n: p[:k] for n, p in params.items()}
            loss, grads = _loss_and_grads(model, live, xb, yb, wb)
            if proximal_mu > 0:  # FedProx: + mu/2 ||w - w_global||^2, gradient mu (w - w_global)
                for n, p in live.items():
                    drift = p - anchor[n][:k]
                    loss = loss + proximal_mu / 2 * (drift**2).flatten(1).sum(dim=1)
                    grads[n] = grads[n] + proximal_mu * drift
            for n, p in live.items():
                p -= lr * grads[n]
            total[:k] += loss * wb.sum(dim=1)
        last = total / sizes.float()
    back = torch.tensor(largest_first).argsort()  # to the caller's order
    return [p[back].numpy() for p in params.values()], last[back].numpy()


def train_block(
    kind: str, arrays: list[np.ndarray], data: list[LocalData], **settings: Any
) -> tuple[list[list[np.ndarray]], list[float]]:
    """``train_stacked`` (same keyword settings), as each hospital's own list of arrays.

    The arrays are views of the stacked result: one row each, no copies.
    """
    stacked, losses = train_stacked(kind, arrays, data, **settings)
    return [[a[i] for a in stacked] for i in range(len(data))], losses.tolist()


def predict_block(kind: str, arrays: list[np.ndarray], x: list[np.ndarray]) -> list[np.ndarray]:
    """The model ``arrays``' predicted probabilities on each hospital's rows.

    Every hospital is scored with the same (global) model, so one forward pass
    over all hospitals' rows together does it, without padding.
    """
    model = build_model(kind, x[0].shape[1])
    set_arrays(model, arrays)
    probs = predict_proba(model, np.concatenate(x))
    return np.split(probs, np.cumsum([len(part) for part in x])[:-1])


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
