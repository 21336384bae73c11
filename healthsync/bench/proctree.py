"""Memory of a process and all its descendants (through psutil).

A simulation's memory lives in many processes (the driver, Ray's GCS and
raylet, one worker per actor), all descended from the process that started
Ray; their summed resident set size is the memory the run really costs.
"""

from __future__ import annotations

import contextlib

import psutil

from healthsync.background.processes import process_alive


def descendants(pid: int) -> set[int]:
    """``pid`` and every process descended from it now."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:  # it has exited: no descendants to find through it
        children = []
    return {pid, *(child.pid for child in children)}


def rss_bytes(pids: set[int]) -> int:
    """Summed resident memory of ``pids`` (those that have exited count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):  # it may have just exited
            total += psutil.Process(pid).memory_info().rss
    return total


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie, already exited, is not)."""
    return {pid for pid in pids if process_alive(pid)}
