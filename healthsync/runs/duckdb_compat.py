"""What HealthSync relies on in DuckDB beyond its typed API: the text of a lock conflict.

DuckDB (2.0) raises the same exception types, ``duckdb.IOException`` and
``duckdb.ConnectionException``, for a database file another process holds
open for writing and for a file that cannot be opened at all (a directory, no
permission, a corrupt file). Only the first is worth waiting out, and only the
message tells them apart. Relied on, and checked by ``tests/test_compat.py``
against a file that a second process really holds: the message of a lock
conflict, its quoted file name left out, contains one of ``LOCK_MESSAGES``
(``Could not set lock on file "...": Conflicting lock is held in ...`` on
Linux; "being used by another process" on Windows), and the message of other
failures contains none of them. The file name is left out because a path
holds any word ("lock" in ``.../blocks/metrics.duckdb``).
"""

from __future__ import annotations

import re

import duckdb

LOCK_MESSAGES = ("Could not set lock", "Conflicting lock", "being used by another process")
_QUOTED = re.compile(r'"[^"]*"')


def is_lock_conflict(err: BaseException) -> bool:
    """Whether ``err``, raised by ``duckdb.connect``, means another process holds the file."""
    if not isinstance(err, duckdb.IOException | duckdb.ConnectionException):
        return False
    text = _QUOTED.sub('""', str(err))
    return any(m in text for m in LOCK_MESSAGES)
