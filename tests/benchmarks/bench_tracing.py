"""Benchmark: what OpenTelemetry tracing costs a round, off and on (issue 20: under 2 % off).

    PYTHONPATH=. python tests/benchmarks/bench_tracing.py [--hospitals 10] [--patients 200]
                                                          [--rounds 4] [--repeat 3]

Runs the real round loop (``FederatedRun``: real training and evaluation)
on the in-process grid of the tests, so Ray's start-up and scheduling noise
do not drown a difference of milliseconds, three ways, interleaved run by run:

- ``off``: no endpoint variable, the API's no-op tracer (what every run without a collector does);
- ``memory``: the SDK with a batch processor into an in-memory exporter;
- ``otlp``: the SDK exporting over OTLP/HTTP to a receiver thread on 127.0.0.1, as a
  run with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set does.

Round time is the sum of a round's phases as the store keeps them (median of
rounds 2.., round 1 warms up). ``off`` has no uninstrumented twin to subtract,
so its overhead is measured directly: the spans of one round (run, round, 5
phases, one per block) opened and closed with the no-op tracer, timed in a
tight loop, over the median ``off`` round. A benchmark, not a test: the
numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl

from healthsync import telemetry
from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from tests.inprocess_grid import run_in_process

WAYS = ("off", "memory", "otlp")


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP posts and answers 200 with an empty response."""

    def do_POST(self) -> None:  # http.server calls it by this name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _provider(way: str, port: int):
    """The SDK provider for ``way`` (None for off)."""
    if way == "off":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = (
        InMemorySpanExporter()
        if way == "memory"
        else OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def round_seconds(config: TrainConfig, way: str, port: int) -> list[float]:
    """One run traced ``way``: each later round's seconds (the sum of its phases)."""
    provider = _provider(way, port)
    telemetry.use_provider(provider)
    try:
        detail, _ = run_in_process(config)
        telemetry.flush()
    finally:
        telemetry.use_provider(None)
        if provider is not None:
            provider.shutdown()
    if detail["status"] != "completed":
        raise SystemExit(f"the {way} run ended {detail['status']}: {detail.get('reason')}")
    phases = runlog.phases_frame(MetricsStore(config.db), detail["run_id"])
    per_round = phases.group_by("round").agg(pl.col("seconds").sum()).sort("round")
    return per_round["seconds"].to_list()[1:]


def noop_spans_seconds(spans: int, repeat: int = 2000) -> float:
    """Seconds to open and close ``spans`` nested no-op spans the way a round does."""
    telemetry.use_provider(None)
    clock = telemetry.PhaseClock()
    started = time.perf_counter()
    for _ in range(repeat):
        for _ in range(spans):
            with clock.phase("train", hospitals=3):
                pass
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=5)
    args = parser.parse_args()

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = receiver.server_address[1]
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fed"
        generate_federation(data, hospitals=args.hospitals, patients=args.patients, seed=0)
        for rep in range(args.repeat):
            # interleaved and rotated, so load drifts and order hit every way alike
            for way in WAYS[rep % 3 :] + WAYS[: rep % 3]:
                config = TrainConfig(
                    data_dir=str(data),
                    db=str(Path(tmp) / f"{way}-{rep}.duckdb"),
                    rounds=args.rounds,
                    block_size=args.block_size,
                )
                seconds[way].extend(round_seconds(config, way, port))
    receiver.shutdown()

    median = {way: statistics.median(s) for way, s in seconds.items()}
    blocks = -(-args.hospitals // args.block_size)
    spans_per_round = 1 + len(telemetry.PHASES) + blocks  # the round, its phases, its blocks
    noop = noop_spans_seconds(spans_per_round)
    print(
        f"{args.hospitals} hospitals x {args.patients} patients, blocks of {args.block_size}, "
        f"{args.rounds} rounds x {args.repeat} runs per way (median of rounds 2..)"
    )
    print(f"{'way':<8} {'s/round':>9} {'vs off':>8}")
    for way in WAYS:
        change = (median[way] / median["off"] - 1) * 100
        print(f"{way:<8} {median[way]:>9.4f} {change:>+7.1f}%")
    print(
        f"off: {spans_per_round} no-op spans per round cost {noop * 1e6:.1f} µs, "
        f"{noop / median['off'] * 100:.3f} % of a round (target: under 2 %)"
    )


if __name__ == "__main__":
    main()
