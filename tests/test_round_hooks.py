"""Round callbacks (``simulation.round_hooks``): order, stop reasons, early stopping."""

from __future__ import annotations

from simulation.round_hooks import Callbacks, RoundCallback


class Scripted(RoundCallback):
    """Logs what it sees and stops where it is told to."""

    def __init__(self, name: str, log: list, stop_at_end: int | None = None) -> None:
        self.name, self.log, self.stop_at_end = name, log, stop_at_end

    def on_round_start(self, rnd):
        self.log.append((self.name, "start", rnd))

    def on_round_end(self, result):
        self.log.append((self.name, "end", result))
        return f"{self.name} stops" if result == self.stop_at_end else None


def test_callbacks_run_in_order_and_the_first_stop_reason_wins_but_all_see_the_round():
    log: list = []
    hooks = Callbacks([Scripted("a", log), Scripted("b", log, 2), Scripted("c", log, 2)])
    hooks.on_run_start()  # defaults do nothing
    assert hooks.on_round_start(1) is None
    assert hooks.on_round_end(1) is None
    assert hooks.on_round_end(2) == "b stops"
    hooks.on_run_end(2, "b stops")
    assert log == [
        ("a", "start", 1),
        ("b", "start", 1),
        ("c", "start", 1),
        ("a", "end", 1),
        ("b", "end", 1),
        ("c", "end", 1),
        ("a", "end", 2),
        ("b", "end", 2),
        ("c", "end", 2),
    ]
