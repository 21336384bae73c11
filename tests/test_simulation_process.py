"""The run process itself: its own Ray instance, and a crash of Flower's runtime recorded."""

from healthsync import runlog
from healthsync.config import TrainConfig
from healthsync.store import MetricsStore
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
