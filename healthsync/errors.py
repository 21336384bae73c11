"""The one error type users see: a clear, one-line message naming the problem."""


class HealthSyncError(ValueError):
    """Invalid input or state, reported to the user as ``error: <message>``.

    Subclasses ``ValueError`` so that library callers can catch bad input the
    usual way; the CLI turns it into one line on stderr and exit status 2.
    """
