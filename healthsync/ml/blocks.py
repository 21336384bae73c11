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

from healthsync.ml.metrics import SCORE_BINS, BinaryMetrics, auc_by_group
from healthsync.ml.model import build_model, predict_proba, set_arrays
from healthsync.ml.training import LocalData


def _stack(model: torch.nn.Module, arrays: list[np.ndarray], count: int) -> dict[str, torch.Tensor]:
    names = list(model.state_dict().keys())
    return {
        n: torch.from_numpy(np.asarray(a)).expand(count, *a.shape).clone()
        for n, a in zip(names, arrays, strict=True)
    }


Layer = tuple[str, str, str]  # ("linear", weight key, bias key) or ("relu", "", "")


def _layers(model: torch.nn.Module) -> list[Layer]:
    """``model``'s layers as block training walks them: a ``Sequential`` of Linear and ReLU."""
    layers = []
    for name, layer in model.named_children():
        if isinstance(layer, torch.nn.Linear):
            layers.append(("linear", f"{name}.weight", f"{name}.bias"))
        elif isinstance(layer, torch.nn.ReLU):
            layers.append(("relu", "", ""))
        else:
            raise TypeError(f"block training supports Linear and ReLU layers, not {layer}")
    return layers


def _loss_and_grads(
    layers: list[Layer],
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each hospital's mean loss on its batch and its gradient, for all hospitals at once.

    ``x`` is ``(hospitals, rows, width)``, ``params`` the hospitals' stacked
    parameters, ``scale`` each row's share of its hospital's mean (1 / real rows,
    0 for padding). The layers are walked with batched matrix products, then
    backpropagated by hand: the same gradient autograd gives (the equivalence
    tests hold it to 1e-5 of one hospital's own PyTorch loop), without building
    a graph each step, which took a third of a block's training time. Each
    hospital's gradient depends only on its rows.
    """
    h, saved = x, []  # per layer: a Linear's input, or a ReLU's output
    for kind, weight, bias in layers:
        if kind == "linear":
            saved.append(h)
            h = torch.baddbmm(params[bias].unsqueeze(1), h, params[weight].transpose(1, 2))
        else:
            h = torch.relu(h)
            saved.append(h)
    logits = h.squeeze(-1)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    loss = (losses * scale).sum(dim=1)
    grad = ((torch.sigmoid(logits) - y) * scale).unsqueeze(-1)
    grads = {}
    for position in reversed(range(len(layers))):
        kind, weight, bias = layers[position]
        if kind == "relu":  # ReLU's backward: pass the gradient where the output is > 0
            grad = torch.ops.aten.threshold_backward(grad, saved[position], 0)
            continue
        grads[weight] = torch.bmm(grad.transpose(1, 2), saved[position])
        grads[bias] = grad.sum(dim=1)
        if position:  # the model's input needs no gradient
            grad = torch.bmm(grad, params[weight])
    return loss, grads


class _Batches:
    """Which rows each hospital's mini-batches hold, step by step, epoch after epoch.

    Hospitals come largest first, so step ``s`` covers the leading ``k`` hospitals
    that still have rows. Hospital ``i`` gets its own seeded shuffle of its rows
    each epoch, drawn exactly as ``training.train_local`` draws it, into one
    buffer of all shuffles. Where each step's batches sit in that buffer (and
    which of their slots are real rows rather than the overrun of a short last
    batch) is the same every epoch, so it is worked out once: an epoch is then
    its draws plus one small gather per step, with no per-hospital padding.
    """

    def __init__(self, sizes: torch.Tensor, batch_size: int) -> None:
        first = torch.cumsum(sizes, 0) - sizes  # where each hospital's rows begin
        self.start = torch.repeat_interleave(first, sizes)  # the same, per row
        self.spans = list(zip(first.tolist(), (first + sizes).tolist(), strict=True))
        # One batch of slack: a short last batch reads past the end, masked out.
        self.shuffled = torch.zeros(len(self.start) + batch_size, dtype=torch.long)
        offsets = torch.arange(batch_size)
        steps = -(-sizes // batch_size)
        # Per step: positions in ``shuffled``, hospitals k, each slot's share of its
        # hospital's mean (0 past its last row), and the hospitals' real rows.
        self.plan = []
        for step in range(int(steps[0])):
            k = int((steps > step).sum())
            slot = step * batch_size + offsets
            real = (slot[None, :] < sizes[:k, None]).float()
            used = real.sum(dim=1)
            self.plan.append(((first[:k, None] + slot).view(-1), k, real / used[:, None], used))

    def epoch(self, generators: list[torch.Generator]):
        """Draw this epoch's shuffles; yield ``(k, rows, scale, used)`` for each step."""
        shuffles = self.shuffled[: len(self.start)]
        for generator, (a, b) in zip(generators, self.spans, strict=True):
            torch.randperm(b - a, generator=generator, out=shuffles[a:b])
        shuffles += self.start  # into the concatenation of all hospitals' rows
        for positions, k, scale, used in self.plan:
            yield k, self.shuffled.index_select(0, positions), scale, used


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
    layers = _layers(model)
    params = _stack(model, arrays, count)
    anchor = {n: p.clone() for n, p in params.items()} if proximal_mu > 0 else {}
    sizes = torch.tensor([len(d.y_train) for d in data])
    flat_x = torch.from_numpy(np.concatenate([d.x_train for d in data]))
    flat_y = torch.from_numpy(np.concatenate([d.y_train for d in data]))
    batches = _Batches(sizes, batch_size)
    last = torch.zeros(count)
    for _ in range(epochs):
        total = torch.zeros(count)
        for k, rows, scale, used in batches.epoch(generators):
            xb = flat_x.index_select(0, rows).view(k, batch_size, -1)
            yb = flat_y.index_select(0, rows).view(k, batch_size)
            live = {n: p[:k] for n, p in params.items()}
            loss, grads = _loss_and_grads(layers, live, xb, yb, scale)
            if proximal_mu > 0:  # FedProx: + mu/2 ||w - w_global||^2, gradient mu (w - w_global)
                for n, p in live.items():
                    drift = p - anchor[n][:k]
                    loss = loss + proximal_mu / 2 * (drift**2).flatten(1).sum(dim=1)
                    grads[n] = grads[n] + proximal_mu * drift
            for n, p in live.items():
                p.sub_(grads[n], alpha=lr)
            total[:k] += loss * used
        last = total / sizes.float()
    back = torch.tensor(largest_first).argsort()  # to the caller's order
    return [p[back].numpy() for p in params.values()], last[back].numpy()


def train_block(
    kind: str,
    arrays: list[np.ndarray],
    data: list[LocalData],
    *,
    epochs: int | list[int],
    seeds: list[int],
    **settings: Any,
) -> tuple[list[list[np.ndarray]], list[float]]:
    """:func:`train_block_stacked`, as each hospital's own list of arrays (views of its rows)."""
    stacked, losses = train_block_stacked(
        kind, arrays, data, epochs=epochs, seeds=seeds, **settings
    )
    return [[a[i] for a in stacked] for i in range(len(data))], losses.tolist()


def train_block_stacked(
    kind: str,
    arrays: list[np.ndarray],
    data: list[LocalData],
    *,
    epochs: int | list[int],
    seeds: list[int],
    **settings: Any,
) -> tuple[list[np.ndarray], np.ndarray]:
    """``train_stacked`` (same keyword settings) in the caller's order, epochs per hospital.

    ``epochs`` may differ per hospital (automatic local work,
    ``training.local_epochs_for``): hospitals with the same number of epochs
    train in one vectorised call each, so every hospital still gets exactly
    the update ``training.train_local`` would give it alone. Returns one array
    per model parameter, row ``i`` hospital ``i``'s, and each hospital's loss.
    """
    per_hospital = [epochs] * len(data) if isinstance(epochs, int) else list(epochs)
    groups = sorted(set(per_hospital))
    if len(groups) == 1:
        return train_stacked(kind, arrays, data, epochs=groups[0], seeds=seeds, **settings)
    out: list[np.ndarray] = []
    losses = np.zeros(len(data))
    for count in groups:
        group = [i for i, e in enumerate(per_hospital) if e == count]
        stacked, group_losses = train_stacked(
            kind,
            arrays,
            [data[i] for i in group],
            epochs=count,
            seeds=[seeds[i] for i in group],
            **settings,
        )
        if not out:
            out = [np.empty((len(data), *a.shape[1:]), dtype=a.dtype) for a in stacked]
        for whole, part in zip(out, stacked, strict=True):
            whole[group] = part
        losses[group] = group_losses
    return out, losses


def _predict_all(kind: str, arrays: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The global model ``arrays``' probabilities on all hospitals' rows: one forward pass."""
    model = build_model(kind, x.shape[1])
    set_arrays(model, arrays)
    return predict_proba(model, x)


def evaluate_block(
    kind: str, arrays: list[np.ndarray], data: list[LocalData]
) -> list[tuple[BinaryMetrics, np.ndarray]]:
    """The global model's metrics and score histogram on each hospital's test rows.

    Computed for all hospitals' rows together (one forward pass; per-hospital
    sums by ``bincount``; AUC by ``metrics.auc_by_group``); each
    hospital's numbers equal ``metrics.binary_metrics`` and
    ``metrics.score_histogram`` on its own rows alone.
    """
    count = len(data)
    sizes = np.array([len(d.y_test) for d in data])
    hospital = np.repeat(np.arange(count), sizes)
    p = _predict_all(kind, arrays, np.concatenate([d.x_test for d in data]))
    y = np.concatenate([d.y_test for d in data]).astype(np.float64)
    positive = y == 1
    clipped = np.clip(p, 1e-7, 1 - 1e-7)  # as binary_metrics scores them

    def per_hospital(values: np.ndarray) -> np.ndarray:
        return np.bincount(hospital, weights=values, minlength=count)

    nll = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = per_hospital(nll) / sizes
        accuracy = per_hospital(((clipped >= 0.5) == positive).astype(np.float64)) / sizes
        brier = per_hospital((clipped - y) ** 2) / sizes
    auc = auc_by_group(hospital, positive, clipped, groups=count)
    bins = np.minimum((p * SCORE_BINS).astype(int), SCORE_BINS - 1) + SCORE_BINS * hospital
    cells = count * SCORE_BINS
    histogram = (
        np.stack(
            [
                np.bincount(bins[positive], minlength=cells),
                np.bincount(bins[~positive], minlength=cells),
                np.bincount(bins, weights=p, minlength=cells),
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
                int(sizes[i]), float(loss[i]), float(auc[i]), float(accuracy[i]), float(brier[i])
            )
            if sizes[i]
            else BinaryMetrics(0, empty, empty, empty, empty),
            histogram[i],
        )
        for i in range(count)
    ]
