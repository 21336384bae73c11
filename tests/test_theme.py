"""The app's look: one theme per mode, and the menu that lets each user choose between them."""

import tomllib

from tests.app_helpers import ROOT

CONFIG = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
COLOURS = ("primaryColor", "backgroundColor", "secondaryBackgroundColor", "textColor")


def test_a_light_and_a_dark_theme_and_no_forced_base():
    theme = CONFIG["theme"]
    assert "base" not in theme  # a forced base would take the choice away
    for mode in ("light", "dark"):
        assert set(COLOURS) <= set(theme[mode]), mode
    assert theme["light"]["backgroundColor"] != theme["dark"]["backgroundColor"]


def test_the_app_menu_offers_the_theme_choice():
    # "minimal" hides the menu holding System / Light / Dark; "viewer" shows it, without
    # the developer's options.
    assert CONFIG["client"]["toolbarMode"] == "viewer"


def test_the_theme_memory_script_knows_every_page_url_and_the_default_one():
    from healthsync.views.theme import theme_memory_html

    html = theme_memory_html(["runs", "/live/", "runs"])
    assert '["", "live", "runs"]' in html
    assert "stActiveTheme-" in html and html.count("<script") == 1
