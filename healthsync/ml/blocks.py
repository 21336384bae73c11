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

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import fields
from functools import cached_property
from typing import Any

import numpy as np
import torch

from healthsync.ml.metrics import SCORE_BINS, BinaryMetrics, auc_by_group
from healthsync.ml.model import build_model, predict_proba, set_arrays
from healthsync.ml.training import LocalData

#: Rows in one batched product. A step of a whole block at once (thousands of
#: hospitals' mini-batches) made activations of tens of MiB, larger than a core's
#: cache; hospitals are therefore trained a chunk at a time, every step of an
#: epoch for one chunk before the next (``CHUNK_ROWS // batch_size`` hospitals), and
#: the global model scores test rows in chunks of this many. On the 2-core
#: development machine 32,768 rows trained an MLP block of 5,000 hospitals about
#: 15 % faster than the whole block per step (8,192 about as fast).
CHUNK_ROWS = 32_768
#: Layouts remembered (``layout``), least recently used dropped first: at most this
#: many, holding at most ``LAYOUT_BYTES`` of rows (the rows of every block of a
#: 100,000 x 100 federation's actor take about 0.4 GiB; a run that samples new
#: hospitals every round makes a new layout each time, which must not pile up).
LAYOUTS_KEPT = 512
LAYOUT_BYTES = 1 << 30


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
    buffer of all shuffles per epoch. Where each step's batches sit in that
    buffer (and which of their slots are real rows rather than the overrun of a
    short last batch) is the same every epoch, so it is worked out once: an
    epoch is then one small gather per step, with no per-hospital padding.
    """

    def __init__(self, sizes: torch.Tensor, batch_size: int) -> None:
        first = torch.cumsum(sizes, 0) - sizes  # where each hospital's rows begin
        self.start = torch.repeat_interleave(first, sizes)  # the same, per row
        self.spans = list(zip(first.tolist(), (first + sizes).tolist(), strict=True))
        self.batch_size = batch_size
        offsets = torch.arange(batch_size)
        steps = -(-sizes // batch_size)
        # Per step: positions in the shuffles (a row of batch slots per hospital),
        # hospitals k, each slot's share of its hospital's mean (0 past its last
        # row), and the hospitals' real rows.
        self.plan = []
        for step in range(int(steps[0]) if len(steps) else 0):
            k = int((steps > step).sum())
            slot = step * batch_size + offsets
            real = (slot[None, :] < sizes[:k, None]).float()
            used = real.sum(dim=1)
            self.plan.append((first[:k, None] + slot, k, real / used[:, None], used))

    @property
    def nbytes(self) -> int:
        tensors = [self.start, *(t for step in self.plan for t in (step[0], step[2], step[3]))]
        return sum(t.numel() * t.element_size() for t in tensors)

    def shuffle(self, seeds: list[int], epochs: int) -> torch.Tensor:
        """Every epoch's shuffles, ``(epochs, rows + batch_size)``: hospital ``i``'s
        generator, seeded with ``seeds[i]``, draws its epochs one after the other, as
        ``training.train_local``'s does.

        One generator, seeded again for each hospital (which resets all of its
        state): creating a generator per hospital cost as much as its draws.
        """
        rows = len(self.start)
        # One batch of slack per epoch: a short last batch reads past the end, masked out.
        shuffled = torch.zeros((epochs, rows + self.batch_size), dtype=torch.long)
        generator = torch.Generator()
        for seed, (a, b) in zip(seeds, self.spans, strict=True):
            generator.manual_seed(seed)
            for epoch in range(epochs):
                torch.randperm(b - a, generator=generator, out=shuffled[epoch, a:b])
        shuffled[:, :rows] += self.start  # into the concatenation of all hospitals' rows
        return shuffled

    def steps(
        self, shuffled: torch.Tensor, first: int, end: int
    ) -> Iterator[tuple[int, torch.Tensor, slice]]:
        """For hospitals ``first..end-1``, given one epoch's ``shuffled`` rows:
        ``(k, rows, hospitals)`` of each step that has any.

        ``hospitals`` is the slice of the leading ones with rows left; ``rows``
        their batches' rows (``k`` batches, one after the other).
        """
        for positions, k, _, _ in self.plan:
            last = min(k, end)
            if last <= first:
                break  # later steps have fewer hospitals still
            wanted = positions[first:last].reshape(-1)
            yield last - first, shuffled.index_select(0, wanted), slice(first, last)

    def weights(self, step: int, hospitals: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Each slot's share of its hospital's mean, and each hospital's real rows, at ``step``."""
        _, _, scale, used = self.plan[step]
        return scale[hospitals], used[hospitals]


class TrainRows:
    """A list of hospitals' training rows, largest hospital first, in one array."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.count = len(parts)
        self.largest_first = sorted(range(self.count), key=lambda i: -len(parts[i][1]))
        ordered = [parts[i] for i in self.largest_first]
        self.sizes = torch.tensor([len(y) for _, y in ordered])
        self.x = torch.from_numpy(np.concatenate([x for x, _ in ordered]))
        self.y = torch.from_numpy(np.concatenate([y for _, y in ordered]))
        self.back = torch.tensor(self.largest_first).argsort()  # to the caller's order
        self._batches: dict[int, _Batches] = {}

    def batches(self, batch_size: int) -> _Batches:
        if (plan := self._batches.get(batch_size)) is None:
            plan = self._batches[batch_size] = _Batches(self.sizes, batch_size)
        return plan

    @property
    def nbytes(self) -> int:
        batches = sum(b.nbytes for b in self._batches.values())
        return self.x.nbytes + self.y.nbytes + batches


class Layout:
    """A list of hospitals' rows as block training and evaluation read them, laid out once.

    The rounds of a run train and score a block's hospitals on the same
    standardised rows (when every hospital takes part), and concatenating them
    (a copy of every row) and planning the mini-batches cost as much as a
    logistic regression's epoch. ``layout(data)`` therefore returns the same
    ``Layout`` for the same ``LocalData`` objects (frozen, so their rows do not
    change) while they live; a hospital whose data changes (a label-flipping
    attacker, a validation split) comes as a new object and gets a new layout.
    Each part (training rows, test rows) is built when first read: a list that
    is only scored copies no training row.
    """

    def __init__(self, data: Sequence[LocalData]) -> None:
        # Set when any of the objects dies. The callback holds the flag, not the layout:
        # no reference cycle keeps a dropped layout's rows alive until a full collection.
        self._dead = dead = [False]
        self.refs = [weakref.ref(d, lambda _, dead=dead: dead.__setitem__(0, True)) for d in data]
        self.count = len(data)
        self._trains = [(d.x_train, d.y_train) for d in data]
        self._tests = [(d.x_test, d.y_test) for d in data]

    @property
    def dead(self) -> bool:
        """Whether one of the objects it was laid out from no longer exists."""
        return self._dead[0]

    def holds(self, data: Sequence[LocalData]) -> bool:
        """Whether this layout is of exactly these objects, in this order."""
        return len(data) == self.count and all(
            r() is d for r, d in zip(self.refs, data, strict=True)
        )

    @cached_property
    def train(self) -> TrainRows:
        """Training rows, largest hospital first (``train_stacked``)."""
        rows = TrainRows(self._trains)
        self._trains = []
        return rows

    @cached_property
    def test(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Test rows in the caller's order: ``(x, y, sizes, hospital of each row)``."""
        tests = self._tests
        sizes = np.array([len(y) for _, y in tests])
        x = np.concatenate([x for x, _ in tests])
        y = np.concatenate([y for _, y in tests]).astype(np.float64)
        self._tests = []  # only once built: a failed build leaves them to try again
        return x, y, sizes, np.repeat(np.arange(self.count), sizes)

    @property
    def nbytes(self) -> int:
        """The bytes of the parts built so far."""
        built = self.__dict__
        train = built["train"].nbytes if "train" in built else 0
        test = sum(a.nbytes for a in built["test"]) if "test" in built else 0
        return train + test


# One process's layouts, least recently used first. Not locked: a Ray actor serves one
# message at a time (and the in-process paths are single-threaded).
_layouts: dict[tuple[int, ...], Layout] = {}


def layout(data: Sequence[LocalData]) -> Layout:
    """The ``Layout`` of ``data`` (the same objects, in the same order), remembered while
    they live, within ``LAYOUTS_KEPT`` and ``LAYOUT_BYTES``."""
    key = tuple(map(id, data))
    found = _layouts.pop(key, None)
    if found is None or not found.holds(data):
        found = Layout(data)
        for stale in [k for k, v in _layouts.items() if v.dead]:
            del _layouts[stale]
        kept = sum(v.nbytes for v in _layouts.values())
        while _layouts and (len(_layouts) >= LAYOUTS_KEPT or kept > LAYOUT_BYTES):
            kept -= _layouts.pop(next(iter(_layouts))).nbytes
    _layouts[key] = found
    return found


def forget_layouts() -> None:
    """Drop every remembered layout (the rows they were made of are no longer used)."""
    _layouts.clear()


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
    Hospitals train a chunk at a time (``CHUNK_ROWS``): each one's steps depend
    only on its own rows and parameters, so the order changes nothing.
    """
    torch.set_num_threads(1)
    rows = layout(data).train
    count = rows.count
    model = build_model(kind, data[0].x_train.shape[1])
    layers = _layers(model)
    params = _stack(model, arrays, count)
    anchor = {n: p.clone() for n, p in params.items()} if proximal_mu > 0 else {}
    batches = rows.batches(batch_size)
    shuffled = batches.shuffle([seeds[i] for i in rows.largest_first], epochs)
    chunk = max(1, CHUNK_ROWS // batch_size)
    last = torch.zeros(count)
    for epoch in range(epochs):
        total = torch.zeros(count)
        for first in range(0, count, chunk):
            steps = batches.steps(shuffled[epoch], first, first + chunk)
            for step, (k, picked, hospitals) in enumerate(steps):
                scale, used = batches.weights(step, hospitals)
                xb = rows.x.index_select(0, picked).view(k, batch_size, -1)
                yb = rows.y.index_select(0, picked).view(k, batch_size)
                live = {n: p[hospitals] for n, p in params.items()}
                loss, grads = _loss_and_grads(layers, live, xb, yb, scale)
                # FedProx: + mu/2 ||w - w_global||^2, whose gradient is mu (w - w_global)
                if proximal_mu > 0:
                    for n, p in live.items():
                        drift = p - anchor[n][hospitals]
                        loss = loss + proximal_mu / 2 * (drift**2).flatten(1).sum(dim=1)
                        grads[n] = grads[n] + proximal_mu * drift
                for n, p in live.items():
                    p.sub_(grads[n], alpha=lr)
                total[hospitals] += loss * used
        last = total / rows.sizes.float()
    return [p[rows.back].numpy() for p in params.values()], last[rows.back].numpy()


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
    """The global model ``arrays``' probabilities on all hospitals' rows, ``CHUNK_ROWS`` at a time."""
    model = build_model(kind, x.shape[1])
    set_arrays(model, arrays)
    if len(x) <= CHUNK_ROWS:
        return predict_proba(model, x)
    return np.concatenate(
        [
            predict_proba(model, x[start : start + CHUNK_ROWS])
            for start in range(0, len(x), CHUNK_ROWS)
        ]
    )


def evaluate_columns(
    kind: str, arrays: list[np.ndarray], data: list[LocalData]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The global model's metrics and score histogram on each hospital's test rows, as columns.

    ``({"n", "loss", "auc", "accuracy", "brier"}: one value per hospital, histograms
    (hospitals, SCORE_BINS, 3))``. Computed for all hospitals' rows together
    (forward passes of ``CHUNK_ROWS`` rows; per-hospital sums by ``bincount``; AUC by
    ``metrics.auc_by_group``); each hospital's numbers equal
    ``metrics.binary_metrics`` and ``metrics.score_histogram`` on its own rows
    alone (NaN for a hospital without test rows).
    """
    x, y, sizes, hospital = layout(data).test
    count = len(sizes)
    p = _predict_all(kind, arrays, x)
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
    columns = {"n": sizes, "loss": loss, "auc": auc, "accuracy": accuracy, "brier": brier}
    return columns, histogram


def evaluate_block(
    kind: str, arrays: list[np.ndarray], data: list[LocalData]
) -> list[tuple[BinaryMetrics, np.ndarray]]:
    """:func:`evaluate_columns` as each hospital's ``(BinaryMetrics, histogram)``."""
    columns, histogram = evaluate_columns(kind, arrays, data)
    rows = zip(*(columns[f.name].tolist() for f in fields(BinaryMetrics)), strict=True)
    return [(BinaryMetrics(*row), histogram[i]) for i, row in enumerate(rows)]
