"""The data set a page starts on: adding one must not silently change it.

Data sets are listed by name; before, the first in that order was the default,
so a new ``big`` came before ``demo`` and Launch would have started a
2,000-hospital run.
"""

import pytest

from healthsync.views import settings
from tests.app_helpers import AppEnv, make_federation


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    make_federation(env.data_root / "big")  # sorts before demo
    return env


def test_the_rule(tmp_path):
    big, demo, zoo = (tmp_path / n for n in ("big", "demo", "zoo"))
    assert settings.default_data_set([big, demo, zoo]) == demo
    assert settings.default_data_set([big, demo, zoo], last_used="zoo") == zoo
    assert settings.default_data_set([big, demo, zoo], last_used="gone") == demo
    assert settings.default_data_set([big, zoo]) == big
    assert settings.default_data_set([]) is None


@pytest.mark.parametrize(
    ("role", "page"),
    [("viewer", None), ("analyst", "pages/launch.py"), ("analyst", "pages/cohort.py")],
)
def test_pages_start_on_demo_when_another_data_set_sorts_first(env, role, page):
    at = env.app(role, page)
    assert not at.exception
    picker = next(s for s in at.selectbox if s.label == "Data set")
    assert picker.value.name == "demo"


def test_the_data_set_chosen_is_kept_from_page_to_page(env):
    at = env.app("analyst")
    next(s for s in at.selectbox if s.label == "Data set").select(env.data_root / "big").run()
    for page in ("pages/launch.py", "pages/cohort.py", "pages/overview.py"):
        at.switch_page(page).run()
        assert not at.exception, page
        picker = next(s for s in at.selectbox if s.label == "Data set")
        assert picker.value.name == "big", page
