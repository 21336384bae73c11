"""``healthsync users ...``: managing the app's users from the terminal."""

import io
import json
import subprocess
import sys

import pytest

from healthsync import auth
from healthsync.cli import build_parser, main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HEALTHSYNC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["users", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_first_use_creates_the_admin_and_lists_users(home, capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "created" in out and "user 'admin', password:" in out
    assert out.strip().splitlines()[-1].split() == ["admin", "admin"]
    code, out, _ = run(capsys, "list", "--json")
    assert json.loads(out) == [{"name": "admin", "role": "admin"}]


def test_add_prints_a_working_generated_password(home, capsys):
    run(capsys, "list")
    code, out, _ = run(capsys, "add", "ana", "--role", "analyst")
    assert code == 0
    password = out.strip().rsplit("password: ", 1)[1]
    assert auth.UserStore(home).verify("ana", password) == auth.User("ana", "analyst")


def test_password_stdin_is_used_and_not_printed(home, capsys, monkeypatch):
    run(capsys, "list")
    monkeypatch.setattr(sys, "stdin", io.StringIO("a-secret-from-stdin\n"))
    code, out, _ = run(capsys, "add", "vic", "--role", "viewer", "--password-stdin")
    assert code == 0 and "a-secret-from-stdin" not in out
    assert auth.UserStore(home).verify("vic", "a-secret-from-stdin")
    monkeypatch.setattr(sys, "stdin", io.StringIO("another-secret\n"))
    assert run(capsys, "passwd", "vic", "--password-stdin")[0] == 0
    assert auth.UserStore(home).verify("vic", "another-secret")


def test_passwd_role_and_remove(home, capsys):
    run(capsys, "add", "vic", "--role", "viewer")
    code, out, _ = run(capsys, "passwd", "vic")
    assert code == 0 and auth.UserStore(home).verify("vic", out.strip().rsplit(": ", 1)[1])
    assert run(capsys, "role", "vic", "analyst")[0] == 0
    assert auth.UserStore(home).get("vic").role == "analyst"
    assert run(capsys, "remove", "vic")[0] == 0
    assert auth.UserStore(home).get("vic") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["add", "x", "--role", "boss"],
            "error: unknown role 'boss'; choose one of admin, analyst, viewer, steward",
        ),
        (
            ["add", "s", "--role", "steward"],
            "error: a steward needs --federation DIR and --hospital HOSPITAL_ID",
        ),
        (
            ["add", "v", "--role", "viewer", "--hospital", "h0000"],
            "error: only a steward is bound to a federation and a hospital",
        ),
        (["add", "admin", "--role", "viewer"], "error: user 'admin' already exists"),
        (
            ["add", "Admin", "--role", "viewer"],
            "error: user 'admin' already exists (user names ignore case at login)",
        ),
        (["remove", "admin"], "error: cannot remove 'admin': it is the last admin"),
        (["remove", "ghost"], "error: unknown user 'ghost'"),
        (["passwd", "ghost"], "error: unknown user 'ghost'"),
        (["role", "admin", "viewer"], "error: cannot make 'admin' a viewer: it is the last admin"),
    ],
)
def test_one_line_errors_exit_2(home, capsys, argv, message):
    run(capsys, "list")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip() == message


def test_home_option_overrides_the_environment(home, tmp_path, capsys):
    other = tmp_path / "other"
    assert run(capsys, "list", "--home", str(other))[0] == 0
    assert (other / "credentials.yaml").is_file() and not home.exists()


def test_every_users_command_is_documented():
    parser = build_parser()
    users = parser._subparsers._group_actions[0].choices["users"]
    commands = users._subparsers._group_actions[0]
    assert set(commands.choices) == {"add", "passwd", "role", "remove", "list"}
    helps = {a.dest: a.help for a in commands._choices_actions}
    assert all(helps.get(name) for name in commands.choices)


def test_as_a_process(home):
    done = subprocess.run(
        [sys.executable, "-m", "healthsync", "users", "add", "x", "--role", "boss"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "error: unknown role 'boss'; choose one of admin, analyst, viewer, steward"
    )
