"""The background-service pattern the warm engine and the cohort service share."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import psutil
import pytest

from healthsync.background import service
from healthsync.background.processes import read_json, write_private
from healthsync.errors import HealthSyncError


@pytest.fixture
def echo(tmp_path):
    """A service in this process that answers each request with the request itself."""
    state_file = tmp_path / "svc" / "state.json"

    def answer(conn):
        with conn:
            request = service.receive(conn, 1 << 16)
            if request is not None:
                service.send(conn, {"echo": request})

    channel = service.ServiceListener(state_file, answer, kind="echo")
    yield state_file, channel
    channel.close()


def test_the_state_file_is_private_announces_the_service_and_goes_with_it(echo):
    state_file, channel = echo
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.parent.stat().st_mode) == 0o700
    state = read_json(state_file)
    assert state["pid"] == os.getpid() and state["kind"] == "echo"
    assert len(bytes.fromhex(state["authkey"])) == 32
    with service.connect(state_file) as conn:
        reply = service.exchange(conn, {"op": "hi"}, timeout=5, max_bytes=1 << 16, what="echo")
    assert reply == {"echo": {"op": "hi"}}
    channel.close()
    assert not state_file.exists()


def test_a_caller_without_the_key_is_refused_and_the_service_goes_on(echo):
    state_file, _ = echo
    port = read_json(state_file)["port"]
    with pytest.raises(AuthenticationError):
        Client(("127.0.0.1", port), authkey=b"not-the-key" * 3)
    with service.connect(state_file) as conn:
        assert service.exchange(conn, {"n": 1}, timeout=5, max_bytes=1 << 16, what="echo") == {
            "echo": {"n": 1}
        }


def test_a_request_that_is_not_a_json_object_gets_an_error_text(echo):
    state_file, _ = echo
    with service.connect(state_file) as conn:
        conn.send_bytes(b"[1, 2]")
        assert conn.poll(5)
        assert read_reply(conn) == {"echo": "a request must be a JSON object"}


def read_reply(conn):
    return json.loads(conn.recv_bytes())


def test_a_state_file_left_by_a_dead_service_is_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    state_file = tmp_path / "state.json"
    write_private(state_file, {"port": 1, "authkey": "00" * 32, "pid": int(dead.stdout)})
    assert service.connect(state_file) is None
    assert not state_file.exists()


def test_a_state_file_of_a_live_service_not_yet_listening_is_kept(tmp_path):
    state_file = tmp_path / "state.json"
    write_private(state_file, {"port": 1, "authkey": "00" * 32, "pid": os.getpid()})
    assert service.connect(state_file) is None
    assert state_file.exists()


def test_one_start_at_a_time_and_a_service_that_dies_starting_says_why(tmp_path):
    state_file = tmp_path / "state.json"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    pid = service.start_once(state_file, sleeper)
    try:
        assert pid and service.starting(state_file)
        assert service.start_once(state_file, sleeper) is None  # already starting
        with pytest.raises(HealthSyncError, match="did not start within 0 s"):
            service.wait_ready(state_file, timeout=0, what="the sleeper", stop_if_late=True)
    finally:
        with_pid_stopped(pid)
    failing = tmp_path / "failing.json"
    service.start_once(failing, [sys.executable, "-c", "raise SystemExit('no data here')"])
    with pytest.raises(HealthSyncError, match="the failer exited while starting: no data here"):
        service.wait_ready(failing, timeout=30, what="the failer")


def with_pid_stopped(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()


def test_engine_stop_during_its_start_stops_it_instead_of_saying_none_ran(tmp_path, monkeypatch):
    """`healthsync engine stop` while the engine was still starting said "no engine was
    running" and left it to finish starting and idle on."""
    from healthsync.cli import main
    from healthsync.runs import engine

    db = tmp_path / "m.duckdb"
    never_ready = [sys.executable, "-c", "import time; time.sleep(120)"]  # Ray still starting
    monkeypatch.setattr(engine, "serve_command", lambda *a, **k: never_ready)
    pid = engine.start(db)
    assert pid is not None and service.starting(engine.state_path(db))
    try:
        assert main(["engine", "stop", "--db", str(db)]) == 0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert not service.starting(engine.state_path(db))
        assert engine.stop(db) is None  # and now nothing runs
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
