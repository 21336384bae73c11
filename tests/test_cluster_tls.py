"""A run on a two-node Ray cluster in TLS mode, and clients without its certificates refused.

The certificates come from ``healthsync cluster certs``; the cluster is started
as docs/cluster.md says (``ray start`` with the ``RAY_TLS_*`` variables). Only
this test's processes are stopped afterwards (never ``ray stop``, which stops
every Ray process on the machine).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from healthsync.cli import main
from healthsync.transport.ray_tls import H2_PREFACE
from tests.engine_helpers import cli_json, make_federation
from tests.test_scale_e2e import RAY, _free_port, _stop_cluster

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def _first_frame(port: int, ca: str, cert: tuple[str, str] | None) -> bytes:
    """What the cluster's GCS sends a TLS client after HTTP/2's preface (b"": it hung up)."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    if cert:
        context.load_cert_chain(*cert)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(H2_PREFACE)
        return tls.recv(9)


def _ray_start(args: list[str], env: dict[str, str], marks: tuple[str, int]) -> None:
    """``ray start``, tried twice: Ray gives a node a fixed 30 s to register, which a
    machine busy with other tests can miss; what a failed try left is stopped first."""
    for attempt in (1, 2):
        done = subprocess.run(
            [str(RAY), "start", *args], env=env, capture_output=True, text=True, timeout=240
        )
        if done.returncode == 0:
            return
        if attempt == 1 and "--head" in args:
            _stop_cluster(*marks)
    raise AssertionError(f"ray start {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def test_a_run_completes_on_a_tls_cluster_and_clients_without_its_certificates_are_refused(
    tmp_path, capsys, monkeypatch
):
    fed = make_federation(tmp_path, "fed", hospitals=3, patients=60)
    code, env = cli_json(capsys, "cluster", "certs", str(tmp_path / "certs"), "--json")
    assert code == 0
    tls_env = {name: value for name, value in env.items() if name.startswith("RAY_")}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="hstls", dir="/tmp")  # short: Ray's socket paths
    ray_env = {**os.environ, **tls_env}
    common = ["--disable-usage-stats", "--num-cpus", "1"]
    try:
        head = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
        head += ["--include-dashboard", "false", "--temp-dir", temp_dir, *common]
        _ray_start(head, ray_env, marks=(temp_dir, port))
        _ray_start(["--address", address, *common], ray_env, marks=(temp_dir, port))
        nodes, status = 0, None
        for _ in range(60):  # the worker takes a moment to register with the head
            status = subprocess.run(
                [str(RAY), "status", "--address", address],
                env=ray_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            nodes = status.stdout.split("Pending:")[0].count(" node_")
            if nodes == 2:
                break
            time.sleep(1)
        assert nodes == 2, status.stdout + status.stderr

        # The cluster itself hangs up on a TLS client without its certificate (mutual TLS).
        ca = tls_env["RAY_TLS_CA_CERT"]
        mine = (tls_env["RAY_TLS_SERVER_CERT"], tls_env["RAY_TLS_SERVER_KEY"])
        assert _first_frame(port, ca, None) == b""
        assert _first_frame(port, ca, mine)[3:4] == b"\x04"  # an HTTP/2 SETTINGS frame

        db = str(tmp_path / "m.duckdb")
        train = ["train", "--data", str(fed), "--db", db, "--rounds", "1"]
        for name in tls_env:
            monkeypatch.delenv(name, raising=False)
        assert main([*train, "--ray-address", address, "--json"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: the Ray cluster at {address} uses TLS") and "\n" not in err

        for name, value in tls_env.items():  # inherited by the run's own process
            monkeypatch.setenv(name, value)
        code, summary = cli_json(capsys, *train, "--ray-address", address, "--json")
        assert code == 0 and summary["status"] == "completed", summary
        assert summary["rounds_done"] == 1
    finally:
        _stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)
