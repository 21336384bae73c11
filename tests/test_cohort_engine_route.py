"""Where the cohort executor sends a query: the warm training engine first, else the service.

The engine itself answering is tested end to end in ``tests/test_engine_warm.py``;
here the engine's end is a stand-in, so the routing decisions run in milliseconds.
"""

import pytest

from healthsync.cohort.service import FlowerExecutor
from healthsync.data.synthetic import generate_federation
from healthsync.runs import engine


@pytest.fixture
def federation(tmp_path):
    return generate_federation(tmp_path / "fed", hospitals=2, patients=40, seed=0)


def test_a_query_waits_for_a_starting_engine_instead_of_starting_a_service(
    tmp_path, federation, monkeypatch
):
    """The app starts the engine with the server; a query asked meanwhile must not start a
    second Flower simulation on Ray beside it (both would share the same two cores)."""
    db = tmp_path / "m.duckdb"
    ready = []
    monkeypatch.setattr(engine, "starting", lambda where: where == db and not ready)
    monkeypatch.setattr(engine, "wait_ready", lambda where, **_: ready.append(where))
    asked = []

    def answering_engine(where, message, **_):
        asked.append(message)
        return {"ok": True, "answered": "by the engine"} if ready else None

    monkeypatch.setattr(engine, "request", answering_engine)
    executor = FlowerExecutor(tmp_path / "services", engine_db=db)
    monkeypatch.setattr(executor, "_exchange", lambda *_: pytest.fail("a service was asked"))
    reply = executor.request(federation, {"op": "query", "user": "alice"})
    assert reply == {"ok": True, "answered": "by the engine"} and ready == [db]
    assert asked[0]["op"] == "cohort" and asked[0]["user"] == "alice"
    assert asked[0]["data-dir"] == str(federation.data_dir.resolve())


def test_without_an_engine_the_service_answers(tmp_path, federation, monkeypatch):
    monkeypatch.setattr(engine, "starting", lambda where: False)
    monkeypatch.setattr(engine, "request", lambda *_, **__: None)  # none running
    executor = FlowerExecutor(tmp_path / "services", engine_db=tmp_path / "m.duckdb")
    monkeypatch.setattr(executor, "_exchange", lambda *_: {"ok": True, "by": "service"})
    assert executor.request(federation, {"op": "query"}) == {"ok": True, "by": "service"}
