"""Delivery: the CI workflow and the Dockerfile pass their linters; docker-compose.yml's shape.

Both linters are pinned in requirements.txt and installed into the venv next to
this Python. Each is also shown a broken file, so a linter that passes
everything cannot pass this test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from healthsync.cli import main

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    # Pinned in requirements.txt: a missing linter is a broken install, not a reason to skip.
    assert found is not None, f"{name} is not installed (pip install -r requirements.txt)"
    return found


def _lint(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_workflow_passes_the_github_workflow_schema(tmp_path):
    tool = _tool("check-jsonschema")
    schema = ["--builtin-schema", "vendor.github-workflows"]
    done = _lint([tool, *schema, ".github/workflows/ci.yml"])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  test:\n    steps: []\n")  # no runs-on
    assert _lint([tool, *schema, str(broken)]).returncode != 0


def test_the_workflow_runs_the_readme_test_command_on_311_and_builds_the_image():
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    test_job, docker_job = workflow["jobs"]["test"], workflow["jobs"]["docker"]
    assert "3.11" in test_job["container"]["image"]
    commands = "\n".join(step.get("run", "") for step in test_job["steps"])
    assert "python3 scripts/bootstrap.py test" in commands
    assert "python3 scripts/bootstrap.py test" in (ROOT / "README.md").read_text()
    assert any("docker build" in step.get("run", "") for step in docker_job["steps"])


def test_the_dockerfile_passes_hadolint(tmp_path):
    tool = _tool("hadolint")
    done = _lint([tool, "Dockerfile"])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nUSER app\nCMD python -m http.server\n")
    found = _lint([tool, str(broken)]).stdout
    assert "DL3066" in found and "DL3025" in found


def test_compose_runs_the_app_and_the_foreground_engine_with_named_volumes():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, volumes = compose["services"], compose["volumes"]
    assert {"app", "engine"} <= set(services)
    app, engine = services["app"], services["engine"]
    assert "8501:8501" in app["ports"]
    assert engine["command"][:4] == ["healthsync", "engine", "start", "--foreground"]
    # The engine's channel is on 127.0.0.1: it must share the app's network.
    assert engine["network_mode"] == "service:app"
    mounts = {
        name: {m.split(":")[0]: m.split(":")[1] for m in service["volumes"]}
        for name, service in services.items()
    }
    assert mounts["app"] == {"healthsync-data": "/app/data", "healthsync-home": "/app/.healthsync"}
    assert mounts["engine"]["healthsync-data"] == "/app/data"
    assert {"healthsync-data", "healthsync-home"} <= set(volumes)  # named, not host paths


def test_engine_start_foreground_becomes_the_engine(tmp_path, monkeypatch):
    import os

    executed: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: executed.append(argv))
    db = tmp_path / "m.duckdb"
    assert main(["engine", "start", "--foreground", "--db", str(db), "--idle-minutes", "2"]) == 0
    [cmd] = executed
    assert cmd[1:4] == ["-m", "simulation.warm_engine", "serve"]
    assert cmd[cmd.index("--state") + 1] == str(tmp_path / "engine" / "engine.json")
    assert float(cmd[cmd.index("--idle-timeout") + 1]) == 120.0
