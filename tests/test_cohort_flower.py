"""End to end through the real Flower analytics service: the CLI and the page, cold then warm."""

import json
import os
import time
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from healthsync import auth
from healthsync.cli import main
from healthsync.cohort import audit_log, stop_service
from healthsync.cohort.service import ServiceState, state_dir_for
from healthsync.data import HospitalAccessor
from healthsync.data.synthetic import generate_federation
from tests.app_helpers import ROOT, log_in
from tests.engine_helpers import assert_ray_session_removed
from tests.test_cohort_guards import assert_no_small_counts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    data_root = root / "data"
    federation = generate_federation(data_root / "demo", hospitals=4, patients=150, seed=2)
    home = root / "home"
    users = auth.UserStore(home, rounds=4)
    users.ensure()
    users.add("alice", "analyst", "a-long-password")
    world = SimpleNamespace(
        federation=federation, data_root=data_root, db=data_root / "healthsync.duckdb", home=home
    )
    yield world
    stop_service(federation.data_dir, db=world.db)


@pytest.fixture
def no_rows_here(monkeypatch):
    """Fail the test if this process (the app's or the CLI's) reads any hospital's rows."""

    def refuse(self):
        raise AssertionError(f"the app process read hospital {self.hospital.id}'s rows")

    monkeypatch.setattr(HospitalAccessor, "rows", refuse)


def cohort(world, capsys, *args: str) -> dict:
    argv = ["cohort", "--data", str(world.federation.data_dir), "--db", str(world.db)]
    code = main(
        [*argv, "--user", "alice", "--home", str(world.home), *args, "--json", "--keep-warm"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1]) | {"stderr": out.err}


def test_cli_and_page_answer_through_the_warm_service(served, capsys, monkeypatch, no_rows_here):
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "a-long-password")
    started = time.perf_counter()
    first = cohort(served, capsys, "--group-by", "sex", "--stat", "prevalence:diabetes")
    cold = time.perf_counter() - started
    assert "starting the analytics service" in first["stderr"]
    assert "privacy budget left: 9.5 of 10" in first["stderr"]
    assert first["cached"] is False and [c["sex"] for c in first["cells"]] == ["F", "M"]
    assert_no_small_counts(first)

    state = ServiceState.read(ServiceState.path(state_dir_for(served.db), served.federation))
    assert state is not None and state.pid != os.getpid()  # hospitals answer in another process

    started = time.perf_counter()
    second = cohort(served, capsys, "--where", "age >= 50", "--stat", "mean:bmi", "histogram:age")
    warm = time.perf_counter() - started
    assert "starting" not in second["stderr"] and warm < cold
    assert second["cells"][0]["bmi_mean"] is not None
    assert all(b["bin_count"] >= 11 for b in second["cells"][0]["age_histogram"])

    again = cohort(served, capsys, "--stat", "prevalence:diabetes", "--group-by", "sex")
    assert again["cached"] is True and again["cells"] == first["cells"]
    assert again["privacy_budget"]["spent"] == 1.0

    # The page, in this same process, through the same service.
    monkeypatch.setenv("HEALTHSYNC_DATA_ROOT", str(served.data_root))
    monkeypatch.setenv("HEALTHSYNC_DB", str(served.db))
    monkeypatch.setenv("HEALTHSYNC_HOME", str(served.home))
    at = AppTest.from_file(str(ROOT / "pages" / "cohort.py"), default_timeout=120)
    log_in(at, "alice").run()
    at.multiselect[1].set_value(["smoking"])
    at.multiselect[2].set_value(["count", "prevalence:hypertension"])
    at.button[0].click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert table["smoking"].to_list() == ["never", "former", "current"]
    assert len(at.get("vega_lite_chart")) == 2
    assert at.metric[0].value == "8.5 of 10"

    log = audit_log(served.db)
    assert log["status"].to_list() == ["answered", "cached", "answered", "answered"]
    # Warm-up made every hospital publish Overview's facts through its own gate.
    from healthsync.cohort.facts import published_facts

    facts, missing = published_facts(served.federation)
    assert missing == [] and len(facts.cells) == len(served.federation.hospitals)
    print(f"\ncohort service: cold query {cold:.1f} s, warm query (CLI process) {warm:.2f} s")


def test_the_service_stops_on_request(served):
    path = ServiceState.path(state_dir_for(served.db), served.federation)
    assert path.exists()
    pid = ServiceState.read(path).pid
    assert stop_service(served.federation.data_dir, db=served.db)
    deadline = time.monotonic() + 20
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists()
    assert not stop_service(served.federation.data_dir, db=served.db)
    assert_ray_session_removed(pid)  # its Ray stopped, and its session folder went with it
