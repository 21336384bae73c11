"""The one validated training configuration that flows from the Launch page and the CLI to Flower.

``TrainConfig`` is frozen and checked once, when it is built; everything
downstream can trust it. At the Flower boundary it becomes Flower's flat,
hyphenated ``run_config`` (``to_run_config``) and back (``from_run_config``).
"""

from __future__ import annotations

import dataclasses
import json
import math
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
# The stress test's ways to run a workload (``healthsync.bench.sweep`` says what each is).
BENCH_WAYS: tuple[str, ...] = ("flower", "healthsync", "warm", "vectorised", "roofline")
ATTACKS: tuple[str, ...] = ("label-flip", "scale", "random")
DP_SIDES: tuple[str, ...] = ("server", "client")
# Flower accounts differential privacy only for a clipped, uniformly weighted mean.
DP_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox")
# Secure aggregation reveals only a weighted sum: FedAvg-style aggregation only.
SECAGG_STRATEGIES = ("fedavg", "fedprox")
# With two hospitals each could subtract its own model from the sum; above
# 1,000 the protocol's 32-bit sum of 22-bit quantised models would wrap around.
SECAGG_MIN_HOSPITALS, SECAGG_MAX_HOSPITALS = 3, 1000
DEFAULT_DB = Path("data/healthsync.duckdb")
AUTO_BLOCK_THRESHOLD = 32
#: Each block costs a message each way and some milliseconds of Flower's and Ray's
#: dispatch: at 20,000 hospitals on 2 CPUs, blocks of 10,000 trained a round 25 % faster
#: than blocks of 2,000. A training step's memory does not grow with it
#: (``blocks.CHUNK_ROWS``); a block's rows, updates and replies do. One failed block
#: fails all of its hospitals, and cohort queries lay hospitals out by the same rule.
MAX_AUTO_BLOCK = 16384
DEFAULT_DATA = Path("data/demo")
#: Share of each hospital's training rows held out for model selection (``TrainConfig``).
DEFAULT_VALIDATION_SHARE = 0.2
#: ``rounds="auto"``: stop when the federated validation loss has not improved for
#: ``PATIENCE`` rounds, or after ``MAX_ROUNDS``; the best round's model is kept.
AUTO_ROUNDS = "auto"
DEFAULT_MAX_ROUNDS = 50
DEFAULT_PATIENCE = 5
#: ``local_epochs="auto"``: each hospital trains enough epochs per round for about this
#: many optimiser steps (``healthsync.ml.training.local_epochs_for``).
DEFAULT_LOCAL_STEPS = 10
#: SGD learning rate of every hospital (and of the pooled and local baselines). Features
#: are standardised, so the logistic loss's curvature is at most a quarter of the largest
#: eigenvalue of their correlation matrix; 0.2 is stable below 40 (30 strongly correlated
#: features of the breast-cancer data reach about 13). At 0.05 every federation of the
#: quality benchmark ran into ``DEFAULT_MAX_ROUNDS`` with its validation loss still falling;
#: at 0.2 the validation loss of federated, pooled and local training is as low or lower
#: and most runs stop on their own (README, "Defaults that fit the data").
DEFAULT_LR = 0.2
#: ``healthsync tune``: trials of the first rung (each a real federated run), the most a
#: tuning may start, and the first rung's rounds (``healthsync.runs.tuning``).
DEFAULT_TUNING_BUDGET = 9
MAX_TUNING_BUDGET = 100
DEFAULT_TUNING_MIN_ROUNDS = 3
_LABELS = {"lr": "learning rate", "server_lr": "server learning rate"}
#: Upper limits of the settings, so that a typo (``--rounds 1000000000``) is refused
#: before anything starts instead of running for days. ``(min, max)``, both inclusive.
LIMITS: dict[str, tuple[float, float]] = {
    "rounds": (1, 10_000),
    "max_rounds": (1, 10_000),
    "patience": (1, 1_000),
    "local_steps": (1, 100_000),
    "local_epochs": (1, 1_000),
    "batch_size": (1, 1_000_000),
    "seed": (0, 2**32 - 1),  # what numpy's and torch's seeding accept
    "lr": (0, 10),
    "server_lr": (0, 10),
    "proximal_mu": (0, 1_000),
    "krum_f": (0, 100_000),
    "min_hospitals": (1, 1_000_000),
    "block_size": (0, 1_000_000),
    "dp_noise": (0, 1_000),
    "dp_clip": (0, 1_000_000),
    "dp_epsilon_budget": (0, 1_000_000),
    "straggler_delay": (0, 3_600),
    "round_timeout": (0, 86_400),
    "adversarial": (0, 1_000_000),
}


def auto_block_size(hospitals: int, cpus: int | None = None, *, max_blocks: int = 0) -> int:
    """How many hospitals one block holds when nothing is set: the one rule for training and cohorts.

    Small federations keep one block per hospital (what a demo audience
    expects to see: one Flower client each). Large ones get about one block
    per CPU (at most ``MAX_AUTO_BLOCK`` hospitals a block), so each Ray actor
    handles its share in one vectorised call; the number of blocks is then
    evened out to a multiple of the CPUs, since with block ``p`` on actor
    ``p % cpus`` 5 blocks on 2 actors leave one idle for a block's time while
    6 slightly smaller ones keep both busy. ``max_blocks`` (0: no limit) caps
    the blocks for a simulation with a fixed number of nodes (the warm engine).
    """
    if hospitals <= 0:
        return 1
    cpus = max(cpus or os.cpu_count() or 1, 1)
    block = 1
    if hospitals > AUTO_BLOCK_THRESHOLD:
        block = min(math.ceil(hospitals / cpus), MAX_AUTO_BLOCK)
        blocks = math.ceil(math.ceil(hospitals / block) / cpus) * cpus
        block = math.ceil(hospitals / blocks)
    if max_blocks and math.ceil(hospitals / block) > max_blocks:
        block = math.ceil(hospitals / max_blocks)
    return block


def block_hospitals(block: int, block_size: int, hospitals: int) -> range:
    """Indices (in the federation's list) of the hospitals in block number ``block``."""
    return range(block * block_size, min((block + 1) * block_size, hospitals))


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
    rounds : how many rounds to train, or ``"auto"`` (the default): stop when the
        federated validation loss has not improved for ``patience`` rounds, at most
        ``max_rounds``, and keep the model of the round with the lowest validation loss.
        A number N trains exactly N rounds and keeps the last round's model.
    max_rounds, patience : the limits of ``rounds="auto"``.
    local_epochs : epochs each hospital trains per round, or ``"auto"`` (the
        default): each hospital picks ``ceil(local_steps / batches per epoch)``
        epochs from its own training rows, so a 50-row site takes about as many
        optimiser steps per round as a 5,000-row one (at least one epoch each).
    local_steps : the target of ``local_epochs="auto"``.
    fraction, batch_size, lr, seed : the usual FL knobs;
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
    dp_noise, dp_clip : client-level differential privacy: each hospital's update
        is clipped to L2 norm ``dp_clip`` and the mean gets Gaussian noise of
        ``dp_noise * dp_clip / sampled hospitals``; 0 and 0 turn it off.
    dp_delta : the delta at which the spent epsilon is reported.
    dp_epsilon_budget : stop (completed) before a round would spend more; 0: none.
    dp_side : where updates are clipped: ``server`` (before aggregation) or
        ``client`` (in each hospital, before its update leaves).
    secagg : secure aggregation (Flower's SecAgg+): the server sees only the
        weighted sum of the sampled hospitals' models (docs/privacy.md); one
        Flower node per hospital, FedAvg or FedProx, no DP.
    dropout : chance that a hospital sits out a round's training (simulated).
    straggler_delay : each hospital's simulated training delay is drawn from
        ``[0, straggler_delay)`` seconds, per round.
    round_timeout : hospitals whose delay exceeds it are dropped from the round; 0: none.
    adversarial, attack : that many hospitals, chosen from the seed, attack every
        round with ``attack`` (one of ``ATTACKS``).
    validation_share : share of each hospital's training rows held out, stratified
        and seeded, to choose the model (round, epoch) by; never the test split.
        0 holds none out (and automatic rounds then cannot stop early).
    """

    data_dir: str = str(DEFAULT_DATA)
    db: str = str(DEFAULT_DB)
    target: str | None = None
    model: str = "logreg"
    strategy: str = "fedavg"
    rounds: int | str = AUTO_ROUNDS
    fraction: float = 1.0
    local_epochs: int | str = AUTO_ROUNDS
    batch_size: int = 32
    lr: float = DEFAULT_LR
    seed: int = 0
    proximal_mu: float = 0.1
    server_lr: float = 0.05
    trim_beta: float = 0.2
    krum_f: int = 1
    fail_hospitals: tuple[str, ...] = field(default_factory=tuple)
    min_hospitals: int = 1
    block_size: int = 0
    dp_noise: float = 0.0
    dp_clip: float = 0.0
    dp_delta: float = 1e-5
    dp_epsilon_budget: float = 0.0
    dp_side: str = "server"
    secagg: bool = False
    dropout: float = 0.0
    straggler_delay: float = 0.0
    round_timeout: float = 0.0
    adversarial: int = 0
    attack: str | None = None
    validation_share: float = DEFAULT_VALIDATION_SHARE
    max_rounds: int = DEFAULT_MAX_ROUNDS
    patience: int = DEFAULT_PATIENCE
    local_steps: int = DEFAULT_LOCAL_STEPS

    @property
    def dp(self) -> bool:
        """Whether the run is differentially private (noise and clipping both set)."""
        return self.dp_noise > 0 and self.dp_clip > 0

    @property
    def auto_rounds(self) -> bool:
        """Whether the run chooses its number of rounds (``rounds="auto"``)."""
        return self.rounds == AUTO_ROUNDS

    @property
    def round_limit(self) -> int:
        """The most rounds the run may train: ``rounds``, or ``max_rounds`` under auto."""
        return self.max_rounds if self.auto_rounds else int(self.rounds)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fail_hospitals", tuple(self.fail_hospitals))
        object.__setattr__(self, "rounds", parse_rounds(self.rounds))
        object.__setattr__(self, "local_epochs", parse_rounds(self.local_epochs, "local epochs"))
        if self.strategy not in STRATEGIES:
            raise HealthSyncError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.model not in MODELS:
            raise HealthSyncError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}"
            )
        _check(
            self.auto_rounds or (isinstance(self.rounds, int) and self.rounds >= 1),
            f"rounds must be >= 1, got {self.rounds}",
        )
        _check(
            isinstance(self.max_rounds, int) and self.max_rounds >= 1,
            f"max rounds must be >= 1, got {self.max_rounds}",
        )
        _check(
            isinstance(self.patience, int) and self.patience >= 1,
            f"patience must be >= 1 round, got {self.patience}",
        )
        _check(0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction}")
        _check(
            self.local_epochs == AUTO_ROUNDS
            or (isinstance(self.local_epochs, int) and self.local_epochs >= 1),
            f"local epochs must be >= 1, got {self.local_epochs}",
        )
        _check(
            isinstance(self.local_steps, int) and self.local_steps >= 1,
            f"local steps must be >= 1, got {self.local_steps}",
        )
        _check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        _check(self.proximal_mu >= 0, f"proximal mu must be >= 0, got {self.proximal_mu}")
        _check(self.server_lr > 0, f"server learning rate must be > 0, got {self.server_lr}")
        _check(0 <= self.trim_beta < 0.5, f"trim beta must be in [0, 0.5), got {self.trim_beta}")
        _check(self.krum_f >= 0, f"krum f must be >= 0, got {self.krum_f}")
        _check(self.min_hospitals >= 1, f"min hospitals must be >= 1, got {self.min_hospitals}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(
            0 <= self.validation_share <= 0.5,
            f"validation share must be in [0, 0.5], got {self.validation_share}",
        )
        _check(
            self.block_size >= 0, f"block size must be >= 0 (0: automatic), got {self.block_size}"
        )
        self._check_privacy()
        self._check_faults()
        self._check_limits()

    def _check_limits(self) -> None:
        """Every number finite, of its type, and within ``LIMITS``; checked before anything starts."""
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            label = _LABELS.get(spec.name, spec.name.replace("_", " "))
            _check(math.isfinite(value), f"{label} must be a finite number, got {value}")
            if spec.type == "int" and not isinstance(value, int):
                _check(float(value).is_integer(), f"{label} must be a whole number, got {value}")
                object.__setattr__(self, spec.name, int(value))  # 2.0 from a form or JSON
                value = int(value)
            if spec.name in LIMITS:
                low, high = LIMITS[spec.name]
                _check(
                    low <= value <= high,
                    f"{label} must be between {_number(low)} and {_number(high)}, "
                    f"got {_number(value)}",
                )

    def _check_privacy(self) -> None:
        _check(self.dp_noise >= 0, f"dp noise must be >= 0 (0: no privacy), got {self.dp_noise}")
        _check(self.dp_clip >= 0, f"dp clip must be >= 0, got {self.dp_clip}")
        _check(
            not (self.dp_noise > 0 and self.dp_clip == 0),
            f"dp noise {self.dp_noise:g} needs a clipping norm (dp clip > 0)",
        )
        _check(
            not (self.dp_clip > 0 and self.dp_noise == 0),
            f"dp clip {self.dp_clip:g} needs a noise multiplier (dp noise > 0)",
        )
        _check(0 < self.dp_delta < 1, f"dp delta must be in (0, 1), got {self.dp_delta}")
        _check(
            self.dp_side in DP_SIDES,
            f"unknown dp side {self.dp_side!r}; choose one of {', '.join(DP_SIDES)}",
        )
        _check(
            self.dp_epsilon_budget >= 0,
            f"dp epsilon budget must be >= 0 (0: none), got {self.dp_epsilon_budget}",
        )
        _check(
            self.dp or not self.dp_epsilon_budget,
            "an epsilon budget needs differential privacy (dp noise and dp clip)",
        )
        if self.secagg:
            _check(
                self.strategy in SECAGG_STRATEGIES,
                "secure aggregation shows the server only the sum of updates, so it works "
                f"with strategy {' or '.join(SECAGG_STRATEGIES)} only, not {self.strategy}",
            )
            _check(
                not self.dp,
                "secure aggregation cannot be combined with differential privacy yet "
                "(Flower's DP wrappers need each hospital's update on the server)",
            )
            _check(
                self.block_size in (0, 1),
                "secure aggregation needs one Flower node per hospital: block size 1 "
                f"(or 0, automatic), got {self.block_size}",
            )
        if not self.dp:
            return
        _check(
            self.strategy in DP_STRATEGIES,
            f"differential privacy works with strategy {' or '.join(DP_STRATEGIES)} only "
            f"(a clipped, uniform mean), not {self.strategy}",
        )
        if self.dp_epsilon_budget:
            from healthsync.privacy import epsilon_for

            first = epsilon_for(self.dp_noise, 1, self.dp_delta)
            _check(
                first <= self.dp_epsilon_budget,
                f"epsilon budget {self.dp_epsilon_budget:g} is below the cost of one round "
                f"({first:.3g} at dp noise {self.dp_noise:g}, delta {self.dp_delta:g})",
            )

    def _check_faults(self) -> None:
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(
            self.straggler_delay >= 0,
            f"straggler delay must be >= 0 seconds, got {self.straggler_delay}",
        )
        _check(
            self.round_timeout >= 0,
            f"round timeout must be >= 0 seconds (0: none), got {self.round_timeout}",
        )
        _check(
            isinstance(self.adversarial, int) and self.adversarial >= 0,
            f"adversarial must be >= 0 hospitals, got {self.adversarial}",
        )
        _check(
            self.attack is None or self.attack in ATTACKS,
            f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}",
        )
        _check(
            not (self.attack and not self.adversarial),
            f"attack {self.attack!r} needs adversarial hospitals (adversarial >= 1)",
        )
        _check(
            not (self.adversarial and not self.attack),
            f"{self.adversarial} adversarial hospital(s) need an attack: one of {', '.join(ATTACKS)}",
        )

    def block_size_for(self, hospitals: int, cpus: int | None = None) -> int:
        """The block size used for ``hospitals``: the setting, or :func:`auto_block_size`.

        Secure aggregation masks one update per Flower client, so it keeps one
        hospital per block.
        """
        if self.block_size or self.secagg:
            return min(self.block_size or 1, hospitals)
        return auto_block_size(hospitals, cpus)

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
        """Build from Flower's ``run_config`` (as set in pyproject or by ``flwr run``).

        Each value is converted to the type of its field's default, so every
        field converts without a list of names to keep up to date.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        data: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in fields:
                data[name] = _from_flat(fields[name], value)
        return cls(**data)


def parse_rounds(value: Any, what: str = "rounds") -> int | str:
    """``"auto"`` or a whole number (``"10"`` from a flat config becomes 10).

    For ``rounds`` and ``local_epochs``; anything else is kept as given, for the
    check to refuse with its message.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO_ROUNDS:
            return AUTO_ROUNDS
        try:
            return int(text)
        except ValueError:
            raise HealthSyncError(
                f"{what} must be a whole number >= 1 or 'auto', got {value!r}"
            ) from None
    return value


def _from_flat(spec: dataclasses.Field, value: Any) -> Any:
    default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
    if isinstance(default, tuple):
        return tuple(v for v in str(value).split(",") if v)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in {"true", "1", "yes"}
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def _number(value: float) -> str:
    """A limit or setting as people write it: ``10000``, ``0.5``, ``1e+23``."""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise HealthSyncError(message)
