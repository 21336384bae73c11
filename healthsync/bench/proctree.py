"""Memory of a process and all its descendants, read from /proc (Linux).

A simulation's memory lives in many processes (the driver, Ray's GCS and
raylet, one worker per actor), all descended from the process that started
Ray; their summed resident set size is the memory the run really costs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    """``pid`` and every process descended from it now."""
    tree = _children()
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(tree.get(current, []))
    return found


def rss_bytes(pids: set[int]) -> int:
    """Summed resident memory of ``pids`` (those that have exited count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):  # it may have just exited
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie, already exited, is not)."""
    running = set()
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                running.add(pid)
    return running
