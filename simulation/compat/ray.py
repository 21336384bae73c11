"""The parts of Ray HealthSync relies on that only Ray's own (private) code names.

Relies on, in Ray 2.55 (checked by ``tests/test_compat.py``):

- ``RAY_DEDUP_LOGS`` (``ray._private.ray_constants``): "0" keeps each actor's
  log lines instead of Ray folding repeated ones into a summary line.
- ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``
  (``ray._private.accelerators.RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO_ENV_VAR``):
  "0" keeps Ray from clearing ``CUDA_VISIBLE_DEVICES`` in actors that ask for
  zero GPUs, and silences the ``FutureWarning`` Ray prints about that change
  in every worker. Our client actors ask for ``num_gpus=0``.
- ``ray._private.node.Node``, which ``ray.init`` builds (by that module
  attribute, at call time) to start a local cluster: its ``start_monitor``,
  ``start_log_monitor`` and ``start_api_server`` methods each start one
  process, and its ``_session_dir`` (what ``get_session_dir_path`` returns)
  names the ``/tmp/ray/session_*`` folder it created. Ray's public API has no
  switch for these: ``include_dashboard=False`` still starts ``dashboard.py``
  (with fewer modules), and ``ray.init`` always starts the autoscaler monitor
  and the log monitor (only ``ray start``'s hidden ``--no-monitor`` and
  ``--include-log-monitor`` reach them). :func:`lean_local_start` is the shim.
- Two of the raylet's system settings (entries of Ray's C++ ``RayConfig``,
  ``ray_config_def.h``, with no Python definition; passed as
  ``ray.init(_system_config=...)``, which only a new local head takes):
  ``enable_worker_prestart`` (its default workers, one per CPU, start as the
  raylet starts rather than when the first driver connects) and ``preload_python_modules`` (each worker imports these
  before it takes work: ``default_worker.py --worker-preload-modules``, through
  ``ray._private.utils.try_import_each_module``, which catches only
  ``ImportError``: any other error there ends the worker, hence
  ``simulation.preload``). :func:`head_system_config` builds them.
- ``Node.all_processes[PROCESS_TYPE_RAYLET]`` (a ``ProcessInfo`` whose
  ``process`` is the raylet's ``Popen``) and ``Node._node_id``: the lean head
  stops waiting for a raylet that has exited.
- The session folder's name, ``session_<date>_<pid of the process that started
  the head>`` in ``ray._common.utils.get_default_ray_temp_dir()``
  (``Node.__init__``): :func:`sessions_of` finds a process's folder after it
  has gone.

Everything else HealthSync asks of Ray goes through public APIs: ``ray.init``
arguments in Flower's ``backend_config`` (``simulation.launch``) and
``ray.get``/``.remote`` in the Flower backend (``simulation.compat.flower``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

ENVIRONMENT = {"RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
SESSION_LATEST = "session_latest"  # ray_constants.SESSION_LATEST: a link to the newest session


def set_environment() -> None:
    """Set the variables above for Ray processes started from here, unless already set."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def lean_node_class() -> type:
    """Ray's ``Node``, except that a head it starts skips what one local run never uses.

    Skipped: the autoscaler monitor (``monitor.py``: one machine, a fixed
    cluster, nothing to scale), the log monitor (``log_monitor.py``: it
    forwards workers' output to drivers, and ours start with
    ``log_to_driver=False``) and the dashboard's head process
    (``dashboard.py``: with ``include_dashboard=False`` it serves only usage
    statistics, and the installed Ray lacks the full dashboard's packages).
    The raylet still starts its own two agents (dashboard agent, runtime-env
    agent): it exits when either fails. Each head built records its session
    folder in ``sessions`` (class attribute), so the process that started it
    can remove that folder and no other.

    One wait is shortened: after starting its processes, ``Node.__init__``
    asks GCS whether the raylet has registered, and GCS's answer comes from
    ``GlobalStateAccessor::GetNode``, which asks again only after a whole
    second. A raylet here registers about 0.5 s after it starts (once its
    agents are up), so every start waited a second more than it needed
    (1.2 s or 2.2 s, never in between). The lean head asks every 20 ms
    (:func:`wait_until_registered`), so Ray's own question finds it there.
    """
    from ray._private import node

    class LeanNode(node.Node):
        sessions: ClassVar[list[Path]] = []

        def __init__(self, ray_params, head: bool = False, **kwargs) -> None:
            try:
                super().__init__(ray_params, head=head, **kwargs)
            finally:
                # A head this process starts creates its session folder (a node that
                # only connects shares one); recorded even if starting fails half-way.
                session = getattr(self, "_session_dir", None)
                if head and not kwargs.get("connect_only") and session:
                    LeanNode.sessions.append(Path(session))

        def start_ray_processes(self) -> None:
            super().start_ray_processes()
            if self.head:
                from ray._private import ray_constants

                (raylet,) = self.all_processes[ray_constants.PROCESS_TYPE_RAYLET]
                wait_until_registered(self.get_gcs_client(), self._node_id, raylet.process)

        def start_monitor(self) -> None:
            """No autoscaler on a single fixed node."""

        def start_log_monitor(self) -> None:
            """No driver reads workers' output (``log_to_driver=False``)."""

        def start_api_server(self, *, include_dashboard, raise_on_failure) -> None:
            """No dashboard: we start Ray with ``include_dashboard=False``."""

    return LeanNode


REGISTRATION_POLL = 0.02  # seconds between two questions to GCS while a raylet starts
REGISTRATION_LIMIT = 30.0  # then Ray's own wait takes over (and fails as it would)


def wait_until_registered(gcs_client, node_id: str, raylet) -> bool:
    """Whether node ``node_id`` registered alive with GCS within ``REGISTRATION_LIMIT`` seconds.

    Asked every ``REGISTRATION_POLL`` seconds; a Ray error answering (GCS busy
    starting) counts as not yet, any other error (a changed Ray API) is
    raised. Stops at once, ``False``, when ``raylet`` (its ``Popen``) has
    exited. Not registered, Ray's own wait after this one reports the failure
    as it always did.
    """
    from ray._raylet import NodeID
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.core.generated.gcs_service_pb2 import GetAllNodeInfoRequest
    from ray.exceptions import RayError

    selector = GetAllNodeInfoRequest.NodeSelector(node_id=NodeID.from_hex(node_id).binary())
    deadline = time.monotonic() + REGISTRATION_LIMIT
    while time.monotonic() < deadline and raylet.poll() is None:
        with contextlib.suppress(RayError):
            if gcs_client.get_all_node_info(
                timeout=1,
                node_selectors=[selector],
                state_filter=GcsNodeInfo.GcsNodeState.ALIVE,
            ):
                return True
        time.sleep(REGISTRATION_POLL)
    return False


@contextlib.contextmanager
def lean_local_start() -> Iterator[list[Path]]:
    """Start a local Ray inside with only what a run needs; on leaving, stop it and remove its folder.

    Yields the list of session folders started inside (filled as Ray starts).
    On the way out (normally, on an error, or on SIGTERM, which Ray's driver
    turns into ``SystemExit``) Ray is shut down in this process and those
    folders are removed, along with ``session_latest`` if it still points at
    one of them. Joining an existing cluster (``ray.init(address=...)``)
    starts no head: nothing is recorded or removed.
    """
    import ray
    from ray._private import node

    original = node.Node
    lean = lean_node_class()
    node.Node = lean
    try:
        yield lean.sessions
    finally:
        node.Node = original
        ray.shutdown()
        for session in lean.sessions:
            remove_session(session)


def session_dir() -> Path | None:
    """The session folder of the Ray this process is connected to, if any."""
    import ray
    from ray._private import worker

    current = worker._global_node if ray.is_initialized() else None
    return Path(current.get_session_dir_path()) if current is not None else None


def sessions_of(pid: int) -> list[Path]:
    """The session folders left by a local Ray head that process ``pid`` started."""
    from ray._common.utils import get_default_ray_temp_dir

    return sorted(Path(get_default_ray_temp_dir()).glob(f"session_*_{pid}"))


def remove_session(session: Path) -> None:
    """Remove one ``session_*`` folder (Ray stopped), and ``session_latest`` if it points there."""
    if not session.name.startswith("session_") or session.name == SESSION_LATEST:
        raise ValueError(f"not a Ray session folder: {session}")
    shutil.rmtree(session, ignore_errors=True)
    latest = session.parent / SESSION_LATEST
    with contextlib.suppress(OSError):
        if os.readlink(latest) == str(session):
            latest.unlink()


def head_system_config(preload: tuple[str, ...]) -> dict:
    """A local head's system settings: its workers start with it and import ``preload`` first.

    A cold run's client actors spend 1.5 s each importing Ray, PyTorch and
    the client app, on a 2-core machine already busy starting the head and
    importing the run's own modules. Started with the raylet (before the
    driver has connected) and importing as they start, they are ready sooner
    than when the first message imports it all. Ray lets only an
    ``ImportError`` of a preloaded module pass (it is logged, and the module
    fails again, with its traceback, where it is used); any other error ends
    the worker, so ``preload`` should name modules that raise nothing else
    (``simulation.preload``).
    """
    return {"enable_worker_prestart": True, "preload_python_modules": list(preload)}


def init_like_flower(backend_config: dict, *, preload: tuple[str, ...] = ()) -> None:
    """Start (or join) Ray as Flower's ``RayBackend.init_ray`` would, so its backend finds it started.

    Ray's workers inherit the environment of the process that starts Ray, not
    its ``sys.path``: like Flower, put that path in ``PYTHONPATH`` first. A
    cluster joined at an address also gets it as the job's ``runtime_env``
    (as Flower passes it), since its workers were started elsewhere. A local
    head's workers inherit it already, and there a ``runtime_env`` would cost
    each actor 0.5 s: Ray then starts every worker through its runtime-env
    agent instead of handing out the workers it started with the head.
    ``preload``: modules a local head's workers import as they start
    (:func:`head_system_config`); ignored when joining a cluster, whose
    workers were started elsewhere.
    """
    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    init_args = {"include_dashboard": False, **backend_config.get("init_args", {})}
    if init_args.get("address", "local") != "local":
        init_args["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    if init_args.get("address") == "local" and preload:
        init_args["_system_config"] = head_system_config(preload)
    ray.init(**init_args)


#: What ``ray.init`` (Ray 2.55) imports on its way, beyond ``import ray``: usage statistics
#: (with Pydantic's v1 shim), the GPU probe, the uv runtime-env hook, the dashboard package.
INIT_MODULES = (
    "ray._common.pydantic_compat",
    "ray._common.usage.usage_lib",
    "ray._private.thirdparty.pynvml",
    "ray._private.runtime_env.uv_runtime_env_hook",
    "ray.core.generated.usage_pb2",
    "ray.dashboard",
)


def load_init_modules() -> None:
    """Import what ``ray.init`` would import, so it imports nothing while another thread does.

    A module missing from a later Ray is skipped: ``ray.init`` then imports
    whatever it needs itself, as before (the canary in ``tests/test_compat.py``
    says when this list went stale).
    """
    for name in INIT_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
