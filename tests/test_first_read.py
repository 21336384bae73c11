"""A node's first read of a new data set: its hospitals read on a few threads, each on its own rows.

Issue 14: a 2,000-hospital run on the warm engine waited seconds while every
hospital read its data for the first time, one after another.
(tests/benchmarks/bench_first_read.py measures it.)
"""

import threading

from healthsync.config import TrainConfig
from healthsync.data.accessor import partition_path
from healthsync.ml import training
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from simulation import client_app
from tests.engine_helpers import make_federation
from tests.inprocess_grid import run_in_process


def test_a_block_reads_each_hospital_once_on_reader_threads_and_a_bad_one_fails_alone(
    tmp_path, monkeypatch
):
    reads: list[tuple[str, str]] = []
    real = training.hospital_arrays

    def recording(federation, hospital_id, target):
        reads.append((hospital_id, threading.current_thread().name))
        return real(federation, hospital_id, target)

    monkeypatch.setattr(client_app, "hospital_arrays", recording)
    fed = make_federation(tmp_path, "fed", hospitals=10, patients=40)
    partition_path(fed, "h0003").write_bytes(b"not parquet")
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=2, block_size=10)
    detail, _ = run_in_process(config)
    assert detail["status"] == "completed"

    good = sorted(h for h, _ in reads if h != "h0003")
    assert good == [f"h{i:04d}" for i in range(10) if i != 3]  # read once, kept for round 2
    assert all(name.startswith("hospital-read") for _, name in reads[:10]), reads
    store = MetricsStore(config.db)
    events = runlog.events_frame(store, detail["run_id"])
    failed = events.filter(events["kind"] == "hospital_failed")["message"].to_list()
    assert failed and all("h0003" in m and "unreadable" in m for m in failed), failed
    trained = runlog.hospital_rounds_frame(store, detail["run_id"])
    assert trained["hospital"].n_unique() == 9  # the nine others trained and were evaluated
