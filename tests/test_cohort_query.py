"""Cohort queries as text, and their plans against a schema: parsing, checking, canonical form."""

from pathlib import Path

import pytest

from healthsync.cohort.plan import plan_query
from healthsync.cohort.query import CohortQuery, Condition, Stat
from healthsync.data import FeatureSpec, Federation, HospitalInfo
from healthsync.errors import HealthSyncError


def plan(federation, where=(), group_by=(), stats=(), max_cells=500):
    return plan_query(federation, CohortQuery.parse(where, group_by, stats), max_cells=max_cells)


@pytest.fixture(scope="module")
def imported() -> Federation:
    """An imported-style schema with a numeric column HealthSync has no bands for."""
    return Federation(
        data_dir=Path("/nonexistent"),
        name="imported",
        source="import",
        outcomes=("readmitted",),
        default_target="readmitted",
        features=(
            FeatureSpec("age", "numeric"),
            FeatureSpec("creatinine", "numeric", None, "mg/dL"),
            FeatureSpec("ward", "categorical", ("A", "B")),
        ),
        hospitals=(HospitalInfo("north", "North", 10, 5), HospitalInfo("south", "South", 10, 5)),
    )


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("age >= 70", Condition("age", ">=", "70")),
        ("age>=70", Condition("age", ">=", "70")),
        ("sex == F", Condition("sex", "==", "F")),
        ("sex == 'F'", Condition("sex", "==", "F")),
        ('smoking != "current"', Condition("smoking", "!=", "current")),
        ("bmi < 18.5", Condition("bmi", "<", "18.5")),
    ],
)
def test_conditions_parse(text, expected):
    assert Condition.parse(text) == expected


@pytest.mark.parametrize("text", ["age", "age 70", "age => 70", "age = 70", "age >= ", "== 3", ""])
def test_malformed_conditions_say_how_to_write_one(text):
    with pytest.raises(HealthSyncError, match="condition"):
        Condition.parse(text)


def test_statistics_parse_and_refuse_unknown_ones():
    assert Stat.parse("count") == Stat("count")
    assert Stat.parse("prevalence:diabetes") == Stat("prevalence", "diabetes")
    assert Stat.parse("Mean:age") == Stat("mean", "age")
    for bad in ("median:age", "mean", "count:age", "max:age"):
        with pytest.raises(HealthSyncError):
            Stat.parse(bad)
    assert CohortQuery.parse().stats == (Stat("count"),)


# ---------------------------------------------------------------- planning
def test_a_plan_is_the_canonical_form_of_its_query(data_federation):
    a = plan(data_federation, ["sex == f", "age >= 70.0"], ["smoking", "hospital"], ["mean:bmi"])
    b = plan(
        data_federation,
        ["age>=70", "sex == 'F'", "age >= 70"],
        ["hospital", "smoking"],
        ["count", "mean:bmi"],
    )
    assert a.key == b.key
    assert a.query.to_dict() == {
        "where": ["age >= 70", "sex == F"],
        "group_by": ["hospital", "smoking"],
        "stats": ["count", "mean:bmi"],
    }
    assert plan(data_federation, ["age >= 71"]).key != plan(data_federation, ["age >= 70"]).key


def test_numeric_columns_group_by_fixed_clinical_bands(data_federation):
    dims = plan(data_federation, group_by=["age", "bmi", "hba1c"]).dimensions
    assert dims[0].labels == ("18–29", "30–39", "40–49", "50–59", "60–69", "70–79", "80+")
    assert dims[1].labels[0].startswith("underweight") and dims[1].labels[-1].endswith("(≥40)")
    assert [label.split()[0] for label in dims[2].labels] == ["normal", "prediabetes", "diabetes"]


def test_levels_the_conditions_rule_out_are_not_cells(data_federation):
    p = plan(
        data_federation, ["age >= 70", "sex == F", "hospital != h0001"], ["hospital", "age", "sex"]
    )
    hospitals, age, sex = p.dimensions
    assert "h0001" not in hospitals.labels and len(hospitals.labels) == 5
    assert age.labels == ("70–79", "80+") and sex.labels == ("F",)
    assert p.hospitals == hospitals.labels


@pytest.mark.parametrize(
    ("where", "group_by", "stats", "message"),
    [
        (["weight > 3"], [], [], "unknown column 'weight'"),
        ([], ["postcode"], [], "unknown column 'postcode'"),
        (["age >= old"], [], [], "not a number"),
        (["sex == X"], [], [], "not a value of sex"),
        (["sex > F"], [], [], "use == or !="),
        (["diabetes == maybe"], [], [], "1/yes or 0/no"),
        (["age > 70", "age < 30"], [], [], "contradict"),
        (["sex == F", "sex == M"], [], [], "contradict"),
        ([], [], ["mean:sex"], "not a numeric feature"),
        ([], [], ["prevalence:age"], "not a outcome"),
        ([], ["age", "bmi", "systolic_bp", "smoking", "physical_activity"], [], "1,890 cells"),
    ],
)
def test_bad_queries_are_refused_with_one_clear_line(
    data_federation, where, group_by, stats, message
):
    with pytest.raises(HealthSyncError, match=message) as info:
        plan(data_federation, where, group_by, stats)
    assert "\n" not in str(info.value)


def test_unknown_numeric_columns_filter_but_do_not_group_or_average(imported):
    assert plan(imported, ["creatinine >= 1.2"], ["ward"]).n_cells == 2
    assert plan(imported, group_by=["age"]).dimensions[0].labels[0] == "18–29"  # no unit: by name
    for group_by, stats in ((["creatinine"], []), ([], ["mean:creatinine"])):
        with pytest.raises(HealthSyncError, match="no documented bands or bounds"):
            plan(imported, group_by=group_by, stats=stats)


def test_measurements_count_every_noisy_vector(data_federation):
    p = plan(data_federation, stats=["prevalence:diabetes", "mean:bmi", "std:bmi", "histogram:age"])
    # counts, cases, sum of bmi (shared by mean and std), squares of bmi, age bins
    assert p.measurements == 5
