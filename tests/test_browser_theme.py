"""The Light/Dark choice of the app menu survives a reload on any page, and a logout.

Streamlit files the choice under the URL the tab was loaded from, so Dark
picked on a page reached from the sidebar used to be lost on reloading that
page (healthsync/views/theme.py). Uses ``tests/test_browser.py``'s server and
Chromium (a server of its own for this module).
"""

from __future__ import annotations

import contextlib
import tomllib

import pytest

from tests.app_helpers import ROOT

# browser and server are test_browser's module fixtures: this module gets its own.
from tests.test_browser import (  # noqa: F401
    SCREENSHOTS,
    browser,
    new_page,
    server,
    settle,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

THEME = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["theme"]


def rgb(colour: str) -> str:
    """``#0f1719`` as the browser's computed style writes it: ``rgb(15, 23, 25)``."""
    r, g, b = (int(colour.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({r}, {g}, {b})"


def background(page, expected: str) -> str:
    """The page's computed background, once it is ``expected`` or after 10 s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    script = "getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(f"{script} === {expected!r}", timeout=10_000)
    return page.evaluate(script)


def test_dark_picked_on_a_page_holds_after_a_reload_and_a_logout(server, browser):  # noqa: F811
    light, dark = rgb(THEME["light"]["backgroundColor"]), rgb(THEME["dark"]["backgroundColor"])
    page = new_page(browser)
    page.goto(server.url + "/")
    wait_for_text(page, "User name")
    settle(page)  # the server's first run: typing into a form still running can be lost
    page.get_by_role("textbox", name="User name").fill("admin")
    page.get_by_role("textbox", name="Password").fill(server.admin_password())
    page.get_by_role("button", name="Log in").click()
    wait_for_text(page, "Log out", timeout=60)
    # The tab was loaded on "/"; Runs is reached from the sidebar, without a reload.
    page.get_by_test_id("stSidebarNav").get_by_text("Runs").click()
    wait_for_text(page, "Run history")
    settle(page)
    assert background(page, light) == light  # headless Chromium's system setting is light
    page.get_by_test_id("stMainMenu").click()
    page.get_by_test_id("stMainMenuItem-theme-Dark").click()
    page.keyboard.press("Escape")
    assert background(page, dark) == dark

    page.reload()
    wait_for_text(page, "Run history")
    settle(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "theme_dark_after_reload.png"))
    assert background(page, dark) == dark, "Dark picked on Runs was lost on reloading Runs"

    page.goto(f"{server.url}/live")  # another page, loaded afresh
    wait_for_text(page, "Live training")
    settle(page)
    assert background(page, dark) == dark

    page.get_by_role("button", name="Log out").click()  # the login page, then the next login
    wait_for_text(page, "User name")
    settle(page)
    page.reload()
    wait_for_text(page, "User name")
    settle(page)
    assert background(page, dark) == dark
    page.context.close()
