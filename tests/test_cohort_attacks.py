"""An adversarial analyst against the one entry point: differencing, repetition, budget, bad input.

Queries run through :func:`healthsync.cohort.explore` with every guard, but
hospitals' aggregates are computed in this process (``InProcess``) instead of
through the Flower service, to keep these tests fast; ``test_cohort_flower.py``
covers the real path.
"""

import json
import math
from types import SimpleNamespace

import duckdb
import numpy as np
import polars as pl
import pytest

from healthsync import auth
from healthsync.cohort import audit_log, budget_status, explore
from healthsync.cohort.guards import release
from healthsync.cohort.local import hospital_aggregates
from healthsync.cohort.plan import plan_query
from healthsync.cohort.policy import POLICY_NAME, CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.data import Federation, open_hospital
from healthsync.data.synthetic import generate_federation
from healthsync.errors import HealthSyncError
from healthsync.store import MetricsStore
from tests.test_cohort_guards import assert_no_small_counts, count_values


class InProcess:
    """Test-only executor: each hospital's aggregates computed here, then the same guards."""

    def __init__(self, federation: Federation, seed: int | None = None) -> None:
        self.rows = {h: open_hospital(federation, h).rows() for h in federation.hospital_ids}
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def release(self, federation, plan, policy):
        self.calls += 1
        aggregates = {h: hospital_aggregates(r, plan, h) for h, r in self.rows.items()}
        return release(aggregates, plan, policy, self.rng)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    out = tmp_path_factory.mktemp("cohort") / "fed"
    return generate_federation(out, hospitals=3, patients=400, seed=5, heterogeneity=0.3)


@pytest.fixture(scope="module")
def everyone(federation) -> pl.DataFrame:
    """All patients, read by the test itself to aim its attacks (the app never does this)."""
    frames = [open_hospital(federation, h).rows() for h in federation.hospital_ids]
    return pl.concat(frames)


@pytest.fixture
def world(tmp_path, federation):
    home = tmp_path / "home"
    users = auth.UserStore(home, rounds=4)
    users.ensure()
    for name, role in (("alice", "analyst"), ("bob", "analyst"), ("vic", "viewer")):
        users.add(name, role, "a-long-password")
    # In memory: a DuckDB file costs ~40 ms a query (a test that inspects the file sets one).
    world = SimpleNamespace(
        federation=federation, home=home, db=MetricsStore(":memory:"), users=users
    )
    world.executor = InProcess(federation)

    def ask(user="alice", where=(), group_by=(), stats=(), executor=None):
        return explore(
            federation.data_dir,
            db=world.db,
            user=user,
            where=where,
            group_by=group_by,
            stats=stats,
            home=home,
            executor=executor or world.executor,
        )

    def spent(user="alice"):
        return budget_status(federation.data_dir, db=world.db, user=user, home=home).spent

    world.ask, world.spent = ask, spent
    return world


def set_policy(world, **settings) -> None:
    text = "".join(f"{key}: {value}\n" for key, value in settings.items())
    (world.home / POLICY_NAME).write_text(text)


# ---------------------------------------------------------------- differencing
def unique_bmi_patient(everyone: pl.DataFrame) -> dict:
    """A patient whose BMI nobody else has: ``bmi <= v`` and ``bmi < v`` differ by them alone."""
    unique = everyone.group_by("bmi").len().filter(pl.col("len") == 1)["bmi"].sort()
    value = unique.filter(unique > everyone["bmi"].median())[0]  # most patients are below
    return everyone.filter(pl.col("bmi") == value).row(0, named=True)


def test_differencing_two_cohorts_one_patient_apart_does_not_reveal_the_outcome(
    federation, everyone
):
    """The best guess of the left-out patient's outcome is barely better than a coin flip.

    Neighbouring worlds: the target has diabetes, or not. The attacker asks
    ``prevalence:diabetes`` for ``bmi <= v`` (with the target) and ``bmi < v``
    (without) and guesses from the difference of the case counts. Only the
    first answer differs between the worlds, through one case count with
    epsilon 0.5 / 2, so no attacker can be right more often than
    e^0.25 / (1 + e^0.25) = 56 % of the time.
    """
    target = unique_bmi_patient(everyone)
    v = target["bmi"]
    policy = CohortPolicy()
    queries = [
        plan_query(
            federation,
            CohortQuery.parse([f"bmi {op} {v}"], [], ["prevalence:diabetes"]),
            max_cells=500,
        )
        for op in ("<=", "<")
    ]
    rows = {h: open_hospital(federation, h).rows() for h in federation.hospital_ids}
    exact = [{h: hospital_aggregates(r, q, h) for h, r in rows.items()} for q in queries]
    home = next(h for h, r in rows.items() if (r["bmi"] == v).any())
    rng = np.random.default_rng(11)
    right = []
    for trial in range(2000):
        outcome = trial % 2  # the world: the target's diabetes, flipped from the real one
        with_target = {h: dict(a) for h, a in exact[0].items()}
        cases = with_target[home]["cases:diabetes"].copy()
        cases[0] += outcome - target["diabetes"]
        with_target[home]["cases:diabetes"] = cases
        first = release(with_target, queries[0], policy, rng).cells[0]
        second = release(exact[1], queries[1], policy, rng).cells[0]
        a, b = first["diabetes_case_count"], second["diabetes_case_count"]
        guess = int(a - b >= 1) if isinstance(a, int) and isinstance(b, int) else 0
        right.append(guess == outcome)
    bound = math.exp(0.25) / (1 + math.exp(0.25))
    assert np.mean(right) < bound + 0.04


def test_differencing_through_the_entry_point_meets_noise_and_small_cells(world, everyone):
    target = unique_bmi_patient(everyone)
    v = target["bmi"]
    world.executor = InProcess(world.federation, seed=1)  # deterministic noise for this test
    analysts = ["alice", "bob", *(f"analyst{i}" for i in range(4))]
    for name in analysts[2:]:
        world.users.add(name, "analyst", "a-long-password")
    differences = []
    for user in analysts:
        with_target = world.ask(user, [f"bmi <= {v}"], stats=["prevalence:diabetes"])
        without = world.ask(user, [f"bmi < {v}"], stats=["prevalence:diabetes"])
        a = with_target.release.cells[0]["diabetes_case_count"]
        b = without.release.cells[0]["diabetes_case_count"]
        assert isinstance(a, int) and isinstance(b, int)
        differences.append(a - b)
    # Fresh noise for each analyst: the differences scatter instead of naming the outcome.
    assert len(set(differences)) > 2 and differences.count(target["diabetes"]) < len(analysts) / 2
    alone = world.ask("alice", [f"bmi == {v}"], stats=["prevalence:diabetes"]).release.cells[0]
    assert alone["patient_count"] == "<11" and alone["diabetes_prevalence"] is None


# ---------------------------------------------------------------- repetition
def test_asking_one_query_100_times_gives_one_answer_and_spends_once(world):
    spellings = [
        (["sex == F", "age >= 50"], ["smoking"]),
        (["age>=50", "sex == 'f'"], ["smoking"]),
        (["age >= 50.0", "sex == F", "sex == F"], ["smoking", "smoking"]),
    ]
    answers = set()
    for i in range(100):
        where, group_by = spellings[i % 3]
        result = world.ask("alice", where, group_by, ["count", "mean:bmi"])
        answers.add(str(result.to_dict()["cells"]))
        assert result.cached == (i > 0)
    assert len(answers) == 1
    assert world.executor.calls == 1
    assert world.spent("alice") == pytest.approx(0.5)
    statuses = audit_log(world.db)["status"].value_counts().sort("status")
    assert dict(statuses.iter_rows()) == {"answered": 1, "cached": 99}


# ---------------------------------------------------------------- budget
def test_an_exhausted_budget_refuses_that_user_and_no_other(world):
    set_policy(world, budget=1.0, epsilon_per_query=0.5)
    world.ask("alice", stats=["prevalence:diabetes"])
    world.ask("alice", ["age >= 60"])
    with pytest.raises(HealthSyncError, match="privacy budget exhausted") as info:
        world.ask("alice", ["age >= 70"])
    assert "\n" not in str(info.value)
    assert world.spent("alice") == pytest.approx(1.0)  # the refusal spent nothing
    assert world.executor.calls == 2
    assert world.ask("alice", ["age >= 60"]).cached  # answers already given stay available
    assert not world.ask("bob", ["age >= 70"]).cached  # bob's budget is his own
    assert world.spent("bob") == pytest.approx(0.5)
    assert "refused" in audit_log(world.db)["status"].to_list()


def test_an_admin_policy_can_give_one_user_more(world):
    set_policy(world, budget=0.5, budgets="{bob: 1.5}")
    world.ask("bob", ["age >= 30"])
    world.ask("bob", ["age >= 40"])
    with pytest.raises(HealthSyncError, match="exhausted"):
        world.ask("alice", ["age >= 30"]) and world.ask("alice", ["age >= 40"])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("user", "where", "group_by", "stats", "message"),
    [
        ("alice", ["weight > 80"], [], [], "unknown column 'weight'"),
        ("alice", ["age >>= 3"], [], [], "cannot read condition"),
        ("alice", ["age 70"], [], [], "cannot read condition"),
        ("alice", [], ["hospital", "age", "bmi", "smoking"], [], "378 cells"),
        (
            "alice",
            [],
            ["age", "bmi", "systolic_bp", "smoking", "physical_activity"],
            [],
            "at most 500",
        ),
        ("alice", [], [], ["median:age"], "unknown statistic"),
        ("vic", [], [], [], "is a viewer, who may not explore cohorts"),
        ("mallory", [], [], [], "unknown user 'mallory'"),
    ],
)
def test_bad_input_gets_one_clear_line_and_spends_nothing(
    world, user, where, group_by, stats, message
):
    if "378" in message:
        set_policy(world, max_cells=300)
    with pytest.raises(HealthSyncError, match=message) as info:
        world.ask(user, where, group_by, stats)
    assert "\n" not in str(info.value)
    assert world.executor.calls == 0
    assert world.spent(user) == 0.0
    log = audit_log(world.db)
    assert log["status"].to_list() == ["rejected"] and log["epsilon"].to_list() == [0.0]
    assert message.split("'")[0] in log["message"][0]


def test_a_policy_cannot_lower_the_threshold_below_11(world):
    set_policy(world, threshold=5)
    with pytest.raises(HealthSyncError, match="at least 11"):
        world.ask("alice")


# ---------------------------------------------------------------- boundaries
def test_the_store_never_holds_patient_level_rows(world, federation, tmp_path):
    world.db = tmp_path / "store.duckdb"
    session = [
        ([], ["hospital", "sex"], ["prevalence:diabetes", "mean:bmi", "std:bmi"]),
        (["age >= 65"], ["hospital", "age"], ["histogram:systolic_bp"]),
        (["smoking == current"], ["bmi"], ["prevalence:hypertension"]),
        (["hba1c >= 6.5"], ["hospital", "diabetes"], ["histogram:hba1c", "mean:fasting_glucose"]),
        ([], ["hospital", "smoking", "sex"], ["count"]),
    ]
    for user in ("alice", "bob"):
        for where, group_by, stats in session:
            world.ask(user, where, group_by, stats)
    world.ask("alice", *session[0])  # cached
    with pytest.raises(HealthSyncError):
        world.ask("alice", ["nope == 1"])
    raw_columns = {*federation.feature_names, *federation.outcomes}
    with duckdb.connect(str(world.db), read_only=True) as con:
        columns = con.execute(
            "SELECT table_name, list(column_name) FROM information_schema.columns GROUP BY 1"
        ).fetchall()
        for table, names in columns:
            rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            assert rows < federation.n_patients / 10, table  # nothing row-per-patient
            assert not set(names) & raw_columns, table  # no column of patient values
        answers = [a for (a,) in con.execute("SELECT answer FROM cohort_cache").fetchall()]
    assert len(answers) == 2 * len(session)

    small_seen = False
    for answer in answers:
        tree = json.loads(answer)
        assert_no_small_counts(tree)
        small_seen |= any(v == "<11" for _, v in count_values(tree))
    assert small_seen  # the session did meet small cells, and they stayed hidden


def test_the_audit_log_says_who_asked_what_and_what_was_hidden(world):
    world.ask("alice", ["age >= 70"], ["hospital", "smoking"], ["prevalence:diabetes"])
    world.ask("alice", ["age >= 70"], ["hospital", "smoking"], ["prevalence:diabetes"])
    with pytest.raises(HealthSyncError):
        world.ask("vic")
    log = audit_log(world.db)
    assert log.columns == [
        "time", "user", "role", "federation", "data_dir", "query", "status", "epsilon",
        "suppressed", "message", "seconds",
    ]  # fmt: skip
    assert log["user"].to_list() == ["vic", "alice", "alice"]
    assert log["status"].to_list() == ["rejected", "cached", "answered"]
    answered = log.row(2, named=True)
    assert answered["epsilon"] == 0.5 and answered["role"] == "analyst"
    assert answered["query"] == "count, prevalence:diabetes where age >= 70 by hospital, smoking"
    assert "small_cells" in answered["suppressed"]
