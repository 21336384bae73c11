"""The hospital side of secure aggregation: Flower's ``secaggplus_mod`` around our training handler.

Training messages of a SecAgg+ run carry the protocol's stage config; this mod
hands those to Flower's ``secaggplus_mod``, which keeps the hospital's keys in
its node state, and in the stage that collects models calls our ordinary
``train`` handler, then masks the resulting model before it leaves. Every other
message (queries, evaluation, training without SecAgg+) passes straight through.

The legacy protocol speaks ``FitIns``/``FitRes`` records; ``_as_own_train`` turns
them into our own layout (``arrays``, ``config``) and back, without Flower's
legacy converters, which reject the list values our config carries.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from simulation.compat import flower


def secure_aggregation(msg: Message, context: Context, call_next) -> Message:
    """Flower client mod: SecAgg+ for training messages that carry its stage config."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or flower.SECAGG_CONFIGS_KEY not in msg.content.config_records
    ):
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _as_own_train(m, c, call_next))


def _as_own_train(msg: Message, context: Context, call_next) -> Message:
    """Run our ``train`` handler on a legacy ``FitIns`` message; answer with a ``FitRes``."""
    legacy = msg.content
    msg.content = RecordDict(
        {
            "arrays": legacy.array_records["fitins.parameters"],
            "config": ConfigRecord(dict(legacy.config_records["fitins.config"])),
        }
    )
    reply = call_next(msg, context)
    msg.content = legacy
    if reply.has_error():
        raise RuntimeError(reply.error.reason)
    errors = reply.content["errors"]
    if errors:  # this hospital dropped out or failed: SecAgg+ recovers its masks
        raise RuntimeError("; ".join(str(v) for v in errors.values()))
    stacked = reply.content["arrays"].to_numpy_ndarrays()  # row 0: the node's one hospital
    fitres = FitRes(
        status=Status(Code.OK, "OK"),
        parameters=ndarrays_to_parameters([a[0] for a in stacked]),
        num_examples=int(reply.content["metrics"]["num-examples"][0]),
        metrics={},
    )
    return Message(flower.fitres_to_recorddict(fitres), reply_to=msg)
