"""The ``healthsync`` command.

Each module in this package adds one command group through a
``register(subparsers)`` function and sets ``func`` on its parsers; commands
import heavy libraries (torch, Flower) inside ``func`` so ``--help`` stays fast.
Errors that users cause end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from healthsync import __version__
from healthsync.errors import HealthSyncError


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every command group found in this package."""
    parser = argparse.ArgumentParser(
        prog="healthsync",
        description="Privacy-preserving federated learning for hospitals.",
    )
    parser.add_argument("--version", action="version", version=f"healthsync {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except HealthSyncError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
