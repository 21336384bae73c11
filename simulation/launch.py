"""The only place that starts Flower and Ray: one Flower node per block of hospitals."""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import threading
from collections.abc import Iterator

from healthsync.config import TrainConfig
from healthsync.data import load_federation


def backend_config(ray_address: str | None = None) -> dict:
    """Ray settings: one CPU per client actor so a 2-core machine runs two blocks at once."""
    init_args: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    if ray_address:
        init_args["address"] = ray_address
    else:
        # "local": a Ray instance of our own, even when `ray start` (or RAY_ADDRESS)
        # left another cluster on this machine, which ray.init would otherwise join.
        init_args["address"] = "local"
        init_args["num_cpus"] = os.cpu_count() or 1
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}


#: What a local head's workers import as they start when they are to be client actors: the
#: client app, through a module that keeps an error in its import from ending the worker.
WORKER_PRELOAD = ("simulation.preload",)
LOADER_NICENESS = 10  # how much lower the loader thread's priority is (see _import_quietly)


@contextlib.contextmanager
def ray_running(
    ray_address: str | None = None,
    *,
    importing: tuple[str, ...] = (),
    actors: bool = False,
    early: bool = True,
) -> Iterator[None]:
    """Ray for the simulation(s) inside: a lean local head of our own, or the cluster at ``ray_address``.

    On leaving, Ray is stopped in this process and a local head's session
    folder removed (``simulation.compat.ray.lean_local_start``). Inside one
    already, this does nothing: the outermost owns Ray. ``importing``: modules
    to import on a thread while Ray starts. A cold run's PyTorch, Flower and
    server app (1.5 s on an idle 2-core machine) then load while Ray's head
    starts (2 s, mostly waiting for its processes), instead of before it.
    ``actors``: a local head's client actors (one per CPU) start as soon as
    it is up, for the affinity backend to take, instead of when Flower
    builds its backend; its workers start with the head and import the
    client app (``WORKER_PRELOAD``) while this process still imports.
    ``early=False``: Ray is left to Flower's backend to start, as stock Flower
    does (the stress test's baseline); only the lean head and its clean-up
    remain.
    """
    import ray

    from simulation.compat import ray as ray_compat

    if ray.is_initialized():
        yield
        return
    ray_compat.set_environment()
    with contextlib.ExitStack() as inside:
        inside.enter_context(ray_compat.lean_local_start())
        if not early:
            _import_quietly(importing)
            yield
            return
        # While the thread imports, this one imports nothing: two threads importing the
        # same packages in different orders can deadlock on Python's module locks.
        ray_compat.load_init_modules()
        from simulation.compat import actor

        loading = threading.Thread(
            target=_import_quietly,
            args=(importing,),
            kwargs={"niceness": LOADER_NICENESS},
            daemon=True,
        )
        loading.start()
        try:
            # In this (main) thread: Ray sets its SIGTERM handler only there.
            settings = backend_config(ray_address)
            ray_compat.init_like_flower(settings, preload=WORKER_PRELOAD if actors else ())
            if actors and ray_address is None:
                per_actor = settings["client_resources"]
                count = int(settings["init_args"]["num_cpus"] // per_actor["num_cpus"])
                inside.enter_context(actor.actors_started_early(per_actor, count))
        finally:
            loading.join()
        yield


def _import_quietly(modules: tuple[str, ...], *, niceness: int = 0) -> None:
    """Import ``modules``; one that fails fails again, with its traceback, where it is used.

    ``niceness``: this thread's own scheduling priority is lowered first (Linux
    schedules each thread on its own). On 2 cores the imports compete with
    Ray's head (its raylet registers only once its Python dashboard agent is
    up) and then with the actors' imports, which the first round waits for;
    niced, the imports take what those leave: a cold first round about 0.3 s
    sooner (7 of 8 alternating pairs, 2026-12-02).
    """
    if niceness:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def simulate(
    server_app,
    nodes: int,
    *,
    ray_address: str | None = None,
    client_app=None,
    stock: bool = False,
) -> None:
    """Run ``server_app`` against ``nodes`` simulated nodes of ``client_app``, on Ray, until it ends.

    ``client_app`` defaults to our ClientApp. Node ``p`` is always served by the
    same Ray actor (``simulation.compat.flower.installed``), so each actor reads
    and keeps only its own nodes' hospitals. ``stock`` runs Flower's own Ray
    backend and message polling instead (same Ray resources): the stress test's
    one-client-per-hospital baseline.
    """
    from simulation.compat import flower

    flower.load_simulation()
    if client_app is None:
        from simulation.client_app import app as client_app

    logging.getLogger("flwr").setLevel(logging.WARNING)
    if not stock:
        # A round with 10,000 hospitals makes a million short-lived Flower objects, enough
        # to trigger several full collections (a quarter of a second each, measured).
        # Everything loaded so far (Flower, Ray; PyTorch in the actors only) lives as long
        # as the process:
        # frozen, no collection rescans it; and collecting young objects every 10,000
        # allocations rather than 700 leaves about one full collection per round.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
    # A local Ray runs only GCS, raylet and actors, and its session folder goes when it stops.
    with ray_running(ray_address, actors=not stock, early=not stock):
        flower.run_simulation(
            server_app, client_app, nodes, backend_config(ray_address), affinity=not stock
        )


def layout(config: TrainConfig) -> tuple[TrainConfig, int]:
    """``config`` with its block size fixed, and how many Flower nodes the run needs."""
    hospitals = len(load_federation(config.data_dir).hospitals)
    block = config.block_size_for(hospitals)
    return config.replace(block_size=block), -(-hospitals // block)


def run(
    config: TrainConfig, run_id: str, *, ray_address: str | None = None, stock: bool = False
) -> None:
    """Simulate one training run in this process (its outcome goes to the store).

    ``stock``: on Flower's own Ray backend (see :func:`simulate`).
    """
    from simulation.compat.flower import SIMULATION_MODULES

    modules = ("simulation.server_app", "simulation.client_app", *SIMULATION_MODULES)
    with ray_running(ray_address, importing=modules, actors=not stock, early=not stock):
        from simulation.server_app import make_server_app

        config, nodes = layout(config)
        simulate(make_server_app(config, run_id), nodes, ray_address=ray_address, stock=stock)
