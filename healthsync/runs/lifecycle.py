"""Run lifecycle: check, start (as its own process), watch, cancel.

A run is started as ``python -m simulation run ...`` in a new session, so that
a closed browser tab, a reloaded page or a restarted web server does not stop
it. Its progress and outcome live in the metrics store, which is also how the
app and the CLI watch it and how a cancel request reaches it.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from healthsync.background.processes import read_json, spawn_detached, write_private
from healthsync.config import SECAGG_MAX_HOSPITALS, SECAGG_MIN_HOSPITALS, TrainConfig
from healthsync.data import Federation, load_federation
from healthsync.data.accessor import preflight
from healthsync.errors import HealthSyncError
from healthsync.ml import attacks
from healthsync.runs import engine, runlog
from healthsync.runs.store import MetricsStore
from healthsync.transport import ray_tls

FINISHED = ("completed", "cancelled", "failed")


def _check_secagg_size(sampled: int) -> None:
    if sampled < SECAGG_MIN_HOSPITALS:
        raise HealthSyncError(
            f"secure aggregation needs at least {SECAGG_MIN_HOSPITALS} hospitals sampled per "
            f"round, got {sampled}"
        )
    if sampled > SECAGG_MAX_HOSPITALS:
        raise HealthSyncError(
            f"secure aggregation supports at most {SECAGG_MAX_HOSPITALS} hospitals per round "
            f"(its 32-bit masked sum would overflow), got {sampled}"
        )


def check_config(config: TrainConfig) -> tuple[TrainConfig, Federation]:
    """Check the settings against the data before anything starts; absolute paths out.

    Raises ``HealthSyncError`` for a missing data directory, a target the data
    lacks, or more hospitals required (or adversarial) than the federation has.
    """
    federation = load_federation(config.data_dir)
    target = config.target or federation.default_target
    if target not in federation.outcomes:
        raise HealthSyncError(
            f"target {target!r} is not in {config.data_dir}; choose one of {', '.join(federation.outcomes)}"
        )
    n = len(federation.hospitals)
    if config.min_hospitals > n:
        raise HealthSyncError(
            f"{config.min_hospitals} hospitals required but the data has only {n}"
        )
    if int(n * config.fraction) < 1 and config.fraction < 1:
        raise HealthSyncError(f"fraction {config.fraction} of {n} hospitals samples no hospital")
    unknown = sorted(set(config.fail_hospitals) - {h.id for h in federation.hospitals})
    if unknown:
        raise HealthSyncError(f"unknown hospital id(s) in fail_hospitals: {', '.join(unknown)}")
    attacks.choose_adversaries(federation.hospital_ids, config.adversarial, config.seed)
    sampled = max(int(n * config.fraction), 1)
    if config.strategy == "krum" and sampled - config.krum_f - 2 < 1:
        raise HealthSyncError(
            f"krum f {config.krum_f} is too large for {sampled} hospital(s) per round: Krum "
            f"scores each update by its n - f - 2 nearest neighbours, so f must be at most "
            f"{max(sampled - 3, 0)} (its guarantee needs n > 2f + 2)"
        )
    if config.secagg:
        _check_secagg_size(sampled)
    checked = config.replace(
        data_dir=str(Path(config.data_dir).resolve()),
        db=str(Path(config.db).resolve()),
        target=target,
    )
    return checked, federation


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuse a Ray cluster address nothing answers on, or whose TLS setting is not ours.

    Ray itself would retry forever in both cases (see ``healthsync.transport.ray_tls``).
    """
    if address in {"auto", "local"}:
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise HealthSyncError(f"Ray address {address!r} is not HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise HealthSyncError(
            f"cannot reach the Ray cluster at {address}: {err.strerror or err}"
        ) from None
    if not address.startswith("ray://"):  # Ray Client's port is not the GCS: no TLS probe there
        ray_tls.check_cluster_tls(host, int(port), timeout=timeout)


def start_run(
    config: TrainConfig,
    *,
    ray_address: str | None = None,
    warm: bool = True,
    stock_flower: bool = False,
    only_warm: bool = False,
    kind: str = runlog.TRAINING,
    name: str | None = None,
) -> str:
    """Validate, record the run as queued, start it; return the run id at once.

    A local run goes to the warm training engine when one is running and free
    (``healthsync.runs.engine``), else to a process of its own (a cold start).
    ``warm=False`` always starts its own process; ``stock_flower`` runs it on
    Flower's own Ray backend; ``only_warm`` fails the run rather than start it
    cold (all three for the stress test's measurements). ``kind`` and ``name``
    are recorded with the run (``runlog.create_run``): the stress test's runs
    are ``runlog.BENCHMARK``, kept out of the training views.
    """
    config, federation = check_config(config)
    if ray_address:
        check_ray_address(ray_address)
    preflight(federation)  # a broken hospital stops the start here, named, before any process
    store = MetricsStore(config.db)
    run_id = runlog.new_run_id()
    runlog.create_run(store, run_id, config, kind=kind, name=name)
    pid = engine.submit(config, run_id) if warm and not (ray_address or stock_flower) else None
    if pid is None and only_warm:
        reason = "the warm training engine did not take the run (none running, busy, or too small)"
        runlog.finish_run(store, run_id, "failed", reason=reason)
        raise HealthSyncError(reason)
    if pid is None:
        cmd = [
            sys.executable,
            "-m",
            "simulation",
            "run",
            "--run-id",
            run_id,
            "--config-json",
            config.to_json(),
        ]
        if ray_address:
            cmd += ["--ray-address", ray_address]
        if stock_flower:
            cmd.append("--stock-flower")
        pid = spawn_detached(cmd, Path(config.db).parent / "logs" / f"{run_id}.log").pid
    store.execute("UPDATE runs SET pid = ? WHERE run_id = ?", [pid, run_id])
    return run_id


def cancel_flag(db: str | Path, run_id: str) -> Path:
    """The file whose presence asks run ``run_id`` to stop before its next round.

    A file, not only the store's ``cancel_requested`` column: writing the
    store waits for its single-writer lock, which the run itself holds for
    every round it records, and a run checks a file before every round for
    free. The column is still set, for the record.
    """
    return Path(db).resolve().parent / "cancel" / run_id


def signal_cancel(db: str | Path, run_id: str) -> None:
    """Raise ``run_id``'s cancel flag at once (no lock); the run stops before its next round."""
    flag = cancel_flag(db, run_id)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()


def cancel_signalled(db: str | Path, run_id: str) -> bool:
    """Whether someone asked ``run_id`` to stop (checked by the run before every round)."""
    return cancel_flag(db, run_id).exists()


def clear_cancel(db: str | Path, run_id: str) -> None:
    """Lower ``run_id``'s cancel flag: the run has ended, however it did."""
    cancel_flag(db, run_id).unlink(missing_ok=True)


def phase_file(db: str | Path, run_id: str) -> Path:
    """Where run ``run_id`` says what it is doing before its first round.

    A file beside the store, like the cancel flag: the run reports every few
    hundred milliseconds while it reads thousands of hospitals, and a store
    write each time would queue behind the readers for its lock.
    """
    return Path(db).resolve().parent / "phases" / f"{run_id}.json"


def report_phase(db: str | Path, run_id: str, text: str) -> None:
    """Say what run ``run_id`` is doing now (read by the Live page until its first round)."""
    write_private(phase_file(db, run_id), {"phase": text})


def run_phase(db: str | Path, run_id: str) -> str | None:
    """What run ``run_id`` last said it was doing; ``None`` if it said nothing or has ended."""
    state = read_json(phase_file(db, run_id))
    return str(state["phase"]) if state and "phase" in state else None


def clear_phase(db: str | Path, run_id: str) -> None:
    phase_file(db, run_id).unlink(missing_ok=True)


def cancel_run(db: str | Path, run_id: str) -> bool:
    """Ask a run to stop before its next round (finished rounds are kept); False if not active.

    The flag file comes first, so the run sees the request even while this
    waits for the store's lock to record it.
    """
    signal_cancel(db, run_id)
    if runlog.request_cancel(MetricsStore(db), run_id):
        return True
    clear_cancel(db, run_id)  # not active: nobody would ever lower it
    return False


def run_status(db: str | Path, run_id: str) -> dict[str, Any]:
    """The run's row, after marking it failed if its process has died."""
    store = MetricsStore(db)
    runlog.reconcile_dead_runs(store)
    return runlog.get_run(store, run_id)


def wait_for_run(
    db: str | Path,
    run_id: str,
    *,
    on_round: Callable[[int], None] | None = None,
    poll_seconds: float = 0.2,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Block until the run ends; ``on_round(rounds_done)`` is called as rounds finish."""
    store = MetricsStore(db)
    seen = 0
    started = time.monotonic()
    while True:
        done = int(store.scalar("SELECT count(*) FROM rounds WHERE run_id = ?", [run_id]) or 0)
        if done != seen and on_round:
            on_round(done)
        seen = done
        run = run_status(db, run_id)
        if run["status"] in FINISHED:
            if on_round:
                on_round(
                    int(store.scalar("SELECT count(*) FROM rounds WHERE run_id = ?", [run_id]) or 0)
                )
            return run
        if timeout is not None and time.monotonic() - started > timeout:
            raise HealthSyncError(f"run {run_id} did not finish within {timeout:.0f} s")
        time.sleep(poll_seconds)
