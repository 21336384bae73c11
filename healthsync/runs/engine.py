"""The warm training engine: one long-lived Flower simulation that runs training runs in turn.

A cold run pays for Python imports, Ray's start and every actor's start-up
(10-15 s on two cores) before its first round. The engine pays that once:
``python -m simulation.warm_engine serve`` keeps a Flower simulation on Ray with
``ENGINE_NODES`` nodes waiting, and runs each run it accepts through the same
round loop as a cold run (``simulation.server_app.execute``), so the first
round of a run it serves is recorded within a second or two. It exits after
``IDLE_SECONDS`` without a run, or when asked to stop.

``healthsync.runs.lifecycle.start_run`` offers every local run to a running engine
first and starts a cold run process when there is none, when it is busy with
another run, or when the run needs more Flower nodes than the engine has (more
than ``ENGINE_NODES`` blocks). The web app starts the engine (unless
``HEALTHSYNC_ENGINE=off``); ``healthsync engine start|status|stop`` manage it
by hand.

The channel is the background-service pattern of
:mod:`healthsync.background.service` (an authenticated listener on 127.0.0.1
announced in a state file only its owner can read,
``<db folder>/engine/engine.json``). Both ends of the engine's protocol live
here; ``simulation/warm_engine.py`` only wires Flower.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from healthsync.background import service
from healthsync.config import AUTO_BLOCK_THRESHOLD, TrainConfig
from healthsync.errors import HealthSyncError

# Enough nodes for every automatic block layout: one node per hospital up to
# AUTO_BLOCK_THRESHOLD hospitals, one block per CPU above.
ENGINE_NODES = AUTO_BLOCK_THRESHOLD
IDLE_SECONDS = 900.0
START_SECONDS = 180.0
REPLY_SECONDS = 30.0
ENV_SWITCH = "HEALTHSYNC_ENGINE"  # "off": the app never starts the engine
REQUEST_BYTES = 1 << 20  # largest request the engine reads
WHAT = "the training engine"  # in errors about the channel
Progress = Callable[[float], None]
Handler = Callable[[dict[str, Any]], dict[str, Any]]  # a request in, its JSON reply out


def state_path(db: str | Path) -> Path:
    """The engine's announcement file for runs recorded in ``db``."""
    return Path(db).resolve().parent / "engine" / "engine.json"


def enabled() -> bool:
    """Whether the app may start the engine (``HEALTHSYNC_ENGINE=off`` turns it off)."""
    return os.environ.get(ENV_SWITCH, "auto").lower() not in {"off", "0", "no", "false"}


# ---------------------------------------------------------------- engine side
class EngineServer:
    """The engine's end of the channel: accepts runs while idle, hands them to the main loop.

    Requests are answered at once by a listener thread, so a caller learns
    straight away whether its run was taken (never twice: ``busy`` is set
    before the reply). The main thread takes accepted runs with :meth:`next_run`.
    """

    def __init__(
        self,
        state_file: Path,
        *,
        nodes: int,
        prepare: Callable[[TrainConfig], TrainConfig],
        queries: Handler | None = None,
    ):
        self.state_file = state_file
        self.nodes = nodes
        # The run's settings as the engine will run them; raises HealthSyncError
        # saying why it cannot serve the run.
        self.prepare = prepare
        # Answers a cohort request on the engine's own nodes (``op: cohort``), beside runs.
        self.queries = queries
        self.busy = False
        self.stopping = False
        self.runs_served = 0
        self.last_query = 0.0  # time.monotonic() of the last cohort query's end
        self.lock = threading.Lock()
        self.runs: queue.Queue[tuple[str, TrainConfig] | None] = queue.Queue()
        # A thread per request: a cohort query takes a while, and a status or run
        # request meanwhile must still be answered at once.
        self.channel = service.ServiceListener(
            state_file,
            lambda conn: threading.Thread(target=self._serve, args=(conn,), daemon=True).start(),
            nodes=nodes,
        )

    def next_run(self, idle_timeout: float) -> tuple[str, TrainConfig] | None:
        """The next accepted run, or ``None`` to stop (asked to, or idle for ``idle_timeout``).

        Idle means neither a run nor a cohort query for that long: an engine
        answering queries stays warm for them.
        """
        started = time.monotonic()
        job = None
        while (wait := max(started, self.last_query) + idle_timeout - time.monotonic()) > 0:
            try:
                job = self.runs.get(timeout=wait)
                break
            except queue.Empty:
                continue
        with self.lock:
            if job is None:
                try:  # a run accepted just as the idle timeout ran out is still served
                    job = self.runs.get_nowait()
                except queue.Empty:
                    self.stopping = True
        return job

    def _query(self, request: dict[str, Any]) -> dict[str, Any]:
        """A cohort request answered by ``queries``; ``unavailable`` sends the caller elsewhere."""
        if self.queries is None or self.stopping:
            return {"ok": False, "unavailable": True, "error": "this engine answers no queries"}
        try:
            return self.queries(request)
        except HealthSyncError as err:
            return {"ok": False, "error": str(err)}
        except Exception as err:  # the engine goes on serving runs; the caller learns why
            return {
                "ok": False,
                "error": f"the engine failed to answer: {type(err).__name__}: {err}",
            }
        finally:
            self.last_query = time.monotonic()

    def run_finished(self) -> None:
        with self.lock:
            self.busy = False
            self.runs_served += 1

    def close(self) -> None:
        self.channel.close()

    def _serve(self, conn: Connection) -> None:
        with conn:
            request = service.receive(conn, REQUEST_BYTES)
            if request is not None:
                service.send(conn, self._answer(request))

    def _answer(self, request: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(request, str) or "op" not in request:
            return {"ok": False, "error": "a request is a JSON object with an 'op'"}
        op = request["op"]
        if op == "cohort":
            return self._query(request)
        with self.lock:
            status = {"pid": os.getpid(), "nodes": self.nodes, "busy": self.busy}
            if op == "status":
                return {"ok": True, **status, "runs_served": self.runs_served}
            if op == "stop":
                self.stopping = True
                self.runs.put(None)
                return {"ok": True}
            if op != "run":
                return {"ok": False, "error": f"unknown op {op!r}"}
            if self.busy or self.stopping:
                return {"ok": True, "accepted": False, "why": "busy", **status}
            try:
                config = TrainConfig.from_json(request["config"])
            except (HealthSyncError, KeyError, ValueError, TypeError) as err:
                return {"ok": True, "accepted": False, "why": f"not a valid run: {err}", **status}
            try:
                config = self.prepare(config)
            except HealthSyncError as err:
                return {"ok": True, "accepted": False, "why": str(err), **status}
            self.busy = True
            self.runs.put((str(request["run_id"]), config))
            return {"ok": True, "accepted": True, **status}


# ---------------------------------------------------------------- caller side
def request(
    db: str | Path,
    message: dict[str, Any],
    *,
    timeout: float = REPLY_SECONDS,
    max_bytes: int = REQUEST_BYTES,
) -> dict[str, Any] | None:
    """Send one request to the engine of ``db``; its reply, or ``None`` when none is running."""
    conn = service.connect(state_path(db))
    if conn is None:
        return None
    with conn:
        try:
            return service.exchange(conn, message, timeout=timeout, max_bytes=max_bytes, what=WHAT)
        except (EOFError, OSError):
            return None  # it was stopping


def submit(config: TrainConfig, run_id: str) -> int | None:
    """Offer a recorded, queued run to the engine; the engine's pid if it took it."""
    reply = request(config.db, {"op": "run", "run_id": run_id, "config": config.to_json()})
    if reply and reply.get("accepted"):
        return int(reply["pid"])
    return None


def status(db: str | Path) -> dict[str, Any] | None:
    """``pid``, ``nodes``, ``busy`` and ``runs_served`` of the running engine, or ``None``."""
    reply = request(db, {"op": "status"})
    return reply if reply and reply.get("ok") else None


def stop(db: str | Path, *, timeout: float = 30.0) -> str | None:
    """Ask the engine to exit after the run it is serving.

    ``"stopped"`` once it has gone, ``"stopping"`` if it is still finishing a
    run after ``timeout`` seconds, ``None`` when no engine was running. An
    engine still starting (not answering yet) is stopped too.
    """
    if request(db, {"op": "stop"}) is None:
        return "stopped" if service.stop_starting(state_path(db), timeout=timeout) else None
    deadline = time.monotonic() + timeout
    while state_path(db).exists():
        if time.monotonic() > deadline:
            return "stopping"
        time.sleep(0.1)
    return "stopped"


def serve_command(
    db: str | Path, *, idle_timeout: float = IDLE_SECONDS, nodes: int = ENGINE_NODES
) -> list[str]:
    """The engine's own command line (``start`` runs it in the background, a container in front)."""
    return [
        sys.executable,
        "-m",
        "simulation.warm_engine",
        "serve",
        "--state",
        str(state_path(db)),
        "--nodes",
        str(nodes),
        "--idle-timeout",
        str(idle_timeout),
    ]


def start(
    db: str | Path, *, idle_timeout: float = IDLE_SECONDS, nodes: int = ENGINE_NODES
) -> int | None:
    """Start the engine in the background unless one is running or starting; the new pid."""
    path = state_path(db)
    cmd = serve_command(db, idle_timeout=idle_timeout, nodes=nodes)
    return service.start_once(path, cmd)


def wait_ready(
    db: str | Path, *, timeout: float = START_SECONDS, progress: Progress | None = None
) -> dict:
    """Block until the engine answers; its status. Raises if it exits or takes too long."""
    service.wait_ready(state_path(db), timeout=timeout, what=WHAT, progress=progress).close()
    answer = status(db)
    if answer is None:
        raise HealthSyncError("the training engine stopped as soon as it was ready")
    return answer


def launch_note(db: str | Path) -> str:
    """One line for the Launch page on how fast a run will start; starts the engine if allowed."""
    state = status(db)
    if state is None and enabled():
        start(db)
        return (
            "Starting the training engine (Flower on Ray, about 20 s); until it is ready, a run "
            "starts cold and takes 10-15 s to its first round."
        )
    if state is None:
        return (
            "Runs start cold: 10-15 s to the first round while Ray starts. "
            "`healthsync engine start` keeps Flower and Ray warm between runs."
        )
    if state["busy"]:
        return (
            "The training engine is busy with another run, so a run started now starts cold "
            "(10-15 s to its first round)."
        )
    return "The training engine is warm: a run started now shows its first round within seconds."


def starting(db: str | Path) -> bool:
    """Whether an engine started by :func:`start` for ``db`` is alive: ready, or on its way."""
    return service.starting(state_path(db))
