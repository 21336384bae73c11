"""OpenTelemetry traces of runs, rounds, round phases and cohort queries (docs/telemetry.md).

Tracing is off unless the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set: then ``setup`` installs an SDK
``TracerProvider`` whose batch processor sends spans over OTLP/HTTP (the
exporter reads those variables itself). Otherwise every span comes from the
API's no-op tracer, so an untraced round pays a few microseconds per phase.

``PhaseClock`` marks the phases of a round: each opens a child span and adds
its seconds to the round's timings, which the metrics store keeps so the Live
and Stress test pages show where a round's time goes even without a collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SERVICE_NAME = "healthsync"
PHASES = ("configure", "train", "aggregate", "evaluate", "record")  # a round's, in order

_provider: Any = None  # the SDK provider set by ``setup`` or ``use_provider``; None: no-op
_tracer: trace.Tracer | None = None  # the current provider's tracer, made once


def endpoint() -> str | None:
    """Where spans go (the traces-specific variable wins, as in the SDK), or None."""
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def setup() -> bool:
    """Export spans over OTLP/HTTP when an endpoint variable is set; whether tracing is on.

    Once per process; the SDK is imported only then, so an untraced process
    never loads it.
    """
    global _provider
    if _provider is not None:
        return True
    if endpoint() is None:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    return True


def use_provider(provider: Any) -> None:
    """Trace into ``provider`` (tests pass one with an in-memory exporter; None turns it off).

    Kept here rather than in OpenTelemetry's global, which may be set only once a process.
    """
    global _provider, _tracer
    _provider, _tracer = provider, None


def tracer() -> trace.Tracer:
    """HealthSync's tracer: the configured provider's, else the API's no-op one."""
    global _tracer
    if _tracer is None:
        source = _provider.get_tracer if _provider is not None else trace.get_tracer
        _tracer = source("healthsync")
    return _tracer


def flush(timeout_millis: int = 10_000) -> None:
    """Send the spans still queued (at a run's end: the process may exit right after)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def block_span(name: str, started_ns: int, attributes: dict[str, Any]) -> None:
    """A span that began at ``started_ns`` (a ``time.time_ns``) and ends now: one block's answer."""
    tracer().start_span(name, start_time=started_ns, attributes=attributes).end()


class PhaseClock:
    """Seconds per phase of one round, each phase also a child span of the current one.

    ``seconds`` includes the phase still running (``record`` writes the timings
    while it is itself being timed), so what is stored covers every phase.
    """

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.running: tuple[str, float] | None = None

    @contextmanager
    def phase(self, name: str, **attributes: Any) -> Iterator[None]:
        """Time ``name`` and trace it as a span (phases repeated in a round add up)."""
        started = time.perf_counter()
        self.running = (name, started)
        try:
            with tracer().start_as_current_span(
                name, attributes={f"healthsync.{k}": v for k, v in attributes.items()}
            ):
                yield
        finally:
            self.running = None
            self.done[name] = self.done.get(name, 0.0) + time.perf_counter() - started

    def seconds(self) -> dict[str, float]:
        """Every phase's seconds so far, in ``PHASES`` order, the running one up to now."""
        out = dict(self.done)
        if self.running:
            name, started = self.running
            out[name] = out.get(name, 0.0) + time.perf_counter() - started
        return {k: out[k] for k in (*PHASES, *sorted(set(out) - set(PHASES))) if k in out}
