"""What the How it works page tells a first-time audience: one round, a picture, every metric.

The page walks through one round on the federation being shown, with its
real number of hospitals and, where a run exists, that run's rounds and
strategy; so the story is built here from the manifest and the run log (no
Streamlit), and the page only renders it. Every chart's caption links to the
term it shows (:func:`what_is`), so the words are defined once, here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from healthsync.data import Federation
from healthsync.data.pseudonyms import OTHER_SITE, SiteLabels
from healthsync.privacy.release import MIN_CELL

#: The page's URL path (``pages/how_it_works.py``), relative so it works under any base path.
PAGE_URL = "how_it_works"
#: How the strategies combine the hospitals' updates, in plain words.
COMBINE = {
    "fedavg": "averages them, each hospital weighted by its number of training rows",
    "fedprox": "averages them, weighted by training rows (each hospital stayed close to the "
    "global model while training)",
    "fedadam": "averages them and takes an Adam-style step with the average",
    "fedyogi": "averages them and takes a Yogi-style step with the average",
    "fedadagrad": "averages them and takes an Adagrad-style step with the average",
    "fedmedian": "takes the median of each weight, so one odd hospital cannot pull it far",
    "fedtrimmedavg": "drops the most extreme values of each weight, then averages the rest",
    "krum": "keeps the update closest to most others and drops the outliers",
}


@dataclass(frozen=True)
class Term:
    """One defined word: ``anchor`` is its place on the page (``how_it_works#anchor``)."""

    anchor: str
    title: str
    text: str


#: Every metric and privacy word the pages show, in the page's order.
GLOSSARY: tuple[Term, ...] = (
    Term(
        "auc",
        "AUC (area under the ROC curve)",
        "Pick one patient who has the outcome and one who does not: the AUC is the chance that "
        "the model gives the first a higher risk. 0.5 is a coin toss, 1.0 is perfect; around "
        "0.8 is useful in practice. It does not depend on any risk threshold.",
    ),
    Term(
        "accuracy",
        "Accuracy",
        "The share of test patients the model classifies correctly when it calls everyone "
        "with a predicted risk of 50 % or more a case. Easy to read, but flattering when the "
        "outcome is rare: calling nobody a case is already right for most patients.",
    ),
    Term(
        "log-loss",
        "Log loss",
        "How surprised the model is by what really happened, averaged over test patients (in "
        "nats). A confident wrong prediction costs a lot, a hesitant one a little. Lower is "
        "better; training makes it fall round by round, and a rise means the hospitals' "
        "updates pull the model apart.",
    ),
    Term(
        "brier",
        "Brier score",
        "The mean squared gap between each predicted risk and what happened (1 or 0). 0 is "
        "perfect; always predicting the outcome's prevalence p scores p × (1 − p). Lower is "
        "better; it rewards risks that are both sharp and honest (calibrated).",
    ),
    Term(
        "epsilon",
        "ε (epsilon) and the privacy budget",
        "Differential privacy's measure of how much anything released can reveal about any "
        "one patient (or, in training, any one hospital): smaller is more private. Each answer "
        "and each training round spends some ε, and the spending adds up. The privacy budget "
        "is the total ε allowed; once spent, no more answers (or rounds) are released.",
    ),
    Term(
        "small-counts",
        "“<11” and “suppressed”",
        f"No released number may rest on fewer than {MIN_CELL} patients. A count below "
        f"{MIN_CELL} is shown as “<{MIN_CELL}” instead of its value. “Suppressed” marks a cell "
        "hidden although it is large enough, because together with the total and the other "
        "cells it would give a small one away. A hospital whose test split holds fewer than "
        f"{MIN_CELL} patients with or without the outcome has its own training figures "
        "withheld the same way.",
    ),
    Term(
        "noisy-counts",
        "Noisy counts",
        "Each hospital adds a little random noise (differential privacy) to every count, sum "
        "and histogram before it leaves, calibrated to its ε per question. Totals are still "
        "close to the truth, but no answer pins down whether one patient is in it. A number "
        "released once is kept and given again unchanged, so asking twice reveals nothing new.",
    ),
    Term(
        "weight",
        "Weight in the average",
        "How much one hospital's update counts when the updates are combined: its training "
        "rows as a share of all training rows of the hospitals that answered the round.",
    ),
)


@dataclass(frozen=True)
class RoundStory:
    """One round on this federation, in numbers a newcomer can follow."""

    hospitals: int
    train_rows: int
    test_rows: int
    names: tuple[str, ...]
    run_id: str | None = None
    strategy: str = "fedavg"
    rounds: int | None = None
    rounds_done: int | None = None
    sampled: int | None = None
    final_auc: float | None = None

    @property
    def combine(self) -> str:
        return COMBINE.get(self.strategy, COMBINE["fedavg"])

    def steps(self) -> list[str]:
        """The round in four sentences (markdown), with this federation's numbers."""
        asked = self.sampled or self.hospitals
        share = (
            "every hospital"
            if asked == self.hospitals
            else f"{asked} of the {self.hospitals} hospitals"
        )
        rounds = (
            f" The latest run, `{self.run_id}`, planned {self.rounds} rounds and finished "
            f"{self.rounds_done}."
            if self.run_id
            else " No run yet: start one on the Launch page to watch these steps live."
        )
        return [
            f"**The model travels to the hospitals.** The server sends the current global model "
            f"(just its numbers, the weights) to {share}.",
            f"**Each hospital trains at home.** It improves the model on its own patients: "
            f"{self.train_rows:,} training rows across {self.hospitals} hospitals, which never "
            "leave their hospital. It also tests the model on its own held-out patients "
            f"({self.test_rows:,} in all).",
            "**Only updates come back.** Each hospital returns its improved weights and a few "
            "test figures (AUC, loss, released only if large enough): no patient row.",
            f"**The updates are combined.** The server {self.combine}. That is the new global "
            f"model, and the next round starts from it.{rounds}",
        ]

    def diagram(self, *, shown: int = 3) -> str:
        """The round as a Graphviz DOT graph: server, up to ``shown`` hospitals by name, the rest."""
        names = list(self.names[:shown])
        more = self.hospitals - len(names)
        lines = [
            "digraph round {",
            '  rankdir=LR; bgcolor="transparent";',
            '  node [shape=box, style="rounded,filled", fontname="sans-serif", fontsize=11,'
            ' fillcolor="#e6f2f1", color="#0f766e"];',
            '  edge [fontname="sans-serif", fontsize=10, color="#7b8794", fontcolor="#7b8794"];',
            '  server [label="Server\\nglobal model", fillcolor="#0f766e", fontcolor="white"];',
            '  combine [label="Combine updates\\n(' + _short(self.strategy) + ')",'
            ' fillcolor="#0f766e", fontcolor="white"];',
        ]
        hospitals = [(f"h{i}", f"{_dot(n)}\\ntrains on its own rows") for i, n in enumerate(names)]
        if more > 0:
            hospitals.append(("more", f"… {more} more\\nhospitals"))
        for node, label in hospitals:
            lines.append(f'  {node} [label="{label}"];')
            lines.append(f'  server -> {node} [label="model"];')
            lines.append(f'  {node} -> combine [label="update only"];')
        lines.append('  combine -> server [label="next round", style=dashed];')
        lines.append("}")
        return "\n".join(lines)


def round_story(
    federation: Federation,
    run: Mapping[str, Any] | None = None,
    labels: SiteLabels | None = None,
) -> RoundStory:
    """The story of one round on ``federation``, with ``run``'s settings when there is one.

    ``run`` is a row of ``runlog.list_runs`` (or ``get_run``) on this federation;
    hospitals are named as the reader sees them (``labels``, from
    ``tenancy.site_labels``; real names without).
    """
    hospitals = federation.hospitals
    labels = labels if labels is not None else SiteLabels.real(federation)
    base = {
        "hospitals": len(hospitals),
        "train_rows": sum(h.n_train for h in hospitals),
        "test_rows": sum(h.n_test for h in hospitals),
        "names": tuple(labels.label(h.id) or OTHER_SITE for h in hospitals),
    }
    if not run:
        return RoundStory(**base)
    fraction = float((run.get("config") or {}).get("fraction", 1.0) or 1.0)
    auc = run.get("final_auc")
    return RoundStory(
        **base,
        run_id=run["run_id"],
        strategy=str(run.get("strategy") or "fedavg"),
        rounds=run.get("rounds_planned"),
        rounds_done=run.get("rounds_done"),
        sampled=max(1, round(fraction * len(hospitals))),
        final_auc=None if auc is None or auc != auc else float(auc),
    )


def what_is(anchor: str = "", label: str = "What is this?") -> str:
    """A markdown link to the How it works page (at ``anchor``), for a chart's caption."""
    if anchor and anchor not in {t.anchor for t in GLOSSARY} | {"round"}:
        raise ValueError(f"no term {anchor!r} on the How it works page")
    return f"[{label}]({PAGE_URL}{'#' + anchor if anchor else ''})"


def _short(strategy: str) -> str:
    return {"fedavg": "weighted average", "fedprox": "weighted average"}.get(strategy, strategy)


def _dot(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
