"""Property-based tests (hypothesis): settings, hospital ids and cohort filters never crash.

Whatever a user types, each of these either accepts it (and then keeps its
promises) or refuses it with a ``HealthSyncError``; no other exception escapes.
"""

from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from healthsync.cohort.plan import plan_query
from healthsync.cohort.query import CohortQuery, Condition
from healthsync.config import LIMITS, TrainConfig
from healthsync.data import load_federation
from healthsync.data.importer import hospital_id
from healthsync.data.manifest import HOSPITAL_ID_PATTERN
from healthsync.errors import HealthSyncError
from tests.app_helpers import make_federation

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
NUMERIC = [name for name in LIMITS if name not in ("rounds",)]


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(NUMERIC), numbers, max_size=4))
def test_a_setting_is_refused_cleanly_or_is_finite_and_within_its_limits(changes):
    try:
        config = TrainConfig(**changes)
    except HealthSyncError:
        return
    for name, value in changes.items():
        low, high = LIMITS[name]
        assert math.isfinite(value) and low <= value <= high, (name, value)
    assert TrainConfig.from_run_config(config.to_run_config()) == config


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_hospital_name_gives_a_safe_id_or_a_clear_refusal(name):
    try:
        made = hospital_id(name)
    except HealthSyncError as err:
        assert "needs at least one letter or digit" in str(err)
        assert not any(ch.isalnum() for ch in name)
        return
    assert HOSPITAL_ID_PATTERN.match(made), made
    assert made == hospital_id(name)  # stable


def _has_letters_beyond_ascii(name: str) -> bool:
    return any(ch.isalnum() and not ch.isascii() for ch in unicodedata.normalize("NFKD", name))


mixed = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x4E40), st.sampled_from("ab 1-")
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(mixed, mixed)
def test_names_with_letters_ascii_cannot_spell_still_get_distinct_ids(a, b):
    assume(a.strip() != b.strip())
    assume(_has_letters_beyond_ascii(a) and _has_letters_beyond_ascii(b))
    assert hospital_id(a) != hospital_id(b)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fed") / "fed"
    make_federation(folder, hospitals=2, patients=40)
    return load_federation(folder)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(max_size=30), max_size=3), st.lists(st.text(max_size=15), max_size=2))
def test_any_filter_text_is_planned_or_refused_with_a_clear_error(federation, where, group_by):
    try:
        plan_query(federation, CohortQuery.parse(where, group_by, []), max_cells=64)
    except HealthSyncError as err:
        assert str(err) and "\n" not in str(err)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["age", "bmi", "sex", "smoking"]),
    st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
    st.one_of(st.integers(-1000, 1000).map(str), st.sampled_from(["F", "M", "'F'", '"never"'])),
)
def test_a_condition_reads_back_as_written(column, op, value):
    condition = Condition.parse(f"{column} {op} {value}")
    assert (condition.column, condition.op) == (column, op)
    assert Condition.parse(str(condition)) == condition
