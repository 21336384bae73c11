"""Round callbacks (``simulation.round_hooks``): order, stop reasons, early stopping."""

from __future__ import annotations

from simulation.round_hooks import Callbacks, EarlyStopping, RoundCallback, RoundResult


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


def _round(rnd: int, val_loss: float) -> RoundResult:
    return RoundResult(rnd, {"val_loss": val_loss}, None, [], None, None)


def _script(losses: list[float], patience: int) -> tuple[list[int], int, str | None]:
    """Feed ``losses`` round by round: the kept rounds, the rounds run and the stop reason."""
    stopper, kept = EarlyStopping(patience), []
    for rnd, loss in enumerate(losses, start=1):
        result = _round(rnd, loss)
        reason = stopper.on_round_end(result)
        if result.keep_model:
            kept.append(rnd)
        if reason:
            return kept, rnd, reason
    return kept, len(losses), None


def test_early_stopping_keeps_the_lowest_validation_loss_and_stops_after_patience():
    losses = [0.9, 0.7, 0.6, 0.65, 0.61, 0.6, 0.62, 0.5]  # round 3 best; 0.6 again is no gain
    kept, ran, reason = _script(losses, patience=4)
    assert kept == [1, 2, 3] and ran == 7
    assert reason == (
        "validation loss has not improved for 4 rounds; kept round 3 (validation loss 0.6000)"
    )
    kept, ran, reason = _script(losses, patience=5)  # one more round of patience finds 0.5
    assert kept == [1, 2, 3, 8] and ran == 8 and reason is None


def test_without_validation_rows_every_round_is_kept_and_nothing_stops_early():
    kept, ran, reason = _script([float("nan")] * 6, patience=2)
    assert kept == [1, 2, 3, 4, 5, 6] and ran == 6 and reason is None
