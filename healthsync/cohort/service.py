"""The warm analytics service: one long-lived Flower simulation per federation.

Starting Flower's simulation on Ray takes seconds, far too long per query.
So the first cohort query on a federation starts ``python -m
simulation.analytics serve`` as its own process; its ServerApp keeps the
simulation running and waits for queries on a local channel, and exits
after an idle timeout. Later queries, from the CLI or the app, reuse it.

The channel is the background-service pattern of
:mod:`healthsync.background.service` (an authenticated listener on 127.0.0.1
announced in a state file readable by its owner only, in
``<db folder>/cohort-service/``). Messages are JSON: a checked query and the release settings go in, a
guarded :class:`~healthsync.cohort.result.Release` comes out. Both ends of
the protocol live here, so the service (``simulation/``) only wires Flower.

When the warm training engine runs for the same metrics store, its nodes
answer instead (its ClientApp handles the same ``query.cohort`` message):
the same request goes to the engine, and no service has to start (20-40 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from healthsync.background import service
from healthsync.background.processes import file_lock, read_json
from healthsync.cohort.plan import QueryPlan
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.result import Budget, Release
from healthsync.data import Federation
from healthsync.errors import HealthSyncError
from healthsync.privacy.site import SiteRefusal
from healthsync.runs import engine

STATE_DIR_NAME = "cohort-service"
IDLE_SECONDS = 900.0
START_SECONDS = 300.0
QUERY_SECONDS = 300.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
WHAT = "the analytics service"  # in errors about the channel
Progress = Callable[[str], None]
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Executor(Protocol):
    """Where a checked query is answered: returns the guarded release, nothing rawer."""

    def release(
        self, federation: Federation, plan: QueryPlan, policy: CohortPolicy, user: str
    ) -> tuple[Release, Budget]:
        """Ask every hospital the query for ``user``: the guarded answer and the budget.

        Raises :class:`~healthsync.privacy.site.SiteRefusal` when a hospital refuses.
        """
        ...


def federation_id(federation: Federation) -> str:
    """A fingerprint of the manifest: same data, same ledger, wherever the folder is."""
    text = json.dumps(federation.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def state_dir_for(db: str | Path) -> Path:
    """Where services serving this store's users keep their state files and logs."""
    if str(db) == ":memory:":
        return Path(tempfile.gettempdir()) / f"healthsync-{STATE_DIR_NAME}"
    return Path(db).resolve().parent / STATE_DIR_NAME


@dataclass(frozen=True)
class ServiceState:
    """How to reach a running service (the file is the service's announcement that it is ready)."""

    port: int
    authkey: str
    pid: int
    data_dir: str
    federation: str

    @staticmethod
    def path(state_dir: Path, federation: Federation) -> Path:
        where = hashlib.sha256(str(federation.data_dir.resolve()).encode()).hexdigest()[:8]
        return state_dir / f"{federation_id(federation)}-{where}.json"

    @classmethod
    def read(cls, path: Path) -> ServiceState | None:
        data = read_json(path)
        try:
            return cls(**data) if data is not None else None
        except TypeError:
            return None


# ---------------------------------------------------------------- service side
#: How often an idle service checks that its federation's folder still exists.
DATA_CHECK_SECONDS = 5.0


def serve(handle: Handler, state_path: Path, state: dict[str, Any], *, idle_timeout: float) -> None:
    """Answer requests one at a time until a ``stop`` request or ``idle_timeout`` seconds of quiet.

    Called by the service once its hospitals are online; writing the state
    file is what tells clients it is ready. ``state`` gives ``data_dir`` and
    ``federation`` for the file.
    """
    pending: queue.Queue[Connection] = queue.Queue()
    channel = service.ServiceListener(state_path, pending.put, **state)
    data_dir = Path(state["data_dir"])
    quiet_since = time.monotonic()
    try:
        while True:
            left = idle_timeout - (time.monotonic() - quiet_since)
            if left <= 0 or not data_dir.is_dir():  # idle, or its federation was deleted
                return
            try:
                conn = pending.get(timeout=min(left, DATA_CHECK_SECONDS))
            except queue.Empty:
                continue
            with conn:
                if not _answer(conn, handle):
                    return
            quiet_since = time.monotonic()
    finally:
        channel.close()


def _answer(conn: Connection, handle: Handler) -> bool:
    """Answer one request; ``False`` when it asked the service to stop."""
    request = service.receive(conn, MAX_MESSAGE_BYTES)
    if request is None:
        return True
    if isinstance(request, str):
        response: dict[str, Any] = {"ok": False, "error": request}
    elif request.get("op") == "stop":
        response = {"ok": True}
    elif request.get("op") == "ping":
        response = {"ok": True, "pid": os.getpid()}
    else:
        try:
            response = handle(request)
        except HealthSyncError as err:
            response = {"ok": False, "error": str(err)}
    service.send(conn, response)
    return request.get("op") != "stop" if isinstance(request, dict) else True


# ---------------------------------------------------------------- client side
class FlowerExecutor:
    """Answers queries through the warm Flower analytics service, starting it when needed.

    Parameters
    ----------
    state_dir : where services announce themselves (see :func:`state_dir_for`).
    progress : called with a line of text while the service starts.
    idle_timeout : seconds a started service waits for queries before it exits.
    start_timeout : seconds to wait for a service to come up.
    block_size : hospitals answered together by one simulated client in a service this
        executor starts (default: a training run's layout, ``healthsync.config.auto_block_size``).
    engine_db : the metrics store whose warm training engine (``healthsync.runs.engine``),
        if one runs, answers instead of a service; ``None`` always uses the service.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        progress: Progress | None = None,
        idle_timeout: float = IDLE_SECONDS,
        start_timeout: float = START_SECONDS,
        block_size: int | None = None,
        engine_db: str | Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.engine_db = engine_db
        self.progress = progress or (lambda _line: None)
        self.idle_timeout = idle_timeout
        self.start_timeout = start_timeout
        #: Whether this executor started a service (a one-off command stops what it started).
        self.started = False
        self.block_size = block_size

    def release(
        self, federation: Federation, plan: QueryPlan, policy: CohortPolicy, user: str
    ) -> tuple[Release, Budget]:
        request = {
            "op": "query",
            "federation": federation_id(federation),
            "query": plan.query.to_dict(),
            "policy": policy.release_settings(user),
            "user": user,
        }
        response = self.request(federation, request)
        if not response.get("ok"):
            error = str(response.get("error", "the analytics service failed"))
            raise SiteRefusal(error) if response.get("refused") else HealthSyncError(error)
        budget = response["budget"]
        return Release.from_dict(response["release"]), Budget(budget["total"], budget["spent"])

    def request(self, federation: Federation, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the federation's service (started if needed); its reply.

        The warm training engine answers when one runs for ``engine_db``. A
        service that goes away before replying (it may have just reached its
        idle timeout) is replaced once; nothing reached the caller, so asking
        again reveals nothing more.
        """
        if self.engine_db is not None:
            reply = self._ask_engine(federation, request)
            if reply is None and engine.starting(self.engine_db):
                # Started but not answering yet: wait for it rather than start a second Ray.
                self.progress("waiting for the training engine, which answers cohort queries too…")
                with contextlib.suppress(HealthSyncError):  # it failed to start: a service answers
                    engine.wait_ready(self.engine_db, timeout=self.start_timeout)
                reply = self._ask_engine(federation, request)
            if reply is not None:
                return reply
        try:
            return self._exchange(federation, request)
        except (EOFError, OSError):
            pass
        try:
            return self._exchange(federation, request)
        except (EOFError, OSError) as err:
            raise HealthSyncError(
                f"the analytics service stopped while answering ({err or 'closed'})"
            ) from None

    def _ask_engine(self, federation: Federation, request: dict[str, Any]) -> dict[str, Any] | None:
        """The warm training engine's reply, or ``None`` when none runs or it serves no queries."""
        asked = {**request, "op": "cohort", "data-dir": str(federation.data_dir.resolve())}
        reply = engine.request(
            self.engine_db, asked, timeout=QUERY_SECONDS, max_bytes=MAX_MESSAGE_BYTES
        )
        return None if reply is None or reply.get("unavailable") else reply

    def _exchange(self, federation: Federation, request: dict[str, Any]) -> dict[str, Any]:
        with self._connection(federation) as conn:
            return service.exchange(
                conn, request, timeout=QUERY_SECONDS, max_bytes=MAX_MESSAGE_BYTES, what=WHAT
            )

    def stop(self, federation: Federation) -> bool:
        """Ask a running service to exit; whether one was running."""
        conn = service.connect(ServiceState.path(self.state_dir, federation))
        if conn is None:
            return False
        with conn:
            service.send(conn, {"op": "stop"})
            conn.poll(10)
        return True

    @contextlib.contextmanager
    def _connection(self, federation: Federation) -> Iterator[Connection]:
        path = ServiceState.path(self.state_dir, federation)
        conn = service.connect(path)
        if conn is None:
            with file_lock(service.lock_path(path)):
                conn = service.connect(path) or self._start(federation, path)
        with conn:
            yield conn

    def _start(self, federation: Federation, path: Path) -> Connection:
        cmd = [
            sys.executable,
            "-m",
            "simulation.analytics",
            "serve",
            "--data",
            str(federation.data_dir.resolve()),
            "--state",
            str(path),
            "--idle-timeout",
            str(self.idle_timeout),
        ]
        if self.block_size:
            cmd += ["--block-size", str(self.block_size)]
        n = len(federation.hospitals)
        self.progress(
            f"starting the analytics service (Flower on Ray) for the {n} hospitals of "
            f"{federation.data_dir.name}; the first query waits for it…"
        )
        if not service.starting(path):  # one left starting by a caller that gave up is reused
            service.spawn(path, cmd)
            self.started = True
        started = time.monotonic()
        shown = 0

        def still(elapsed: float) -> None:
            nonlocal shown
            if elapsed >= shown + 5:
                shown = int(elapsed)
                self.progress(f"still starting the analytics service… {shown} s")

        conn = service.wait_ready(
            path, timeout=self.start_timeout, what=WHAT, progress=still, stop_if_late=True
        )
        self.progress(f"analytics service ready after {time.monotonic() - started:.0f} s")
        return conn
