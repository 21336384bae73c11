"""An adversarial analyst against the one entry point: differencing, repetition, budget, bad input.

Queries run through :func:`healthsync.cohort.explore` with every guard, but
hospitals answer in this process (``InProcess``: each hospital's own site gate,
then the same guards) instead of through the Flower service, to keep these
tests fast; ``test_cohort_flower.py`` covers the real path. Each test works on
its own copy of the federation, so every hospital's ledger starts empty.
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
from healthsync.privacy.noise import noisy_counts
from healthsync.runs.store import MetricsStore
from tests.cohort_helpers import InProcess, private_copy
from tests.test_cohort_guards import assert_no_small_counts, count_values


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
    federation = private_copy(federation, tmp_path)
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
    (without) and guesses from the difference of the case counts. Each hospital
    noises its own vectors as its site gate does (epsilon 0.5 split over the
    query's 2 vectors); only the target's hospital's first case count differs
    between the worlds, so no attacker can be right more often than
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

    def noised(aggregates):  # what each hospital's gate sends for a fresh query
        return {
            h: {k: noisy_counts(c, policy.epsilon_per_query / 2, rng) for k, c in a.items()}
            for h, a in aggregates.items()
        }

    right = []
    for trial in range(2000):
        outcome = trial % 2  # the world: the target's diabetes, flipped from the real one
        with_target = {h: dict(a) for h, a in exact[0].items()}
        cases = with_target[home]["cases:diabetes"].copy()
        cases[0] += outcome - target["diabetes"]
        with_target[home]["cases:diabetes"] = cases
        first = release(noised(with_target), queries[0], policy).cells[0]
        second = release(noised(exact[1]), queries[1], policy).cells[0]
        a, b = first["diabetes_case_count"], second["diabetes_case_count"]
        guess = int(a - b >= 1) if isinstance(a, int) and isinstance(b, int) else 0
        right.append(guess == outcome)
    bound = math.exp(0.25) / (1 + math.exp(0.25))
    assert np.mean(right) < bound + 0.04


def test_colluding_analysts_get_the_same_numbers_not_fresh_noise(world, everyone):
    """Each quantity is released once: six analysts asking the same pair learn one answer."""
    target = unique_bmi_patient(everyone)
    v = target["bmi"]
    world.executor = InProcess(world.federation, seed=1)  # the same draws on every run
    analysts = ["alice", "bob", *(f"analyst{i}" for i in range(4))]
    for name in analysts[2:]:
        world.users.add(name, "analyst", "a-long-password")
    answers = set()
    for user in analysts:
        with_target = world.ask(user, [f"bmi <= {v}"], stats=["prevalence:diabetes"])
        without = world.ask(user, [f"bmi < {v}"], stats=["prevalence:diabetes"])
        answers.add(json.dumps([with_target.release.cells, without.release.cells]))
        assert with_target.cached == without.cached == (user != "alice")
    assert len(answers) == 1  # averaging over analysts gains nothing
    assert world.spent("alice") == pytest.approx(1.0)
    assert all(world.spent(user) == 0 for user in analysts[1:])
    alone = world.ask("alice", [f"bmi == {v}"], stats=["prevalence:diabetes"]).release.cells[0]
    # One patient: shown as <11 unless the noise alone lifts it past 10 (about 4 % with
    # epsilon 0.25); either way the true 1 never appears, and the outcome stays hidden.
    assert alone["patient_count"] == "<11" or alone["patient_count"] >= 11
    assert alone["diabetes_case_count"] in ("<11", "suppressed")


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
    assert world.spent("alice") == pytest.approx(0.5)
    for hospital in world.federation.hospital_ids:
        charges = open_hospital(world.federation, hospital).site().charges()
        assert [c["epsilon"] > 0 for c in charges] == [True] + [False] * 99
        assert all(c["fresh"] == 0 for c in charges[1:])  # one noise draw per quantity
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
    assert world.ask("alice", ["age >= 60"]).cached  # answers already given stay available
    assert not world.ask("bob", ["age >= 70"]).cached  # bob's budget is his own
    assert world.spent("bob") == pytest.approx(0.5)
    assert "refused" in audit_log(world.db)["status"].to_list()


def test_an_admin_policy_can_give_one_user_more(world):
    set_policy(world, budget=0.5, budgets="{bob: 1.5}")
    world.ask("bob", ["age >= 30"])
    world.ask("bob", ["age >= 40"])
    world.ask("alice", ["age >= 50"])
    with pytest.raises(HealthSyncError, match="exhausted"):
        world.ask("alice", ["age >= 60"])


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
    answers = [world.ask(user, *query).to_json() for user in ("alice", "bob") for query in session]
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


# ---------------------------------------------------------------- release policy (issue 13)
def test_twenty_respelled_equivalent_queries_get_one_noise_draw_and_one_charge(world):
    """``age > -1``, ``age > -2``, ... select the same patients (ages are clipped to 18–100)."""
    answers = set()
    for k in range(1, 21):
        result = world.ask("alice", ["hospital == h0000", f"age > -{k}"])
        answers.add(json.dumps(result.release.cells))
    assert len(answers) == 1  # nothing to average
    charges = open_hospital(world.federation, "h0000").site().charges()
    assert [round(c["epsilon"], 6) for c in charges] == [0.5] + [0.0] * 19
    assert sum(c["fresh"] for c in charges) == 1  # one draw, for the one quantity
    assert world.spent("alice") == pytest.approx(0.5)
    # ...and the plain spelling of the same cohort is the same quantity again.
    plain = world.ask("bob", ["hospital == h0000"])
    assert json.dumps(plain.release.cells) in answers and plain.cached


def test_a_fresh_metrics_store_or_a_home_of_ones_own_loosens_nothing(world, tmp_path):
    """Budgets live in each hospital's folder; the querier's --db and --home cannot reset them."""
    for hospital in world.federation.hospital_ids:
        site_dir = open_hospital(world.federation, hospital).site().dir
        site_dir.mkdir(parents=True, exist_ok=True)
        (site_dir / "policy.yaml").write_text("budget: 1.0\n")
    world.ask("alice", ["age >= 30"])
    world.ask("alice", ["age >= 40"])
    with pytest.raises(HealthSyncError, match="budget exhausted"):
        world.ask("alice", ["age >= 50"])
    # A fresh metrics store: the hospitals still remember.
    world.db = MetricsStore(":memory:")
    with pytest.raises(HealthSyncError, match="budget exhausted"):
        world.ask("alice", ["age >= 50"])
    # A home of one's own, copying the credentials and granting a huge budget.
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("credentials.yaml",):
        (mine / name).write_bytes((world.home / name).read_bytes())
    (mine / POLICY_NAME).write_text("budget: 100000\nepsilon_per_query: 5\n")
    with pytest.raises(HealthSyncError, match="budget exhausted"):
        explore(
            world.federation.data_dir,
            db=world.db,
            user="alice",
            where=["age >= 50"],
            home=mine,
            executor=world.executor,
        )
    assert budget_status(world.federation.data_dir, db=world.db, user="alice", home=mine).left == 0


def test_overview_facts_and_the_explorer_show_the_same_released_values(world):
    from healthsync.cohort.facts import publish, published_facts

    assert published_facts(world.federation)[0] is None  # nothing published yet
    assert publish(world.federation) == len(world.federation.hospitals)
    facts, missing = published_facts(world.federation)
    assert missing == []
    stats = [f"prevalence:{o}" for o in world.federation.outcomes]
    asked = world.ask("alice", group_by=["hospital"], stats=stats)
    assert asked.release.cells == facts.cells and asked.cached  # released once, for everyone
    # The same quantity inside another question: one hospital's patient count.
    one = world.ask("alice", ["hospital == h0001"]).release.cells[0]["patient_count"]
    assert one == next(c["patient_count"] for c in facts.cells if c["hospital"] == "h0001")
    # Diabetic patients per hospital are the same quantity as Overview's case counts.
    cases = world.ask("alice", ["diabetes == 1"], ["hospital"]).release.cells
    overview_cases = [c["diabetes_case_count"] for c in facts.cells]
    shown = [c["patient_count"] for c in cases]
    assert all(a == b for a, b in zip(shown, overview_cases, strict=True) if isinstance(b, int)), (
        shown,
        overview_cases,
    )
    assert world.spent("alice") == 0  # every number was released before
