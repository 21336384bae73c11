"""A real training run sends its spans over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (issue 20).

The receiver is an HTTP server thread on 127.0.0.1 in this test: it takes the
exporter's ``POST /v1/traces``, decodes the protobuf ``ExportTraceServiceRequest``
and keeps the spans; the run (its own process, started by ``healthsync train``
through Flower on Ray) inherits the variable from this process.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.engine_helpers import cli_json, make_federation

pytestmark = pytest.mark.slow


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint that keeps what it receives."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, dict, dict]] = []  # (name, attributes, resource attributes)
        self.paths: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # http.server calls it by this name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    self.server.spans.append((span.name, attributes, resource))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


def _names(receiver: Receiver, name: str) -> list[dict]:
    return [attrs for span, attrs, _ in list(receiver.spans) if span == name]


def _value(value):
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def test_a_training_run_delivers_its_round_spans_to_the_otlp_endpoint(
    tmp_path, capsys, monkeypatch
):
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        fed = make_federation(tmp_path, "fed", hospitals=3, patients=60)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "healthsync-e2e")
        db = str(tmp_path / "m.duckdb")
        code, summary = cli_json(
            capsys, "train", "--data", str(fed), "--db", db, "--rounds", "2", "--json"
        )
        assert code == 0 and summary["status"] == "completed", summary
        # The run flushes its spans right after it records its end, which the CLI waits for.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_names(receiver, "round")) < 2:
            time.sleep(0.2)
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert set(receiver.paths) == {"/v1/traces"}
    rounds = _names(receiver, "round")
    assert sorted(a["healthsync.round"] for a in rounds) == [1, 2]
    assert {a["healthsync.run_id"] for a in rounds} == {summary["run_id"]}
    assert all(a["healthsync.hospitals"] == 3 for a in rounds)
    names = {name for name, _, _ in receiver.spans}
    assert {"run", "configure", "train", "train block", "aggregate", "evaluate", "record"} <= names
    assert {r["service.name"] for _, _, r in receiver.spans} == {"healthsync-e2e"}
