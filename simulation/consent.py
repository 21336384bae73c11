"""The coordinating side's view of the hospitals' consent, for one run.

Consent is decided and enforced by each hospital (``healthsync.privacy.consent``:
its node refuses work when withdrawn). The server reads the same records
(``withdrawn_hospitals``: one ``stat`` per hospital, again only after the
federation's consent-change marker moved, or every ``RESCAN_SECONDS``) only
so that it does not ask a withdrawn hospital at all: the hospital grid
(``simulation.hospital_grid``) leaves it out of sampling, evaluation and the
scaling query, and a withdrawal or rejoin noticed while a run trains is
recorded once, as a ``hospital_withdrawn`` or ``hospital_rejoined`` event (not
as a failure), and applies from the next message on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from healthsync.data import Federation
from healthsync.privacy.consent import changes_stamp, withdrawn_hospitals

#: How long one reading of the consent files is reused while the federation's change
#: marker (``consent.changes_stamp``, moved by every recorded change) stays put: a round
#: asks several times, and at 10,000 hospitals each reading is 10,000 ``stat`` calls.
#: A change made without the marker (a hand-edited file) is still enforced at once by the
#: hospital's own node; the server then stops asking it within this time.
RESCAN_SECONDS = 30.0

OnChange = Callable[[str, str, int], None]  # (event kind, message, hospital index)


class ConsentWatch:
    """Which hospitals of ``federation`` are withdrawn now, telling ``on_change`` what changed.

    Parameters
    ----------
    federation : the run's federation.
    on_change : called with ``("hospital_withdrawn" | "hospital_rejoined", message, index)``
        for each change seen, the first reading included (a hospital withdrawn before the
        run started is reported once at its start).
    clock : monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self,
        federation: Federation,
        on_change: OnChange | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.federation = federation
        self.on_change = on_change
        self.clock = clock
        self.index = {h.id: i for i, h in enumerate(federation.hospitals)}
        self._known: dict[int, str] = {}
        self._read_at: float | None = None
        self._stamp: tuple[int, int] | None = None

    def withdrawn(self) -> dict[int, str]:
        """``hospital index -> why`` for every withdrawn hospital (read at most every 0.5 s)."""
        now, stamp = self.clock(), changes_stamp(self.federation.data_dir)
        if (
            self._read_at is not None
            and stamp == self._stamp
            and now - self._read_at < RESCAN_SECONDS
        ):
            return self._known
        self._stamp = stamp
        found = withdrawn_hospitals(self.federation.data_dir, self.federation.hospital_ids)
        current = {self.index[h]: change.describe(h) for h, change in found.items()}
        if self.on_change:
            for index in sorted(set(current) - set(self._known)):
                self.on_change("hospital_withdrawn", current[index], index)
            for index in sorted(set(self._known) - set(current)):
                hospital = self.federation.hospitals[index].id
                self.on_change("hospital_rejoined", f"hospital {hospital} takes part again", index)
        self._known, self._read_at = current, now
        return current
