"""The coordinating side: a Flower ServerApp that runs rounds and records them as they end.

The round loop calls the Flower strategy's own hooks (``configure_train``,
``aggregate_train``, ``configure_evaluate``) rather than ``Strategy.start`` so
that between rounds it can count hospitals that failed or dropped out and
record the epsilon a DP run has spent. What else happens around a round
(timing, cancel, the DP budget stop, writing it to the metrics store) is a
callback (``simulation.round_hooks``), so the loop reads as train, evaluate, report.
Everything recorded is an aggregate: per-round and per-hospital metrics,
events, the global model.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted

from healthsync import telemetry
from healthsync.config import TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.ml import attacks
from healthsync.ml.features import Encoder, Scaler, ScalingStats
from healthsync.ml.metrics import BinaryMetrics, aggregate_columns, weighted_mean
from healthsync.ml.model import SavedModel, initial_arrays
from healthsync.privacy import training
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore
from healthsync.telemetry import PhaseClock
from simulation import safeguards
from simulation.consent import ConsentWatch
from simulation.hospital_grid import Answers, BlockReply, HospitalGrid, HospitalReplies
from simulation.round_hooks import (
    Callbacks,
    CancelCheck,
    EarlyStopping,
    PrivacyBudgetStop,
    RoundCallback,
    RoundRecorder,
    RoundResult,
    RoundTimer,
    RoundTracer,
    RunCancelled,
)
from simulation.secagg import SecureAggregation
from simulation.strategies import build_strategy, privacy_spent, sampled_hospitals

log = logging.getLogger("healthsync.simulation")
NODE_WAIT_SECONDS = 60.0
ROUND_TIMEOUT_SECONDS = 3600.0
SCALING_CHUNK = 64  # fewest hospitals per message of the scaling query (see federated_scaler)


class FederatedRun:
    """One run's round loop over a Flower ``Grid``."""

    def __init__(self, grid: Grid, config: TrainConfig, run_id: str, store: MetricsStore) -> None:
        self.config, self.federation = lifecycle.check_config(config)
        self.target = str(self.config.target)
        self.run_id = run_id
        self.store = store
        hospitals = len(self.federation.hospitals)
        self.block_size = self.config.block_size_for(hospitals)
        blocks = -(-hospitals // self.block_size)
        self.phase(f"connecting to {blocks:,} Flower node(s)")
        # The grid's virtual node ids are hospital index + 1.
        self.hospital_of = {i + 1: h.id for i, h in enumerate(self.federation.hospitals)}
        # A Polars column: a round's 100,000 rows gather their ids without converting strings.
        self.hospital_ids = pl.Series("hospital", [h.id for h in self.federation.hospitals])
        consent = ConsentWatch(
            self.federation, lambda kind, why, i: self._event(kind, why, None, i)
        )
        self.grid = HospitalGrid(
            grid,
            hospitals,
            self.block_size,
            wait_seconds=NODE_WAIT_SECONDS,
            withdrawn=consent.withdrawn,
            sample_withdrawn=self.config.dp,
        )
        self.adversaries = attacks.choose_adversaries(
            list(self.hospital_of.values()), self.config.adversarial, self.config.seed
        )
        self.stop_reason: str | None = None  # why the run ended before its last round
        self.base = {
            "data-dir": str(self.federation.data_dir),
            "target": self.target,
            "model": self.config.model,
            "fail-hospitals": ",".join(self.config.fail_hospitals),
        }

    # ------------------------------------------------------------ protocol
    def phase(self, text: str) -> None:
        """Say what the run is doing, for the Live page until the first round shows."""
        lifecycle.report_phase(self.config.db, self.run_id, text)

    def _ask_all(
        self,
        message_type: str,
        records: dict,
        rnd: int | None,
        what: str,
        on_block: Callable[[BlockReply], None] | None = None,
        chunk: int | None = None,
    ) -> Answers:
        """Every hospital's answer, as columns in hospital order.

        In hospital order, so sums run in the same order for any block layout.
        A hospital that did not answer is recorded as a ``hospital_failed`` event.
        """
        failed: dict[int, str] = {}
        answered: list[BlockReply] = []
        for block in self.grid.broadcast(
            message_type, records, timeout=ROUND_TIMEOUT_SECONDS, on_block=on_block, chunk=chunk
        ):
            failed.update(block.errors)
            if block.hospitals:
                answered.append(block)
        for index, why in sorted(failed.items()):
            self._event("hospital_failed", f"{what}: {why}", rnd, index)
        return Answers.of(answered)

    def federated_scaler(self) -> Scaler:
        """Mean and std from every hospital's counts, sums and sums of squares.

        The first message of a run: a hospital not read before (a new data set,
        or actors that never served it) reads and encodes its rows now, which
        takes seconds for thousands of hospitals, so the run counts them aloud.
        """
        total, answered = len(self.hospital_of), 0

        def count(block: BlockReply) -> None:
            nonlocal answered
            answered += len(block.hospitals) + len(block.errors)
            self.phase(f"reading the hospitals' data: {answered:,} of {total:,} hospitals")

        self.phase(f"reading the hospitals' data: 0 of {total:,} hospitals")
        answers = self._ask_all(
            MessageType.QUERY,
            {"config": ConfigRecord(self.base)},
            None,
            "scaling statistics",
            on_block=count,
            # About 50 answers in all, so the count moves while thousands read their rows.
            chunk=max(SCALING_CHUNK, -(-total // 50)),
        )
        if len(answers.index) < max(self.config.min_hospitals, 1):
            raise HealthSyncError("too few hospitals answered the scaling query")
        counts, sums, sumsq = (
            answers.columns["count"],
            answers.arrays["sums"],
            answers.arrays["sumsq"],
        )
        parts = [ScalingStats(int(c), s, q) for c, s, q in zip(counts, sums, sumsq, strict=True)]
        return Scaler.from_stats(ScalingStats.combine(parts))

    # ------------------------------------------------------------ the loop
    def run(self, callbacks: list[RoundCallback] | None = None) -> BinaryMetrics | None:
        """Train round after round until a callback stops the run or the rounds run out.

        The loop itself only trains and evaluates; timing, cancel, the DP budget,
        tracing and recording are callbacks (``simulation.round_hooks``),
        ``callbacks`` run after those. Returns the saved model's figures, as released.
        """
        random.seed(self.config.seed)
        np.random.seed(self.config.seed)  # Flower's DP noise draws from NumPy's global generator
        scaler = self.federated_scaler()
        encoder = Encoder.from_federation(self.federation, self.target)
        # PyTorch's own starting weights, drawn without it: this process never loads PyTorch.
        start = initial_arrays(self.config.model, encoder.width, self.config.seed)
        arrays = ArrayRecord(numpy_ndarrays=start)
        strategy = build_strategy(self.config, hospitals=len(self.hospital_of))
        settings = {
            **self.base,
            "scale-mean": scaler.mean.tolist(),
            "scale-std": scaler.std.tolist(),
            "lr": self.config.lr,
            "local-epochs": self.config.local_epochs,
            "local-steps": self.config.local_steps,
            "batch-size": self.config.batch_size,
            "seed": self.config.seed,
            "validation-share": self.config.validation_share,
            **safeguards.client_settings(self.config, self.adversaries),
        }
        for kind, message, hospital in safeguards.setup_events(self.config, self.adversaries):
            runlog.record_event(self.store, self.run_id, kind, message, hospital=hospital)
        secure = self._secure_aggregation() if self.config.secagg else None
        recorder = RoundRecorder(
            self.store, self.run_id, lambda a, h: self.save(encoder, scaler, a, h)
        )
        hooks = Callbacks(
            [
                RoundTimer(),
                CancelCheck(self.store, self.config.db, self.run_id),
                PrivacyBudgetStop(
                    strategy,
                    self.config,
                    sampled_hospitals(self.config, len(self.hospital_of)),
                    self.store,
                    self.run_id,
                ),
                *([EarlyStopping(self.config.patience)] if self.config.auto_rounds else []),
                RoundTracer(
                    {
                        "run_id": self.run_id,
                        "hospitals": len(self.hospital_of),
                        "block_size": self.block_size,
                        "strategy": self.config.strategy,
                        "model": self.config.model,
                    }
                ),
                *(callbacks or []),
                recorder,  # last: earlier callbacks decide what it keeps
            ]
        )
        hooks.on_run_start()
        try:
            done = self._rounds(hooks, strategy, secure, arrays, settings)
        except BaseException as err:
            hooks.on_run_failed(err)
            raise
        hooks.on_run_end(done, self.stop_reason)
        return recorder.final

    def _rounds(self, hooks: Callbacks, strategy, secure, arrays: ArrayRecord, settings: dict):
        """The rounds, each a train, evaluate, record; the number of rounds done.

        ``clock.phase`` times each phase for the store and traces it as a child
        of the round's span (``RoundTracer``).
        """
        done = 0
        for rnd in range(1, self.config.round_limit + 1):
            self.stop_reason = hooks.on_round_start(rnd)
            if self.stop_reason:
                break
            if rnd == 1:
                self.phase("training round 1")
            clock = PhaseClock()
            if secure:
                with clock.phase("train", secure_aggregation=True):
                    arrays, sampled, ok, failed = self._train_securely(
                        secure, rnd, arrays, settings
                    )
            else:
                arrays, sampled, ok, failed = self._train(strategy, rnd, arrays, settings, clock)
            with clock.phase("evaluate"):
                metrics, histogram, per_hospital, val_loss = self.evaluate(rnd, arrays, settings)
            spent = privacy_spent(strategy)
            row = {
                "round": rnd,
                **metrics.to_dict(),
                "val_loss": val_loss,
                "hospitals_sampled": sampled,
                "hospitals_ok": ok,
                "hospitals_failed": failed,
                "epsilon": spent.epsilon if spent else None,
            }
            result = RoundResult(rnd, row, metrics, per_hospital, arrays, histogram, phases=clock)
            # One open of the store per round: the round, its phases, its model and
            # score bins, and whether someone asked to cancel meanwhile.
            with clock.phase("record"), self.store.batch():
                self.stop_reason = hooks.on_round_end(result)
            done = rnd
            if self.stop_reason:
                break
        return done

    def _train(self, strategy, rnd: int, arrays: ArrayRecord, settings: dict, clock: PhaseClock):
        """One round's training through the strategy: configure, train, aggregate."""
        with clock.phase("configure"):
            try:
                train_messages = strategy.configure_train(
                    rnd, arrays, ConfigRecord(settings), self.grid
                )
                if not isinstance(train_messages, Sequence):  # FedAvg's ``SameAsks`` stays unbuilt
                    train_messages = list(train_messages)
            except PrivacyBudgetExhausted as err:  # PrivacyBudgetStop asks the same accountant
                raise HealthSyncError(
                    f"round {rnd}: Flower's DP wrapper refused it: {err}"
                ) from err
        with clock.phase("train", hospitals=len(train_messages)):
            replies = self.grid.send_and_receive(
                train_messages,
                timeout=safeguards.train_timeout(self.config, ROUND_TIMEOUT_SECONDS),
            )
        if isinstance(replies, HospitalReplies):  # no reply per hospital built just to count
            failed = replies.failures()
        else:
            replies = list(replies)
            failed = [r for r in replies if r.has_error()]
        for reply in failed:
            index = reply.metadata.src_node_id - 1
            kind, why = safeguards.missing_event(self.config, rnd, index, reply.error.reason)
            self._event(kind, why, rnd, index)
        ok = len(replies) - len(failed)
        self._check_enough(rnd, ok)
        with clock.phase("aggregate"):
            if self.config.dp:
                replies = safeguards.unchanged_for_missing(replies, train_messages, arrays)
            new_arrays, _ = strategy.aggregate_train(rnd, replies)
        new = arrays if new_arrays is None else new_arrays
        return new, len(train_messages), ok, len(failed)

    def _secure_aggregation(self) -> SecureAggregation:
        secure = SecureAggregation(
            self.grid,
            self.config,
            max_examples=max(h.n_patients for h in self.federation.hospitals),
            timeout=safeguards.train_timeout(self.config, ROUND_TIMEOUT_SECONDS),
        )
        runlog.record_event(self.store, self.run_id, "privacy", secure.describe())
        return secure

    def _train_securely(self, secure: SecureAggregation, rnd: int, arrays, settings: dict):
        """One round's training whose sum only the SecAgg+ protocol reveals."""
        step = secure.train(rnd, arrays, settings)
        for index, error in sorted(step.missing.items()):
            kind, why = safeguards.missing_event(self.config, rnd, index, error)
            runlog.record_event(
                self.store,
                self.run_id,
                kind,
                _first_line(why),
                round=rnd,
                hospital=self.hospital_of[index + 1],
            )
        self._check_enough(rnd, len(step.summed))
        return step.arrays, len(step.sampled), len(step.summed), len(step.missing)

    def _check_enough(self, rnd: int, ok: int) -> None:
        if ok < self.config.min_hospitals:
            raise HealthSyncError(
                f"round {rnd}: only {ok} hospital(s) answered, {self.config.min_hospitals} needed"
            )

    def evaluate(self, rnd: int, arrays: ArrayRecord, settings: dict):
        """Global model on every hospital's test split, weighted by test examples.

        Returns the federation's test metrics, the summed score histogram, the
        per-hospital test rows and the federated validation loss: the hospitals'
        validation losses weighted by their validation rows (NaN when none held
        any). Only that aggregate leaves this method; per-hospital validation
        losses are not recorded.
        """
        answers = self._ask_all(
            MessageType.EVALUATE,
            {"arrays": arrays, "config": ConfigRecord({**settings, "server-round": rnd})},
            rnd,
            "evaluate",
        )
        if not len(answers.index):
            raise HealthSyncError(f"round {rnd}: no hospital could evaluate the global model")
        m, scores = answers.columns, answers.arrays["histogram"]
        n = m["num-examples"].astype(np.int64)
        metrics = aggregate_columns(n, m["loss"], m["auc"], m["accuracy"], m["brier"])
        hospitals = self.hospital_ids.gather(answers.index)
        classes = scores[:, :, :2].sum(axis=1)  # each test split's class counts
        rows = pl.DataFrame(
            {
                "hospital": hospitals,
                "round": np.full(len(n), rnd, dtype=np.int32),
                "n": training.shown_test_sizes(self.federation, hospitals, self.target, n),
                "loss": m["loss"],
                "auc": m["auc"],
                "accuracy": m["accuracy"],
                "brier": m["brier"],
                # the test split's class counts: what the release policy decides on
                "positives": classes[:, 0],
                "negatives": classes[:, 1],
            }
        )
        val_n = m.get("val-n", np.zeros(len(n)))
        val_loss = weighted_mean(m.get("val-loss", np.full(len(n), np.nan)), val_n)
        return metrics, scores.sum(axis=0), rows, val_loss

    def save(self, encoder: Encoder, scaler: Scaler, arrays: ArrayRecord, histogram) -> None:
        saved = SavedModel(
            self.config.model, self.target, encoder, scaler, arrays.to_numpy_ndarrays()
        )
        runlog.save_model(self.store, self.run_id, saved.to_bytes())
        if histogram is not None:
            runlog.save_score_bins(self.store, self.run_id, histogram)

    def _event(self, kind: str, message: str, rnd: int | None, index: int) -> None:
        """An event about hospital ``index`` (its position in the federation)."""
        runlog.record_event(
            self.store,
            self.run_id,
            kind,
            _first_line(message),
            round=rnd,
            hospital=self.hospital_of.get(index + 1),
        )


def execute(grid: Grid, config: TrainConfig, run_id: str) -> str:
    """Run the rounds and record how the run ended; never raises (Flower would exit the process)."""
    telemetry.setup()  # spans go to OTEL_EXPORTER_OTLP_ENDPOINT if set, else nowhere
    try:
        return _execute(grid, config, run_id)
    finally:
        telemetry.flush()
        lifecycle.clear_cancel(config.db, run_id)
        lifecycle.clear_phase(config.db, run_id)


def _execute(grid: Grid, config: TrainConfig, run_id: str) -> str:
    store = MetricsStore(config.db)
    lifecycle.report_phase(config.db, run_id, "checking the settings and the hospitals' data")
    try:
        federated = FederatedRun(grid, config, run_id, store)
        runlog.mark_running(store, run_id, pid=os.getpid(), target=federated.target)
        runlog.record_event(
            store, run_id, "started", f"{len(federated.federation.hospitals)} hospitals"
        )
        final = federated.run()
    except RunCancelled:
        runlog.request_cancel(store, run_id)  # for the record, if only the flag file said so
        last = runlog.rounds_frame(store, run_id)
        final = _kept_metrics(last, runlog.get_run(store, run_id).get("best_round"))
        runlog.finish_run(store, run_id, "cancelled", reason="cancelled by request", final=final)
        runlog.record_event(store, run_id, "cancelled", f"stopped after {last.height} round(s)")
        return "cancelled"
    except Exception as err:
        log.exception("run %s failed", run_id)
        reason = _first_line(str(err)) or type(err).__name__
        runlog.finish_run(
            store,
            run_id,
            "failed",
            reason=reason,
            final=_kept_metrics(
                runlog.rounds_frame(store, run_id), runlog.get_run(store, run_id).get("best_round")
            ),
        )
        runlog.record_event(store, run_id, "failed", reason)
        return "failed"
    reason = federated.stop_reason
    runlog.finish_run(store, run_id, "completed", reason=reason, final=final)
    runlog.record_event(store, run_id, "completed", reason or "all rounds finished")
    return "completed"


def _kept_metrics(rounds, kept: int | None) -> BinaryMetrics | None:
    """The figures of the round whose model the run kept (the last one if unknown)."""
    if rounds.is_empty():
        return None
    chosen = rounds.filter(rounds["round"] == kept) if kept else rounds.clear()
    r = (chosen if chosen.height else rounds).row(-1, named=True)
    return BinaryMetrics(0, r["loss"], r["auc"], r["accuracy"], r["brier"])


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    # Flower wraps client exceptions in a traceback; the last line names the error.
    return lines[-1].strip()[:500] if lines else ""


def make_server_app(config: TrainConfig | None = None, run_id: str | None = None) -> ServerApp:
    """A ServerApp bound to ``config`` (launch), or reading Flower's ``run_config`` (``flwr run``)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or TrainConfig.from_run_config(dict(context.run_config))
        rid = run_id or runlog.new_run_id()
        if run_id is None:
            runlog.create_run(MetricsStore(run_config.db), rid, run_config)
        execute(grid, run_config, rid)

    return server_app


app = make_server_app()
