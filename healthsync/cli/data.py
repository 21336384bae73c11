"""``healthsync data generate`` and ``healthsync data import``: make a federation directory."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from healthsync.data import Federation


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="create a federation: synthetic hospitals or your own exports",
        description="Create a federation directory (federation.json plus one "
        "Parquet file of patients per hospital) for training.",
    )
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    generate = commands.add_parser(
        "generate",
        help="simulate hospitals from a calibrated adult population",
        description="Simulate hospitals whose patients come from one population calibrated "
        "to published figures (see data/README.md), with sizes, case mix, prevalence and "
        "measurement calibration varying by --heterogeneity. Same arguments, same bytes.",
    )
    generate.add_argument("--hospitals", type=int, default=10, help="number of hospitals")
    generate.add_argument("--patients", type=int, default=500, help="mean patients per hospital")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--heterogeneity", type=float, default=0.5, help="0 = identical hospitals, 1 = strong"
    )
    _add_output_arguments(generate)
    generate.set_defaults(func=cmd_generate)

    imp = commands.add_parser(
        "import",
        help="one CSV or Parquet file per hospital",
        description="Import one CSV or Parquet file per hospital as NAME=FILE. All files need "
        "the same columns; --target is the binary outcome and every other column (except "
        "--split-column) is a feature. Each file stays its hospital's own partition.",
    )
    imp.add_argument("sources", nargs="+", metavar="NAME=FILE", help="a hospital and its file")
    imp.add_argument("--target", required=True, help="binary outcome column (0/1, yes/no, ...)")
    imp.add_argument("--split-column", help="column with train/test, kept as given")
    imp.add_argument("--seed", type=int, default=0, help="seed of the split when none is given")
    imp.add_argument("--test-fraction", type=float, default=0.2, help="held-out share per hospital")
    imp.add_argument("--name", help="federation name (default: the directory name)")
    _add_output_arguments(imp)
    imp.set_defaults(func=cmd_import)

    publish = commands.add_parser(
        "publish",
        help="let each hospital publish the facts Overview shows",
        description="Each hospital releases its patient count and outcome prevalences through "
        "its own privacy gate (noise drawn once, kept in its own ledger) and publishes them "
        "for Overview. generate and import do this themselves; use it for older federations.",
    )
    publish.add_argument("--data", required=True, type=Path, help="federation directory")
    publish.set_defaults(func=cmd_publish)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="federation directory to create")
    parser.add_argument("--force", action="store_true", help="replace an existing federation")


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate a synthetic federation with a progress bar on stderr."""
    from tqdm import tqdm

    from healthsync.data.synthetic import generate_federation

    with tqdm(total=max(args.hospitals, 0), unit="hospital", file=sys.stderr, delay=0.5) as bar:
        federation = generate_federation(
            args.out,
            args.hospitals,
            args.patients,
            args.seed,
            args.heterogeneity,
            force=args.force,
            progress=bar.update,
        )
    n_test = sum(h.n_test for h in federation.hospitals)
    published = _publish(federation)
    print(
        f"generated {len(federation.hospitals)} hospitals, {federation.n_patients} patients "
        f"({federation.n_patients - n_test} train / {n_test} test) in {args.out}; {published}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import hospital exports into a federation."""
    from healthsync.data.importer import import_federation, parse_source

    federation = import_federation(
        args.out,
        [parse_source(spec) for spec in args.sources],
        args.target,
        split_column=args.split_column,
        seed=args.seed,
        test_fraction=args.test_fraction,
        name=args.name,
        force=args.force,
    )
    kinds = [f.kind for f in federation.features]
    published = _publish(federation)
    print(
        f"imported {len(federation.hospitals)} hospitals, {federation.n_patients} patients, "
        f"{kinds.count('numeric')} numeric + {kinds.count('categorical')} categorical features, "
        f"target {federation.default_target!r} in {args.out}; {published}"
    )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish Overview's facts for every hospital of an existing federation."""
    from healthsync.data import load_federation

    print(_publish(load_federation(args.data)))
    return 0


def _publish(federation: Federation) -> str:
    """Each hospital releases and publishes Overview's facts (hospital-side code); says so.

    Then reads them once as Overview does, which leaves the federation's memo
    of them (``facts.MEMO_NAME``): Overview's first page shows at once, even at
    100,000 hospitals.
    """
    from tqdm import tqdm

    from healthsync.cohort.facts import publish, published_facts

    total = len(federation.hospitals)
    lock = threading.Lock()  # hospitals publish on several threads; tqdm counts unlocked
    with tqdm(
        total=total, desc="publishing facts", unit="hospital", file=sys.stderr, delay=1
    ) as bar:

        def done(count: int) -> None:
            with lock:
                bar.update(count)

        published = publish(federation, progress=done)
    if total > 1000:  # seconds at this size: say what is happening
        print("reading the published facts back once, for Overview's first page", file=sys.stderr)
    published_facts(federation)
    return f"{published} hospital(s) published Overview's facts (noisy; docs/privacy.md)"
