"""OpenTelemetry spans of a run (issue 20): run, rounds, phases, blocks, cohort queries.

The round loop runs in this process on the in-process grid; spans go to the
SDK's in-memory exporter through ``telemetry.use_provider``.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from healthsync import telemetry
from healthsync.config import TrainConfig
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from tests.engine_helpers import make_federation
from tests.inprocess_grid import run_in_process


@pytest.fixture
def spans():
    """Spans finished while the test runs, in the order they ended."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_provider(provider)
    yield exporter
    telemetry.use_provider(None)


def _by_name(finished, name: str) -> list:
    return [s for s in finished if s.name == name]


def test_a_run_traces_its_rounds_their_phases_and_each_blocks_training(tmp_path, spans):
    fed = make_federation(tmp_path, "fed", hospitals=4, patients=60)
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=2, block_size=2)
    detail, _ = run_in_process(config)
    assert detail["status"] == "completed"
    finished = spans.get_finished_spans()

    [run] = _by_name(finished, "run")
    assert run.attributes["healthsync.run_id"] == detail["run_id"]
    assert run.attributes["healthsync.hospitals"] == 4
    assert run.attributes["healthsync.block_size"] == 2
    assert run.attributes["healthsync.strategy"] == "fedavg"
    assert run.attributes["healthsync.rounds_done"] == 2
    assert run.parent is None

    rounds = _by_name(finished, "round")
    assert [r.attributes["healthsync.round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r.parent.span_id == run.context.span_id
        assert r.attributes["healthsync.run_id"] == detail["run_id"]
        assert r.attributes["healthsync.hospitals_ok"] == 4
        assert r.attributes["healthsync.strategy"] == "fedavg"
        children = [s for s in finished if s.parent and s.parent.span_id == r.context.span_id]
        assert [c.name for c in children] == list(telemetry.PHASES)
        assert all(r.start_time <= c.start_time and c.end_time <= r.end_time for c in children)
        [train] = [c for c in children if c.name == "train"]
        blocks = [s for s in finished if s.parent and s.parent.span_id == train.context.span_id]
        assert sorted(b.attributes["healthsync.block"] for b in blocks) == [0, 1]
        assert {b.name for b in blocks} == {"train block"}
        assert all(b.attributes["healthsync.hospitals"] == 2 for b in blocks)
        assert all(train.start_time <= b.start_time <= b.end_time for b in blocks)


def test_the_store_keeps_each_rounds_phase_seconds(tmp_path):
    fed = make_federation(tmp_path, "fed", hospitals=3, patients=60)
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=2)
    detail, _ = run_in_process(config)  # tracing off: the API's no-op spans
    phases = runlog.phases_frame(MetricsStore(config.db), detail["run_id"])
    assert phases.filter(phases["round"] == 1)["phase"].to_list() == list(telemetry.PHASES)
    assert sorted(set(phases["round"])) == [1, 2]
    assert (phases["seconds"] > 0).all()
    round_seconds = {r["round"]: r["seconds"] for r in detail["rounds"]}
    for rnd, seconds in round_seconds.items():
        timed = phases.filter((phases["round"] == rnd) & (phases["phase"] != "record"))
        assert timed["seconds"].sum() <= seconds  # within the round's own timing


def test_a_failed_run_ends_its_spans_with_an_error(tmp_path, spans, monkeypatch):
    from simulation import server_app

    fed = make_federation(tmp_path, "fed", hospitals=2, patients=60)
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=2)

    def broken(self, rnd, arrays, settings):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(server_app.FederatedRun, "evaluate", broken)
    detail, _ = run_in_process(config)
    assert detail["status"] == "failed"
    finished = spans.get_finished_spans()
    [run], [rnd] = _by_name(finished, "run"), _by_name(finished, "round")
    [evaluate] = _by_name(finished, "evaluate")
    for span in (run, rnd, evaluate):
        assert span.status.status_code.name == "ERROR"
    assert evaluate.parent.span_id == rnd.context.span_id


def test_without_an_endpoint_nothing_is_set_up(monkeypatch):
    for name in telemetry.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert telemetry.setup() is False
    assert not telemetry.tracer().start_span("x").get_span_context().is_valid  # a no-op span
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    assert telemetry.endpoint() == "http://127.0.0.1:9/v1/traces"


def test_a_cohort_query_is_a_span(tmp_path, spans, monkeypatch):
    from healthsync.cohort import explorer

    seen = {}

    def fake(*args):
        seen["args"] = args
        return type("Result", (), {"cached": False})()

    monkeypatch.setattr(explorer, "_explore", fake)
    explorer.explore(tmp_path, db=":memory:", user="ana", where=["age >= 70"], group_by=["sex"])
    [query] = _by_name(spans.get_finished_spans(), "cohort query")
    assert query.attributes["healthsync.query"] == "count where age >= 70 by sex"
    assert query.attributes["healthsync.cached"] is False
    assert seen["args"][2] == "ana"


def test_a_cancelled_run_ends_its_spans_without_an_error(tmp_path, spans, monkeypatch):
    from healthsync.runs import lifecycle

    fed = make_federation(tmp_path, "fed", hospitals=2, patients=60)
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=3)
    asked: list[int] = []

    def cancel_before_round_2(db, run_id):
        asked.append(1)
        return len(asked) >= 2

    monkeypatch.setattr(lifecycle, "cancel_signalled", cancel_before_round_2)
    detail, _ = run_in_process(config)
    assert detail["status"] == "cancelled"
    finished = spans.get_finished_spans()
    [run], rounds = _by_name(finished, "run"), _by_name(finished, "round")
    assert [r.attributes["healthsync.round"] for r in rounds] == [1]
    assert run.attributes["healthsync.stop_reason"] == "cancelled"
    assert {s.status.status_code.name for s in (run, *rounds)} == {"UNSET"}
