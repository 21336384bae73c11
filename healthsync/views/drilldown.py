"""A finished run in a few lines, and one hospital's part in a run: data for the Live page.

Both read only what the metrics store holds after the release policy: the
run's global figures, the stored comparison's overall rows, and per-hospital
rows through :func:`healthsync.privacy.training.released_hospital_metrics`,
so a withheld figure stays withheld here too (it is ``None``, and the page
says why instead of showing a number).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from healthsync.data import Federation, load_federation
from healthsync.data.pseudonyms import OTHER_SITE, SiteLabels
from healthsync.errors import HealthSyncError
from healthsync.privacy.training import released_hospital_metrics
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore

#: The comparison methods a finished run is set against (``baselines.compare_table``).
LOCAL_ONLY = "local only"
POOLED = "pooled (reference)"
#: Events about one hospital that the drill-down lists (faults, drop-outs, drills).
HOSPITAL_EVENTS = (
    "hospital_failed",
    "hospital_dropped",
    "hospital_withdrawn",
    "hospital_rejoined",
    "adversary",
)


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reached, and how it compares with training alone (if compared)."""

    run_id: str
    status: str
    rounds_done: int
    rounds_planned: int
    auc: float | None
    accuracy: float | None
    loss: float | None
    local_auc: float | None = None
    pooled_auc: float | None = None

    @property
    def compared(self) -> bool:
        return self.local_auc is not None

    def headline(self) -> str:
        """One sentence: what the federation's model reached, and against training alone."""
        done = f"{self.rounds_done} of {self.rounds_planned} rounds"
        if self.auc is None:
            return f"The run {self.status} after {done}; no global figure was released."
        text = (
            f"The run {self.status} after {done}: the federation's model reached an AUC of "
            f"{self.auc:.3f} on every hospital's test patients."
        )
        if self.local_auc is not None:
            gain = self.auc - self.local_auc
            text += f" Each hospital training alone reached {self.local_auc:.3f} overall, so " + (
                f"working together gained {gain:+.3f}." if gain else "it gained nothing."
            )
        return text


def run_summary(store: MetricsStore, run_id: str) -> RunSummary:
    """The finished run's final figures and, if a comparison is stored, its local-only AUC."""
    run = runlog.get_run(store, run_id)
    done = store.frame("SELECT count(*) AS n FROM rounds WHERE run_id = ?", [run_id])["n"][0]
    overall = store.frame(
        "SELECT method, auc FROM comparisons WHERE hospital = 'overall' AND comparison_id ="
        " (SELECT comparison_id FROM comparisons WHERE run_id = ? ORDER BY created_at DESC LIMIT 1)",
        [run_id],
    )
    by_method = {m: _number(a) for m, a in overall.iter_rows()}
    return RunSummary(
        run_id=run_id,
        status=run["status"],
        rounds_done=int(done),
        rounds_planned=int(run["rounds_planned"]),
        auc=_number(run["final_auc"]),
        accuracy=_number(run["final_accuracy"]),
        loss=_number(run["final_loss"]),
        local_auc=by_method.get(LOCAL_ONLY),
        pooled_auc=by_method.get(POOLED),
    )


def compare_command(store: MetricsStore, run_id: str) -> str:
    """The ``healthsync compare`` command that stores the comparison for this run."""
    data_dir = runlog.get_run(store, run_id)["data_dir"]
    return f"healthsync compare --data {data_dir} --db {store.path} --run {run_id}"


@dataclass(frozen=True)
class HospitalDetail:
    """One hospital's part in a run, as released.

    ``weight`` is its share of the training rows of all hospitals: the weight
    FedAvg and FedProx give its update when every hospital answers (robust
    strategies such as median or Krum do not average by weight). ``rounds``
    holds ``round, n, loss, auc, accuracy`` with withheld figures ``None``.
    """

    hospital: str
    name: str
    train_rows: int | None
    test_rows: int | None
    weight: float | None
    rounds: pl.DataFrame
    events: pl.DataFrame

    @property
    def withheld(self) -> bool:
        """Whether the release policy withheld every figure of this hospital in this run."""
        return self.rounds.is_empty() or self.rounds["auc"].is_null().all()

    @property
    def answered(self) -> int:
        return self.rounds.height


def hospital_detail(
    store: MetricsStore,
    run_id: str,
    hospital: str,
    federation: Federation | None,
    labels: SiteLabels | None = None,
) -> HospitalDetail:
    """``hospital``'s rows, weight, released metrics by round and events in ``run_id``.

    Named, and its event messages worded, as the reader sees hospitals
    (``labels``, from ``tenancy.site_labels``; real names without).
    """
    labels = labels if labels is not None else SiteLabels.real(federation)
    info = {h.id: h for h in federation.hospitals} if federation else {}
    total = sum(h.n_train for h in info.values())
    mine = info.get(hospital)
    rounds = released_hospital_metrics(
        store.frame(
            "SELECT round, n, loss, auc, accuracy, released FROM hospital_rounds"
            " WHERE run_id = ? AND hospital = ? ORDER BY round",
            [run_id, hospital],
        )
    )
    events = runlog.events_frame(store, run_id)
    events = events.filter(
        (pl.col("hospital") == hospital) & pl.col("kind").is_in(HOSPITAL_EVENTS)
    ).select("round", "kind", pl.col("message").map_elements(labels.scrub, return_dtype=pl.String))
    return HospitalDetail(
        hospital=hospital,
        name=labels.label(hospital) or OTHER_SITE,
        train_rows=mine.n_train if mine else None,
        test_rows=mine.n_test if mine else None,
        weight=mine.n_train / total if mine and total else None,
        rounds=rounds,
        events=events,
    )


def run_hospitals(store: MetricsStore, run_id: str, labels: SiteLabels) -> dict[str, str]:
    """``hospital id -> label`` of the run's hospitals the reader may see, by label, for a picker.

    ``labels`` from ``tenancy.site_labels``: the federation's hospitals, or the
    run's recorded ones when its manifest is gone.
    """
    ids = (
        list(labels.names)
        or store.frame("SELECT DISTINCT hospital FROM hospital_rounds WHERE run_id = ?", [run_id])[
            "hospital"
        ].to_list()
    )
    shown = {h: label for h in ids if (label := labels.label(h)) is not None}
    return dict(sorted(shown.items(), key=lambda item: item[1]))


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if number != number else number


def federation_of(data_dir: str | None) -> Federation | None:
    """The run's federation from its manifest, or ``None`` when it is gone or unreadable."""
    try:
        return load_federation(data_dir) if data_dir else None
    except HealthSyncError:
        return None
