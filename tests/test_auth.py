"""Users, roles, password hashing, login lockout and which sessions count (healthsync.auth)."""

import stat

import bcrypt
import jwt
import pytest
import yaml

from healthsync import auth
from healthsync.errors import HealthSyncError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def users(tmp_path, clock):
    store = auth.UserStore(tmp_path / "home", rounds=4, clock=clock)
    store.admin_password = store.ensure()
    clock.now += 1
    return store


@pytest.fixture
def sessions(users):
    return auth.Sessions(users, max_failures=5, lock_seconds=300)


def stauth_cookie(name: str, key: str, *, issued: float) -> str:
    """A cookie as streamlit-authenticator 0.4.2 makes it (CookieModel._token_encode)."""
    payload = {"username": name.lower(), "exp_date": issued + auth.SESSION_SECONDS}
    return jwt.encode(payload, key, algorithm="HS256")


def test_first_use_creates_private_file_with_one_admin(users):
    assert users.admin_password and len(users.admin_password) >= 16
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    text = users.path.read_text()
    assert users.admin_password not in text  # only a bcrypt hash is stored
    data = yaml.safe_load(text)
    assert data["users"]["admin"]["password"].startswith("$2b$")
    assert len(data["cookie"]["key"]) == 64
    assert data["users"]["admin"]["sessions_after"] == 1_000_000.0
    assert users.users() == [auth.User("admin", "admin")]
    assert users.verify("admin", users.admin_password) == auth.User("admin", "admin")
    assert users.ensure() is None  # the password is shown only once


def test_every_home_gets_its_own_cookie_key_and_password(tmp_path, users):
    other = auth.UserStore(tmp_path / "other", rounds=4)
    assert other.ensure() != users.admin_password
    assert other.cookie.key != users.cookie.key
    assert users.cookie.name == "healthsync_session" and users.cookie.days == 0.5


def test_add_verify_and_change_users(users):
    generated = users.add("ana", "analyst")
    assert users.verify("ana", generated) == auth.User("ana", "analyst")
    assert users.verify("ana", "wrong password") is None
    assert users.verify("nobody", generated) is None
    assert users.add("vic", "viewer", "correct horse battery") == "correct horse battery"
    users.set_role("vic", "analyst")
    assert users.get("vic").role == "analyst"
    new = users.set_password("vic")
    assert users.verify("vic", new) and not users.verify("vic", "correct horse battery")
    users.remove("vic")
    assert [u.name for u in users.users()] == ["admin", "ana"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda u: u.add("x", "boss"), "unknown role 'boss'"),
        (lambda u: u.add("admin", "viewer"), "user 'admin' already exists"),
        (lambda u: u.add("bad name", "viewer"), "invalid user name"),
        (lambda u: u.add("shorty", "viewer", "short"), "at least 8 characters"),
        (lambda u: u.add("long", "viewer", "x" * 73), "at most 72 bytes"),
        (lambda u: u.add("spaced", "viewer", " leading space"), "must not start or end"),
        (
            lambda u: u.add("ADMIN", "viewer"),
            "user 'admin' already exists \\(user names ignore case",
        ),
        (lambda u: u.remove("ghost"), "unknown user 'ghost'"),
        (lambda u: u.set_password("ghost"), "unknown user 'ghost'"),
        (lambda u: u.set_role("ghost", "viewer"), "unknown user 'ghost'"),
        (lambda u: u.remove("admin"), "it is the last admin"),
        (lambda u: u.set_role("admin", "viewer"), "it is the last admin"),
    ],
)
def test_clear_errors(users, call, message):
    with pytest.raises(HealthSyncError, match=message):
        call(users)


def test_a_second_admin_makes_the_first_removable(users):
    users.add("boss", "admin")
    users.remove("admin")
    assert [u.name for u in users.users()] == ["boss"]


def test_permissions_by_role():
    assert auth.can("admin", "manage_users") and auth.can("admin", "launch")
    assert auth.can("analyst", "launch") and auth.can("analyst", "cancel")
    assert not auth.can("analyst", "manage_users")
    assert auth.can("viewer", "view") and not auth.can("viewer", "launch")
    assert not auth.can("nobody", "view")


def test_home_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEALTHSYNC_HOME", "secrets")
    assert auth.resolve_home(root=tmp_path) == tmp_path / "secrets"
    monkeypatch.setenv("HEALTHSYNC_HOME", str(tmp_path / "abs"))
    assert auth.resolve_home(root=tmp_path / "elsewhere") == tmp_path / "abs"
    monkeypatch.delenv("HEALTHSYNC_HOME")
    assert auth.resolve_home(root=tmp_path) == tmp_path / ".healthsync"


# ---------------------------------------------------------------- lockout
WRONG = "wrong user name or password (5 failed logins in a row lock a user name for 5 minutes)"


def test_failures_get_one_message_whatever_the_name(sessions):
    assert sessions.failed("admin") == WRONG
    assert sessions.failed(None) == WRONG  # a name that is no user's
    assert sessions.locked_for("admin") == 0


def test_five_failures_lock_the_name_until_the_lock_expires(sessions, users, clock):
    for _ in range(4):
        assert sessions.failed("admin") == WRONG
    assert sessions.failed("admin").endswith("locked, try again in 5 min 00 s")
    clock.now += 60
    assert sessions.locked_for("admin") == 240
    assert sessions.failed("admin").endswith("try again in 4 min 00 s")  # not counted
    assert sessions.locked_for("admin") == 240
    clock.now += 241
    assert sessions.locked_for("admin") == 0


def test_after_a_lock_expires_the_count_starts_again(sessions, clock):
    for _ in range(5):
        sessions.failed("admin")
    clock.now += 301
    for _ in range(4):
        assert sessions.failed("admin") == WRONG
    assert "locked" in sessions.failed("admin")


def test_a_login_resets_the_count(sessions, users):
    for _ in range(4):
        sessions.failed("admin")
    sessions.start("admin")
    for _ in range(4):
        assert sessions.failed("admin") == WRONG


def test_login_state_file_is_private(sessions):
    sessions.failed("admin")
    assert stat.S_IMODE(sessions.path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- what stauth is given
def test_login_credentials_in_stauth_format_with_lower_case_names(sessions, users):
    users.add("Nina", "viewer", "nina-password")
    given = sessions.login_credentials()
    assert set(given) == {"usernames"} and set(given["usernames"]) == {"admin", "nina"}
    nina = given["usernames"]["nina"]
    assert nina["name"] == "Nina"
    assert bcrypt.checkpw(b"nina-password", nina["password"].encode())
    assert "role" not in nina and "sessions_after" not in nina


def test_a_locked_user_is_given_a_hash_no_password_matches(sessions, users, clock):
    for _ in range(5):
        sessions.failed("admin")
    hashed = sessions.login_credentials()["usernames"]["admin"]["password"]
    assert hashed.startswith("$2b$04$")  # a real bcrypt hash: checking it costs the same
    assert not bcrypt.checkpw(users.admin_password.encode(), hashed.encode())
    clock.now += 301
    hashed = sessions.login_credentials()["usernames"]["admin"]["password"]
    assert bcrypt.checkpw(users.admin_password.encode(), hashed.encode())


def test_names_differing_only_in_case_are_not_given(sessions, users):
    data = yaml.safe_load(users.path.read_text())
    data["users"]["Admin"] = dict(data["users"]["admin"])  # written by an older version
    users.path.write_text(yaml.safe_dump(data))
    assert sessions.login_credentials() == {"usernames": {}}


def test_failed_name_is_the_entry_stauth_marked(sessions):
    given = sessions.login_credentials()
    assert sessions.failed_name(given) is None
    given["usernames"]["admin"]["failed_login_attempts"] = 1  # as stauth does
    assert sessions.failed_name(given) == "admin"


# ---------------------------------------------------------------- sessions
def test_a_login_counts_until_logout(sessions, clock):
    login = sessions.start("admin")
    assert sessions.user_for(login) == auth.User("admin", "admin")
    clock.now += 1
    sessions.end("admin")
    assert sessions.user_for(login) is None
    clock.now += 1
    assert sessions.user_for(sessions.start("admin")) is not None  # a new login counts


def test_logins_expire_with_their_cookie(sessions, clock):
    login = sessions.start("admin")
    clock.now += auth.SESSION_SECONDS - 1
    assert sessions.user_for(login) is not None
    clock.now += 1
    assert sessions.user_for(login) is None


def test_a_stauth_cookie_stands_for_a_login_issued_when_it_was_made(sessions, users, clock):
    cookie = stauth_cookie("admin", users.cookie.key, issued=clock.now)
    assert sessions.from_cookie(cookie) == auth.Login("admin", clock.now)
    assert sessions.user_for(sessions.from_cookie(cookie)) == auth.User("admin", "admin")
    users.add("Nina", "viewer", "nina-password")
    clock.now += 1
    assert sessions.from_cookie(stauth_cookie("nina", users.cookie.key, issued=clock.now)).name == (
        "Nina"
    )


def test_a_copied_cookie_is_worthless_after_logout(sessions, users, clock):
    cookie = stauth_cookie("admin", users.cookie.key, issued=clock.now)
    clock.now += 60
    sessions.end("admin")
    assert sessions.user_for(sessions.from_cookie(cookie)) is None
    clock.now += 1
    fresh = stauth_cookie("admin", users.cookie.key, issued=clock.now)
    assert sessions.user_for(sessions.from_cookie(fresh)) is not None


@pytest.mark.parametrize("cookie", [None, "", "garbage", "a.b.c", 42])
def test_malformed_cookies_are_rejected(sessions, cookie):
    assert sessions.from_cookie(cookie) is None


def test_tampered_foreign_or_unknown_cookies_are_rejected(sessions, users, clock, tmp_path):
    cookie = stauth_cookie("admin", users.cookie.key, issued=clock.now)
    body, signature = cookie.rsplit(".", 1)
    assert sessions.from_cookie(f"{body}.{signature[::-1]}") is None
    assert sessions.from_cookie(stauth_cookie("admin", "k" * 64, issued=clock.now)) is None
    assert sessions.from_cookie(stauth_cookie("ghost", users.cookie.key, issued=clock.now)) is None
    no_expiry = jwt.encode({"username": "admin"}, users.cookie.key, algorithm="HS256")
    assert sessions.from_cookie(no_expiry) is None
    other = auth.UserStore(tmp_path / "other", rounds=4)
    other.ensure()
    assert auth.Sessions(other).from_cookie(cookie) is None  # a different signing key


def test_password_change_removal_and_role_change_apply_to_open_sessions(sessions, users, clock):
    users.add("ana", "analyst")
    clock.now += 1
    login = sessions.start("ana")
    users.set_role("ana", "viewer")
    assert sessions.user_for(login) == auth.User("ana", "viewer")
    clock.now += 1
    users.set_password("ana")
    assert sessions.user_for(login) is None
    clock.now += 1
    login = sessions.start("ana")
    users.remove("ana")
    assert sessions.user_for(login) is None
    users.add("ana", "admin")  # the same name again: old logins stay dead
    assert sessions.user_for(login) is None
