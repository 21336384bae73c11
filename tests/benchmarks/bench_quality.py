"""Benchmark: does federation pay off? Pooled, local-only and federated at default settings.

    python tests/benchmarks/bench_quality.py [--quick] [--shapes 1000x100,breast]
                                             [--targets diabetes,diabetes_5y]
                                             [--work DIR] [--json FILE]

Builds each federation as a user would and runs ``healthsync compare --json``
on it with default settings (a warm engine, started for the benchmark's own
metrics store and stopped at the end, saves the Ray start of every run):

- the synthetic shapes of issue 16: 3 hospitals x 150 patients, 3 x 1,000,
  10 x 500 at heterogeneity 0.9, 100 x 200 and 1,000 x 100 (heterogeneity 0.5
  otherwise, seed 0), each for a prevalent outcome (``diabetes``: current
  diagnosis) and an incident one (``diabetes_5y``: new diabetes within 5 years);
- a real dataset shipped inside a PyPI package: scikit-learn's Wisconsin
  breast-cancer data (569 patients, 30 features, target ``malignant``), split
  into 4 sites by quartiles of ``mean_texture`` (a covariate shift between
  sites) with a seeded, stratified 75/25 train/test split, written as one CSV
  per site and imported with ``healthsync data import``.

``--quick`` runs only the two smallest shapes (3 x 150 and the breast-cancer
sites); ``--shapes`` runs the chosen shapes only (``HxP`` for a synthetic shape,
``breast`` for the real one). It prints one row per shape, target and method (overall test accuracy
and AUC), the winner by AUC, whether federated is at least as good as
local-only and within 0.01 of pooled on both metrics (the issue's bar), and
the seconds each comparison took; then the same table as Markdown for README.
A benchmark, not a test: the metrics are seeded, the times depend on the load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PREVALENT, INCIDENT = "diabetes", "diabetes_5y"
REAL_TARGET = "malignant"
#: ``compare``'s methods, by the start of their names; the bar judges the first three.
METHODS = ("pooled", "local", "federated", "personalised")
TOLERANCE = 0.01  # the bar: federated within 0.01 of pooled


@dataclass(frozen=True)
class Shape:
    """One federation of the benchmark."""

    label: str
    hospitals: int = 0
    patients: int = 0
    heterogeneity: float = 0.5
    real: bool = False


SHAPES = (
    Shape("3 x 150", 3, 150),
    Shape("breast cancer, 4 sites", real=True),
    Shape("3 x 1,000", 3, 1000),
    Shape("10 x 500, heterogeneity 0.9", 10, 500, 0.9),
    Shape("100 x 200", 100, 200),
    Shape("1,000 x 100", 1000, 100),
)
QUICK = 2


def shape_key(shape: Shape) -> str:
    """The name ``--shapes`` knows a shape by: ``HxP`` (``3x150``), or ``breast``."""
    return "breast" if shape.real else f"{shape.hospitals}x{shape.patients}"


def healthsync(*args: str, check: bool = True) -> str:
    """Run the CLI as a user would; its stdout, or exit with its error (``check``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-c",
        "import sys; from healthsync.cli import main; sys.exit(main())",
    ]
    command += args
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        error = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
        if check:
            sys.exit(f"healthsync {' '.join(args)} failed: {error[0]}")
        print(f"note: healthsync {' '.join(args[:2])}: {error[0]}", file=sys.stderr)
    return done.stdout


def breast_cancer_sites(folder: Path, seed: int = 0, sites: int = 4) -> list[str]:
    """scikit-learn's breast-cancer data as one CSV per site; ``NAME=FILE`` arguments for import.

    Sites are quartiles of mean texture (each site sees a different range of one
    clinical feature, as hospitals with different referral patterns would); the
    split is stratified by the outcome within each site and seeded.
    """
    import polars as pl
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [name.replace(" ", "_") for name in data.feature_names]
    frame = pl.DataFrame(data.data, schema=names, orient="row").with_columns(
        # scikit-learn codes benign as 1; the clinical outcome of interest is malignancy.
        pl.Series(REAL_TARGET, (data.target == 0).astype(np.int8))
    )
    cuts = np.quantile(frame["mean_texture"].to_numpy(), np.linspace(0, 1, sites + 1)[1:-1])
    site = np.searchsorted(cuts, frame["mean_texture"].to_numpy(), side="right")
    rng = np.random.default_rng(seed)
    outcome = frame[REAL_TARGET].to_numpy()
    test = np.zeros(frame.height, dtype=bool)
    for s in range(sites):
        for label in (0, 1):
            members = rng.permutation(np.flatnonzero((site == s) & (outcome == label)))
            test[members[: round(0.25 * len(members))]] = True
    frame = frame.with_columns(pl.Series("split", np.where(test, "test", "train")))
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for s in range(sites):
        path = folder / f"texture_q{s + 1}.csv"
        frame.filter(pl.Series(site == s)).write_csv(path)
        pairs.append(f"texture-q{s + 1}={path}")
    return pairs


def build(shape: Shape, work: Path) -> Path:
    """The federation directory of ``shape``, built through the CLI."""
    out = work / shape.label.replace(" ", "").replace(",", "_").replace(".", "")
    if shape.real:
        pairs = breast_cancer_sites(work / "breast_cancer_csv")
        healthsync(
            "data", "import", "--out", str(out), "--target", REAL_TARGET, "--split-column",
            "split", "--name", "breast cancer (scikit-learn), 4 sites by texture", "--force",
            *pairs,
        )  # fmt: skip
    else:
        healthsync(
            "data", "generate", "--hospitals", str(shape.hospitals), "--patients",
            str(shape.patients), "--heterogeneity", str(shape.heterogeneity), "--seed", "0",
            "--out", str(out), "--force",
        )  # fmt: skip
    return out


def compare(data: Path, db: Path, target: str) -> tuple[dict[str, dict], float]:
    """``healthsync compare --json`` at default settings: overall row per method, and seconds."""
    started = time.perf_counter()
    stdout = healthsync(
        "compare", "--data", str(data), "--db", str(db), "--target", target, "--json"
    )
    seconds = time.perf_counter() - started
    result = json.loads(stdout.strip().splitlines()[-1])
    overall = {}
    for row in result["rows"]:
        if row["hospital"] == "overall":
            method = next(m for m in METHODS if row["method"].startswith(m))
            overall[method] = {
                "name": row["method"],
                "accuracy": row["accuracy"],
                "auc": row["auc"],
                "chosen": row.get("chosen") or "",
            }
    return overall, seconds


def verdict(rows: dict[str, dict]) -> tuple[str, bool]:
    """The method with the best AUC (accuracy breaks ties) and whether federated meets the bar.

    Personalised (fine-tuned) models compete for the best AUC, but the bar is
    the issue's: one federated model against local-only and pooled.
    """
    best = max(METHODS, key=lambda m: (rows[m]["auc"], rows[m]["accuracy"]))
    fed, local, pooled = rows["federated"], rows["local"], rows["pooled"]
    meets = all(fed[k] >= local[k] and fed[k] >= pooled[k] - TOLERANCE for k in ("accuracy", "auc"))
    return rows[best]["name"], meets


def markdown(results: list[dict], command: str, load: tuple[float, float]) -> str:
    """The README table: one row per shape, target and method; ``load``: average before, after."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    met = sum(r["meets"] for r in results)
    lines = [
        f"Measured {today} with `{command}` (defaults of that day; seeded, so re-running "
        f"gives the same figures; load average {load[0]:.0f} before, {load[1]:.0f} after). "
        f"Federated meets the bar on {met} of {len(results)} rows.",
        "",
        "| federation | target | method | chosen | accuracy | AUC | best AUC | federated ≥ "
        "local and within 0.01 of pooled | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for method in METHODS:
            row, first = r["rows"][method], method == METHODS[0]
            shown = [r["shape"], r["target"]] if first else ["", ""]
            shown += [row["name"], row["chosen"], f"{row['accuracy']:.3f}", f"{row['auc']:.3f}"]
            shown += (
                [r["best"], "yes" if r["meets"] else "**no**", f"{r['seconds']:.0f}"]
                if first
                else ["", "", ""]
            )
            lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two smallest shapes")
    parser.add_argument(
        "--targets",
        default=f"{PREVALENT},{INCIDENT}",
        help="synthetic targets, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--shapes",
        default="",
        help="only these shapes, comma-separated: "
        + ",".join(shape_key(s) for s in SHAPES)
        + " (default: all, or the two of --quick)",
    )
    parser.add_argument("--work", type=Path, help="keep federations and store here (default: temp)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    shapes = SHAPES[:QUICK] if args.quick else SHAPES
    chosen = [k for k in args.shapes.split(",") if k]
    if chosen:
        known = {shape_key(s): s for s in SHAPES}
        unknown = [k for k in chosen if k not in known]
        if unknown:
            parser.error(f"unknown shape {unknown[0]!r}; choose from {', '.join(known)}")
        shapes = tuple(known[k] for k in chosen)
    command = "python tests/benchmarks/bench_quality.py" + (" --quick" if args.quick else "")
    command += f" --shapes {args.shapes}" if chosen else ""

    with tempfile.TemporaryDirectory(prefix="bench_quality.") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "bench_quality.duckdb"
        # A slow start (a loaded machine) is no failure: runs then start cold until it is up.
        healthsync("engine", "start", "--db", str(db), "--idle-minutes", "10", check=False)
        results: list[dict] = []
        load_before = os.getloadavg()[0]
        header = (
            f"{'federation':<30} {'target':<12} {'method':<26} {'chosen':<13} {'acc':>6} {'AUC':>6}"
        )
        print(header + "   best AUC / meets bar / seconds", flush=True)
        try:
            for shape in shapes:
                data = build(shape, work)
                for target in [REAL_TARGET] if shape.real else targets:
                    rows, seconds = compare(data, db, target)
                    best, meets = verdict(rows)
                    results.append(
                        {"shape": shape.label, "target": target, "rows": rows, "best": best,
                         "meets": meets, "seconds": seconds}
                    )  # fmt: skip
                    if args.json:  # after every comparison: a late failure keeps the rest
                        args.json.write_text(json.dumps(results, indent=2) + "\n")
                    for method in METHODS:
                        row = rows[method]
                        print(
                            f"{shape.label:<30} {target:<12} {row['name']:<26} {row['chosen']:<13} "
                            f"{row['accuracy']:>6.3f} {row['auc']:>6.3f}"
                            + (f"   {best} / {'yes' if meets else 'NO'} / {seconds:.0f} s"
                               if method == METHODS[-1] else ""),
                            flush=True,
                        )  # fmt: skip
        finally:
            healthsync("engine", "stop", "--db", str(db), check=False)
        print()
        print(markdown(results, command, load=(load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
