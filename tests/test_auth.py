"""Users, roles, password hashing, login lockout and session tokens (healthsync.auth)."""

import stat

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
def users(tmp_path):
    store = auth.UserStore(tmp_path / "home", rounds=4)
    store.admin_password = store.ensure()
    return store


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sessions(users, clock):
    return auth.Sessions(users, clock=clock, max_failures=5, lock_seconds=300)


def test_first_use_creates_private_file_with_one_admin(users):
    assert users.admin_password and len(users.admin_password) >= 16
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    text = users.path.read_text()
    assert users.admin_password not in text  # only a bcrypt hash is stored
    data = yaml.safe_load(text)
    assert data["users"]["admin"]["password"].startswith("$2b$")
    assert len(data["cookie"]["key"]) == 64
    assert users.users() == [auth.User("admin", "admin")]
    assert users.verify("admin", users.admin_password) == auth.User("admin", "admin")
    assert users.ensure() is None  # the password is shown only once


def test_every_home_gets_its_own_cookie_key_and_password(tmp_path, users):
    other = auth.UserStore(tmp_path / "other", rounds=4)
    assert other.ensure() != users.admin_password
    assert other.cookie_key != users.cookie_key


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
def test_login_and_wrong_password_message(sessions, users):
    assert sessions.login(" admin ", users.admin_password).name == "admin"
    with pytest.raises(HealthSyncError, match="wrong user name or password \\(4 attempts left"):
        sessions.login("admin", "nope")


def test_five_failures_lock_the_name_until_the_lock_expires(sessions, users, clock):
    for _ in range(4):
        with pytest.raises(HealthSyncError, match="wrong user name or password"):
            sessions.login("admin", "nope")
    with pytest.raises(HealthSyncError, match="locked, try again in 5 min 00 s"):
        sessions.login("admin", "nope")
    clock.now += 60
    assert sessions.locked_for("admin") == 240
    with pytest.raises(HealthSyncError, match="locked, try again in 4 min 00 s"):
        sessions.login("admin", users.admin_password)  # even the right password waits
    clock.now += 241
    assert sessions.locked_for("admin") == 0
    assert sessions.login("admin", users.admin_password).name == "admin"


def test_after_a_lock_expires_the_count_starts_again(sessions, clock):
    for _ in range(5):
        with pytest.raises(HealthSyncError):
            sessions.login("admin", "nope")
    clock.now += 301
    with pytest.raises(HealthSyncError, match="4 attempts left"):
        sessions.login("admin", "nope")


def test_success_resets_failures_and_unknown_names_lock_too(sessions, users):
    for _ in range(3):
        with pytest.raises(HealthSyncError):
            sessions.login("admin", "nope")
    sessions.login("admin", users.admin_password)
    with pytest.raises(HealthSyncError, match="4 attempts left"):
        sessions.login("admin", "nope")
    for _ in range(5):
        with pytest.raises(HealthSyncError):
            sessions.login("ghost", "nope")
    assert sessions.locked_for("ghost") > 0
    assert sessions.locked_for("admin") == 0


def test_login_state_file_is_private(sessions):
    with pytest.raises(HealthSyncError):
        sessions.login("admin", "nope")
    assert stat.S_IMODE(sessions.path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- tokens
def test_token_round_trip_and_logout_revokes_it(sessions):
    token = sessions.issue(auth.User("admin", "admin"))
    assert sessions.user_for(token) == auth.User("admin", "admin")
    sessions.revoke(token)
    assert sessions.user_for(token) is None
    other = sessions.issue(auth.User("admin", "admin"))
    assert sessions.user_for(other) is not None  # only that session ended


def test_tokens_expire(sessions, clock):
    token = sessions.issue(auth.User("admin", "admin"))
    clock.now += sessions.session_seconds + 1
    assert sessions.user_for(token) is None


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "e30.deadbeef"])
def test_malformed_tokens_are_rejected(sessions, token):
    assert sessions.user_for(token) is None


def test_tampered_or_foreign_tokens_are_rejected(sessions, users, tmp_path):
    token = sessions.issue(auth.User("admin", "admin"))
    body, signature = token.split(".")
    assert sessions.user_for(f"{body}.{'0' * len(signature)}") is None
    assert sessions.user_for(body[:-2] + "xx." + signature) is None
    other_users = auth.UserStore(tmp_path / "other", rounds=4)
    other_users.ensure()
    assert auth.Sessions(other_users).user_for(token) is None  # different signing key


def test_password_change_removal_and_role_change_apply_to_open_sessions(sessions, users):
    users.add("ana", "analyst")
    token = sessions.issue(auth.User("ana", "analyst"))
    users.set_role("ana", "viewer")
    assert sessions.user_for(token) == auth.User("ana", "viewer")
    users.set_password("ana")
    assert sessions.user_for(token) is None
    token = sessions.issue(users.get("ana"))
    users.remove("ana")
    assert sessions.user_for(token) is None
