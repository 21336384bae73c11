"""Sessions in a real browser: an open Live tab of a removed user, a forged cookie.

Uses ``tests/test_browser.py``'s server and Chromium (a server of its own for
this module). The run watched here is recorded, not trained: a thread writes a
round to the store every quarter second, as a training process would.
"""

from __future__ import annotations

import re
import threading
import time

import jwt
import pytest

from healthsync import auth
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from tests.app_helpers import fake_run

# browser and server are test_browser's module fixtures: this module gets its own.
from tests.test_browser import (  # noqa: F401
    browser,
    log_in,
    new_page,
    server,
    settle,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROUND = re.compile(r"Round (\d+) of 10000")
#: The issue's deadline: a removed user's tab stops receiving rounds within this long.
DEADLINE = 2.0


class RoundWriter(threading.Thread):
    """Records round after round of an active run, every ``every`` seconds, until stopped."""

    def __init__(self, store: MetricsStore, run_id: str, *, first: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.store, self.run_id, self.next, self.every = store, run_id, first, every
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            row = {
                "round": self.next,
                "loss": 0.5,
                "auc": 0.7,
                "accuracy": 0.7,
                "seconds": self.every,
                "hospitals_sampled": 3,
                "hospitals_ok": 3,
                "hospitals_failed": 0,
            }
            runlog.record_round(self.store, self.run_id, row, [])
            self.next += 1


def shown_round(page) -> int | None:
    """The round the Live page's progress bar shows, or ``None`` when it shows none."""
    found = ROUND.search(page.inner_text("body"))
    return int(found.group(1)) if found else None


def test_a_removed_users_open_live_tab_stops_receiving_rounds(server, browser):  # noqa: F811
    users = auth.UserStore(server.home)
    users.add("rita", "viewer", "viewer-password")
    store = MetricsStore(server.db)
    data = server.root / "data" / "demo"
    fake_run(store, "run-live-sessions", data_dir=data, rounds=2, planned=10000, status="running")
    writer = RoundWriter(store, "run-live-sessions", first=3)
    writer.start()
    page = new_page(browser)
    try:
        page.goto(server.url + "/")  # the server's first session: let it settle before typing
        wait_for_text(page, "User name")
        settle(page)
        log_in(page, server.url, "rita", "viewer-password")
        page.goto(f"{server.url}/live?run=run-live-sessions")
        wait_for_text(page, "Round ")
        first = shown_round(page)
        deadline = time.monotonic() + 30
        while (shown_round(page) or 0) <= (first or 0) + 2:  # it streams, without a reload
            assert time.monotonic() < deadline, page.inner_text("body")[:1500]
            page.wait_for_timeout(100)

        users.remove("rita")
        removed = time.monotonic()
        while shown_round(page) is not None:
            waited = time.monotonic() - removed
            assert waited < DEADLINE, f"rounds still shown {waited:.1f} s after removal"
            page.wait_for_timeout(100)
        written = writer.next
        page.wait_for_timeout(2500)  # rounds keep landing in the store meanwhile
        assert writer.next > written + 4
        assert shown_round(page) is None
        assert "Please log in" in page.inner_text("body")
    finally:
        writer.halt.set()
        writer.join()
        runlog.finish_run(store, "run-live-sessions", "cancelled", reason="test over")
        page.context.close()


def test_an_unsigned_cookie_shows_the_login_page_and_logging_in_works(server, browser):  # noqa: F811
    forged = jwt.encode({"username": "admin", "exp_date": time.time() + 3600}, None, "none")
    page = new_page(browser)
    page.context.add_cookies([{"name": "healthsync_session", "value": forged, "url": server.url}])
    page.goto(server.url + "/")
    wait_for_text(page, "User name", "encountered an error")
    settle(page)
    text = page.inner_text("body")
    assert "User name" in text and "encountered an error" not in text, text[:1500]
    assert "Log out" not in text
    auth.UserStore(server.home).add("olga", "viewer", "viewer-password")
    log_in(page, server.url, "olga", "viewer-password")
    page.context.close()
