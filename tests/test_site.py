"""A hospital's own privacy gate: its noise, its ledger, its policy, and the keys it files under."""

import math

import numpy as np
import pytest

from healthsync.cohort.guards import release
from healthsync.cohort.local import aggregate_names
from healthsync.cohort.measures import EMPTY, measures
from healthsync.cohort.plan import plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.errors import HealthSyncError
from healthsync.privacy.site import Measure, Site, SitePolicy, SiteRefusal


def counts(keys, exact):
    return Measure(list(keys), np.asarray(exact), "count")


# ---------------------------------------------------------------- noise and the threshold
def test_counts_carry_discrete_laplace_noise_of_the_documented_scale(tmp_path):
    site = Site(tmp_path)
    keys = [f"q{i}" for i in range(4000)]  # 4,000 disjoint quantities: one draw each
    got = site.release("alice", [counts(keys, [5000] * 4000)], query="scale").values[0]
    alpha = math.exp(-0.5)  # epsilon 0.5, sensitivity 1
    assert abs(got.mean() - 5000) < 0.2
    assert got.var() == pytest.approx(2 * alpha / (1 - alpha) ** 2, rel=0.1)
    assert np.issubdtype(got.dtype, np.integer)


def test_a_shown_count_proves_nothing_beyond_epsilon_about_one_patient(tmp_path, data_federation):
    """Differencing through the threshold: cohort A holds 11 patients, B the same 10.

    Suppression is decided on the noisy count, so P(A shown) / P(B shown) is at
    most e^epsilon (here exactly e^0.5 = 1.65 at the boundary), where deciding
    on the true count made it infinite (B never shown, A shown 6 times in 10).
    """
    site = Site(tmp_path)
    trials = 4000
    a = site.release("x", [counts([f"a{i}" for i in range(trials)], [11] * trials)], query="A")
    b = site.release("x", [counts([f"b{i}" for i in range(trials)], [10] * trials)], query="B")
    plan = plan_query(data_federation, CohortQuery.parse(["hospital == h0000"]), max_cells=1)

    def shown(noisy: int) -> bool:
        cell = release({"h0000": {"patients": np.array([noisy])}}, plan, CohortPolicy()).cells[0]
        return isinstance(cell["patient_count"], int)

    p_a = np.mean([shown(v) for v in a.values[0]])
    p_b = np.mean([shown(v) for v in b.values[0]])
    assert p_b > 0.3  # B is shown too: a shown count no longer proves a patient is in A
    assert p_a / p_b < math.exp(0.5) * 1.15  # documented bound, with room for sampling


# ---------------------------------------------------------------- ledger
def test_a_quantity_is_released_once_whoever_asks(tmp_path):
    site = Site(tmp_path)
    first = site.release("alice", [counts(["k1", "k2"], [40, 50])], query="one")
    again = site.release("bob", [counts(["k2", "k1"], [50, 40])], query="two")
    assert again.values[0].tolist() == first.values[0][::-1].tolist()
    assert (first.charged, again.charged) == (0.5, 0.0)
    assert [c["fresh"] for c in site.charges()] == [2, 0]
    # A vector with one new element is charged in full (parallel composition within it).
    third = site.release("bob", [counts(["k1", "k3"], [40, 12])], query="three")
    assert third.charged == 0.5 and third.values[0][0] == first.values[0][0]


def test_the_budget_is_enforced_at_the_hospital_and_refusals_spend_nothing(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "policy.yaml").write_text("budget: 1.0\nbudgets: {carol: 0}\n")
    site = Site(tmp_path)
    site.release("alice", [counts(["a"], [30])], query="1")
    site.release("alice", [counts(["b"], [30])], query="2")
    with pytest.raises(SiteRefusal, match="alice has spent 1 of 1"):
        site.release("alice", [counts(["c"], [30])], query="3")
    assert site.spent("alice") == 1.0 and site.released(["c"]) == {}
    assert site.release("alice", [counts(["a"], [30])], query="again").charged == 0
    with pytest.raises(SiteRefusal):
        site.release("carol", [counts(["d"], [30])], query="shut out")
    # A caller's cap can tighten, never loosen.
    with pytest.raises(SiteRefusal):
        site.release("dave", [counts(["e"], [30])], query="cap", budget_cap=0.1)
    big = site.release("erin", [counts(["f"], [30])], query="cap", budget_cap=1e9, epsilon=99)
    assert big.charged == 0.5 and big.budget == 1.0


def test_all_users_together_cannot_pass_the_hospitals_total_budget(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "policy.yaml").write_text("total_budget: 1.0\n")
    site = Site(tmp_path)
    site.release("u1", [counts(["a"], [30])], query="1")
    site.release("u2", [counts(["b"], [30])], query="2")
    with pytest.raises(SiteRefusal, match="total privacy budget"):
        site.release("u3", [counts(["c"], [30])], query="3")  # a made-up identity


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("threshold: 5\n", "at least 11"),
        ("epsilon_per_query: 50\n", "at most 5"),
        ("budget: -1\n", "positive"),
        ("loosen: true\n", "expected only the keys"),
        ("budget: [\n", "unreadable site policy"),
    ],
)
def test_a_bad_site_policy_is_refused_with_one_line(tmp_path, text, message):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "policy.yaml").write_text(text)
    with pytest.raises(HealthSyncError, match=message) as info:
        Site(tmp_path)
    assert "\n" not in str(info.value)


def test_defaults_hold_without_a_policy_file():
    assert SitePolicy() == SitePolicy(threshold=11, epsilon_per_query=0.5, budget=10.0)


# ---------------------------------------------------------------- measurement keys
def keys(federation, where=(), group_by=(), stats=()):
    plan = plan_query(federation, CohortQuery.parse(where, group_by, stats), max_cells=500)
    zeros = {
        name: np.zeros(plan.n_cells * (plan.scales[name[5:]].n_bins if name[:5] == "bins:" else 1))
        for name in aggregate_names(plan)
    }
    return [list(m.keys) for m in measures(plan, zeros, "v1")]


def test_keys_depend_on_the_patients_a_question_selects_not_its_spelling(data_federation):
    everyone = keys(data_federation)
    for where in (["age > -1"], ["age >= 0"], ["age >= 18"], ["age <= 100", "age > 17.5"]):
        assert keys(data_federation, where) == everyone, where
    assert keys(data_federation, ["age > 18"]) != everyone  # 18 itself is left out
    assert keys(data_federation, ["smoking != never", "smoking != former"]) == keys(
        data_federation, ["smoking == current"]
    )
    # A prevalence's case count is the count of the cell with the outcome.
    assert (
        keys(data_federation, stats=["prevalence:diabetes"])[1]
        == keys(data_federation, ["diabetes == 1"])[0]
    )
    # A band is a range: grouping by age band and filtering on it name the same cells.
    banded = keys(data_federation, group_by=["age"])[0]
    assert keys(data_federation, ["age >= 30", "age < 40"])[0][0] in banded


def test_an_impossible_cell_gets_the_empty_key(data_federation):
    got = keys(data_federation, ["diabetes == 0"], stats=["prevalence:diabetes"])
    assert got[1] == [f"v1|n|{EMPTY}"]
