"""No analytics service outlives its purpose: one-off queries stop what they start; a service
whose federation folder is gone exits."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import pytest

from healthsync import auth
from healthsync.cohort import explore
from healthsync.cohort import service as cohort_service
from tests.app_helpers import make_federation
from tests.cohort_helpers import InProcess


class FakeFlower:
    """Answers in this process, and remembers whether it 'started' and was stopped."""

    instances: ClassVar[list[FakeFlower]] = []

    def __init__(self, *args, **kwargs) -> None:
        self.started, self.stopped = True, False
        FakeFlower.instances.append(self)

    def release(self, federation, plan, policy, user):
        return InProcess(federation).release(federation, plan, policy, user)

    def stop(self, federation) -> bool:
        self.stopped = True
        return True


@pytest.fixture
def world(tmp_path, monkeypatch):
    make_federation(tmp_path / "fed", hospitals=3, patients=60)
    users = auth.UserStore(tmp_path / "home", rounds=4)
    users.ensure()
    users.add("alice", "analyst", "a-long-password")
    monkeypatch.setattr("healthsync.cohort.explorer.FlowerExecutor", FakeFlower)
    FakeFlower.instances.clear()
    return tmp_path


@pytest.mark.parametrize(("keep_warm", "stopped"), [(False, True), (True, False)])
def test_a_one_off_query_stops_the_service_it_started_unless_kept_warm(world, keep_warm, stopped):
    explore(
        world / "fed",
        db=world / "m.duckdb",
        user="alice",
        home=world / "home",
        keep_warm=keep_warm,
    )
    (executor,) = FakeFlower.instances
    assert executor.stopped is stopped


def test_a_service_whose_federation_folder_is_deleted_exits(tmp_path, monkeypatch):
    monkeypatch.setattr(cohort_service, "DATA_CHECK_SECONDS", 0.05)
    data = tmp_path / "fed"
    data.mkdir()
    state = tmp_path / "svc" / "state.json"
    done = threading.Event()

    def run() -> None:
        cohort_service.serve(
            lambda request: {"ok": True},
            state,
            {"data_dir": str(data), "federation": "f"},
            idle_timeout=600,
        )
        done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.exists() and not done.is_set()  # serving, well before its idle timeout
    data.rmdir()
    assert done.wait(5), "the service kept running after its federation folder was deleted"
    assert not state.exists()
