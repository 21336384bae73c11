"""The app in a real browser (Playwright + Debian's Chromium) against a real server and run.

One server for the module, started fresh: the first test opens every page's
URL before any session has run ``app.py`` (when Streamlit serves
``pages/*.py`` directly), so it proves the pages' own guards. Screenshots go to
``test-artifacts/screenshots/`` for a human to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from healthsync import auth
from healthsync.cohort.facts import publish
from healthsync.config import TrainConfig
from healthsync.data import load_federation
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore
from tests.app_helpers import ROOT, fake_run, make_federation

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
# URL, and the page's own title: what must NOT show without the right to see it.
PAGES = {
    "overview": "Federation overview",
    "how_it_works": "One round, step by step",
    "launch": "Launch a training run",
    "live": "Live training",
    "runs": "Run history",
    "model": "Global model",
    "cohort": "Cohort explorer",
    "stress": "Stress test",
    "admin": "Users and roles",
}
LOGIN_MARKERS = ("Please log in", "User name")


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.db = root / "data" / "healthsync.duckdb"
        self.log_path = root / "server.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://localhost:{self.port}"
        env = {
            **os.environ,
            "HEALTHSYNC_HOME": str(self.home),
            "HEALTHSYNC_DB": str(self.db),
            "HEALTHSYNC_DATA_ROOT": str(root / "data"),
        }
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(ROOT / "app.py"),
                "--server.headless",
                "true",
                "--server.port",
                str(self.port),
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"server not healthy after {timeout} s:\n{self.log_path.read_text()}")

    def admin_password(self, timeout: float = 30) -> str:
        """The password printed once on stdout when the first session created the file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"user 'admin', password: (\S+)", self.log_path.read_text())
            if found:
                return found.group(1)
            time.sleep(0.2)
        raise AssertionError(f"no admin password printed:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        store = MetricsStore(self.db)
        if self.db.exists():  # runs started from the browser live in their own sessions
            active = runlog.list_runs(store).filter(pl.col("status").is_in(runlog.ACTIVE))
            for run_id in active["run_id"]:
                pid = runlog.get_run(store, run_id)["pid"]
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGTERM)
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium")
    root = tmp_path_factory.mktemp("browser")
    # Enough test patients that the ROC has bins of 11 of each class to release.
    make_federation(root / "data" / "demo", hospitals=3, patients=500)
    publish(load_federation(root / "data" / "demo"))  # as `healthsync data generate` does
    server = Server(root)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def new_page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    return context.new_page()


def wait_for_text(page, *needles: str, timeout: float = 30) -> str:
    """Poll the page's text (no reload) until one of ``needles`` shows; return the text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page.inner_text("body")
        if any(n in text for n in needles):
            return text
        page.wait_for_timeout(250)
    raise AssertionError(
        f"none of {needles} appeared within {timeout} s; page shows:\n{text[:2000]}"
    )


def settle(page) -> None:
    """Give Streamlit time to finish the script run (its running indicator gone), then a moment."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_timeout(300)
    with contextlib.suppress(PlaywrightTimeout):  # a busy machine: go on, assertions still wait
        page.wait_for_function(
            "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000
        )
    page.wait_for_timeout(500)


def screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the window to fit it."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
        "[data-testid=stMainBlockContainer]')].map(e => e.scrollHeight), 900)"
    )
    page.set_viewport_size({"width": 1400, "height": height + 40})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 900})


def log_in(page, url: str, name: str, password: str) -> None:
    page.goto(url + "/")
    wait_for_text(page, "User name")
    page.get_by_role("textbox", name="User name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    wait_for_text(page, "Log out")


def assert_shows_no_data(page, *, titles: list[str]) -> None:
    text = page.inner_text("body")
    for title in titles:
        assert title not in text, f"{title!r} visible:\n{text[:1500]}"
    assert page.locator(".vega-embed").count() == 0
    assert page.locator('[data-testid="stDataFrame"]').count() == 0
    assert page.locator('[data-testid="stForm"]').count() <= 1  # at most the login form


def test_pages_opened_by_url_show_no_data_without_the_right_role(server, browser):
    # First thing after the server starts: no session has run app.py yet.
    page = new_page(browser)
    for name, title in PAGES.items():
        page.goto(f"{server.url}/{name}")
        wait_for_text(page, *LOGIN_MARKERS)
        settle(page)
        assert_shows_no_data(page, titles=list(PAGES.values()))
        assert title not in page.inner_text("body")
    # Once app.py has run (and called st.navigation), logged out still means the login page.
    # Every page runs the same guard (AppTest opens each one logged out): one per menu section.
    page.goto(server.url + "/")
    wait_for_text(page, "User name")
    password = server.admin_password()
    for name in ("overview", "launch", "model", "admin"):
        page.goto(f"{server.url}/{name}")
        wait_for_text(page, "User name")
        settle(page)
        assert_shows_no_data(page, titles=list(PAGES.values()))
    page.context.close()

    auth.UserStore(server.home).add("vic", "viewer", "viewer-password")
    viewer = new_page(browser)
    log_in(viewer, server.url, "vic", "viewer-password")
    for name in ("launch", "cohort", "admin"):
        viewer.goto(f"{server.url}/{name}")
        wait_for_text(viewer, "Log out")
        settle(viewer)
        text = viewer.inner_text("body")
        for hidden in (PAGES[name], "Start training", "Add user", "Reset password"):
            assert hidden not in text
        assert viewer.get_by_role("spinbutton").count() == 0
    viewer.context.close()
    assert password


def test_launch_a_run_and_watch_it_live_without_reloading(server, browser):
    page = new_page(browser)
    log_in(page, server.url, "admin", server.admin_password())
    page.goto(f"{server.url}/launch")
    wait_for_text(page, "Start training")
    settle(page)
    page.get_by_role("spinbutton", name="Rounds").fill("3")
    page.get_by_role("button", name="Start training").click()
    wait_for_text(page, "Round 0 of 3", "Round 1 of 3", "Round 2 of 3", "Round 3 of 3", timeout=30)
    assert "run=run-" in page.url
    page.evaluate("window.__noReload = true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screenshot(page, SCREENSHOTS / "3_live_starting.png")
    text = wait_for_text(page, "Round 3 of 3", timeout=150)  # ~40 s, more on a busy machine
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"
    assert "failed" not in text.split("Round 3 of 3")[1][:40], text[:1500]
    # The finished run redraws once as a whole; its charts arrive over the next seconds.
    page.wait_for_function("document.querySelectorAll('.vega-embed').length >= 3", timeout=30_000)
    run_id = page.url.split("run=")[1].split("&")[0]

    # A second tab of the same browser is logged in by the cookie and sees the same numbers.
    other = page.context.new_page()
    other.goto(f"{server.url}/live?run={run_id}")
    wait_for_text(other, "Round 3 of 3 · completed")
    wait_for_text(page, "Round 3 of 3 · completed")
    assert f"run={run_id}" in other.url
    page.context.close()


def test_screenshots_of_every_page(server, browser):
    """One full-page PNG per page; a second, recorded (not trained) run fills the comparison."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    store = MetricsStore(server.db)
    (real,) = runlog.list_runs(store)["run_id"]
    fake_run(
        store,
        "run-recorded-fedprox",
        data_dir=server.root / "data" / "demo",
        rounds=5,
        model=True,
        strategy="fedprox",
    )
    page = new_page(browser)
    page.goto(server.url + "/")
    wait_for_text(page, "User name")
    screenshot(page, SCREENSHOTS / "0_login.png")
    log_in(page, server.url, "admin", server.admin_password())
    for i, (name, title) in enumerate(PAGES.items(), start=1):
        query = f"?run={real}" if name in ("live", "model") else ""
        page.goto(server.url + ("/" if name == "overview" else f"/{name}") + query)
        wait_for_text(page, title)
        settle(page)
        if name in ("overview", "live", "runs", "model"):
            page.wait_for_selector(".vega-embed", timeout=30_000)
        if name == "model":
            wait_for_text(page, "Estimate risk", timeout=60)  # the first model load imports torch
        screenshot(page, SCREENSHOTS / f"{i}_{name}.png")
        assert "Traceback" not in page.inner_text("body")
    page.context.close()


def test_logout_clears_the_cookie_and_a_reload_shows_the_login(server, browser):
    page = new_page(browser)
    log_in(page, server.url, "admin", server.admin_password())
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "healthsync_session"]
    # streamlit-authenticator's JWT, which our server-side check reads the same way.
    login = auth.Sessions(auth.UserStore(server.home)).from_cookie(cookie["value"])
    assert login is not None and login.name == "admin" and abs(login.issued - time.time()) < 120
    page.get_by_role("button", name="Log out").click()
    wait_for_text(page, "User name")
    settle(page)
    assert "healthsync_session" not in [c["name"] for c in page.context.cookies()]
    page.reload()
    wait_for_text(page, "User name")
    settle(page)
    assert "Log out" not in page.inner_text("body")
    page.context.close()

    # A copy of the cookie taken before the logout no longer logs anyone in.
    thief = new_page(browser)
    thief.context.add_cookies([cookie])
    thief.goto(server.url + "/")
    wait_for_text(thief, "User name")
    settle(thief)
    assert "Log out" not in thief.inner_text("body")
    assert_shows_no_data(thief, titles=list(PAGES.values()))
    thief.context.close()


def test_cancel_on_live_stops_the_run_within_a_round_and_says_so_at_once(server, browser):
    """Issue 14: Cancel at round 5 stopped the run at round 12; the toast came 2.8 s late.

    Rounds of about 2 s (a simulated straggler delay), so that the time the click
    takes to reach the server on a loaded machine (0.1-0.5 s) does not decide the
    outcome: the run must stop after the round in progress at the click.
    """
    config = TrainConfig(
        data_dir=str(server.root / "data" / "demo"),
        db=str(server.db),
        rounds=300,
        straggler_delay=3.0,
    )
    run_id = lifecycle.start_run(config)
    store = MetricsStore(server.db)
    count = "SELECT count(*) FROM rounds WHERE run_id = ?"
    page = new_page(browser)
    page.goto(server.url + "/")  # the first visit prints the admin password, if none has
    wait_for_text(page, "User name")
    log_in(page, server.url, "admin", server.admin_password())
    page.goto(f"{server.url}/live?run={run_id}")
    wait_for_text(page, "Round 2 of 300", "Round 3 of 300", timeout=120)
    settle(page)
    seen = store.scalar(count, [run_id])
    clicked = time.monotonic()
    page.get_by_role("button", name="Cancel run").click()
    while not lifecycle.cancel_signalled(server.db, run_id) and time.monotonic() - clicked < 30:
        time.sleep(0.01)
    flagged = time.monotonic() - clicked
    # The run reads the flag right before each round: from here, the round in progress may
    # finish and no other may start. (Read before the click, a round that ended in the
    # ~0.1 s the click takes to reach the server would count against the run.)
    at_flag = store.scalar(count, [run_id])
    page.locator('[data-testid="stToast"]', has_text="Cancel requested").wait_for(timeout=30_000)
    toast = time.monotonic() - clicked
    run = lifecycle.wait_for_run(server.db, run_id, timeout=120)
    last = store.scalar(count, [run_id])
    print(
        f"cancel flag {flagged:.2f} s and toast {toast:.2f} s after the click; "
        f"clicked at round {seen}, stopped after {last}"
    )
    assert flagged < 10, "the click took too long to reach the server"
    assert run["status"] == "cancelled" and seen <= last <= at_flag + 1
    wait_for_text(page, f"Round {last} of 300 · cancelled")
    page.context.close()


def test_a_steward_logs_in_and_sees_only_their_own_hospital(server, browser):
    """Issue 15: through the real login, My hospital and Live show the steward's hospital only."""
    demo = server.root / "data" / "demo"
    users = auth.UserStore(server.home, rounds=4)
    users.ensure()
    users.add("stew", "steward", "a-long-password", federation=demo, hospital="h0001")
    fake_run(MetricsStore(server.db), "run-steward", data_dir=demo)
    names = {h.id: h.name for h in load_federation(demo).hospitals}
    page = new_page(browser)
    log_in(page, server.url, "stew", "a-long-password")
    settle(page)  # the session cookie is written after the first rerun
    page.get_by_role("link", name="My hospital").click()
    text = wait_for_text(page, "Withdraw my hospital")
    assert f"My hospital: {names['h0001']}" in text
    page.goto(f"{server.url}/live?run=run-steward")
    text = wait_for_text(page, "One hospital")
    settle(page)
    text = page.inner_text("body")
    assert names["h0001"] in text
    others = [names[h] for h in ("h0000", "h0002")]
    assert not any(name in text for name in others), text[:2000]
    # The charts as drawn (Vega's SVG): the heatmap's rows name the steward's hospital only.
    labels = set(page.locator("svg.marks text").all_text_contents())
    assert names["h0001"] in labels and not labels & set(others)


# ---------------------------------------------------------------- theme
# Streamlit files the Light/Dark choice under the URL the tab was loaded from, so Dark
# picked on a page reached from the sidebar used to be lost on reloading that page
# (healthsync/views/theme.py). Last in this module: it ends logged out.
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


def test_dark_picked_on_a_page_holds_after_a_reload_and_a_logout(server, browser):
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
