"""Block execution and Ray clusters, end to end through Flower."""

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from healthsync.runs import runlog
from healthsync.runs.predict import load_saved_model
from healthsync.runs.store import MetricsStore
from tests.engine_helpers import cli_json, make_federation, stop_processes_naming

pytestmark = [pytest.mark.slow, pytest.mark.extended]
RAY = Path(sys.executable).with_name("ray")


def test_block_64_equals_one_client_per_hospital(tmp_path, capsys):
    fed = make_federation(tmp_path, "fed", hospitals=70, patients=40, seed=5, heterogeneity=1.0)
    db = str(tmp_path / "m.duckdb")
    runs = {}
    for block in ("1", "64"):
        code, summary = cli_json(
            capsys,
            "train",
            "--data",
            str(fed),
            "--db",
            db,
            "--rounds",
            "1",
            "--model",
            "mlp",
            "--block-size",
            block,
            "--json",
        )
        assert code == 0 and summary["status"] == "completed", summary
        runs[block] = summary["run_id"]
    one, block = (load_saved_model(db, runs[b]).arrays for b in ("1", "64"))
    for a, b in zip(one, block, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    store = MetricsStore(db)
    per_hospital = [runlog.hospital_rounds_frame(store, runs[b]) for b in ("1", "64")]
    assert per_hospital[0].height == per_hospital[1].height == 70
    assert per_hospital[0]["n"].equals(per_hospital[1]["n"])
    # Hospitals of 40 patients are too small for their own figures to be shown
    # (privacy.training); the federation's figures are their test-size weighted means.
    rounds = [runlog.rounds_frame(store, runs[b]) for b in ("1", "64")]
    for metric in ("loss", "auc", "accuracy", "brier"):
        np.testing.assert_allclose(rounds[0][metric], rounds[1][metric], atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_on_a_two_node_ray_cluster(tmp_path, capsys):
    fed = make_federation(tmp_path, "fed", hospitals=4, patients=80)
    port = _free_port()
    address = f"127.0.0.1:{port}"  # Ray itself advertises the machine's own address
    env_args = ["--disable-usage-stats", "--num-cpus", "1"]
    temp_dir = tempfile.mkdtemp(prefix="hsray", dir="/tmp")  # short: Ray's socket paths
    try:
        subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                "--temp-dir",
                temp_dir,
                *env_args,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [str(RAY), "start", "--address", address, *env_args],
            check=True,
            capture_output=True,
            timeout=120,
        )
        nodes, status = 0, None
        for _ in range(60):  # the worker takes a moment to register with the head
            status = subprocess.run(
                [str(RAY), "status", "--address", address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            nodes = status.stdout.split("Pending:")[0].count(" node_")
            if nodes == 2:
                break
            time.sleep(1)
        assert nodes == 2, status.stdout
        code, summary = cli_json(
            capsys,
            "train",
            "--data",
            str(fed),
            "--db",
            str(tmp_path / "m.duckdb"),
            "--rounds",
            "2",
            "--ray-address",
            address,
            "--json",
        )
        assert code == 0 and summary["status"] == "completed", summary
        assert summary["rounds_done"] == 2
    finally:
        _stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_cluster(temp_dir: str, port: int) -> None:
    """Stop this test's Ray cluster and nothing else.

    ``ray stop`` stops every Ray process on the machine, a developer's running
    warm engine included. Here: the processes that name the cluster's temp dir
    or its port, and everything they started (Ray's agents rename themselves).
    """
    left = stop_processes_naming(temp_dir.encode(), f":{port}\0".encode())
    if not left:
        return
    warnings.warn(
        f"processes of the test's Ray cluster outlived SIGKILL: {sorted(left)}", stacklevel=2
    )
