"""Round-level concerns of a federated run as small callbacks around the round loop.

The loop in ``simulation.server_app.FederatedRun.run`` only trains and
evaluates; everything else a round needs (timing it, honouring a cancel,
stopping at the DP budget, recording it, stopping early) is a
``RoundCallback`` with do-nothing defaults, in the style of pfl-research's
training-process callbacks. A new concern is one more small class, not
another branch in the loop: ``RoundTracer`` is the run's and rounds'
OpenTelemetry spans (the loop's ``PhaseClock`` adds a child span per phase).

Order matters and is the list's order: the timer runs first at a round's end
so its seconds exclude the writes, early stopping runs before the recorder so
the recorder knows whether to keep the round's model. The loop runs every
``on_round_end`` inside one store transaction (one open of the file per round).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from flwr.app import ArrayRecord
from flwr.serverapp import GaussianPrivacyEvent
from opentelemetry import context as otel_context
from opentelemetry import trace

from healthsync.config import TrainConfig
from healthsync.ml.metrics import BinaryMetrics
from healthsync.ml.selection import Patience
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore
from healthsync.telemetry import PhaseClock, tracer
from simulation import safeguards


class RunCancelled(Exception):
    """Raised between rounds when the run's cancel flag is set."""


@dataclass
class RoundResult:
    """What one round produced, handed to every callback's ``on_round_end``.

    Callbacks may fill in fields for the ones after them: ``row["seconds"]``
    (the timer), ``keep_model`` (early stopping: is this the best round so far),
    ``row`` and ``metrics`` as stored (the recorder, after the release policy).
    """

    round: int
    row: dict[str, Any]  # the round's figures, as ``runlog.record_round`` takes them
    metrics: BinaryMetrics  # the federation's test metrics
    hospitals: pl.DataFrame  # per-hospital test rows (with class counts), one row each
    arrays: ArrayRecord  # the global model after the round
    histogram: np.ndarray | None  # summed score histogram of the test split
    keep_model: bool = True  # whether this round's model becomes the run's saved model
    extra: dict[str, Any] = field(default_factory=dict)
    phases: PhaseClock | None = None  # the round's phase timings, the recorder stores them


class RoundCallback:
    """One round-level concern; every hook does nothing unless overridden.

    ``on_round_start`` and ``on_round_end`` return a reason to stop the run
    (it then ends ``completed`` with that reason) or ``None`` to go on; a
    callback that must end the run otherwise (a cancel) raises.
    """

    def on_run_start(self) -> None:
        """Before the first round."""

    def on_round_start(self, rnd: int) -> str | None:
        """Before round ``rnd`` trains; a reason here stops the run without it."""
        return None

    def on_round_end(self, result: RoundResult) -> str | None:
        """After round ``rnd`` was evaluated; a reason here stops the run after it."""
        return None

    def on_run_end(self, rounds_done: int, reason: str | None) -> None:
        """After the last round, when the run ends normally (not cancelled or failed)."""

    def on_run_failed(self, error: BaseException) -> None:
        """When the loop raised (a cancel, a failure): the error propagates after this."""


class Callbacks(RoundCallback):
    """Several callbacks as one, called in order; the first stop reason wins.

    Every callback's ``on_round_end`` still runs after a stop (the round is recorded).
    """

    def __init__(self, callbacks: list[RoundCallback]) -> None:
        self.callbacks = callbacks

    def on_run_start(self) -> None:
        for callback in self.callbacks:
            callback.on_run_start()

    def on_round_start(self, rnd: int) -> str | None:
        for callback in self.callbacks:
            if reason := callback.on_round_start(rnd):
                return reason
        return None

    def on_round_end(self, result: RoundResult) -> str | None:
        reasons = [callback.on_round_end(result) for callback in self.callbacks]
        return next((r for r in reasons if r), None)

    def on_run_end(self, rounds_done: int, reason: str | None) -> None:
        for callback in self.callbacks:
            callback.on_run_end(rounds_done, reason)

    def on_run_failed(self, error: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_run_failed(error)


class RoundTimer(RoundCallback):
    """``seconds`` of each round: training and evaluation, not the writes after them."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_round_start(self, rnd: int) -> str | None:
        self.started = time.perf_counter()
        return None

    def on_round_end(self, result: RoundResult) -> str | None:
        result.row["seconds"] = time.perf_counter() - self.started
        return None


class CancelCheck(RoundCallback):
    """Stop with ``RunCancelled`` right before a round when someone asked to cancel.

    The store's flag is read at each round's end, in the round's own
    transaction; the flag file (``lifecycle.cancel_signalled``) right before the
    next round, so a click while a round trained stops the run one round later.
    """

    def __init__(self, store: MetricsStore, db: str, run_id: str) -> None:
        self.store, self.db, self.run_id = store, db, run_id
        self.cancelled = False

    def on_run_start(self) -> None:
        self.cancelled = runlog.cancel_requested(self.store, self.run_id)

    def on_round_start(self, rnd: int) -> str | None:
        if self.cancelled or lifecycle.cancel_signalled(self.db, self.run_id):
            raise RunCancelled
        return None

    def on_round_end(self, result: RoundResult) -> str | None:
        self.cancelled = runlog.cancel_requested(self.store, self.run_id)
        return None


class PrivacyBudgetStop(RoundCallback):
    """Stop (completed) before a DP round whose release would exceed the epsilon budget.

    Asks the DP strategy's own accountant the question Flower's DP wrapper asks
    in ``configure_train`` (``would_exceed`` for one round's Gaussian release
    over the sampled hospitals), so the run stops at the same round, with an
    event saying how much was spent.
    """

    def __init__(
        self, strategy: Any, config: TrainConfig, sampled: int, store: MetricsStore, run_id: str
    ) -> None:
        self.accountant = getattr(strategy, "accountant", None)
        self.config, self.sampled, self.store, self.run_id = config, sampled, store, run_id

    def on_round_start(self, rnd: int) -> str | None:
        if self.accountant is None or not self.config.dp_epsilon_budget:
            return None
        event = GaussianPrivacyEvent(
            noise_multiplier=self.config.dp_noise,
            sample_size=self.sampled,
            population_size=self.accountant.config.population_size,
        )
        if not self.accountant.would_exceed(event):
            return None
        spent = self.accountant.get_privacy_spent().epsilon
        reason = safeguards.budget_reason(self.config, rnd - 1, spent)
        runlog.record_event(self.store, self.run_id, "budget_reached", reason, round=rnd - 1)
        return reason


class EarlyStopping(RoundCallback):
    """``rounds="auto"``: keep the round of lowest federated validation loss, stop after patience.

    The rule is ``healthsync.ml.selection.Patience``, the one the baselines use.
    A round is kept (``keep_model``) when its validation loss is the lowest so
    far. Without validation rows (a NaN loss) every round is kept, as with a
    fixed number of rounds, and only the maximum stops the run.
    """

    def __init__(self, patience: int) -> None:
        self.rule = Patience(patience)

    def on_round_end(self, result: RoundResult) -> str | None:
        loss = result.row.get("val_loss")
        if loss is None or math.isnan(loss):
            return None  # keep_model stays True: the last round is kept
        result.keep_model = self.rule.update(result.round, loss)
        if not self.rule.stop:
            return None
        return (
            f"validation loss has not improved for {self.rule.patience} rounds; "
            f"kept round {self.rule.best_round} (validation loss {self.rule.best_loss:.4f})"
        )


class RoundRecorder(RoundCallback):
    """Write each round to the metrics store, and the kept model with its score bins.

    ``final`` is the run's result: the figures of the last round whose model was
    kept, as the release policy stored them (a withheld figure becomes NaN).
    """

    def __init__(self, store: MetricsStore, run_id: str, save_model) -> None:
        self.store, self.run_id, self.save_model = store, run_id, save_model
        self.final: BinaryMetrics | None = None

    def on_round_end(self, result: RoundResult) -> str | None:
        result.row = runlog.record_round(self.store, self.run_id, result.row, result.hospitals)
        result.metrics = released(result.metrics, result.row)
        if result.keep_model:
            self.save_model(result.arrays, result.histogram)
            runlog.set_best_round(self.store, self.run_id, result.round)
            self.final = result.metrics
        if result.phases is not None:  # last, so "record" covers the writes above
            runlog.record_phases(self.store, self.run_id, result.round, result.phases.seconds())
        return None


class RoundTracer(RoundCallback):
    """A ``run`` span around the rounds and a ``round`` span around each (docs/telemetry.md).

    Each span is made current while it is open, so the phases the loop marks
    (``healthsync.telemetry.PhaseClock``) and the blocks' answers become its
    children. A round's span closes when the next round starts or the run
    ends, after the loop's ``record`` phase, which runs the callbacks'
    ``on_round_end``. With no exporter configured these are no-op spans.
    """

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = {f"healthsync.{k}": v for k, v in attributes.items()}
        self.open: list[tuple[trace.Span, object]] = []  # (span, context token), run first

    def _start(self, name: str, attributes: dict[str, Any]) -> trace.Span:
        span = tracer().start_span(name, attributes=attributes)
        self.open.append((span, otel_context.attach(trace.set_span_in_context(span))))
        return span

    def _end(self, keep: int, error: BaseException | None = None) -> None:
        """End the open spans down to ``keep`` of them, innermost first."""
        while len(self.open) > keep:
            span, token = self.open.pop()
            otel_context.detach(token)
            if error is not None and not isinstance(error, RunCancelled):
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, str(error).strip()[:200])
            span.end()

    def on_run_start(self) -> None:
        self._start("run", self.attributes)

    def on_round_start(self, rnd: int) -> str | None:
        self._end(1)
        self._start("round", {**self.attributes, "healthsync.round": rnd})
        return None

    def on_round_end(self, result: RoundResult) -> str | None:
        span = self.open[-1][0]
        for key in ("hospitals_sampled", "hospitals_ok", "hospitals_failed"):
            if result.row.get(key) is not None:
                span.set_attribute(f"healthsync.{key}", int(result.row[key]))
        return None

    def on_run_end(self, rounds_done: int, reason: str | None) -> None:
        if self.open:
            self.open[0][0].set_attribute("healthsync.rounds_done", rounds_done)
            if reason:
                self.open[0][0].set_attribute("healthsync.stop_reason", reason)
        self._end(0)

    def on_run_failed(self, error: BaseException) -> None:
        if self.open and isinstance(error, RunCancelled):
            self.open[0][0].set_attribute("healthsync.stop_reason", "cancelled")
        self._end(0, error)


def released(computed: BinaryMetrics, stored: dict) -> BinaryMetrics:
    """The round's figures as the release policy stored them (a withheld one becomes NaN)."""
    figures = (stored.get(k) for k in ("loss", "auc", "accuracy", "brier"))
    return BinaryMetrics(computed.n, *(math.nan if v is None else v for v in figures))
