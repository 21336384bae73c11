"""The hardware lower bound: FedAvg in one process, all hospitals in one vectorised call.

No Flower, no Ray, no messages: the benchmark's yardstick for how fast the
same federated workload (same data, model, rounds, seed) could possibly run on
this machine. Each hospital's rows are still read through its own accessor.

    python -m healthsync.bench.vectorised --data DIR --rounds R --model logreg

prints one JSON object per line: ``{"event": "ready"}`` once data is loaded,
then ``{"round": r, "seconds": s, "auc": ...}`` per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from healthsync.bench import BENCH_WORK
from healthsync.config import TrainConfig
from healthsync.ml.blocks import evaluate_block, train_stacked
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.metrics import aggregate
from healthsync.ml.model import get_arrays, initial_model
from healthsync.ml.training import hospital_arrays
from healthsync.runs.lifecycle import check_config

CHUNK = 2048  # hospitals per vectorised call, to bound memory


def run(config: TrainConfig, emit=print) -> None:
    config, federation = check_config(config)
    target = str(config.target)
    hospitals = [hospital_arrays(federation, h.id, target) for h in federation.hospitals]
    scaler = Scaler.from_stats(ScalingStats.combine(ScalingStats.of(h.x_train) for h in hospitals))
    data = [h.scaled(scaler) for h in hospitals]
    arrays = get_arrays(initial_model(config.model, data[0].x_train.shape[1], config.seed))
    emit(json.dumps({"event": "ready", "hospitals": len(data)}))
    rng = np.random.default_rng(config.seed)
    for rnd in range(1, config.rounds + 1):
        started = time.perf_counter()
        chosen = np.sort(
            rng.choice(len(data), size=max(1, int(len(data) * config.fraction)), replace=False)
        )
        weights = 0.0
        summed = [np.zeros_like(a, dtype=np.float64) for a in arrays]
        for start in range(0, len(chosen), CHUNK):
            part = [data[i] for i in chosen[start : start + CHUNK]]
            seeds = [
                config.seed * 1_000_003 + rnd * 1_009 + int(i)
                for i in chosen[start : start + CHUNK]
            ]
            stacked, _ = train_stacked(
                config.model,
                arrays,
                part,
                epochs=config.local_epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                seeds=seeds,
            )
            n = np.array([len(d.y_train) for d in part], dtype=np.float64)
            weights += n.sum()
            for s, update in zip(summed, stacked, strict=True):
                s += np.tensordot(n, update.astype(np.float64), axes=1)
        arrays = [(s / weights).astype(np.float32) for s in summed]
        results = []
        for start in range(0, len(data), CHUNK):
            results += [
                m for m, _ in evaluate_block(config.model, arrays, data[start : start + CHUNK])
            ]
        final = aggregate(results)
        emit(
            json.dumps(
                {
                    "round": rnd,
                    "seconds": time.perf_counter() - started,
                    "updates": len(chosen),
                    "auc": final.auc,
                    "loss": final.loss,
                }
            )
        )


def arguments(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line of a one-process way (this loop, ``roofline``), as the sweep calls it."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def measured_work(args: argparse.Namespace) -> TrainConfig:
    """The parsed command line as the measured work, the same as the sweep's runs do."""
    return TrainConfig(
        data_dir=args.data, rounds=args.rounds, model=args.model, seed=args.seed
    ).replace(**BENCH_WORK)


def main(argv: list[str] | None = None) -> int:
    args = arguments("healthsync.bench.vectorised", __doc__).parse_args(argv)
    run(measured_work(args), emit=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
