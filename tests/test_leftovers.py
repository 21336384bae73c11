"""The end-of-session check for leftover processes (tests/leftovers.py) can fail, and only for ours."""

import os
import subprocess
import sys
import textwrap
import time

import psutil

from tests.leftovers import GRACE_VARIABLE, TOKEN_VARIABLE, SessionProcesses, is_healthsync_or_ray

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _spawn(mark: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*SLEEPER, mark], start_new_session=True, **kwargs)


def test_a_leftover_is_reported_and_nothing_older_or_unrelated_is(tmp_path):
    older = _spawn("healthsync-older")
    session = SessionProcesses.begin(environ={})  # its token stays out of os.environ
    leftover = _spawn("healthsync-leftover")
    marked = _spawn("simulation-marked", env={**os.environ, TOKEN_VARIABLE: session.token})
    # Someone else's: neither in this process tree (its parent exits at once) nor marked.
    pid_file = tmp_path / "pid"
    subprocess.run(
        [
            "sh",
            "-c",
            f'{" ".join(SLEEPER[:2])} "{SLEEPER[2]}" unrelated-ray & echo $! > {pid_file}',
        ],
        env={k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE},
        check=True,
    )
    unrelated = int(pid_file.read_text())
    try:
        found = {p.pid for p in session.leftovers(grace=0)}
        assert {leftover.pid, marked.pid} <= found
        assert older.pid not in found and unrelated not in found and os.getpid() not in found
        assert all(is_healthsync_or_ray(psutil.Process(pid)) for pid in (leftover.pid, marked.pid))
        leftover.kill()
        leftover.wait()
        assert leftover.pid not in {p.pid for p in session.leftovers(grace=0)}
    finally:
        for process in (older, leftover, marked):
            process.kill()
            process.wait()
        psutil.Process(unrelated).kill()


def test_the_hook_fails_a_session_that_leaves_a_process_and_kills_it(tmp_path):
    (tmp_path / "test_leak.py").write_text(
        textwrap.dedent(
            f"""
            import subprocess
            def test_leaks():
                p = subprocess.Popen({[*SLEEPER, "healthsync-leak"]!r}, start_new_session=True)
                open({str(tmp_path / "leak.pid")!r}, "w").write(str(p.pid))
            def test_clean():
                pass
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd(), GRACE_VARIABLE: "0.5"}
    env.pop(TOKEN_VARIABLE, None)
    started = time.monotonic()
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.leftovers", "-p", "no:cacheprovider",
         str(tmp_path / "test_leak.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert inner.returncode == 1, inner.stdout + inner.stderr
    pid = int((tmp_path / "leak.pid").read_text())
    assert "2 passed" in inner.stdout and "still running (now killed)" in inner.stdout
    assert f"{pid}: " in inner.stdout and "healthsync-leak" in inner.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - started < 60
