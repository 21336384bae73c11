"""Sessions in the app (AppTest): cookies a browser may send, logins from several addresses.

AppTest has no browser, so ``st.context.cookies`` and ``st.context.ip_address``
(which Streamlit reads from a session's connection, not from anything AppTest
can seed) are patched by the ``client`` fixture: what a browser would send.
The cookie a form login issues is read from streamlit-authenticator's cookie
component in the rendered page, exactly what the browser would store.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest
from streamlit.runtime.context import ContextProxy
from streamlit.testing.v1 import AppTest

from healthsync.auth.stauth_compat import SKIP_COOKIE
from tests.app_helpers import LOGIN_KEY, ROOT, STATUS_KEY, AppEnv, button, texts

PASSWORD = "admin-password-1"
TEN_YEARS = 10 * 365 * 86400.0


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch, federation=False)
    env.users.set_password("admin", PASSWORD)
    return env


@pytest.fixture
def client(env, monkeypatch):
    """What the browser sends with its connection: its cookies and its address."""
    sent = SimpleNamespace(cookies={}, ip=None)
    monkeypatch.setattr(ContextProxy, "cookies", property(lambda self: sent.cookies))
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: sent.ip))
    return sent


def form_login(at: AppTest, name: str, password: str) -> AppTest:
    """Log in through the form; a successful login's cookie is kept in ``at.issued_cookie``."""
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    button(at, "Log in").click().run()
    if at.session_state[STATUS_KEY]:
        at.issued_cookie = issued_cookie(at)
        at.run()  # in a browser, the cookie component reruns the app once the cookie is set
    return at


def logged_in(at: AppTest) -> bool:
    return not at.exception and button(at, "Log out") is not None


def shows_login_form(at: AppTest) -> bool:
    return not at.exception and [w.label for w in at.text_input] == ["User name", "Password"]


def issued_cookie(at: AppTest) -> str:
    """The session cookie streamlit-authenticator's component was told to store in the browser."""
    for node in at.get("component_instance"):
        args = json.loads(node.proto.json_args)
        if args.get("method") == "set" and args.get("cookie") == "healthsync_session":
            return args["value"]
    raise AssertionError("no session cookie was set")


def signed(env: AppEnv, payload: dict, **kwargs) -> str:
    return jwt.encode(payload, env.users.cookie.key, algorithm="HS256", **kwargs)


# ---------------------------------------------------------------- malformed cookies
def malformed_cookies(env: AppEnv) -> dict[str, str]:
    """Cookies a browser may carry that no HealthSync login ever issued."""
    soon = time.time() + 3600
    return {
        "alg none": jwt.encode({"username": "admin", "exp_date": soon}, None, algorithm="none"),
        "HS512": jwt.encode(
            {"username": "admin", "exp_date": soon}, env.users.cookie.key * 2, algorithm="HS512"
        ),
        "no exp_date": signed(env, {"username": "admin"}),
        "text exp_date": signed(env, {"username": "admin", "exp_date": "soon"}),
        "list username": signed(env, {"username": ["admin"], "exp_date": soon}),
        "expired exp claim": signed(env, {"username": "admin", "exp_date": soon, "exp": 1}),
        "aud claim": signed(env, {"username": "admin", "exp_date": soon, "aud": "x"}),
        "unknown user": signed(env, {"username": "ghost", "exp_date": soon}),
        "not a jwt": "not-a-jwt",
        "bad base64": "a.b.c",
    }


MALFORMED = [
    "alg none",
    "HS512",
    "no exp_date",
    "text exp_date",
    "list username",
    "expired exp claim",
    "aud claim",
    "unknown user",
    "not a jwt",
    "bad base64",
]


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_cookie_is_ignored_and_the_login_form_works(env, client, kind):
    client.cookies = {"healthsync_session": malformed_cookies(env)[kind]}
    at = env.app()
    assert shows_login_form(at), at.exception
    form_login(at, "admin", PASSWORD)
    assert logged_in(at), at.exception


# ---------------------------------------------------------------- login time on the server
def test_stauth_canary_the_issued_cookie_is_the_one_the_server_recorded(env, client):
    """healthsync/auth/stauth_compat.py reads the issued cookie's exp_date from stauth's inside."""
    at = form_login(env.app(), "admin", PASSWORD)
    claims = jwt.decode(at.issued_cookie, env.users.cookie.key, algorithms=["HS256"])
    assert set(claims) == {"username", "exp_date"}
    assert env.sessions.from_cookie(at.issued_cookie) == at.session_state[LOGIN_KEY], (
        "streamlit-authenticator changed how it issues its cookie: see stauth_compat.py"
    )


def test_stauth_canary_a_skipped_cookie_is_not_read(env, client):
    """stauth_compat.SKIP_COOKIE keeps stauth from reading a cookie it would crash on."""
    client.cookies = {"healthsync_session": malformed_cookies(env)["alg none"]}
    at = AppTest.from_function(_stauth_login_only, default_timeout=30)
    at.session_state[SKIP_COOKIE] = True
    at.run()
    assert not at.exception, "streamlit-authenticator no longer honours SKIP_COOKIE"
    at = AppTest.from_function(_stauth_login_only, default_timeout=30)
    at.run()
    assert at.exception  # without it, the same cookie crashes stauth: the canary can fail


def _stauth_login_only() -> None:
    import streamlit as st
    import streamlit_authenticator as stauth

    from healthsync import auth

    users = auth.UserStore(auth.resolve_home())
    key = users.cookie.key
    authenticator = stauth.Authenticate(
        {"usernames": {}}, users.cookie.name, key, 0.5, auto_hash=False, login_sleep_time=0
    )
    authenticator.login(location="unrendered")
    st.write("read")


def test_a_cookie_from_a_form_login_logs_a_new_session_in_until_logout(env, client):
    first = form_login(env.app(), "admin", PASSWORD)
    assert logged_in(first)
    client.cookies = {"healthsync_session": first.issued_cookie}
    restored = env.app()  # a new tab of the same browser
    assert logged_in(restored)
    assert "Logged in as **admin** (admin)" in texts(restored)
    button(restored, "Log out").click().run()
    assert not logged_in(env.app())  # the same cookie, after logout


def test_a_far_future_cookie_no_login_issued_logs_nobody_in(env, client):
    # Signed with the right key (made by someone who read it, or under an older, longer
    # lifetime), but no form login on this server issued it.
    cookie = signed(env, {"username": "admin", "exp_date": time.time() + TEN_YEARS})
    client.cookies = {"healthsync_session": cookie}
    assert shows_login_form(env.app())
    env.sessions.end("admin")  # and certainly not after a logout or a new password
    env.users.set_password("admin", "another-password")
    assert shows_login_form(env.app())


def test_a_cookie_is_worth_nothing_after_a_password_change(env, client):
    first = form_login(env.app(), "admin", PASSWORD)
    client.cookies = {"healthsync_session": first.issued_cookie}
    env.users.set_password("admin", "another-password")
    assert shows_login_form(env.app())


# ---------------------------------------------------------------- lockout
def test_failures_from_one_address_never_lock_the_user_out_of_a_usual_one(env, client):
    client.ip = "10.1.1.1"  # where admin usually logs in from
    assert logged_in(form_login(env.app(), "admin", PASSWORD))
    client.ip = "203.0.113.9"  # someone else, who knows the name
    attacker = env.app()
    for _ in range(5):
        form_login(attacker, "admin", "wrong")
    assert "Too many failed logins" in attacker.error[0].value
    form_login(attacker, "admin", PASSWORD)  # the lock holds at the failing address
    assert not logged_in(attacker)
    client.ip = "10.1.1.1"
    assert logged_in(form_login(env.app(), "admin", PASSWORD))


def test_failures_from_one_address_do_not_lock_a_first_login_elsewhere(env, client):
    env.users.add("nina", "viewer", "nina-password")  # has never logged in
    client.ip = "203.0.113.9"
    attacker = env.app()
    for _ in range(6):
        form_login(attacker, "nina", "wrong")
    client.ip = "10.2.2.2"
    assert logged_in(form_login(env.app(), "nina", "nina-password"))


# ---------------------------------------------------------------- live fragments
def test_every_live_fragment_in_pages_goes_through_the_guard():
    """A fragment's reruns skip the page top, so the check must be inside every fragment."""
    direct = {
        path.name
        for path in (ROOT / "pages").glob("*.py")
        if path.name != "_guard.py" and re.search(r"\bst\.fragment\b", path.read_text())
    }
    assert direct == set(), f"use pages._guard.live_fragment instead of st.fragment in {direct}"
    assert {"live.py", "stress.py"} <= {
        path.name
        for path in Path(ROOT / "pages").glob("*.py")
        if "live_fragment(" in path.read_text()
    }


def _fragment_page() -> None:
    """A page with one live fragment; ``fragment_rerun`` skips its top, as a fragment rerun does."""
    import streamlit as st

    from pages._guard import live_fragment, require

    if not st.session_state.get("fragment_rerun"):
        require("view")

    @live_fragment("view")
    def rounds() -> None:
        st.markdown("secret round data")

    rounds()


def test_a_live_fragment_checks_the_session_on_its_own_reruns(env):
    at = AppTest.from_function(_fragment_page, default_timeout=30)
    env.log_in(at, "viewer")
    at.run()
    assert not at.exception and [m.value for m in at.markdown] == ["secret round data"]
    at.session_state["fragment_rerun"] = True
    at.run()
    assert [m.value for m in at.markdown] == ["secret round data"]  # still logged in
    env.users.remove("viewer-user")
    at.run()
    assert not at.exception
    assert "secret round data" not in [m.value for m in at.markdown]
    assert "Please log in" in [t.value for t in at.title]


@pytest.mark.parametrize("https", [False, True])
def test_stauth_canary_the_login_cookie_is_secure_under_https(https):
    """stauth_compat.mark_cookie_secure reaches the options stauth's cookie is set with."""
    import streamlit as st
    import streamlit_authenticator as stauth

    from healthsync.auth.stauth_compat import mark_cookie_secure

    authenticator = stauth.Authenticate({"usernames": {}}, "c", "k" * 32, 1.0, auto_hash=False)
    model = authenticator.cookie_controller.cookie_model
    sent: list[dict] = []
    model.cookie_manager.cookie_manager = lambda **call: sent.append(call)  # the component
    if https:
        mark_cookie_secure(authenticator)
    st.session_state["username"] = "ana"
    model.set_cookie()  # what stauth does at a form login
    assert [call["method"] for call in sent] == ["set"]
    assert sent[0]["options"].get("secure") is (True if https else None)
