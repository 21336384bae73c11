"""Secure aggregation (SecAgg+): the server learns only the weighted sum of the hospitals' models.

Flower 1.42 implements SecAgg+ only in its legacy workflow
(``flwr.server.workflow.SecAggPlusWorkflow``, driven by a ``LegacyContext`` and a
legacy ``flwr.server.strategy``). Rather than hand the whole run to Flower's
``DefaultWorkflow``, the round loop (``simulation.server_app``) calls the
workflow for the training step of each round only, so cancelling, evaluation,
recording and dropout bookkeeping stay the same as in every other run.

The protocol (Bell et al., 2020): each sampled hospital agrees pairwise masks
with its neighbours and secret-shares its own mask seed and key; it uploads its
model, quantised and weighted by its training examples, plus those masks, so
what the server receives from one hospital looks uniformly random. The masks
cancel in the sum; the shares of hospitals that dropped out let the others
remove their masks. The server therefore sees one weighted mean per round and
never a single hospital's model (``simulation.secagg_mod`` is the hospital side).

It follows that SecAgg+ needs one Flower node per hospital (each node holds its
own keys: no block execution), FedAvg-style aggregation (a median or Krum needs
individual updates) and is not combined here with DP, whose Flower wrappers
clip individual updates on the server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.server import LegacyContext, SimpleClientManager
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow

from healthsync.config import SECAGG_MIN_HOSPITALS, TrainConfig
from healthsync.errors import HealthSyncError
from simulation.compat import flower
from simulation.hospital_grid import HospitalGrid

# Models are clipped to [-CLIPPING_RANGE, CLIPPING_RANGE] before quantisation.
CLIPPING_RANGE = 8.0


def neighbourhood(sampled: int) -> tuple[int, int]:
    """SecAgg+ share count and reconstruction threshold for ``sampled`` hospitals.

    Each hospital shares its secrets with ``2*ceil(log2 n) + 1`` neighbours (all
    of them in small federations), and two thirds of a neighbourhood must answer
    to unmask: fewer colluding neighbours learn nothing, and a third may drop out.
    """
    shares = min(sampled, 2 * math.ceil(math.log2(sampled)) + 1)
    threshold = max(2, math.ceil(shares * 2 / 3))
    return shares, min(threshold, shares - 1)


@dataclass
class SecureRound:
    """What one securely aggregated training step gave the round loop."""

    arrays: ArrayRecord
    sampled: list[int]  # hospital indices asked to take part
    summed: list[int]  # hospital indices whose masked model entered the sum
    missing: dict[int, str] = field(default_factory=dict)  # hospital index -> why


class _Tap:
    """The Flower grid as the SecAgg+ workflow uses it, keeping who was asked and who answered."""

    def __init__(self, grid) -> None:
        self.grid = grid
        self.stages: list[tuple[list[int], list[Message]]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.stages.append(([m.metadata.dst_node_id for m in messages], replies))
        return replies

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


class SecureAggregation:
    """Runs the training step of each round through Flower's SecAgg+ workflow."""

    def __init__(
        self, grid: HospitalGrid, config: TrainConfig, *, max_examples: int, timeout: float
    ) -> None:
        if grid.block_size != 1:
            raise HealthSyncError("secure aggregation needs one Flower node per hospital")
        # SecAgg+ messages differ per node and name node ids inside their content,
        # so they go to the real Flower nodes, not HospitalGrid's virtual ones.
        self.tap = _Tap(grid.inner)
        # A warm engine has more nodes than hospitals: only this run's take part.
        self.hospital_of_node = {
            node: block for block, node in grid.node_of_block.items() if block < grid.blocks
        }
        manager = SimpleClientManager()
        for node in self.hospital_of_node:
            manager.register(flower.legacy_client_proxy(node, grid.inner))
        self.settings: dict = {}
        # Flower's message-API FedProx tells hospitals its mu; the legacy FedAvg here does not.
        self.extra = {"proximal-mu": config.proximal_mu} if config.strategy == "fedprox" else {}
        self.strategy = LegacyFedAvg(
            fraction_fit=config.fraction,
            fraction_evaluate=0.0,
            min_fit_clients=SECAGG_MIN_HOSPITALS,
            min_available_clients=len(self.hospital_of_node),
            on_fit_config_fn=lambda rnd: {**self.settings, **self.extra, "server-round": rnd},
            fit_metrics_aggregation_fn=lambda _: {},
        )
        state = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        self.context = LegacyContext(state, strategy=self.strategy, client_manager=manager)
        sampled = max(int(len(self.hospital_of_node) * config.fraction), SECAGG_MIN_HOSPITALS)
        shares, threshold = neighbourhood(sampled)
        self.sampled, self.shares, self.threshold = sampled, shares, threshold
        self.workflow = SecAggPlusWorkflow(
            num_shares=shares,
            reconstruction_threshold=threshold,
            # Weights are training examples; the largest hospital's count keeps every
            # weight ratio <= 1, as the quantisation assumes.
            max_weight=float(max(max_examples, 1)),
            clipping_range=CLIPPING_RANGE,
            timeout=timeout,
        )

    def describe(self) -> str:
        """The run's protocol settings, for its event log."""
        return (
            f"secure aggregation (SecAgg+): {self.sampled} hospitals a round, each sharing "
            f"its keys with {self.shares} (itself included); {self.threshold} of them "
            "must answer to unmask the sum"
        )

    def train(self, rnd: int, arrays: ArrayRecord, settings: dict) -> SecureRound:
        """One round's local training and secure sum; raises if the protocol cannot finish."""
        self.settings = settings
        flower.start_workflow_round(self.context, rnd, arrays)
        self.tap.stages = []
        self.workflow(self.tap, self.context)
        new = flower.workflow_arrays(self.context)
        sampled, summed, missing = self._who_took_part()
        if new is arrays:
            raise HealthSyncError(
                f"round {rnd}: secure aggregation could not finish: {len(missing)} of "
                f"{len(sampled)} hospitals did not answer, and each hospital needs "
                f"{self.threshold} of its neighbours to unmask the sum"
            )
        # Flower dequantises to float64; keep the model's own dtypes.
        dtypes = [a.dtype for a in arrays.to_numpy_ndarrays()]
        mean = [a.astype(d) for a, d in zip(new.to_numpy_ndarrays(), dtypes, strict=True)]
        return SecureRound(ArrayRecord(numpy_ndarrays=mean), sampled, summed, missing)

    def _who_took_part(self) -> tuple[list[int], list[int], dict[int, str]]:
        """Hospitals asked in the first stage, those whose masked model was summed, and the rest."""
        if not self.tap.stages:
            return [], [], {}
        sampled = [self.hospital_of_node[n] for n in self.tap.stages[0][0]]
        reasons: dict[int, str] = {}
        alive = set(sampled)
        # Stages 0-2 (keys, key shares, masked models) decide whose model is in the sum.
        for asked, replies in self.tap.stages[:3]:
            answered = set()
            for reply in replies:
                hospital = self.hospital_of_node[reply.metadata.src_node_id]
                if reply.has_error():
                    reasons.setdefault(hospital, reply.error.reason)
                else:
                    answered.add(hospital)
            for node in asked:
                hospital = self.hospital_of_node[node]
                if hospital not in answered:
                    reasons.setdefault(hospital, "no reply before the timeout")
            alive &= answered
        if len(self.tap.stages) < 3:
            alive = set()
        missing = {
            h: reasons.get(h, "left out when the protocol stopped")
            for h in sampled
            if h not in alive
        }
        return sorted(sampled), sorted(alive), missing
