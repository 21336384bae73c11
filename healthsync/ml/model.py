"""PyTorch patient-risk models and the saved global model of a run.

``SavedModel`` bundles what scoring a new patient needs (encoding, federated
scaling, weights) into bytes without pickle, so a model stored in the metrics
store can be loaded safely by the CLI and the app.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from healthsync.errors import HealthSyncError
from healthsync.ml.features import Encoder, Scaler

if TYPE_CHECKING:  # Polars is not imported by a training actor, which never predicts on frames
    import polars as pl

MLP_HIDDEN = 32


def build_model(kind: str, width: int) -> nn.Module:
    """Logistic regression (one linear layer) or a small one-hidden-layer MLP; outputs logits."""
    if kind == "logreg":
        return nn.Sequential(nn.Linear(width, 1))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(width, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, 1))
    raise HealthSyncError(f"unknown model {kind!r}; choose logreg or mlp")


def initial_model(kind: str, width: int, seed: int) -> nn.Module:
    """The same starting weights for the same seed, on every machine."""
    torch.manual_seed(seed)
    return build_model(kind, width)


def get_arrays(model: nn.Module) -> list[np.ndarray]:
    """Parameters as numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    if len(keys) != len(arrays):
        raise HealthSyncError(f"model expects {len(keys)} arrays, got {len(arrays)}")
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays, strict=True)}
    )


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Predicted probability of the positive class for each row of ``x``."""
    model.eval()
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
