"""The one validated training configuration that flows from the Launch page and the CLI to Flower.

``TrainConfig`` is frozen and checked once, when it is built; everything
downstream can trust it. At the Flower boundary it becomes Flower's flat,
hyphenated ``run_config`` (``to_run_config``) and back (``from_run_config``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthsync.errors import HealthSyncError

STRATEGIES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
)
MODELS: tuple[str, ...] = ("logreg", "mlp")
DEFAULT_DB = Path("data/healthsync.duckdb")
AUTO_BLOCK_THRESHOLD = 32
MAX_AUTO_BLOCK = 2048
DEFAULT_DATA = Path("data/demo")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one federated training run.

    Parameters
    ----------
    data_dir : federation directory made by ``healthsync data generate|import``.
    db : DuckDB metrics store the run writes to.
    target : binary outcome column to predict (``None``: the federation's default).
    model : ``logreg`` or ``mlp``.
    strategy : one of ``STRATEGIES``; Flower's own implementation is used.
    rounds, fraction, local_epochs, batch_size, lr, seed : the usual FL knobs;
        ``fraction`` is the share of hospitals sampled for training each round.
    proximal_mu : FedProx's proximal term.
    server_lr : server learning rate of FedAdam / FedYogi / FedAdagrad.
    trim_beta : share trimmed at each end by FedTrimmedAvg.
    krum_f : number of malicious hospitals Krum tolerates.
    fail_hospitals : fault drill: hospital ids whose client raises in every round.
    min_hospitals : the run fails if fewer hospitals than this answer a round.
    block_size : hospitals one Flower client trains at once, vectorised; 1 is the
        classic one-client-per-hospital path, 0 picks automatically
        (``block_size_for``).
    """

    data_dir: str = str(DEFAULT_DATA)
    db: str = str(DEFAULT_DB)
    target: str | None = None
    model: str = "logreg"
    strategy: str = "fedavg"
    rounds: int = 10
    fraction: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0
    proximal_mu: float = 0.1
    server_lr: float = 0.05
    trim_beta: float = 0.2
    krum_f: int = 1
    fail_hospitals: tuple[str, ...] = field(default_factory=tuple)
    min_hospitals: int = 1
    block_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fail_hospitals", tuple(self.fail_hospitals))
        if self.strategy not in STRATEGIES:
            raise HealthSyncError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.model not in MODELS:
            raise HealthSyncError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}"
            )
        _check(
            isinstance(self.rounds, int) and self.rounds >= 1,
            f"rounds must be >= 1, got {self.rounds}",
        )
        _check(0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction}")
        _check(self.local_epochs >= 1, f"local epochs must be >= 1, got {self.local_epochs}")
        _check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        _check(self.proximal_mu >= 0, f"proximal mu must be >= 0, got {self.proximal_mu}")
        _check(self.server_lr > 0, f"server learning rate must be > 0, got {self.server_lr}")
        _check(0 <= self.trim_beta < 0.5, f"trim beta must be in [0, 0.5), got {self.trim_beta}")
        _check(self.krum_f >= 0, f"krum f must be >= 0, got {self.krum_f}")
        _check(self.min_hospitals >= 1, f"min hospitals must be >= 1, got {self.min_hospitals}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(
            self.block_size >= 0, f"block size must be >= 0 (0: automatic), got {self.block_size}"
        )

    def block_size_for(self, hospitals: int, cpus: int | None = None) -> int:
        """The block size used for ``hospitals``: the setting, or an automatic choice.

        Small federations keep one Flower client per hospital (what a demo
        audience expects to see); large ones get one block per CPU, so each Ray
        actor trains its share of hospitals in a single vectorised call.
        """
        if self.block_size:
            return min(self.block_size, hospitals)
        if hospitals <= AUTO_BLOCK_THRESHOLD:
            return 1
        cpus = cpus or os.cpu_count() or 1
        return min(-(-hospitals // cpus), MAX_AUTO_BLOCK)

    # ------------------------------------------------------------ conversions
    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, as recorded with each run."""
        data = dataclasses.asdict(self)
        data["fail_hospitals"] = list(self.fail_hospitals)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HealthSyncError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def to_run_config(self) -> dict[str, Any]:
        """Flower's flat ``run_config``: hyphenated keys, scalar values only."""
        flat: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if value is None:
                continue
            if isinstance(value, list):
                value = ",".join(value)
            flat[key.replace("_", "-")] = value
        return flat

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> TrainConfig:
        """Build from Flower's ``run_config`` (as set in pyproject or by ``flwr run``)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        data: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in fields:
                continue
            if name == "fail_hospitals":
                value = tuple(v for v in str(value).split(",") if v)
            elif name in {
                "rounds",
                "local_epochs",
                "batch_size",
                "seed",
                "krum_f",
                "min_hospitals",
            }:
                value = int(value)
            elif name in {"fraction", "lr", "proximal_mu", "server_lr", "trim_beta"}:
                value = float(value)
            data[name] = value
        return cls(**data)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise HealthSyncError(message)
