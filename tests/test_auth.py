"""Users, roles, password hashing, login lockout and which sessions count (healthsync.auth)."""

import json
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


def stauth_cookie(name: str, key: str, *, expires: float) -> str:
    """A cookie as streamlit-authenticator 0.4.2 makes it (CookieModel._token_encode)."""
    return jwt.encode({"username": name.lower(), "exp_date": expires}, key, algorithm="HS256")


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
WRONG = (
    "wrong user name or password (after 5 failed logins in a row, this address must wait "
    "before trying that name again)"
)
HOME, OFFICE, ATTACKER = "10.0.0.5", "10.0.0.6", "203.0.113.9"


def usable(sessions, name, *, client, password):
    """Whether ``password`` would log ``name`` in from ``client`` now (as stauth checks it)."""
    hashed = sessions.login_credentials(client=client)["usernames"][name]["password"]
    return bcrypt.checkpw(password.encode(), hashed.encode())


def test_failures_get_one_message_whatever_the_name(sessions):
    assert sessions.failed("admin", client=ATTACKER) == WRONG
    assert sessions.failed(None, client=ATTACKER) == WRONG  # a name that is no user's
    assert sessions.locked_for("admin", client=ATTACKER) == 0


def test_five_failures_make_that_address_wait_and_no_other(sessions, users, clock):
    sessions.start("admin", client=HOME)
    for _ in range(4):
        assert sessions.failed("admin", client=ATTACKER) == WRONG
    assert sessions.failed("admin", client=ATTACKER) == (
        "too many failed logins from this address: try again in 5 min 00 s"
    )
    clock.now += 60
    assert sessions.locked_for("admin", client=ATTACKER) == 240
    assert sessions.failed("admin", client=ATTACKER).endswith("try again in 4 min 00 s")
    assert sessions.locked_for("admin", client=ATTACKER) == 240  # not counted while locked
    assert sessions.locked_for("admin", client=HOME) == 0
    assert not usable(sessions, "admin", client=ATTACKER, password=users.admin_password)
    assert usable(sessions, "admin", client=HOME, password=users.admin_password)
    clock.now += 241
    assert usable(sessions, "admin", client=ATTACKER, password=users.admin_password)


def test_each_new_lock_of_an_address_lasts_twice_as_long_up_to_an_hour(sessions, clock):
    waits = []
    for _ in range(7):
        for _ in range(5):
            sessions.failed("admin", client=ATTACKER)
        waits.append(sessions.locked_for("admin", client=ATTACKER))
        clock.now += waits[-1] + 1
    assert waits == [300, 600, 1200, 2400, 3600, 3600, 3600]
    clock.now += 24 * 3600  # a day without failures: forgotten
    for _ in range(5):
        sessions.failed("admin", client=ATTACKER)
    assert sessions.locked_for("admin", client=ATTACKER) == 300


def test_failures_far_apart_are_not_in_a_row(sessions, clock):
    for _ in range(10):
        assert sessions.failed("admin", client=ATTACKER) == WRONG
        clock.now += 301


def test_a_login_resets_the_count_of_its_address(sessions):
    for _ in range(4):
        sessions.failed("admin", client=HOME)
    sessions.start("admin", client=HOME)
    for _ in range(4):
        assert sessions.failed("admin", client=HOME) == WRONG


def test_wrong_passwords_every_five_minutes_never_keep_the_user_out(sessions, users, clock):
    """The attack: 5 wrong passwords every 5 minutes from one address, past the longest wait."""
    sessions.start("admin", client=HOME)  # the user's usual address
    users.add("nina", "viewer", "nina-password")  # a user who never logged in yet
    for _ in range(40):  # 200 minutes: the attacker's own waits reach their 1-hour cap
        for name in ("admin", "nina"):
            for _ in range(5):
                sessions.failed(name, client=ATTACKER)
        assert usable(sessions, "admin", client=HOME, password=users.admin_password)
        assert usable(sessions, "admin", client=OFFICE, password=users.admin_password)
        assert usable(sessions, "nina", client=OFFICE, password="nina-password")
        clock.now += 300


def test_many_addresses_together_make_new_addresses_wait_not_usual_ones(sessions, users, clock):
    """A spread guessing attack is throttled for every new address, as one client is."""
    sessions.start("admin", client=HOME)
    for i in range(19):
        assert sessions.failed("admin", client=f"198.51.100.{i}") == WRONG
    message = sessions.failed("admin", client="198.51.100.19")
    assert message == (
        "too many failed logins for this user name from new addresses: try again in "
        "5 min 00 s, or from an address you logged in from before"
    )
    assert sessions.locked_for("admin", client=OFFICE) == 300  # new to admin
    assert sessions.locked_for("admin", client=HOME) == 0
    assert usable(sessions, "admin", client=HOME, password=users.admin_password)
    clock.now += 301
    assert sessions.locked_for("admin", client=OFFICE) == 0


def test_addresses_are_not_stored_in_clear(sessions):
    sessions.start("admin", client=HOME)
    sessions.failed("admin", client=ATTACKER)
    text = sessions.path.read_text()
    assert HOME not in text and ATTACKER not in text


@pytest.mark.parametrize(
    "damage",
    [
        "not json",
        "[]",
        '{"throttle": [], "usual": 1, "cookies": "x"}',
        '{"throttle": {"admin": {"x": {"last": "y"}, "z": 3}}, "usual": {"admin": {"a": "b"}},'
        ' "cookies": {"k": {"name": 1}}}',
        '{"throttle": {"admin": {"x": {"last": 1, "from": [1], "locked_until": "soon"}}}}',
    ],
)
def test_a_damaged_state_file_does_not_break_logging_in(sessions, users, damage):
    sessions.path.write_text(damage)
    assert usable(sessions, "admin", client=HOME, password=users.admin_password)
    assert sessions.failed("admin", client=HOME) == WRONG
    login = sessions.start("admin", client=HOME)
    sessions.issued_cookie(login, login.issued + auth.SESSION_SECONDS)
    cookie = stauth_cookie("admin", users.cookie.key, expires=login.issued + auth.SESSION_SECONDS)
    assert sessions.from_cookie(cookie) == login


def test_login_state_file_is_private(sessions):
    sessions.failed("admin", client=ATTACKER)
    assert stat.S_IMODE(sessions.path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- what stauth is given
def test_login_credentials_in_stauth_format_with_lower_case_names(sessions, users):
    users.add("Nina", "viewer", "nina-password")
    given = sessions.login_credentials(client=HOME)
    assert set(given) == {"usernames"} and set(given["usernames"]) == {"admin", "nina"}
    nina = given["usernames"]["nina"]
    assert nina["name"] == "Nina"
    assert bcrypt.checkpw(b"nina-password", nina["password"].encode())
    assert "role" not in nina and "sessions_after" not in nina


def test_a_locked_address_is_given_a_hash_no_password_matches(sessions, users, clock):
    for _ in range(5):
        sessions.failed("admin", client=ATTACKER)
    hashed = sessions.login_credentials(client=ATTACKER)["usernames"]["admin"]["password"]
    assert hashed.startswith("$2b$04$")  # a real bcrypt hash: checking it costs the same
    assert not bcrypt.checkpw(users.admin_password.encode(), hashed.encode())
    clock.now += 301
    assert usable(sessions, "admin", client=ATTACKER, password=users.admin_password)


def test_names_differing_only_in_case_are_not_given(sessions, users):
    data = yaml.safe_load(users.path.read_text())
    data["users"]["Admin"] = dict(data["users"]["admin"])  # written by an older version
    users.path.write_text(yaml.safe_dump(data))
    assert sessions.login_credentials(client=HOME) == {"usernames": {}}


def test_failed_name_is_the_entry_stauth_marked(sessions):
    given = sessions.login_credentials(client=HOME)
    assert sessions.failed_name(given) is None
    given["usernames"]["admin"]["failed_login_attempts"] = 1  # as stauth does
    assert sessions.failed_name(given) == "admin"


# ---------------------------------------------------------------- sessions
def form_login(sessions, name, *, client=HOME, expiry=None):
    """A form login and the cookie stauth issues for it (made as stauth makes it), recorded."""
    login = sessions.start(name, client=client)
    expires = login.issued + auth.SESSION_SECONDS if expiry is None else expiry
    sessions.issued_cookie(login, expires)
    return login, stauth_cookie(name, sessions.users.cookie.key, expires=expires)


def test_a_login_counts_until_logout(sessions, clock):
    login = sessions.start("admin", client=HOME)
    assert sessions.user_for(login) == auth.User("admin", "admin")
    clock.now += 1
    sessions.end("admin")
    assert sessions.user_for(login) is None
    clock.now += 1
    assert sessions.user_for(sessions.start("admin", client=HOME)) is not None  # a new login


def test_logins_expire_after_the_session_lifetime(sessions, clock):
    login = sessions.start("admin", client=HOME)
    clock.now += auth.SESSION_SECONDS - 1
    assert sessions.user_for(login) is not None
    clock.now += 1
    assert sessions.user_for(login) is None


def test_a_cookie_stands_for_the_form_login_that_issued_it(sessions, users, clock):
    login, cookie = form_login(sessions, "admin")
    clock.now += 60
    assert sessions.from_cookie(cookie) == login  # issued when the password was typed
    assert sessions.user_for(sessions.from_cookie(cookie)) == auth.User("admin", "admin")
    users.add("Nina", "viewer", "nina-password")
    clock.now += 1
    _, cookie = form_login(sessions, "Nina")
    assert sessions.from_cookie(cookie).name == "Nina"


def test_a_signed_cookie_no_login_issued_does_not_count(sessions, users, clock):
    """Made with the key, expiring in 10 years: the server never issued it."""
    far = stauth_cookie("admin", users.cookie.key, expires=clock.now + 10 * 365 * 86400)
    assert sessions.user_for(sessions.from_cookie(far)) is None
    now = stauth_cookie("admin", users.cookie.key, expires=clock.now + auth.SESSION_SECONDS)
    assert sessions.user_for(sessions.from_cookie(now)) is None


def test_a_cookies_own_expiry_does_not_lengthen_its_login(sessions, clock):
    """Even a cookie the server issued with a far expiry lasts only the session lifetime."""
    _, cookie = form_login(sessions, "admin", expiry=clock.now + 10 * 365 * 86400)
    assert sessions.user_for(sessions.from_cookie(cookie)) is not None
    clock.now += auth.SESSION_SECONDS
    assert sessions.user_for(sessions.from_cookie(cookie)) is None


def test_a_copied_cookie_is_worthless_after_logout(sessions, users, clock):
    _, cookie = form_login(sessions, "admin")
    clock.now += 60
    sessions.end("admin")
    assert sessions.user_for(sessions.from_cookie(cookie)) is None
    clock.now += 1
    _, fresh = form_login(sessions, "admin")
    assert sessions.user_for(sessions.from_cookie(fresh)) is not None


def test_issued_cookies_are_not_stored_in_clear_and_expired_ones_are_dropped(sessions, clock):
    _, cookie = form_login(sessions, "admin")
    text = sessions.path.read_text()
    assert cookie not in text and cookie.split(".")[1] not in text
    clock.now += auth.SESSION_SECONDS + 1
    form_login(sessions, "admin")
    assert len(json.loads(sessions.path.read_text())["cookies"]) == 1


@pytest.mark.parametrize("cookie", [None, "", "garbage", "a.b.c", 42])
def test_malformed_cookies_are_rejected(sessions, cookie):
    assert sessions.from_cookie(cookie) is None


def test_tampered_foreign_unknown_or_unsigned_cookies_are_rejected(sessions, users, tmp_path):
    _, cookie = form_login(sessions, "admin")
    body, signature = cookie.rsplit(".", 1)
    assert sessions.from_cookie(f"{body}.{signature[::-1]}") is None
    claims = jwt.decode(cookie, users.cookie.key, algorithms=["HS256"])
    assert sessions.from_cookie(jwt.encode(claims, "k" * 64, algorithm="HS256")) is None
    assert sessions.from_cookie(jwt.encode(claims, None, algorithm="none")) is None
    no_expiry = jwt.encode({"username": "admin"}, users.cookie.key, algorithm="HS256")
    assert sessions.from_cookie(no_expiry) is None
    other = auth.UserStore(tmp_path / "other", rounds=4)
    other.ensure()
    assert auth.Sessions(other).from_cookie(cookie) is None  # a different signing key
    users.add("ghost", "viewer")
    _, ghost = form_login(sessions, "ghost")
    users.remove("ghost")
    assert sessions.from_cookie(ghost) is None


def test_password_change_removal_and_role_change_apply_to_open_sessions(sessions, users, clock):
    users.add("ana", "analyst")
    clock.now += 1
    login = sessions.start("ana", client=HOME)
    users.set_role("ana", "viewer")
    assert sessions.user_for(login) == auth.User("ana", "viewer")
    clock.now += 1
    users.set_password("ana")
    assert sessions.user_for(login) is None
    clock.now += 1
    login = sessions.start("ana", client=HOME)
    users.remove("ana")
    assert sessions.user_for(login) is None
    users.add("ana", "admin")  # the same name again: old logins stay dead
    assert sessions.user_for(login) is None
