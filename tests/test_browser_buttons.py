"""Every role presses every button on every page it can open, in a real browser.

The demo's promise is that nothing a first-time audience clicks breaks. So,
for a viewer, an analyst and then an admin, this opens each page of the role's
menu and clicks each button of the page's main area (form submits included),
one after another, with the inputs as the page offers them, and fails on any
Streamlit exception or error box that appears. Buttons that start heavy work
are pressed too, with the page's own inputs narrowed first where the defaults
would take minutes on two cores (a stress sweep of one small measurement, a
one-round training run). The sidebar's "Log out" is left for last.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from healthsync import auth
from healthsync.cohort.facts import publish
from healthsync.data import load_federation
from healthsync.runs.store import MetricsStore
from tests import test_browser
from tests.app_helpers import fake_run, make_federation
from tests.engine_helpers import stop_processes_naming
from tests.test_browser import (
    CHROMIUM,
    Server,
    new_page,
    settle,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "a-long-password"
#: The pages an analyst opens; an admin opens them too, and Users (last: its buttons edit users).
ANALYST_PAGES = [
    "Overview",
    "How it works",
    "Launch",
    "Live training",
    "Runs",
    "Model",
    "Cohort explorer",
    "Stress test",
]
#: Menu entries per role, in the order they are visited (each role's whole menu). A steward's
#: My hospital comes last: its Withdraw button takes the hospital out of later pages' runs.
ROLES = {
    "viewer": ["Overview", "How it works", "Live training", "Runs", "Model", "Stress test"],
    "steward": [
        "Overview",
        "How it works",
        "Live training",
        "Runs",
        "Model",
        "Stress test",
        "My hospital",
    ],
    "analyst": ANALYST_PAGES,
    "admin": [*ANALYST_PAGES, "Users"],
}
#: The default run's admin opens only the page no other role has (Users): the analyst's pages
#: are the same code with the same buttons, and pressing their heavy ones again (a training
#: run, baselines, a sweep, a cohort query: three Ray starts) took 110 s on two cores. The
#: extended tier (``-m extended``) runs the admin through the whole menu.
ADMIN_ONLY = ["Users"]
ERRORS = (
    "[data-testid='stException'], [data-testid='stAlertContentError'], "
    "[data-testid='stNotificationContentError']"
)
#: Each menu entry's page title: a page has opened once its title shows (not the last one's).
TITLES = {
    "Overview": "Federation overview",
    "How it works": "How it works",
    "Launch": "Launch a training run",
    "Live training": "Live training",
    "Runs": "Run history",
    "Model": "Global model",
    "Cohort explorer": "Cohort explorer",
    "Stress test": "Stress test",
    "Users": "Users and roles",
    "My hospital": "My hospital",
}
#: Buttons each role must find and press, per page: a page has loaded once they show (the
#: first model load imports torch). The world below has a finished run, so Runs offers its
#: downloads; Live training's Cancel shows only while a run is active, so it is not listed.
_ANALYST_EXPECTS = {
    "Launch": ["Start training"],
    "Runs": ["Train baselines and compare", "Rounds (CSV)"],
    "Model": ["Estimate risk"],
    "Cohort explorer": ["Run query"],
    "Stress test": ["Run sweep"],
}
EXPECTED = {
    "viewer": {"Runs": ["Rounds (CSV)"], "Model": ["Estimate risk"]},
    "steward": {
        "Runs": ["Rounds (CSV)"],
        "Model": ["Estimate risk"],
        "My hospital": ["Withdraw my hospital", "Tighten policy"],
    },
    "analyst": _ANALYST_EXPECTS,
    "admin": {
        **_ANALYST_EXPECTS,
        "Users": ["Add user", "Change role", "Generate a new password", "Remove user"],
    },
}
#: The app's own buttons (not the hover toolbars Streamlit adds to charts and tables).
MAIN_BUTTONS = (
    "[data-testid='stMain'] :is([data-testid='stButton'], [data-testid='stFormSubmitButton'], "
    "[data-testid='stDownloadButton']) button:visible"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium")
    root = tmp_path_factory.mktemp("buttons")
    data = root / "data" / "demo"
    make_federation(data, hospitals=3, patients=1000)
    publish(load_federation(data))
    users = auth.UserStore(root / "home")
    users.ensure()
    users.set_password("admin", PASSWORD)
    for role in ("viewer", "analyst"):
        users.add(f"{role}-user", role, PASSWORD)
    steward_of = load_federation(data).hospitals[0].id
    users.add("steward-user", "steward", PASSWORD, federation=str(data), hospital=steward_of)
    store = MetricsStore(root / "data" / "healthsync.duckdb")
    fake_run(store, "run-recorded", data_dir=data, rounds=4, model=True)
    server = Server(root)
    try:
        server.wait_healthy()
        yield server
    finally:
        _stop_everything_started(server)
        server.stop()


browser = test_browser.browser  # the same module-scoped Chromium fixture


@pytest.mark.parametrize(
    "role",
    [
        # A steward's menu is the viewer's and My hospital, with the same buttons: the default
        # run presses them as a steward, the extended tier as a viewer too.
        pytest.param("viewer", marks=pytest.mark.extended),
        "steward",
        "analyst",
        pytest.param("admin", id="admin-users"),
        pytest.param("admin", id="admin-every-page", marks=pytest.mark.extended),
    ],
)
def test_every_button_on_every_page_works(world, browser, role, request):
    menu = ADMIN_ONLY if request.node.callspec.id == "admin-users" else ROLES[role]
    page = new_page(browser)
    name = "admin" if role == "admin" else f"{role}-user"
    sign_in(page, world.url, name)
    pressed: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for title in menu:
        started = time.monotonic()
        open_page(page, title, EXPECTED[role].get(title, []))
        pressed[title] = press_every_button(page, title)
        seconds[title] = time.monotonic() - started
    page.get_by_role("button", name="Log out").click()
    wait_for_text(page, "User name")
    assert_no_error(page, "after Log out")
    page.context.close()
    print(
        f"\n{role}: "
        + "; ".join(f"{t} ({seconds[t]:.0f} s): {', '.join(pressed[t]) or '-'}" for t in pressed)
    )
    for title in menu:  # a page that never drew its buttons fails
        labels = EXPECTED[role].get(title, [])
        missing = [want for want in labels if not any(want in got for got in pressed[title])]
        assert not missing, f"{role} found no {missing} to press on {title}"


def sign_in(page, url: str, name: str) -> None:
    """Log in once the first page has settled (typing into a page still loading can be lost)."""
    page.goto(url + "/")
    wait_for_text(page, "User name")
    settle(page)
    for _ in range(3):
        page.get_by_role("textbox", name="User name").fill(name)
        page.get_by_role("textbox", name="Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        with contextlib.suppress(AssertionError):
            wait_for_text(page, "Log out", timeout=30)
            return
    raise AssertionError(f"{name} could not log in")


def open_page(page, title: str, expected: list[str]) -> None:
    """Open ``title`` from the menu and wait until it, not the page before, is drawn.

    Right after the click the last page is still shown (Streamlit's running
    indicator can be late): its buttons, all pressed already, would be taken
    for this page's, and this page's own never pressed. So wait for the page's
    title, then for the last ``expected`` button (drawn after the page's charts).
    """
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.wait_for_function(  # a title may go on after a colon ("My hospital: St Anne's")
        "t => (document.querySelector(\"[data-testid='stMain'] h1\")?.innerText.trim() ?? '')"
        ".split(':')[0] === t",
        arg=TITLES[title],
        timeout=60_000,
    )
    settle(page)
    if expected:  # the last listed is drawn last (lowest on the page, or the last tab's name)
        wait_for_text(page, expected[-1], timeout=90)
    assert_no_error(page, f"opening {title}")


def prepare_inputs(page, title: str) -> None:
    """Fill what a user fills before pressing; where defaults take minutes, ask for less."""
    if title == "Stress test" and page.get_by_text("Run sweep").count():
        _keep_only(page, "Hospital counts", "10")
        _keep_only(page, "Ways to run", "Vectorised")
        _fill(page, "Rounds (the first includes warm-up)", "2")
        _fill(page, "Mean patients per hospital", "50")
    if title == "Launch":
        _fill(page, "Rounds", "1")
    if title == "My hospital":  # a steward says why when withdrawing (the reason is recorded)
        _fill(page, "Reason (recorded)", "a button test")
    if title.startswith("Users/Add"):  # an admin fills a form before sending it
        _fill(page, "User name", "new-user")
    if title.startswith("Users/Reset"):  # ...and keeps their own password
        _choose(page, "Generate a new password", "viewer-user")


def press_every_button(page, title: str) -> list[str]:
    """Every button of the page, tab by tab where the page has tabs."""
    tabs = page.locator("[data-testid='stMain'] [role='tab']")
    if not tabs.count():
        prepare_inputs(page, title)
        return press_visible_buttons(page, title)
    done: list[str] = []
    for i in range(tabs.count()):
        settle(page)  # the last press's rerun first: it opens the first tab again
        tab = page.locator("[data-testid='stMain'] [role='tab']").nth(i)
        name = tab.inner_text().strip()
        tab.click()
        page.wait_for_function(
            "i => document.querySelectorAll(\"[data-testid='stMain'] [role='tab']\")[i]"
            ".getAttribute('aria-selected') === 'true'",
            arg=i,
        )
        page.wait_for_timeout(300)
        prepare_inputs(page, f"{title}/{name}")
        # A press reruns the page, which opens the first tab again: never press a label twice.
        done += press_visible_buttons(page, f"{title}/{name}", skip=done)
    return done


def press_visible_buttons(page, title: str, skip: list[str] = ()) -> list[str]:
    """Click each visible, enabled main-area button once, the next one chosen afresh each time.

    A press reruns the page, which may add, remove or redraw buttons (a run
    started shows Cancel; a submitted form redraws its tab). Choosing a button
    and clicking it happen in one step in the page, so no click goes to a
    button that went away in between (pressing by a position counted earlier
    did, now and then).
    """
    done: list[str] = []
    looks_again = 3  # a page whose fragment reruns every second is always "running" now and then
    for _ in range(MAX_PRESSES + looks_again):
        label = page.locator(MAIN_BUTTONS).evaluate_all(PRESS_NEXT, [*done, *skip])
        if label is None:
            if not looks_again or not script_running(page):
                return done
            # Looked mid-rerun (a busy machine starts a press's rerun late, after settle
            # returned): the page's lower buttons were not drawn yet. Look again once it ends.
            looks_again -= 1
            settle(page)
            continue
        settle(page)
        assert_no_error(page, f"pressing {label!r} on {title}")
        done.append(label)
    raise AssertionError(f"{title}: over {MAX_PRESSES} buttons; does a press keep adding some?")


def script_running(page) -> bool:
    """Whether Streamlit is still running the page's script (its app root says so)."""
    state = page.locator("[data-testid='stApp']").first.get_attribute("data-test-script-state")
    return state in ("running", "rerunRequested")


#: A bound on one tab's presses (every press adds a label that is never pressed again).
MAX_PRESSES = 30
#: Click the first enabled button whose label was not pressed yet; return its label (or null).
PRESS_NEXT = """(buttons, pressed) => {
    for (const [i, b] of buttons.entries()) {
        const text = (b.innerText || b.getAttribute('aria-label') || '').replace(/\\s+/g, ' ').trim();
        const label = text || `(icon ${i})`;
        if (!b.disabled && !pressed.includes(label)) { b.click(); return label; }
    }
    return null;
}"""


def assert_no_error(page, when: str) -> None:
    errors = page.locator(ERRORS)
    if errors.count():
        texts = [errors.nth(i).inner_text()[:400] for i in range(errors.count())]
        raise AssertionError(f"error box {when}: {texts}")


def _keep_only(page, label: str, option: str) -> None:
    """In the multiselect labelled ``label``, remove every chosen value but ``option``."""
    box = page.locator("[data-testid='stMultiSelect']", has_text=label).first
    for _ in range(12):
        chips = box.locator("[data-baseweb='tag']")
        others = [
            chips.nth(i) for i in range(chips.count()) if option not in chips.nth(i).inner_text()
        ]
        if not others:
            break
        others[0].locator("[role='presentation']").last.click()
        page.wait_for_timeout(200)


def _choose(page, submit: str, option: str) -> None:
    """Pick ``option`` in the selectbox of the form whose submit button reads ``submit``."""
    form = page.locator("[data-testid='stForm']", has=page.get_by_role("button", name=submit))
    form.locator("[data-testid='stSelectbox']").first.click()
    page.get_by_role("option", name=option).click()
    page.wait_for_timeout(200)


def _fill(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    if field.count():
        field.first.fill(value)
        field.first.press("Tab")
        page.wait_for_timeout(200)


def _stop_everything_started(server: Server) -> None:
    """What the buttons started lives in its own sessions: runs, sweeps, the cohort service.

    All of them name this test's folder on their command line (``--data``,
    ``--db``, a sweep's work dir); stop those and everything they started (Ray's
    processes rename themselves), and nothing else on the machine.
    """
    stop_processes_naming(str(server.root).encode())
