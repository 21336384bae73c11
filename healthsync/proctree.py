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


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants now (0 once they are gone)."""
    tree = _children()
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):  # it may have just exited
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * PAGE
        todo.extend(tree.get(current, []))
    return total
