"""The hospital side of cohort analytics: the ClientApp's ``query.cohort`` handler.

It is registered on the training ClientApp (``simulation/client_app.py``),
so analytics and training share one app and one boundary. Each node answers
for a block of hospitals (one hospital per node unless the federation is
large; see ``simulation/analytics.py``): for every hospital of its block it
reads that hospital's rows through the hospital's own accessor and releases
that hospital's per-cell aggregates through the hospital's own privacy gate
(its policy and ledger, in its own folder: ``healthsync.privacy.site``), which
adds the noise and charges the asking user, or refuses. The noisy vectors go
back as the hospital's own ``MetricRecord`` with its accounting beside it; a
refusal as a ``ConfigRecord`` with the reason. No row, and no exact count,
ever leaves.

Rows are kept per process, so a warm Ray actor answers from memory.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from healthsync.cohort.facts import publish_reply
from healthsync.cohort.local import hospital_release, to_record
from healthsync.cohort.plan import QueryPlan, plan_query
from healthsync.cohort.query import CohortQuery
from healthsync.config import block_hospitals
from healthsync.data import Federation, HospitalAccessor, load_federation, open_hospital
from healthsync.privacy.consent import site_dir_of, withdrawal
from healthsync.privacy.site import PUBLIC

RECORD_PREFIX = "hospital:"
ACCOUNTING_PREFIX = "site:"
REFUSAL_PREFIX = "refused:"


@lru_cache(maxsize=8)
def _federation(data_dir: str) -> Federation:
    return load_federation(data_dir)


@lru_cache(maxsize=1024)
def _accessor(data_dir: str, hospital_id: str) -> HospitalAccessor:
    return open_hospital(_federation(data_dir), hospital_id)  # keeps its rows once read


@lru_cache(maxsize=64)
def _plan(data_dir: str, query_json: str, max_cells: int) -> QueryPlan:
    import json

    query = CohortQuery.from_dict(json.loads(query_json))
    return plan_query(_federation(data_dir), query, max_cells=max_cells)


def answer_cohort(msg: Message, context: Context) -> Message:
    """This node's hospitals' noisy aggregates (or refusals) for the query in the config."""
    config = msg.content["config"]
    data_dir = str(config["data-dir"])
    federation = _federation(data_dir)
    plan = _plan(data_dir, str(config["query"]), int(config["max-cells"]))
    mine = block_hospitals(
        int(context.node_config["partition-id"]),
        int(config["block-size"]),
        len(federation.hospitals),
    )
    records: dict[str, MetricRecord | ConfigRecord] = {}
    for index in mine:
        hospital = federation.hospitals[index].id
        if hospital not in plan.hospitals or withdrawal(site_dir_of(data_dir, hospital)):
            continue  # a withdrawn hospital answers nothing, whatever the server asks
        reply = hospital_release(
            _accessor(data_dir, hospital),
            plan,
            str(config["user"]),
            epsilon=float(config["epsilon"]),
            budget_cap=float(config["budget"]),
        )
        if reply.refusal is not None:
            records[REFUSAL_PREFIX + hospital] = ConfigRecord({"reason": reply.refusal})
            continue
        if config["user"] == PUBLIC:  # Overview's facts: the hospital publishes its answer
            publish_reply(_accessor(data_dir, hospital), plan, reply)
        records[RECORD_PREFIX + hospital] = MetricRecord(to_record(reply.aggregates))
        records[ACCOUNTING_PREFIX + hospital] = MetricRecord(reply.accounting())
    return Message(RecordDict(records), reply_to=msg)
