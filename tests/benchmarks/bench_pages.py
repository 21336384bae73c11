"""How long each app page takes to render on the server with a big metrics store.

Not a test: run it by hand and read the table.

    .venv/bin/python tests/benchmarks/bench_pages.py [--runs 100 --rounds 100 --hospitals 100]
        [--large-hospitals 100000 --large-rounds 20] [--only many-runs|large]

Two stores, each timed on its own:

- *many runs*: ``runs`` runs x ``rounds`` rounds x ``hospitals`` per-hospital
  rows for a real synthetic federation; the newest run is still "running"
  (60% done), so the Live page shows a run in progress. Every page is timed.
- *large federation* (issue 18): one federation of ``large-hospitals``
  hospitals (a real 10-hospital synthetic federation whose manifest is widened
  with made-up hospitals that hold no rows) and two runs of ``large-rounds``
  rounds over all of them: one completed, one still running (planned for 5
  more). 5% of the per-hospital rows are withheld, as the release policy
  leaves small hospitals. Overview, Live, Runs and Model are timed, where
  per-hospital views become distributions (``dashboard.MANY_HOSPITALS``).

Rows are bulk-inserted from Polars frames. Each page is run by ``AppTest``
logged in as admin; the target is under one second per page, warm (the first
render also imports the libraries). AppTest runs a switched-to page's script
on its own (as Streamlit does before any ``st.navigation`` call), so
``app.py``'s own share (token check, navigation) is timed on its own row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PAGES = ["overview", "launch", "live", "runs", "model", "admin"]
LARGE_PAGES = ["overview", "live", "runs", "model"]


def fill_store(
    db: Path,
    fed_dir: Path,
    runs: int,
    rounds: int,
    hospitals: int | list[str],
    *,
    planned: int | None = None,
    withheld: float = 0.0,
    prefix: str = "run-bench",
) -> list[str]:
    """Bulk-insert ``runs`` runs with ``rounds`` rounds of ``hospitals`` hospitals each.

    ``hospitals`` is a count (ids ``h0000``…) or the ids; the newest run is
    still running, at 60% of ``rounds`` (or all ``rounds`` of ``planned``).
    A ``withheld`` share of the per-hospital rows has its figures withheld,
    as the release policy stores small hospitals.
    """
    hospital_ids = (
        np.array([f"h{i:04d}" for i in range(hospitals)])
        if isinstance(hospitals, int)
        else np.array(hospitals)
    )
    hospitals = hospital_ids.size
    planned = planned or rounds
    from healthsync.config import TrainConfig
    from healthsync.runs.store import MetricsStore
    from tests.app_helpers import save_model

    store = MetricsStore(db)
    rng = np.random.default_rng(0)
    start = datetime(2026, 1, 1)
    run_ids = [f"{prefix}-{i:04d}" for i in range(runs)]
    last = rounds if planned > rounds else int(rounds * 0.6)
    done = [rounds] * (runs - 1) + [last]  # the newest run is still running
    status = ["completed"] * (runs - 1) + ["running"]
    config = TrainConfig(data_dir=str(fed_dir), db=str(db), target="diabetes", rounds=rounds)
    run_frame = pl.DataFrame(
        {
            "run_id": run_ids,
            "kind": "federated",
            "status": status,
            "config": config.to_json(),
            "data_dir": str(fed_dir),
            "target": "diabetes",
            "model": "logreg",
            "strategy": [("fedavg", "fedprox", "fedadam", "krum")[i % 4] for i in range(runs)],
            "rounds_planned": [rounds] * (runs - 1) + [planned],
            "created_at": [start + timedelta(hours=i) for i in range(runs)],
            "started_at": [start + timedelta(hours=i, minutes=1) for i in range(runs)],
            "finished_at": [start + timedelta(hours=i, minutes=30) for i in range(runs)],
            "pid": None,
            "reason": None,
            "cancel_requested": False,
            "final_loss": rng.uniform(0.4, 0.7, runs),
            "final_auc": rng.uniform(0.6, 0.9, runs),
            "final_accuracy": rng.uniform(0.6, 0.9, runs),
            "final_brier": rng.uniform(0.1, 0.25, runs),
        }
    ).with_columns(
        pl.when(pl.col("status") == "running")
        .then(None)
        .otherwise(pl.col("finished_at"))
        .alias("finished_at"),
        pl.col("pid").cast(pl.Int32),
        pl.col("reason").cast(pl.String),
    )
    round_ids = np.concatenate([np.full(d, i) for i, d in enumerate(done)])
    round_no = np.concatenate([np.arange(1, d + 1) for d in done])
    n = round_ids.size
    round_frame = pl.DataFrame(
        {
            "run_id": np.array(run_ids)[round_ids],
            "round": round_no.astype(np.int32),
            "loss": 0.7 - 0.002 * round_no + rng.normal(0, 0.01, n),
            "auc": 0.6 + 0.002 * round_no + rng.normal(0, 0.01, n),
            "accuracy": 0.65 + 0.002 * round_no + rng.normal(0, 0.01, n),
            "brier": rng.uniform(0.15, 0.25, n),
            "seconds": rng.uniform(1, 3, n),
            "hospitals_sampled": np.full(n, hospitals, np.int32),
            "hospitals_ok": np.full(n, hospitals, np.int32),
            "hospitals_failed": np.zeros(n, np.int32),
            "epsilon": None,
            "recorded_at": [start] * n,
        }
    ).with_columns(pl.col("epsilon").cast(pl.Float64))
    m = n * hospitals
    shown = rng.random(m) >= withheld
    hospital_frame = pl.DataFrame(
        {
            "run_id": np.repeat(round_frame["run_id"].to_numpy(), hospitals),
            "round": np.repeat(round_no.astype(np.int32), hospitals),
            "hospital": np.tile(hospital_ids, n),
            "n": np.full(m, 40, np.int32),
            "loss": rng.uniform(0.4, 0.8, m),
            "auc": rng.uniform(0.5, 0.95, m),
            "accuracy": rng.uniform(0.5, 0.9, m),
            "released": True,  # as if through the release policy (privacy.training)
        }
    ).with_columns(
        pl.when(pl.lit(shown)).then(pl.col(c)).otherwise(None).round(3)
        for c in ("loss", "auc", "accuracy")
    )
    bins = 20
    bin_frame = pl.DataFrame(
        {
            "run_id": np.repeat(run_ids, bins),
            "bin": np.tile(np.arange(bins, dtype=np.int32), runs),
            "lower": np.tile(np.arange(bins) / bins, runs),
            "upper": np.tile((np.arange(bins) + 1) / bins, runs),
            "positives": np.tile(np.arange(bins), runs).astype(np.int64) * 5,
            "negatives": np.tile(np.arange(bins)[::-1], runs).astype(np.int64) * 5,
            "score_sum": np.tile((np.arange(bins) + 0.5) / bins * 95, runs),
        }
    )
    with store.connect(write=True) as con:
        for table, frame in (
            ("runs", run_frame),
            ("rounds", round_frame),
            ("hospital_rounds", hospital_frame),
            ("score_bins", bin_frame),
        ):
            con.register("frame", frame.to_arrow())  # columns added since stay empty
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
            con.unregister("frame")
    for run_id in run_ids:
        save_model(store, run_id, fed_dir)
    return run_ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--hospitals", type=int, default=100)
    parser.add_argument("--large-hospitals", type=int, default=100_000)
    parser.add_argument("--large-rounds", type=int, default=20)
    parser.add_argument("--only", choices=("many-runs", "large"), help="time one store only")
    parser.add_argument("--repeat", type=int, default=3, help="timed renders per page")
    parser.add_argument(
        "--keep", metavar="DIR", help="build the stores in DIR and reuse them on the next run"
    )
    args = parser.parse_args()

    from healthsync import auth
    from healthsync.runs.store import MetricsStore

    tables = []
    for scenario in ("many-runs", "large"):
        if args.only not in (None, scenario):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(args.keep or tmp) / scenario
            os.environ.update(
                HEALTHSYNC_HOME=str(root / "home"),
                HEALTHSYNC_DB=str(root / "data" / "healthsync.duckdb"),
                HEALTHSYNC_DATA_ROOT=str(root / "data"),
            )
            db = root / "data" / "healthsync.duckdb"
            t = time.perf_counter()
            run_ids = build(scenario, root, args)
            pages = PAGES if scenario == "many-runs" else LARGE_PAGES
            store = MetricsStore(db)
            rows = store.scalar("SELECT count(*) FROM hospital_rounds")
            title = (
                f"{scenario}: {len(run_ids)} runs, "
                f"{store.scalar('SELECT count(*) FROM rounds'):,} rounds, {rows:,} hospital "
                f"rounds; filled in {time.perf_counter() - t:.1f} s"
            )
            print(title, flush=True)
            auth.UserStore(root / "home", rounds=4).ensure()
            results = time_pages(store, run_ids, pages, args.repeat, csv=scenario == "many-runs")
            tables.append((title, results))
    for title, results in tables:
        print(f"\n{title}")
        width = max(len(k) for k in results)
        print(f"{'page':<{width}}  {'first':>7}  {'median':>7}  {'max':>7}  target < 1 s")
        for name, times in results.items():
            warm = times[1:]
            verdict = "ok" if max(warm) < 1.0 else "SLOW"
            print(
                f"{name:<{width}}  {times[0]:>6.3f}s  {statistics.median(warm):>6.3f}s"
                f"  {max(warm):>6.3f}s  {verdict}"
            )
    return 0


def build(scenario: str, root: Path, args: argparse.Namespace) -> list[str]:
    """Fill ``root`` with the scenario's federation and store (kept ones are reused); run ids."""
    from healthsync.cohort.facts import publish
    from healthsync.data import load_federation
    from healthsync.data.synthetic import generate_federation
    from tests.app_helpers import widen_federation

    fed_dir = root / "data" / "demo"
    db = root / "data" / "healthsync.duckdb"
    if scenario == "many-runs":
        if not db.exists():
            generate_federation(fed_dir, hospitals=args.hospitals, patients=50, seed=0)
            return fill_store(db, fed_dir, args.runs, args.rounds, args.hospitals)
        return [f"run-bench-{i:04d}" for i in range(args.runs)]
    if db.exists():
        return [f"run-large-{i:04d}" for i in range(2)]
    generate_federation(fed_dir, hospitals=10, patients=50, seed=0)
    ids = widen_federation(fed_dir, args.large_hospitals)
    publish(load_federation(fed_dir), ids[:10])  # the real hospitals publish their facts
    return fill_store(
        db,
        fed_dir,
        2,
        args.large_rounds,
        ids,
        planned=args.large_rounds + 5,
        withheld=0.05,
        prefix="run-large",
    )


def time_pages(
    store, run_ids: list[str], pages: list[str], repeat: int, *, csv: bool
) -> dict[str, list[float]]:
    """Seconds of each render of each page (the first one cold), logged in as admin."""
    from streamlit.testing.v1 import AppTest

    from healthsync.views import dashboard
    from tests.app_helpers import log_in

    def fresh() -> AppTest:
        return log_in(AppTest.from_file(str(ROOT / "app.py"), default_timeout=300), "admin")

    results: dict[str, list[float]] = {}
    at = fresh()
    for _ in range(repeat + 1):  # the first run also imports the libraries
        t = time.perf_counter()
        at.run()
        results.setdefault("app.py + overview", []).append(time.perf_counter() - t)
    logged_out = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for _ in range(repeat + 1):
        t = time.perf_counter()
        logged_out.run()
        results.setdefault("app.py alone (login page)", []).append(time.perf_counter() - t)
    for page in pages:
        for _ in range(repeat + 1):
            at.switch_page(f"pages/{page}.py")
            t = time.perf_counter()
            at.run()
            results.setdefault(page, []).append(time.perf_counter() - t)
            assert not at.exception, (page, at.exception)
    if not csv:
        return results
    two = run_ids[-3:-1]
    for label, build in (
        ("CSV rounds (2 runs, on click)", lambda: dashboard.metrics_csv(store, two)),
        (
            "CSV hospital rounds (2 runs, on click)",
            lambda: dashboard.metrics_csv(store, two, "hospital_rounds"),
        ),
    ):
        for _ in range(repeat + 1):
            t = time.perf_counter()
            build()
            results.setdefault(label, []).append(time.perf_counter() - t)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
