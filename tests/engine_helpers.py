"""Shared helpers for tests that run the engine end to end."""

from __future__ import annotations

import json
from pathlib import Path

from healthsync.cli import main
from healthsync.data.synthetic import generate_federation


def make_federation(root: Path, name: str, **kwargs) -> Path:
    """A small synthetic federation under ``root/name`` (generated once per call)."""
    out = root / name
    generate_federation(
        out, **{"hospitals": 4, "patients": 150, "seed": 0, "heterogeneity": 0.5, **kwargs}
    )
    return out


def cli_json(capsys, *argv: str) -> tuple[int, dict]:
    """Run the CLI and parse the JSON object on the last line of stdout."""
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])
