"""The hospital side of cohort analytics: the ClientApp's ``query.cohort`` handler.

It is registered on the training ClientApp (``simulation/client_app.py``),
so analytics and training share one app and one boundary. Each node answers
for a block of hospitals (one hospital per node unless the federation is
large; see ``simulation/analytics.py``): for every hospital of its block it
reads that hospital's rows through the hospital's own accessor and returns
that hospital's exact per-cell aggregates as its own ``MetricRecord``. The
server side applies the privacy guards; no row ever leaves.

Rows are kept per process, so a warm Ray actor answers from memory.
"""

from __future__ import annotations

from functools import lru_cache

import polars as pl
from flwr.app import Context, Message, MetricRecord, RecordDict

from healthsync.cohort.local import hospital_aggregates, to_record
from healthsync.cohort.plan import QueryPlan, plan_query
from healthsync.cohort.query import CohortQuery
from healthsync.data import Federation, load_federation, open_hospital

RECORD_PREFIX = "hospital:"


@lru_cache(maxsize=8)
def _federation(data_dir: str) -> Federation:
    return load_federation(data_dir)


@lru_cache(maxsize=1024)
def _rows(data_dir: str, hospital_id: str) -> pl.DataFrame:
    return open_hospital(_federation(data_dir), hospital_id).rows()


@lru_cache(maxsize=64)
def _plan(data_dir: str, query_json: str, max_cells: int) -> QueryPlan:
    import json

    query = CohortQuery.from_dict(json.loads(query_json))
    return plan_query(_federation(data_dir), query, max_cells=max_cells)


def block(partition_id: int, block_size: int, hospitals: int) -> range:
    """Indices of the hospitals that node ``partition_id`` answers for."""
    return range(partition_id * block_size, min((partition_id + 1) * block_size, hospitals))


def answer_cohort(msg: Message, context: Context) -> Message:
    """This node's hospitals' exact aggregates for the query in the message's config."""
    config = msg.content["config"]
    data_dir = str(config["data-dir"])
    federation = _federation(data_dir)
    plan = _plan(data_dir, str(config["query"]), int(config["max-cells"]))
    mine = block(
        int(context.node_config["partition-id"]),
        int(config["block-size"]),
        len(federation.hospitals),
    )
    records = {}
    for index in mine:
        hospital = federation.hospitals[index].id
        if hospital in plan.hospitals:
            aggregates = hospital_aggregates(_rows(data_dir, hospital), plan, hospital)
            records[RECORD_PREFIX + hospital] = MetricRecord(to_record(aggregates))
    return Message(RecordDict(records), reply_to=msg)
