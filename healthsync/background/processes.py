"""Background processes that outlive the page or command that started them.

Runs, stress-test sweeps and the analytics service each run as their own
process in a new session, so a closed browser tab, a reloaded page or a
restarted web server does not stop them; their output goes to a log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import filelock
import psutil


def spawn_detached(cmd: Sequence[str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session with output appended to ``log_path``.

    A daemon thread waits for it, so it never lingers as a zombie of this
    process once it ends.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            list(cmd),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not reaped, counts as gone)."""
    if pid <= 0:  # a missing pid in a state file reads as 0
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone, or not ours to look at
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, owner-only), across threads and processes.

    For read-modify-write of shared files and for "one starter at a time". The
    lock file stays in place: deleting it on release would let a second
    process lock a new file while a third still holds the old one.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with filelock.FileLock(path, mode=0o600, preserve_lock_file=True):
        yield


def last_line(path: Path) -> str:
    """The last non-blank line of a background process's log, to explain why it stopped."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "no output"


def write_private(path: Path, data: dict[str, Any] | str) -> None:
    """Write ``data`` (text, or an object as JSON) readable by its owner only, atomically.

    A reader sees the old file or the new one, never half of it.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """A JSON object written by :func:`write_private`, or ``None`` if missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
