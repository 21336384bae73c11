"""Every command is reachable from ``healthsync --help`` and documents itself."""

import argparse
import re

import pytest

from healthsync.cli import build_parser, main

COMMANDS = [
    "data",
    "train",
    "runs",
    "compare",
    "predict",
    "users",
    "cohort",
    "bench",
    "cluster",
    "https",
    "tune",
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_is_registered_with_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(COMMANDS) <= set(commands)
    help_text = parser.format_help()
    for name in COMMANDS:
        assert name in help_text
        assert commands[name].format_help().strip()


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_cleanly(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert "usage: healthsync" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_the_library_never_imports_the_flower_wiring():
    """Layering: ``simulation/`` stands on ``healthsync/``, never the other way round."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "healthsync"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.split(".")[0] == "simulation" for n in names), path


@pytest.mark.parametrize("name", ["train", "compare", "tune"])
def test_help_of_training_commands_shows_every_default(name):
    """Issue 16: a user reads every default in ``--help`` (a changed default changes it too)."""
    command = _subparsers(build_parser())[name]
    formatter = command._get_formatter()
    missing = []
    for action in command._actions:
        default = action.default
        if not action.option_strings or default is None or default is False:
            continue
        if default == argparse.SUPPRESS or default in ([], ()):  # --help; repeatable options
            continue
        shown = formatter._expand_help(action) if action.help else ""
        if not re.search(rf"default:? {re.escape(str(default))}(?![\w.])", shown):
            missing.append(f"{action.option_strings[0]} (default {default})")
    assert not missing, f"healthsync {name} --help does not show: {', '.join(missing)}"
