"""PyTorch patient-risk models and the saved global model of a run.

``SavedModel`` bundles what scoring a new patient needs (encoding, federated
scaling, weights) into bytes without pickle, so a model stored in the metrics
store can be loaded safely by the CLI and the app.

PyTorch is imported by the functions that use it, not by this module: a run's
own process (the ServerApp) only needs the starting weights
(:func:`initial_arrays`) and the saved model's bytes, and importing PyTorch
there cost a cold run's first round about 0.9 CPU-seconds on a 2-core machine
also starting Ray and two actors that import it.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from healthsync.errors import HealthSyncError
from healthsync.ml.features import Encoder, Scaler

if TYPE_CHECKING:  # Polars is not imported by a training actor, which never predicts on frames
    import polars as pl
    from torch import nn

MLP_HIDDEN = 32


def _shapes(kind: str, width: int) -> list[tuple[int, int]]:
    """``(out, in)`` of each Linear layer of the model, in order (ReLU between them)."""
    if width < 1:
        raise HealthSyncError("the model has no input: the encoding found no feature column")
    if kind == "logreg":
        return [(1, width)]
    if kind == "mlp":
        return [(MLP_HIDDEN, width), (1, MLP_HIDDEN)]
    raise HealthSyncError(f"unknown model {kind!r}; choose logreg or mlp")


def build_model(kind: str, width: int) -> nn.Module:
    """Logistic regression (one linear layer) or a small one-hidden-layer MLP; outputs logits."""
    shapes = _shapes(kind, width)
    from torch import nn

    layers: list[nn.Module] = []
    for out, fan_in in shapes:
        layers += [nn.ReLU()] if layers else []
        layers.append(nn.Linear(fan_in, out))
    return nn.Sequential(*layers)


def initial_model(kind: str, width: int, seed: int) -> nn.Module:
    """The same starting weights for the same seed, on every machine."""
    import torch

    torch.manual_seed(seed)
    return build_model(kind, width)


#: ``init.calculate_gain("leaky_relu", sqrt(5))``, as ``nn.Linear``'s ``kaiming_uniform_`` computes it.
_LINEAR_GAIN = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))


def initial_arrays(kind: str, width: int, seed: int) -> list[np.ndarray]:
    """``get_arrays(initial_model(kind, width, seed))``, bit for bit, without PyTorch.

    PyTorch seeds a Mersenne Twister with ``seed`` (its low 32 bits), as
    NumPy's legacy ``RandomState`` does, and each ``nn.Linear`` draws its
    weight (``kaiming_uniform_`` with ``a=sqrt(5)``), then its bias, one 32-bit
    draw per value, each turned into a float by ``uniform_real``: the low 24
    bits scaled into ``[low, high)`` in double precision, then rounded to
    float32. A test holds the two equal for both models, several widths and
    seeds; a PyTorch that changes its initialisation fails it.
    """
    shapes = _shapes(kind, width)
    count = sum(out * (fan_in + 1) for out, fan_in in shapes)
    draws = np.random.RandomState(seed & 0xFFFFFFFF).randint(
        0, 1 << 32, size=count, dtype=np.uint64
    )
    unit = (draws & 0xFFFFFF).astype(np.float64) / (1 << 24)
    arrays, used = [], 0
    for out, fan_in in shapes:
        weight_bound = math.sqrt(3.0) * (_LINEAR_GAIN / math.sqrt(fan_in))
        for size, bound, shape in (
            (out * fan_in, weight_bound, (out, fan_in)),
            (out, 1 / math.sqrt(fan_in), (out,)),
        ):
            low, high = np.float32(-bound), np.float32(bound)
            span = np.float64(np.float32(high - low))
            values = unit[used : used + size] * span + np.float64(low)
            arrays.append(values.astype(np.float32).reshape(shape))
            used += size
    return arrays


def get_arrays(model: nn.Module) -> list[np.ndarray]:
    """Parameters as numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    import torch

    keys = list(model.state_dict().keys())
    if len(keys) != len(arrays):
        raise HealthSyncError(f"model expects {len(keys)} arrays, got {len(arrays)}")
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays, strict=True)}
    )


def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted probability of the positive class for each row of ``x``."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x)).squeeze(-1)).numpy().astype(np.float64)


@dataclass(frozen=True)
class SavedModel:
    """A run's final global model, ready to score new patients."""

    kind: str
    target: str
    encoder: Encoder
    scaler: Scaler
    arrays: list[np.ndarray]

    def module(self) -> nn.Module:
        model = build_model(self.kind, self.encoder.width)
        set_arrays(model, self.arrays)
        return model

    def predict(self, patients: pl.DataFrame) -> np.ndarray:
        """Risk of ``target`` for each patient row; errors name missing or malformed columns."""
        x = self.scaler.transform(self.encoder.encode(patients))
        return predict_proba(self.module(), x)

    def to_bytes(self) -> bytes:
        meta = {
            "kind": self.kind,
            "target": self.target,
            "numeric": list(self.encoder.numeric),
            "categorical": [[n, list(c)] for n, c in self.encoder.categorical],
        }
        buffer = io.BytesIO()
        arrays = {f"w{i}": a for i, a in enumerate(self.arrays)}
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            mean=self.scaler.mean,
            std=self.scaler.std,
            **arrays,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> SavedModel:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            n = sum(1 for k in data.files if k.startswith("w"))
            arrays = [data[f"w{i}"] for i in range(n)]
            scaler = Scaler(mean=data["mean"], std=data["std"])
        encoder = Encoder(
            numeric=tuple(meta["numeric"]),
            categorical=tuple((name, tuple(c)) for name, c in meta["categorical"]),
        )
        return cls(
            kind=meta["kind"], target=meta["target"], encoder=encoder, scaler=scaler, arrays=arrays
        )
