"""Stress test: the same federated workload several ways, side by side, kept in the store.

- ``flower``: stock Flower on Ray, one client per hospital (block size 1), the
  classic simulation with every hospital as its own ClientApp call, on Flower's
  own Ray backend (none of HealthSync's scheduling; one CPU per actor, as for
  the others, which gives it two actors on two cores where Flower's default
  of two CPUs per client would give one);
- ``healthsync``: Flower on Ray with block execution (automatic block size),
  in a cold process of its own, so its time to the first round includes
  Python imports and Ray's start;
- ``warm``: the same run handed to the warm training engine
  (``healthsync.runs.engine``), as the web app does: the engine is started (or
  found running) beforehand and its start-up is not timed; it has not seen the
  sweep's federation before, so reading the partitions is timed. Memory is
  the engine's whole process tree, which also keeps earlier federations' rows;
- ``vectorised``: one process, no Flower or Ray (``healthsync.bench.vectorised``),
  every hospital still trained on its own copy of the model, in one vectorised
  call per 2,048 hospitals;
- ``roofline``: the same multiply-adds as a round as single large matrix
  products over all rows, one shared weight set (``healthsync.bench.roofline``
  says what it counts): what the hardware allows per core, with keeping
  hospitals apart costing nothing. Every way's time is also printed as a
  ratio to it.

Each runs in its own process tree on the same data, model, rounds and seed;
this module samples the tree's resident memory while it runs. Warm
measurements run after all the others, so an idle engine never shares the
machine with a cold measurement; an engine the sweep started is stopped at
its end. Results go to the ``bench_results`` table as each measurement ends,
so the Stress-test page can draw a sweep while it runs and compare it with
earlier sweeps.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from healthsync.background.processes import process_alive, spawn_detached
from healthsync.bench import BENCH_WORK
from healthsync.bench.proctree import alive, descendants, rss_bytes
from healthsync.config import BENCH_WAYS, MODELS, TrainConfig
from healthsync.data import load_federation
from healthsync.errors import HealthSyncError
from healthsync.runs import engine, lifecycle, runlog
from healthsync.runs.store import MetricsStore
from healthsync.views.dashboard import format_duration

WAYS = BENCH_WAYS
STATUS_POLL_SECONDS = 2.0  # how often a run's status is read while it is measured
SETTLE_SECONDS = 60.0  # longest wait for a finished run's processes to exit
SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_results (
    sweep_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, way VARCHAR NOT NULL,
    model VARCHAR NOT NULL, hospitals INTEGER NOT NULL, patients INTEGER, rounds INTEGER,
    seconds_per_round DOUBLE, updates_per_second DOUBLE, peak_memory_mib DOUBLE,
    first_round_seconds DOUBLE, status VARCHAR NOT NULL, note VARCHAR
);
CREATE TABLE IF NOT EXISTS bench_sweeps (
    sweep_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, config JSON NOT NULL,
    total INTEGER NOT NULL, pid INTEGER
);
"""


@dataclass(frozen=True)
class SweepConfig:
    """One stress-test sweep.

    ``max_flower_hospitals`` skips the one-client-per-hospital way above that
    size (at tens of ms per hospital per round it would take hours); the skip is
    recorded with the reason rather than silently left out.
    """

    hospitals: tuple[int, ...] = (10, 100, 1000, 10000)
    patients: int = 500
    models: tuple[str, ...] = MODELS
    ways: tuple[str, ...] = WAYS
    rounds: int = 4
    seed: int = 0
    work_dir: str = "data/bench"
    db: str = "data/healthsync.duckdb"
    max_flower_hospitals: int = 1000
    timeout_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not self.hospitals or min(self.hospitals) < 2:
            raise HealthSyncError("hospital counts must be at least 2")
        if max(self.hospitals) > 100_000:
            raise HealthSyncError("at most 100,000 hospitals per sweep point")
        unknown = sorted(set(self.ways) - set(WAYS)) + sorted(set(self.models) - set(MODELS))
        if unknown:
            raise HealthSyncError(f"unknown way or model: {', '.join(unknown)}")
        if self.rounds < 2:
            raise HealthSyncError(
                "a sweep needs at least 2 rounds (the first one includes warm-up)"
            )


@dataclass
class Measurement:
    way: str
    model: str
    hospitals: int
    seconds_per_round: float | None = None
    updates_per_second: float | None = None
    peak_memory_mib: float | None = None
    first_round_seconds: float | None = None
    status: str = "ok"
    note: str | None = None


def ensure_schema(store: MetricsStore) -> None:
    store.execute(SCHEMA)


def new_sweep_id() -> str:
    return f"sweep-{runlog.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def start_sweep(config: SweepConfig) -> str:
    """Start ``healthsync bench`` as its own process (it outlives the page); return the sweep id."""
    store = MetricsStore(config.db)
    ensure_schema(store)
    sweep_id = new_sweep_id()
    total = len(config.hospitals) * len(config.models) * len(config.ways)
    store.execute(
        "INSERT INTO bench_sweeps VALUES (?, ?, ?, ?, NULL)",
        [sweep_id, runlog.now(), json.dumps(asdict(config)), total],
    )
    cmd = [
        sys.executable,
        "-m",
        "healthsync",
        "bench",
        "--sweep-id",
        sweep_id,
        "--db",
        config.db,
        "--work-dir",
        config.work_dir,
        "--patients",
        str(config.patients),
        "--rounds",
        str(config.rounds),
        "--seed",
        str(config.seed),
        "--max-flower-hospitals",
        str(config.max_flower_hospitals),
        "--hospitals",
        *map(str, config.hospitals),
        "--models",
        *config.models,
        "--ways",
        *config.ways,
    ]
    process = spawn_detached(cmd, Path(config.db).parent / "logs" / f"{sweep_id}.log")
    store.execute("UPDATE bench_sweeps SET pid = ? WHERE sweep_id = ?", [process.pid, sweep_id])
    return sweep_id


@dataclass(frozen=True)
class SweepProgress:
    """How far a sweep is: measurements done and planned, and the one under way now."""

    sweep_id: str
    done: int
    total: int
    alive: bool
    current: str | None = None
    seconds: float = 0.0  # since the measurement under way began

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def text(self) -> str:
        head = f"Sweep {self.sweep_id}: {self.done} of {self.total} measurements"
        if not self.alive or self.done >= self.total or not self.current:
            return head
        return f"{head} · now measuring {self.current} ({format_duration(self.seconds)} so far)"


def sweep_steps(config: SweepConfig) -> list[tuple[int, str, str]]:
    """``(hospitals, model, way)`` in the order a sweep measures them: warm ones last."""
    steps = [(h, m, w) for h in config.hospitals for m in config.models for w in config.ways]
    steps.sort(key=lambda step: step[2] == "warm")  # the order kept otherwise
    return steps


def sweep_progress(store: MetricsStore, sweep_id: str) -> SweepProgress:
    """Measurements done and planned, whether the sweep's process lives, and what it measures.

    Each measurement takes from seconds to minutes, so the one under way is
    named (from the sweep's recorded config and order), with the time it has
    taken so far, for a page to show that the sweep is moving between two
    finished measurements.
    """
    ensure_schema(store)
    planned = store.frame(
        "SELECT total, pid, config FROM bench_sweeps WHERE sweep_id = ?", [sweep_id]
    )
    total, pid, config = planned.row(0) if planned.height else (0, None, None)
    done, began = store.frame(
        "SELECT count(*), coalesce(max(created_at),"
        " (SELECT created_at FROM bench_sweeps WHERE sweep_id = ?))"
        " FROM bench_results WHERE sweep_id = ?",
        [sweep_id, sweep_id],
    ).row(0)
    done = int(done or 0)
    alive = bool(pid) and process_alive(int(pid))
    current = None
    if config:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(config).items()}
        steps = sweep_steps(SweepConfig(**fields))
        if done < len(steps):
            hospitals, model, way = steps[done]
            current = f"{way}, {hospitals:,} hospitals, {model}"
    seconds = (runlog.now() - began).total_seconds() if began else 0.0
    return SweepProgress(sweep_id, done, int(total or done), alive, current, max(seconds, 0.0))


def running_sweep(store: MetricsStore) -> str | None:
    """The newest sweep whose process is alive with measurements left, if any.

    Found in the store rather than remembered by a browser session, so every
    session (a viewer's, a reloaded tab) sees a sweep started anywhere.
    """
    ensure_schema(store)
    unfinished = store.frame(
        "SELECT s.sweep_id, s.pid FROM bench_sweeps s LEFT JOIN bench_results r USING (sweep_id)"
        " WHERE s.pid IS NOT NULL GROUP BY s.sweep_id, s.pid, s.total, s.created_at"
        " HAVING count(r.sweep_id) < s.total ORDER BY s.created_at DESC"
    )
    for row in unfinished.iter_rows(named=True):
        if process_alive(int(row["pid"])):
            return str(row["sweep_id"])
    return None


def _watch(
    pid: int,
    done: Callable[[], bool],
    timeout: float,
    *,
    settle: bool,
    ask_every: float = 0.0,
) -> float:
    """Poll until ``done()``; return the peak memory (MiB) of ``pid``'s process tree.

    ``done()`` is asked at most every ``ask_every`` seconds: a run's status is
    read from the metrics store, whose opening costs more as the run writes;
    asked every 0.2 s, it took a sixth of a core from the run it measured.

    With ``settle`` (a run process of its own), then wait, at most
    ``SETTLE_SECONDS``, until every process the tree ever held has exited: a
    run records its end before Ray's actors and daemons are gone, and the next
    measurement should not share the CPUs with them.
    """
    peak, seen = 0, set()
    deadline = time.monotonic() + timeout
    next_ask = 0.0
    while True:
        if (now := time.monotonic()) >= next_ask:
            if done():
                break
            next_ask = now + ask_every
        tree = descendants(pid)
        seen |= tree
        peak = max(peak, rss_bytes(tree))
        if time.monotonic() > deadline:
            if done():  # it may have ended since it was last asked
                break
            raise TimeoutError
        time.sleep(0.25)
    settled = time.monotonic() + SETTLE_SECONDS
    while settle and alive(seen) and time.monotonic() < settled:
        time.sleep(0.2)
    return peak / 2**20


def run_name(way: str, data: Path, model: str) -> str:
    """A measurement's run name, e.g. ``"stress test · healthsync · 100 hospitals · logreg"``."""
    return f"stress test · {way} · {len(load_federation(data).hospitals):,} hospitals · {model}"


def measure_flower(
    data: Path, db: str, model: str, rounds: int, seed: int, block_size: int, timeout: float
) -> Measurement:
    """One cold run process: stock Flower (``block_size`` 1) or HealthSync's blocks (0: auto)."""
    way = "flower" if block_size == 1 else "healthsync"
    started = time.time()
    config = TrainConfig(
        data_dir=str(data), db=db, model=model, rounds=rounds, seed=seed, block_size=block_size
    ).replace(**BENCH_WORK)
    # Always a cold run process of its own (never the warm engine), so each
    # measurement includes its start-up and its whole process tree's memory.
    run_id = lifecycle.start_run(
        config,
        warm=False,
        stock_flower=way == "flower",
        kind=runlog.BENCHMARK,
        name=run_name(way, data, model),
    )
    return _measure_run(way, config, run_id, started, timeout)


def measure_warm(data: Path, db: str, model: str, rounds: int, seed: int, timeout: float):
    """The same run as ``healthsync``, handed to the running warm engine (see the module doc)."""
    config = TrainConfig(data_dir=str(data), db=db, model=model, rounds=rounds, seed=seed).replace(
        **BENCH_WORK
    )
    started = time.time()
    try:
        run_id = lifecycle.start_run(
            config, only_warm=True, kind=runlog.BENCHMARK, name=run_name("warm", data, model)
        )
    except HealthSyncError as err:
        hospitals = len(load_federation(data).hospitals)
        return Measurement("warm", model, hospitals, status="skipped", note=str(err))
    return _measure_run("warm", config, run_id, started, timeout)


def _measure_run(
    way: str, config: TrainConfig, run_id: str, started: float, timeout: float
) -> Measurement:
    """Watch a started run to its end: per-round time, updates per second, memory, first round."""
    store = MetricsStore(config.db)
    pid = runlog.get_run(store, run_id)["pid"]
    hospitals = len(load_federation(config.data_dir).hospitals)

    def finished() -> bool:
        return runlog.get_run(store, run_id)["status"] in lifecycle.FINISHED

    try:
        peak = _watch(pid, finished, timeout, settle=way != "warm", ask_every=STATUS_POLL_SECONDS)
    except TimeoutError:
        lifecycle.cancel_run(config.db, run_id)
        return Measurement(
            way, config.model, hospitals, status="timeout", note=f"over {timeout:.0f} s"
        )
    run = lifecycle.run_status(config.db, run_id)
    rounds_frame = runlog.rounds_frame(store, run_id)
    if run["status"] != "completed" or rounds_frame.is_empty():
        return Measurement(way, config.model, hospitals, status="failed", note=run["reason"])
    per_round = steady_round_seconds(rounds_frame["seconds"].to_list())
    first = rounds_frame["recorded_at"][0].timestamp() - started
    updates = rounds_frame["hospitals_ok"].mean()
    return Measurement(way, config.model, hospitals, per_round, updates / per_round, peak, first)


class _WarmEngine:
    """The engine for a sweep's warm measurements: found running, or started (and stopped) here."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.started = False

    def ready(self) -> str | None:
        """``None`` once an engine answers; else why there is none."""
        if not engine.enabled():
            return f"the warm engine is turned off ({engine.ENV_SWITCH}=off)"
        if engine.status(self.db) is None:
            self.started = engine.start(self.db) is not None or self.started
            try:
                engine.wait_ready(self.db)
            except HealthSyncError as err:
                return str(err)
        return None

    def close(self) -> None:
        if self.started:
            engine.stop(self.db)


def measure_one_process(
    way: str, data: Path, model: str, rounds: int, seed: int, timeout: float
) -> Measurement:
    """``vectorised`` or ``roofline``: ``python -m healthsync.bench.<way>``, its JSON lines read."""
    hospitals = len(load_federation(data).hospitals)
    started = time.time()
    cmd = [
        sys.executable,
        "-m",
        f"healthsync.bench.{way}",
        "--data",
        str(data),
        "--rounds",
        str(rounds),
        "--model",
        model,
        "--seed",
        str(seed),
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        peak = _watch(process.pid, lambda: process.poll() is not None, timeout, settle=True)
    except TimeoutError:
        process.kill()
        return Measurement(way, model, hospitals, status="timeout", note=f"over {timeout:.0f} s")
    lines = [
        json.loads(line) for line in process.stdout.read().splitlines() if line.startswith("{")
    ]
    rounds_out = [line for line in lines if "round" in line]
    if process.returncode != 0 or not rounds_out:
        return Measurement(
            way, model, hospitals, status="failed", note=f"exit {process.returncode}"
        )
    per_round = steady_round_seconds([r["seconds"] for r in rounds_out])
    # the first round ends at start + load + its own time; the child does not timestamp, so
    # take the parent's view: wall time minus the later rounds.
    first = (time.time() - started) - sum(r["seconds"] for r in rounds_out[1:])
    note = None
    if "multiply_adds" in rounds_out[-1]:  # the roofline says how much arithmetic a round is
        work = rounds_out[-1]["multiply_adds"]
        note = f"{_si(work)} multiply-adds a round, {_si(work / per_round)}/s"
    return Measurement(
        way,
        model,
        hospitals,
        per_round,
        rounds_out[-1]["updates"] / per_round,
        peak,
        first,
        note=note,
    )


def _si(value: float) -> str:
    """``value`` in three digits with a k, M or G prefix, e.g. ``"5.60 G"``."""
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def steady_round_seconds(seconds: list[float]) -> float:
    """Median seconds of the rounds after the first, which pays one-off warm-up.

    The first round also reads every hospital's rows into its Ray actor (each
    node always goes to the same actor, so later rounds read nothing); the
    median keeps any remaining one-off cost and a noisy neighbour's burst out
    of the steady-state figure.
    """
    later = seconds[1:] or seconds
    return float(statistics.median(later))


def dataset(work_dir: Path, hospitals: int, patients: int, seed: int) -> Path:
    """The sweep's federation for ``hospitals`` (generated once, reused across ways and models)."""
    from healthsync.data.synthetic import generate_federation

    out = work_dir / f"h{hospitals}x{patients}s{seed}"
    if not (out / "federation.json").exists():
        generate_federation(
            out, hospitals=hospitals, patients=patients, seed=seed, heterogeneity=0.5, force=True
        )
    return out


def run_sweep(
    config: SweepConfig,
    *,
    sweep_id: str | None = None,
    progress: Callable[[int, int, Measurement], None] | None = None,
) -> pl.DataFrame:
    """Measure every (hospital count, model, way) of ``config``; return and store the table."""
    store = MetricsStore(config.db)
    ensure_schema(store)
    sweep_id = sweep_id or new_sweep_id()
    steps = sweep_steps(config)
    warm = _WarmEngine(config.db)
    results = []
    try:
        for i, (hospitals, model, way) in enumerate(steps, start=1):
            result = _measure(config, hospitals, model, way, warm)
            store.execute(
                "INSERT INTO bench_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    sweep_id,
                    runlog.now(),
                    result.way,
                    result.model,
                    result.hospitals,
                    config.patients,
                    config.rounds,
                    result.seconds_per_round,
                    result.updates_per_second,
                    result.peak_memory_mib,
                    result.first_round_seconds,
                    result.status,
                    result.note,
                ],
            )
            results.append(asdict(result))
            if progress:
                progress(i, len(steps), result)
    finally:
        warm.close()
    return pl.DataFrame(results)


def _measure(
    config: SweepConfig, hospitals: int, model: str, way: str, warm: _WarmEngine
) -> Measurement:
    data = dataset(Path(config.work_dir), hospitals, config.patients, config.seed)
    db, rounds, seed, timeout = config.db, config.rounds, config.seed, config.timeout_seconds
    if way in ("vectorised", "roofline"):
        return measure_one_process(way, data, model, rounds, seed, timeout)
    if way == "warm":
        why_not = warm.ready()
        if why_not:
            return Measurement(way, model, hospitals, status="skipped", note=why_not)
        return measure_warm(data, db, model, rounds, seed, timeout)
    if way == "flower" and hospitals > config.max_flower_hospitals:
        note = f"one client per hospital is skipped above {config.max_flower_hospitals} hospitals"
        return Measurement(way, model, hospitals, status="skipped", note=note)
    return measure_flower(data, db, model, rounds, seed, 1 if way == "flower" else 0, timeout)


#: The columns of ``ratios`` before the roofline came, which stay first and in order
#: (``healthsync bench`` output is read by people and scripts), then the roofline's.
FIRST_RATIOS = (("healthsync", "vectorised"), ("flower", "healthsync"))
ROOFLINE_RATIOS = tuple((way, "roofline") for way in WAYS if way != "roofline")


def ratios(table: pl.DataFrame) -> pl.DataFrame:
    """Per hospital count and model: each way's seconds per round, and ratios of them.

    ``healthsync/vectorised`` and ``flower/healthsync`` as before the roofline;
    then the roofline's seconds and ``<way>/roofline``: how many times the
    way's round takes over what the hardware allows for the same multiply-adds.
    """
    wide = table.filter(pl.col("status") == "ok").pivot(
        on="way", index=["hospitals", "model"], values="seconds_per_round"
    )
    for way in WAYS:
        if way not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(way))

    def ratio(top: str, bottom: str) -> pl.Expr:
        return (pl.col(top) / pl.col(bottom)).alias(f"{top}/{bottom}")

    return wide.select(
        "hospitals",
        "model",
        *(way for way in WAYS if way != "roofline"),
        *(ratio(*pair) for pair in FIRST_RATIOS),
        "roofline",
        *(ratio(*pair) for pair in ROOFLINE_RATIOS),
    ).sort("hospitals", "model")


def sweeps(store: MetricsStore) -> pl.DataFrame:
    """Every stored measurement, newest sweep first."""
    ensure_schema(store)
    return store.frame("SELECT * FROM bench_results ORDER BY created_at DESC")
