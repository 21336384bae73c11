"""A long-lived background service and its local channel, written once.

The warm training engine (:mod:`healthsync.runs.engine`) and the cohort
analytics service (:mod:`healthsync.cohort.service`) are both processes that
keep Flower and Ray warm and take requests from the app and the CLI. They
share one pattern, kept here so a fix to it reaches both:

- **Listener with an auth key.** The service listens on 127.0.0.1 (a free
  port) with ``multiprocessing.connection``, authenticated with a random
  32-byte key; a caller without the key is dropped before it can send a byte.
- **JSON state file.** The service announces ``port``, ``authkey`` and
  ``pid`` (plus its own fields) in a JSON file only its owner can read;
  writing it is how the service says it is ready, and it removes the file
  when it stops (only if the file is still its own).
- **Spawn.** A service is started detached (its own session, output to
  ``<state>.log``) under a lock, so two callers never start two; a
  ``<state>.starting`` marker holds its pid until it is ready.
- **Stale-pid clean-up.** A state file whose port no longer answers and
  whose pid is gone was left by a service that died; the next caller removes it.

Messages are JSON objects sent with ``send_bytes``; each service decides what
they mean.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import psutil

from healthsync.background.processes import (
    file_lock,
    last_line,
    process_alive,
    read_json,
    spawn_detached,
    write_private,
)
from healthsync.errors import HealthSyncError

HOST = "127.0.0.1"
Progress = Callable[[float], None]  # called with the seconds waited so far


def log_path(state_file: Path) -> Path:
    """Where a service started for ``state_file`` writes its output."""
    return state_file.with_suffix(".log")


def lock_path(state_file: Path) -> Path:
    """The lock held while deciding whether to start a service for ``state_file``."""
    return state_file.with_suffix(".lock")


def _marker_path(state_file: Path) -> Path:
    return state_file.with_suffix(".starting")


# ---------------------------------------------------------------- service side
class ServiceListener:
    """The service's end of the channel: an authenticated listener, announced once it listens.

    Parameters
    ----------
    state_file : the announcement; written (owner-only) once connections are accepted.
    on_connection : called, on the listener's thread, with each authenticated connection;
        it must return quickly (queue the connection, or hand it to a thread).
    announce : the service's own fields for the state file, besides port, key and pid.
    """

    def __init__(
        self,
        state_file: Path,
        on_connection: Callable[[Connection], None],
        **announce: Any,
    ) -> None:
        self.state_file = state_file
        self.on_connection = on_connection
        authkey = secrets.token_bytes(32)
        self.listener = Listener((HOST, 0), authkey=authkey)
        threading.Thread(target=self._accept_forever, daemon=True).start()
        state = {"port": self.listener.address[1], "authkey": authkey.hex(), "pid": os.getpid()}
        write_private(state_file, {**state, **announce})

    def close(self) -> None:
        """Stop listening and withdraw the announcement, unless a newer service owns it now."""
        current = read_json(self.state_file)
        if current is not None and current.get("pid") == os.getpid():
            self.state_file.unlink(missing_ok=True)
        self.listener.close()

    def _accept_forever(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except AuthenticationError:
                continue  # a caller without the key; ignore it
            except OSError:
                return  # the listener was closed
            self.on_connection(conn)


def receive(conn: Connection, max_bytes: int) -> dict[str, Any] | str | None:
    """The next request on ``conn``: a JSON object, an error text for the caller, or ``None``.

    ``None`` when the caller hung up without asking anything.
    """
    try:
        request = json.loads(conn.recv_bytes(max_bytes))
    except (EOFError, OSError):
        return None
    except ValueError:
        return "a request must be a JSON object"
    return request if isinstance(request, dict) else "a request must be a JSON object"


def send(conn: Connection, reply: dict[str, Any]) -> None:
    """Send ``reply``; a caller that has gone away meanwhile is not an error."""
    with contextlib.suppress(OSError):
        conn.send_bytes(json.dumps(reply).encode())


# ---------------------------------------------------------------- caller side
def connect(state_file: Path) -> Connection | None:
    """A connection to the service announced in ``state_file``, or ``None`` if none answers.

    A state file left by a service that died is removed, so the next caller
    starts a new one instead of trying the dead one's port.
    """
    state = read_json(state_file)
    if state is None:
        return None
    try:
        return Client((HOST, int(state["port"])), authkey=bytes.fromhex(state["authkey"]))
    except (OSError, AuthenticationError, ValueError, KeyError, TypeError):
        with contextlib.suppress(ValueError, TypeError):
            if process_alive(int(state.get("pid", 0))):
                return None  # alive but not (yet, or any more) listening: leave its file
        state_file.unlink(missing_ok=True)
        return None


def exchange(
    conn: Connection, message: dict[str, Any], *, timeout: float, max_bytes: int, what: str
) -> dict[str, Any]:
    """Send ``message`` and return the reply; raises if ``what`` does not answer in ``timeout`` s.

    ``EOFError``/``OSError`` pass through: the service went away (it may have
    just reached its idle timeout), which callers handle their own way.
    """
    conn.send_bytes(json.dumps(message).encode())
    if not conn.poll(timeout):
        raise HealthSyncError(f"{what} did not answer in {timeout:.0f} s")
    return json.loads(conn.recv_bytes(max_bytes))


def starting(state_file: Path) -> bool:
    """Whether a service spawned by :func:`spawn` for ``state_file`` is alive: ready or on its way."""
    marker = read_json(_marker_path(state_file))
    return bool(marker) and process_alive(int(marker.get("pid", 0)))


def spawn(state_file: Path, cmd: Sequence[str]) -> int:
    """Start ``cmd`` detached as the service for ``state_file``; its pid.

    Call it holding ``file_lock(lock_path(state_file))``, after checking that
    no service answers or is :func:`starting`.
    """
    process = spawn_detached(cmd, log_path(state_file))
    write_private(_marker_path(state_file), {"pid": process.pid})
    return process.pid


def start_once(state_file: Path, cmd: Sequence[str]) -> int | None:
    """Start the service unless one answers or is starting; the new pid, or ``None``."""
    with file_lock(lock_path(state_file)):
        conn = connect(state_file)
        if conn is not None:
            conn.close()
            return None
        if starting(state_file):
            return None
        return spawn(state_file, cmd)


def wait_ready(
    state_file: Path,
    *,
    timeout: float,
    what: str,
    progress: Progress | None = None,
    stop_if_late: bool = False,
) -> Connection:
    """Block until the service for ``state_file`` answers; a connection to it.

    Raises :class:`HealthSyncError` naming the last line of its log if it
    exits while starting, or if it takes longer than ``timeout`` seconds
    (then, with ``stop_if_late``, it is stopped too).
    """
    started = time.monotonic()
    while (conn := connect(state_file)) is None:
        elapsed = time.monotonic() - started
        if not starting(state_file):
            raise HealthSyncError(
                f"{what} exited while starting: {last_line(log_path(state_file))}"
            )
        if elapsed > timeout:
            if stop_if_late:
                _stop_starting(state_file)
            raise HealthSyncError(
                f"{what} did not start within {timeout:.0f} s (see {log_path(state_file)})"
            )
        if progress:
            progress(elapsed)
        time.sleep(0.2)
    return conn


def _stop_starting(state_file: Path) -> None:
    marker = read_json(_marker_path(state_file)) or {}
    with contextlib.suppress(psutil.Error, ValueError, TypeError):
        psutil.Process(int(marker.get("pid", 0))).terminate()


def stop_starting(state_file: Path, *, timeout: float = 30.0) -> bool:
    """Stop a service that was spawned but does not answer yet; whether there was one.

    A stop asked during a service's start (Ray still coming up) used to find
    no listener, report that nothing ran, and leave the service to finish
    starting and idle on. It gets SIGTERM (its own shutdown path, which
    removes its Ray session) and is waited for; the marker goes with it.
    """
    with file_lock(lock_path(state_file)):
        marker = read_json(_marker_path(state_file)) or {}
        if not starting(state_file):
            return False
        try:
            process = psutil.Process(int(marker.get("pid", 0)))
            process.terminate()
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
        except (psutil.Error, ValueError, TypeError):
            pass
        _marker_path(state_file).unlink(missing_ok=True)
        return True
