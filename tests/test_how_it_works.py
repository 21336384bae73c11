"""The How it works page and its story (healthsync.views.explainer): one round on the real federation."""

import re

import pytest

from healthsync.data import load_federation
from healthsync.views import explainer
from tests.app_helpers import ROOT, AppEnv, fake_run, texts


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def test_the_story_uses_the_federations_numbers_and_the_latest_run(env):
    federation = load_federation(env.fed_dir)
    story = explainer.round_story(federation)
    assert story.hospitals == 3 and story.run_id is None
    assert "No run yet" in story.steps()[-1]
    assert f"{story.train_rows:,} training rows across 3 hospitals" in story.steps()[1]
    run = {"run_id": "run-a", "strategy": "krum", "rounds_planned": 8, "rounds_done": 5}
    story = explainer.round_story(federation, {**run, "config": {"fraction": 0.5}})
    assert story.sampled == 2 and "2 of the 3 hospitals" in story.steps()[0]
    assert "planned 8 rounds and finished 5" in story.steps()[-1]
    assert "outliers" in story.steps()[-1]  # Krum, in words


def test_the_diagram_names_some_hospitals_and_counts_the_rest():
    story = explainer.RoundStory(
        hospitals=10, train_rows=800, test_rows=200, names=("A", 'B "b"', "C", "D")
    )
    dot = story.diagram()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert 'B \\"b\\"' in dot and "D\\n" not in dot and "… 7 more" in dot
    assert dot.count("update only") == 4  # three named hospitals and the rest


def test_links_point_at_terms_that_exist():
    assert explainer.what_is("auc") == "[What is this?](how_it_works#auc)"
    with pytest.raises(ValueError, match="no term"):
        explainer.what_is("nonsense")
    anchors = [t.anchor for t in explainer.GLOSSARY]
    assert len(set(anchors)) == len(anchors)
    for needed in ("auc", "accuracy", "log-loss", "brier", "epsilon", "small-counts"):
        assert needed in anchors


@pytest.mark.parametrize("role", ["admin", "analyst", "viewer"])
def test_every_role_opens_the_page(env, role):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, rounds=4, planned=6, status="cancelled")
    at = env.app(role, "pages/how_it_works.py")
    assert not at.exception
    assert [t.value for t in at.title] == ["How it works"]
    shown = texts(at)
    assert "across 3 hospitals" in shown and "planned 6 rounds and finished 4" in shown
    assert len(at.get("graphviz_chart")) == 1
    anchors = {s.proto.anchor for s in at.subheader}
    assert {t.anchor for t in explainer.GLOSSARY} <= anchors


def test_every_chart_caption_links_to_the_page(env):
    from healthsync.cohort.facts import publish

    publish(load_federation(env.fed_dir))  # Overview draws what hospitals published
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    fake_run(env.store, "run-b", data_dir=env.fed_dir)
    for path in ("pages/live.py", "pages/runs.py", "pages/model.py", "pages/overview.py"):
        at = env.app("viewer", path)
        charts = len(at.get("arrow_vega_lite_chart")) or len(at.get("vega_lite_chart"))
        links = [c for c in at.caption if re.search(r"\]\(how_it_works#[a-z-]+\)", c.value)]
        assert charts and len(links) >= charts, path


def test_the_library_module_never_imports_streamlit():
    assert "streamlit" not in (ROOT / "healthsync" / "views" / "explainer.py").read_text()
