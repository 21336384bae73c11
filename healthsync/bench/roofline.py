"""The roofline: one round's multiply-adds as single large matrix products over all rows.

The stress test's yardstick for what this machine allows: the arithmetic of one
round of the measured workload, with keeping hospitals apart costing nothing.

    python -m healthsync.bench.roofline --data DIR --rounds R --model mlp

prints one JSON object per line, as ``healthsync.bench.vectorised`` does:
``{"event": "ready", ...}`` once data is loaded (not timed), then
``{"round": r, "seconds": s, "updates": n, "multiply_adds": m, "loss": ...}``
per round.

What it counts. A round of the workload (``BENCH_WORK``; the model is
``healthsync.bench.vectorised``) trains every sampled hospital for
``local_epochs`` epochs over its training rows in mini-batches of
``batch_size``, then scores the new global model on every hospital's test
rows. Per Linear layer of ``inputs x outputs`` weights that is, for each
training row and epoch, ``inputs * outputs`` multiply-adds forward,
``inputs * outputs`` for the weight gradient and ``inputs * outputs`` for the
gradient of the layer's input (not for the first layer: the data needs no
gradient), and ``inputs * outputs`` for each test row (:func:`multiply_adds`).
Batch boundaries do not change that sum: a product's multiply-adds grow with
its rows, so a hospital's batches add up to its rows. The roofline performs
exactly these, counted from the shapes of the products it actually makes
(``torch.addmm``/``torch.mm`` over all sampled hospitals' rows concatenated, in
chunks of ``CHUNK_ROWS`` rows, one SGD step per chunk, every epoch), with the
same elementwise work per row (ReLU, sigmoid, loss).

Why it is a lower bound (per core, see below). Every way must do at least
these multiply-adds and this elementwise work on the same rows. The roofline
does nothing else: one shared weight set (no per-hospital copies of the
parameters, updates or averaging), no padding of a hospital's short last
batch, no per-hospital metrics, no messages; and its products are thousands
of rows tall, the shape BLAS runs fastest. Rows are read once, through each
hospital's own accessor, before timing starts, as for the other ways. What it
learns is not the federated model (one model over everyone, few steps), so its
losses are printed only to show the arithmetic ran on real rows.

One core by default (``--threads``), as the vectorised loop and each of
HealthSync's block actors use: the figure is per core. On the shared 2-core
development machine two threads made these products 5-20 times slower, not
faster (each waits on the other, descheduled); HealthSync runs one block actor
per core, so on an otherwise idle machine its round could in principle beat
this one-core bound by up to the number of cores.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from healthsync.bench.vectorised import arguments, measured_work
from healthsync.config import TrainConfig
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.model import build_model, get_arrays, initial_model
from healthsync.ml.training import hospital_arrays
from healthsync.runs.lifecycle import check_config

#: Rows per product: large enough that a product's fixed cost vanishes (256 of the
#: workload's 32-row batches), small enough that a layer's activations stay in cache
#: (8,192 x 32 floats is 1 MiB); on this machine 2,048-8,192 ran fastest, 65,536 and
#: all rows at once up to twice as slow.
CHUNK_ROWS = 8_192


def multiply_adds(
    shapes: list[tuple[int, int]], train_rows: int, test_rows: int, epochs: int
) -> int:
    """One round's multiply-adds: forward and backward per training row and epoch, forward per test row."""
    forward = sum(i * o for i, o in shapes)
    backward = forward + sum(i * o for i, o in shapes[1:])  # weight and input gradients
    return epochs * train_rows * (forward + backward) + test_rows * forward


class DenseModel:
    """The model as one shared weight set, walked with plain matrix products.

    Backpropagated by hand as ``blocks._loss_and_grads`` does (no autograd
    graph), but without a hospital axis. ``multiply_adds`` counts every product
    from the shapes it is given.
    """

    def __init__(self, kind: str, arrays: list[np.ndarray], width: int) -> None:
        params = iter(torch.from_numpy(np.array(a)) for a in arrays)  # state_dict order
        self.layers = [
            (next(params), next(params)) if isinstance(layer, torch.nn.Linear) else None
            for layer in build_model(kind, width)
        ]
        self.multiply_adds = 0

    def _product(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        self.multiply_adds += a.shape[0] * a.shape[1] * b.shape[1]
        return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)

    def _forward(self, x: torch.Tensor, saved: list[torch.Tensor]) -> torch.Tensor:
        h = x
        for layer in self.layers:
            if layer is None:
                h = torch.relu(h)
                saved.append(h)  # a ReLU's output, for its backward
            else:
                saved.append(h)  # a Linear's input, for its weight gradient
                h = self._product(h, layer[0].t(), layer[1])
        return h.squeeze(-1)

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
        """One SGD step on the mean loss over ``x``'s rows; returns their summed loss."""
        saved: list[torch.Tensor] = []
        logits = self._forward(x, saved)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        grad = ((torch.sigmoid(logits) - y) / len(y)).unsqueeze(-1)
        for position in reversed(range(len(self.layers))):
            layer = self.layers[position]
            if layer is None:
                grad = torch.ops.aten.threshold_backward(grad, saved[position], 0)
                continue
            weight, bias = layer
            weight_grad = self._product(grad.t(), saved[position])
            bias_grad = grad.sum(dim=0)
            if position:  # the data needs no gradient
                grad = self._product(grad, weight)
            weight.sub_(weight_grad, alpha=lr)
            bias.sub_(bias_grad, alpha=lr)
        return float(loss)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Summed loss of the model on ``x``'s rows (a forward pass only)."""
        logits = self._forward(x, [])
        return float(
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        )


def _chunks(x: torch.Tensor, y: torch.Tensor):
    for start in range(0, len(y), CHUNK_ROWS):
        yield x[start : start + CHUNK_ROWS], y[start : start + CHUNK_ROWS]


def run(config: TrainConfig, emit=print, *, threads: int = 1) -> None:
    """Load every hospital's rows (untimed), then time ``config.rounds`` rounds of the arithmetic."""
    torch.set_num_threads(threads)
    config, federation = check_config(config)
    target = str(config.target)
    hospitals = [hospital_arrays(federation, h.id, target) for h in federation.hospitals]
    scaler = Scaler.from_stats(ScalingStats.combine(ScalingStats.of(h.x_train) for h in hospitals))
    data = [h.scaled(scaler) for h in hospitals]
    width = data[0].x_train.shape[1]
    spans = np.cumsum([0] + [len(d.y_train) for d in data])
    train_x = torch.from_numpy(np.concatenate([d.x_train for d in data]))
    train_y = torch.from_numpy(np.concatenate([d.y_train for d in data]))
    test_x = torch.from_numpy(np.concatenate([d.x_test for d in data]))
    test_y = torch.from_numpy(np.concatenate([d.y_test for d in data]))
    del hospitals, data
    model = DenseModel(
        config.model, get_arrays(initial_model(config.model, width, config.seed)), width
    )
    count = len(spans) - 1
    emit(json.dumps({"event": "ready", "hospitals": count, "rows": len(train_y) + len(test_y)}))
    rng = np.random.default_rng(config.seed)  # the vectorised loop's draw of hospitals
    for rnd in range(1, config.rounds + 1):
        started = time.perf_counter()
        model.multiply_adds = 0
        chosen = rng.choice(count, size=max(1, int(count * config.fraction)), replace=False)
        x, y = train_x, train_y
        if len(chosen) < count:  # only the sampled hospitals' rows
            rows = torch.from_numpy(
                np.concatenate([np.arange(spans[i], spans[i + 1]) for i in chosen])
            )
            x, y = train_x.index_select(0, rows), train_y.index_select(0, rows)
        for _ in range(config.local_epochs):
            train_loss = sum(model.step(xb, yb, config.lr) for xb, yb in _chunks(x, y))
        test_loss = sum(model.loss(xb, yb) for xb, yb in _chunks(test_x, test_y))
        emit(
            json.dumps(
                {
                    "round": rnd,
                    "seconds": time.perf_counter() - started,
                    "updates": len(chosen),
                    "multiply_adds": model.multiply_adds,
                    "train_loss": train_loss / max(len(y), 1),
                    "loss": test_loss / max(len(test_y), 1),
                }
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = arguments("healthsync.bench.roofline", __doc__)
    parser.add_argument(
        "--threads", type=int, default=1, help="PyTorch threads (default 1: per core)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.threads <= (os.cpu_count() or 1):
        parser.error(f"--threads must be between 1 and {os.cpu_count()}, got {args.threads}")
    run(measured_work(args), emit=lambda line: print(line, flush=True), threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
