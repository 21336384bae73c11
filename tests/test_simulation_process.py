"""The run process itself: its own Ray instance, and a crash of Flower's runtime recorded."""

import contextlib
import os

import pytest

from healthsync.config import TrainConfig
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from simulation import __main__ as process
from simulation import launch


def test_local_runs_start_their_own_ray_instance():
    # Without "local", ray.init joins a cluster left by `ray start` (or RAY_ADDRESS)
    # and then refuses our num_cpus: every local run would crash.
    init = launch.backend_config()["init_args"]
    assert init["address"] == "local" and init["num_cpus"] >= 1
    assert launch.backend_config("10.0.0.5:6379")["init_args"]["address"] == "10.0.0.5:6379"


def test_a_crash_of_flowers_runtime_fails_the_run_with_its_root_cause(
    data_federation, tmp_path, monkeypatch
):
    config = TrainConfig(data_dir=str(data_federation.data_dir), db=str(tmp_path / "m.duckdb"))
    store = MetricsStore(config.db)
    runlog.create_run(store, "run-x", config)

    def crash(*args, **kwargs):
        try:
            raise ValueError(
                "When connecting to an existing cluster, num_cpus must not be provided."
            )
        except ValueError as err:
            raise RuntimeError("An error was encountered. Ending simulation.") from err

    monkeypatch.setattr(launch, "run", crash)
    assert process.run_recorded(config, "run-x", None) == 1
    run = runlog.get_run(store, "run-x")
    assert run["status"] == "failed"
    assert run["reason"] == (
        "the Flower simulation crashed: ValueError: When connecting to an existing cluster, "
        "num_cpus must not be provided."
    )


def test_a_run_that_ended_itself_is_left_as_it_is(data_federation, tmp_path, monkeypatch):
    config = TrainConfig(data_dir=str(data_federation.data_dir), db=str(tmp_path / "m.duckdb"))
    store = MetricsStore(config.db)
    runlog.create_run(store, "run-y", config)

    def finish_then_crash(*args, **kwargs):
        runlog.finish_run(store, "run-y", "completed")
        raise RuntimeError("Flower shut down untidily")

    monkeypatch.setattr(launch, "run", finish_then_crash)
    assert process.run_recorded(config, "run-y", None) == 1
    assert runlog.get_run(store, "run-y")["status"] == "completed"


def test_stock_flower_baseline_runs_on_flowers_own_backend(monkeypatch):
    """The stress test's baseline (a) must be stock Flower, not HealthSync's scheduling:
    Flower's own backend, which starts Ray itself as it always does (no early start, no
    early actors); ours starts Ray before Flower's backend would. No Ray starts here."""
    import gc

    from flwr.server.superlink.fleet.vce.backend import raybackend

    from simulation.compat import actor as early
    from simulation.compat import flower
    from simulation.compat import ray as ray_compat

    backends, started = [], []
    monkeypatch.setattr(
        "flwr.simulation.run_simulation", lambda **kwargs: backends.append(raybackend.RayBackend)
    )
    monkeypatch.setattr(ray_compat, "lean_local_start", contextlib.nullcontext)
    monkeypatch.setattr(
        ray_compat, "init_like_flower", lambda settings, preload=(): started.append(preload)
    )
    monkeypatch.setattr(early, "actors_started_early", lambda *a: contextlib.nullcontext())
    threshold = gc.get_threshold()
    try:
        launch.simulate(object(), 1, stock=True)
        assert started == []  # Flower's RayBackend.init_ray starts it, as in stock Flower
        launch.simulate(object(), 1)
        assert started == [launch.WORKER_PRELOAD]  # its workers load the client app early
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert backends[0] is not flower.affinity_backend()
    assert backends[1] is flower.affinity_backend()
    assert raybackend.RayBackend is backends[0]  # restored afterwards


def test_the_stress_test_baseline_asks_for_a_cold_stock_run(monkeypatch, data_federation, tmp_path):
    from healthsync.bench import sweep

    asked = []

    def start_run(config, **kwargs):
        asked.append((config.block_size, kwargs))
        raise RuntimeError("stop here")

    monkeypatch.setattr("healthsync.runs.lifecycle.start_run", start_run)
    for block in (1, 0):
        with contextlib.suppress(RuntimeError):
            sweep.measure_flower(
                data_federation.data_dir, str(tmp_path / "m.duckdb"), "logreg", 2, 0, block, 60
            )
    settings = [(block, {k: v for k, v in kw.items() if k != "name"}) for block, kw in asked]
    assert settings == [
        (1, {"warm": False, "stock_flower": True, "kind": "benchmark"}),
        (0, {"warm": False, "stock_flower": False, "kind": "benchmark"}),
    ]
    assert all(kw["name"].startswith("stress test") for _, kw in asked)


def test_actors_started_early_are_forgotten_when_their_ray_stops(monkeypatch):
    """A simulation that fails before Flower builds its backend leaves its early actors
    untaken; the next simulation (on another Ray) must not take their stale handles."""
    from simulation.compat import actor as early
    from simulation.compat import ray as ray_compat

    class FakeActor:
        def options(self, **resources):
            return self

        def remote(self):
            return object()

    monkeypatch.setattr(ray_compat, "lean_local_start", contextlib.nullcontext)
    monkeypatch.setattr(ray_compat, "init_like_flower", lambda settings, preload=(): None)
    monkeypatch.setattr(early, "remote_actor", lambda: FakeActor())
    seen = []
    with pytest.raises(RuntimeError, match="no ServerApp"), launch.ray_running(actors=True):
        seen.append(len(early._started_early))
        raise RuntimeError("no ServerApp")
    assert seen == [os.cpu_count() or 1]  # one per CPU of the local head
    assert early._started_early == []
    with launch.ray_running(actors=False):
        assert early._started_early == []  # the stress test's stock baseline starts none


def test_the_loader_thread_lowers_only_its_own_priority():
    """A cold run's imports run niced, on their own thread; the rest of the process does not."""
    import threading

    seen = {}

    def load():
        launch._import_quietly(("json",), niceness=launch.LOADER_NICENESS)
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    assert seen["thread"] == min(before + launch.LOADER_NICENESS, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
