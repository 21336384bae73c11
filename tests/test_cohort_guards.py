"""The privacy guards, fed per-hospital noisy aggregates directly: suppression, bins, means.

Hospitals add the noise themselves (``test_site.py``); the guards only ever see
noisy values, so every test here feeds them what a hospital could have sent.
"""

import itertools

import numpy as np
import polars as pl
import pytest

from healthsync.cohort.guards import release
from healthsync.cohort.local import hospital_aggregates
from healthsync.cohort.plan import plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.cohort.suppression import complementary, merge_bins
from healthsync.data import open_hospital
from healthsync.errors import HealthSyncError

POLICY = CohortPolicy()
SMALL = POLICY.small  # "<11"


def count_values(tree):
    """Every value stored under a key containing ``count``, anywhere in a JSON-like tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if "count" in key and not isinstance(value, list | dict):
                yield key, value
            yield from count_values(value)
    elif isinstance(tree, list | tuple):
        for item in tree:
            yield from count_values(item)


def assert_no_small_counts(tree, threshold=11):
    for key, value in count_values(tree):
        assert value in (f"<{threshold}", "suppressed") or value >= threshold, (key, value)


def plan(federation, where=(), group_by=(), stats=()):
    return plan_query(federation, CohortQuery.parse(where, group_by, stats), max_cells=500)


def crafted(p, **vectors):
    """The same aggregates for every hospital of plan ``p``, from per-cell lists by name."""
    return {h: {k: np.asarray(v) for k, v in vectors.items()} for h in p.hospitals}


def per_hospital(p, federation, vectors):
    """``vectors[h]`` lists per hospital (cells in order) for the names in it."""
    return {h: {k: np.asarray(v) for k, v in vectors[h].items()} for h in federation.hospital_ids}


# ---------------------------------------------------------------- hospital side
def test_hospital_aggregates_match_a_direct_count(data_federation):
    p = plan(
        data_federation,
        ["age >= 40", "smoking != current"],
        ["sex", "diabetes"],
        ["mean:bmi", "std:bmi", "histogram:age"],
    )
    hospital = data_federation.hospitals[2].id
    rows = open_hospital(data_federation, hospital).rows()
    got = hospital_aggregates(rows, p, hospital)
    cohort = rows.filter((pl.col("age") >= 40) & (pl.col("smoking") != "current"))
    scale = p.scales["bmi"]
    for i, (sex, diabetes) in enumerate(itertools.product(("F", "M"), (0, 1))):
        cell = cohort.filter((pl.col("sex") == sex) & (pl.col("diabetes") == diabetes))
        assert got["patients"][i] == cell.height
        centred = cell["bmi"].clip(scale.lower, scale.upper) - scale.centre
        assert got["sum:bmi"][i] == pytest.approx(centred.sum())
        assert got["squares:bmi"][i] == pytest.approx((centred**2).sum())
        assert got["bins:age"].reshape(4, -1)[i].sum() == cell.height
    assert got["patients"].sum() == cohort.height


def test_incident_outcomes_count_new_cases_and_group_only_patients_at_risk(data_federation):
    hospital = data_federation.hospitals[0].id
    rows = open_hospital(data_federation, hospital).rows()
    assert rows["diabetes_5y"].null_count() == rows["diabetes"].sum() > 0
    # Prevalence of an incident outcome: new cases per patient; those not at risk are "no".
    got = hospital_aggregates(
        rows, plan(data_federation, stats=["prevalence:diabetes_5y"]), hospital
    )
    assert got["patients"].tolist() == [rows.height]
    assert got["cases:diabetes_5y"].tolist() == [rows["diabetes_5y"].sum()]
    # Grouping or filtering by it leaves the patients not at risk out.
    by = hospital_aggregates(rows, plan(data_federation, group_by=["diabetes_5y"]), hospital)
    at_risk = rows.filter(pl.col("diabetes") == 0)
    assert by["patients"].tolist() == [
        (at_risk["diabetes_5y"] == 0).sum(), (at_risk["diabetes_5y"] == 1).sum()
    ]  # fmt: skip
    where = plan(data_federation, ["diabetes_5y != yes"], stats=["prevalence:diabetes"])
    assert hospital_aggregates(rows, where, hospital)["patients"].tolist() == [
        (at_risk["diabetes_5y"] == 0).sum()
    ]


# ---------------------------------------------------------------- small cells
def test_small_cells_show_as_under_11_per_hospital_and_pooled(data_federation):
    by_hospital = plan(data_federation, group_by=["hospital", "sex"])
    n = len(data_federation.hospitals)
    aggregates = crafted(by_hospital, patients=[5, 400])  # every hospital: 5 F, 400 M
    cells = release(aggregates, by_hospital, POLICY).cells
    assert [c["patient_count"] for c in cells if c["sex"] == "F"] == [SMALL] * n

    pooled = plan(data_federation, group_by=["sex"])
    aggregates = per_hospital(
        pooled, data_federation, {h: {"patients": [1, 300]} for h in data_federation.hospital_ids}
    )
    cells = release(aggregates, pooled, POLICY).cells
    assert cells[0]["patient_count"] == SMALL  # 6 women in all: still small when pooled


@pytest.mark.parametrize("true", [0, 1, 7, 10])
def test_zero_and_one_to_ten_look_the_same(data_federation, true):
    p = plan(data_federation, ["hospital == h0000"])
    answer = release({"h0000": {"patients": np.array([true])}}, p, POLICY)
    assert answer.cells[0]["patient_count"] == SMALL
    assert answer.total["patient_count"] == "suppressed"


def test_a_hidden_cell_cannot_be_recovered_from_the_total_or_its_complement(data_federation):
    p = plan(data_federation, ["hospital == h0000"], ["smoking"])  # never, former, current
    aggregates = {"h0000": {"patients": np.array([700, 500, 4])}}
    answer = release(aggregates, p, POLICY)
    shown = [c["patient_count"] for c in answer.cells]
    assert shown[2] == SMALL and shown[1] == "suppressed" and isinstance(shown[0], int)
    # The total is of shown cells only, so total minus shown cells recovers nothing...
    assert answer.total["patient_count"] == shown[0]
    # ... and the whole cohort's count (another query) minus the shown cell only gives the
    # sum of two hidden cells, one of them large.


def test_complementary_suppression_protects_every_line_of_random_tables():
    rng = np.random.default_rng(3)
    for _ in range(300):
        shape = tuple(rng.integers(1, 5, size=rng.integers(1, 4)))
        sizes = rng.choice([0, 2, 5, 9, 12, 30, 200], size=shape)
        hidden = complementary(sizes, sizes < 11, 11)
        assert (hidden >= (sizes < 11)).all()
        for axis in range(sizes.ndim):
            if shape[axis] < 2:
                continue
            lines_s = np.moveaxis(sizes, axis, -1).reshape(-1, shape[axis])
            lines_h = np.moveaxis(hidden, axis, -1).reshape(-1, shape[axis])
            for s, h in zip(lines_s, lines_h, strict=True):
                if h.any() and not h.all():
                    assert h.sum() >= 2 and s[h].sum() >= 11, (s, h)


def test_case_counts_hide_when_cases_or_non_cases_are_few(data_federation):
    p = plan(data_federation, ["hospital == h0000"], ["sex"], ["prevalence:diabetes"])
    aggregates = {
        "h0000": {"patients": np.array([300, 300]), "cases:diabetes": np.array([296, 60])}
    }
    answer = release(aggregates, p, CohortPolicy(epsilon_per_query=5.0))
    women, men = answer.cells
    assert isinstance(women["patient_count"], int) and isinstance(men["patient_count"], int)
    # 4 women without diabetes: their case count would give the 4 away, so it is hidden, and
    # the men's too, or the total of cases minus the men's would.
    assert women["diabetes_case_count"] == "suppressed" and women["diabetes_prevalence"] is None
    assert men["diabetes_case_count"] == "suppressed" and men["diabetes_prevalence"] is None


# ---------------------------------------------------------------- moments
def test_means_and_deviations_come_only_from_shown_cells(data_federation):
    p = plan(data_federation, ["hospital == h0000"], ["smoking"], ["mean:age", "std:age"])
    scale = p.scales["age"]
    ages = [[50.0] * 8, [40.0] * 300, [30.0] * 200 + [70.0] * 200]  # never, former, current
    centred = [np.asarray(a) - scale.centre for a in ages]
    aggregates = {
        "h0000": {
            "patients": np.array([len(a) for a in ages]),
            "sum:age": np.array([c.sum() for c in centred]),
            "squares:age": np.array([(c**2).sum() for c in centred]),
        }
    }
    answer = release(aggregates, p, CohortPolicy(epsilon_per_query=5.0))
    never, former, current = answer.cells
    assert never["patient_count"] == SMALL and former["patient_count"] == "suppressed"
    assert never["age_mean"] is None and former["age_mean"] is None and former["age_std"] is None
    assert current["age_mean"] == pytest.approx(50, abs=2)
    assert current["age_std"] == pytest.approx(20, abs=2)
    assert answer.total["age_mean"] == current["age_mean"]  # hidden cells are not in it
    assert not any(k.endswith(("_min", "_max")) for c in answer.cells for k in c)


def test_histogram_bins_hold_at_least_11_patients(data_federation):
    p = plan(data_federation, group_by=["sex"], stats=["histogram:age"])
    rows = {h: open_hospital(data_federation, h).rows() for h in data_federation.hospital_ids}
    aggregates = {h: hospital_aggregates(r, p, h) for h, r in rows.items()}
    answer = release(aggregates, p, POLICY)
    everyone = pl.concat(rows.values())
    for cell in answer.cells:
        bins = cell["age_histogram"]
        assert bins, "the federation has enough patients for a histogram"
        ages = everyone.filter(pl.col("sex") == cell["sex"])["age"]
        for b in bins:
            assert b["bin_count"] >= 11
            low = -np.inf if b["bin"].startswith("<") else b["lower"]
            high = np.inf if b["bin"].startswith("≥") else b["upper"]
            assert ((ages >= low) & (ages < high)).sum() >= 11, b
        assert sum(b["bin_count"] for b in bins) == pytest.approx(ages.len(), rel=0.2)
    assert_no_small_counts(answer.to_dict())


def test_bins_merge_into_their_smaller_neighbour_or_vanish():
    assert merge_bins(np.array([20, 3, 40]), 11) == [(0, 2), (2, 3)]
    assert merge_bins(np.array([0, 1, 13, -2]), 11) == [(0, 4)]
    assert merge_bins(np.array([4, 3]), 11) == []


# ---------------------------------------------------------------- combining
def test_every_hospital_must_answer(data_federation):
    p = plan(data_federation, group_by=["sex"])
    aggregates = crafted(p, patients=[100, 100])
    aggregates.pop("h0003")
    with pytest.raises(HealthSyncError, match="did not answer"):
        release(aggregates, p, POLICY)


def test_released_json_never_holds_a_count_below_the_threshold(data_federation):
    p = plan(data_federation, ["age >= 60"], ["hospital", "smoking"], ["prevalence:hypertension"])
    rows = {h: open_hospital(data_federation, h).rows() for h in data_federation.hospital_ids}
    exact = {h: hospital_aggregates(r, p, h) for h, r in rows.items()}
    rng = np.random.default_rng(0)
    for _ in range(20):  # whatever noise the hospitals added: never a small count shown
        aggregates = {
            h: {k: v + rng.integers(-6, 7, size=v.shape) for k, v in a.items()}
            for h, a in exact.items()
        }
        answer = release(aggregates, p, POLICY).to_dict()
        assert_no_small_counts(answer)
        assert any(v == SMALL for _, v in count_values(answer))  # small hospitals exist here
