"""The suite's own leftover processes: found by their tie to this test session, never by name.

A pytest plugin (``tests/conftest.py`` takes its two hooks): at the start of
the session it notes every process already running and puts a random token
in the environment, which every process the suite starts inherits (runs,
services and their Ray daemons and actors included, detached or not). At the
end, a process counts as the suite's when it was not running at the start and
it descends from this pytest process or carries the token. Those still alive
after a short grace are listed and killed; if any is a HealthSync or Ray
process, the run fails. Other people's processes on the machine (present at
the start, or without the token and outside this process tree) are never
looked at twice, let alone stopped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

import psutil
import pytest

TOKEN_VARIABLE = "HEALTHSYNC_TEST_SESSION"
GRACE_SECONDS = 15.0  # a service told to stop may still be stopping its Ray daemons
GRACE_VARIABLE = "HEALTHSYNC_LEFTOVER_GRACE"  # seconds, instead (this check's own test)
OURS = ("healthsync", "simulation", "streamlit", "ray::", "/ray/", "gcs_server", "raylet")


def _identity(process: psutil.Process) -> tuple[int, float]:
    """A pid and its start time: a pid reused later by another process is another process."""
    try:
        return process.pid, process.create_time()
    except psutil.Error:
        return process.pid, 0.0


def command(process: psutil.Process) -> str:
    """The process's command line (its name if that cannot be read)."""
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return f"pid {process.pid}"


def is_healthsync_or_ray(process: psutil.Process) -> bool:
    """Whether the process runs HealthSync, its Flower simulation, the app or Ray."""
    return any(part in command(process) for part in OURS)


@dataclass(frozen=True)
class SessionProcesses:
    """What one test session started: see the module docstring."""

    token: str
    root: int
    before: frozenset[tuple[int, float]]

    @classmethod
    def begin(cls, environ: MutableMapping[str, str] = os.environ) -> SessionProcesses:
        """Note the processes running now and mark everything started from here on."""
        token = f"{os.getpid()}-{secrets.token_hex(8)}"
        environ[TOKEN_VARIABLE] = token
        return cls(token, os.getpid(), frozenset(map(_identity, psutil.process_iter())))

    def started(self) -> list[psutil.Process]:
        """Live processes this session started (the pytest process itself excluded)."""
        try:
            tree = {p.pid for p in psutil.Process(self.root).children(recursive=True)}
        except psutil.Error:
            tree = set()
        found = []
        for process in psutil.process_iter():
            if process.pid == self.root or _identity(process) in self.before:
                continue
            with contextlib.suppress(psutil.Error):  # gone, or not ours to read
                if process.status() == psutil.STATUS_ZOMBIE:
                    continue
                if process.pid in tree or process.environ().get(TOKEN_VARIABLE) == self.token:
                    found.append(process)
        return found

    def leftovers(self, grace: float = GRACE_SECONDS) -> list[psutil.Process]:
        """Processes this session started that are still running after up to ``grace`` seconds."""
        deadline = time.monotonic() + grace
        while (alive := self.started()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive


def kill(processes: Iterable[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` (all this session's own) and wait briefly for them."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)


# ---------------------------------------------------------------- pytest hooks
_KEY = pytest.StashKey[SessionProcesses]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_KEY] = SessionProcesses.begin()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    processes = session.config.stash.get(_KEY, None)
    if processes is None:
        return
    left = processes.leftovers(float(os.environ.get(GRACE_VARIABLE, GRACE_SECONDS)))
    if not left:
        return
    ours = [p for p in left if is_healthsync_or_ray(p)]
    lines = [f"{p.pid}: {command(p)[:200]}" for p in left]
    kill(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    title = f"{len(left)} process(es) started by this test session still running (now killed)"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", title, red=bool(ours), yellow=not ours)
        for line in lines:
            reporter.write_line(line)
    if ours:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
