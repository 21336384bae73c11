"""``python3 scripts/bootstrap.py app`` stops the training engine it started when the app ends.

Left behind, the engine idled on for 15 minutes with its Ray workers after the
app was stopped (found by starting the README's app command from a fresh clone
and stopping it). The subprocesses are faked: the real ones are the engine and
Streamlit, whose own tests start them.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.test_https import _bootstrap


@pytest.fixture
def bootstrap(monkeypatch):
    module = _bootstrap()
    monkeypatch.setattr("signal.signal", lambda *_: None)  # keep pytest's own handlers
    return module


def _fake(monkeypatch, bootstrap, engine_says: str) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    def run(cmd, **_):
        calls.append(tuple(cmd[3:]))
        return subprocess.CompletedProcess(cmd, 0, stdout=engine_says)

    class App:
        def __init__(self, cmd, **_):
            calls.append(("app", *cmd[3:5]))

        def wait(self):
            return 3

        def terminate(self):
            calls.append(("terminate",))

    monkeypatch.setattr(bootstrap.subprocess, "run", run)
    monkeypatch.setattr(bootstrap.subprocess, "Popen", App)
    return calls


def test_the_engine_this_command_started_is_stopped_when_the_app_ends(monkeypatch, bootstrap):
    calls = _fake(monkeypatch, bootstrap, "engine starting (pid 4242); log: engine.log\n")
    assert bootstrap.start_engine() is True
    assert bootstrap.serve_then_stop_engine(["python", "-m", "streamlit", "run", "app.py"]) == 3
    assert calls == [
        ("engine", "start", "--no-wait"),
        ("app", "run", "app.py"),
        ("engine", "stop"),
    ]


@pytest.mark.parametrize(
    "engine_says",
    ["engine already running (pid 7, 32 nodes)\n", "engine starting (pid already starting); log\n"],
)
def test_an_engine_someone_else_started_is_left_running(monkeypatch, bootstrap, engine_says):
    _fake(monkeypatch, bootstrap, engine_says)
    assert bootstrap.start_engine() is False  # so the app command execs Streamlit, stops nothing
