"""Distributed tracing across the running stack.

The four services run as processes (the live stack of test_live_stack.py) with
tracing configured only by the standard OTEL_* variables: the OTLP/gRPC exporter
pointed at a trace receiver inside this test process. A REST request to the
gateway carrying a W3C traceparent must come back as one trace: every span under
the caller's trace id, spans from every process the request touched, each span's
parent present (or the caller's own span), and the spans of the real work in each
service (embedding batch, vector search, prompt processing and decoding).

Without OTEL_* variables nothing is installed: the API's no-op tracer answers.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.ops.test_live_stack import (
    GRPC_SERVICES,
    LiveStack,
    _free_port,
    _service_env,
    start_services,
)

SPAN_WAIT_S = 20.0
SERVICES = (*GRPC_SERVICES, "gateway")
COLLECTION = "ops_traces"

SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SpanKind.SPAN_KIND_CLIENT


def _service_name(service: str) -> str:
    # As the Kubernetes base sets OTEL_SERVICE_NAME for each workload.
    return f"lodestar-{service}"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str

    def __str__(self) -> str:
        parent = self.parent_span_id or "-"
        return f"{self.service}: {self.name} ({self.span_id} <- {parent})"


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                received.extend(
                    ReceivedSpan(
                        service=service,
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                    )
                    for span in scope_spans.spans
                )
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self._spans if span.trace_id == trace_id]


@dataclass
class TracedStack:
    stack: LiveStack
    receiver: TraceReceiver
    auth: dict[str, str]

    def wait_for_trace(
        self, trace_id: str, complete: Callable[[list[ReceivedSpan]], bool]
    ) -> list[ReceivedSpan]:
        """The trace's spans once ``complete`` holds, or whatever came within SPAN_WAIT_S
        (each process exports on its own schedule, so spans arrive in several batches)."""
        deadline = time.monotonic() + SPAN_WAIT_S
        spans = self.receiver.trace(trace_id)
        while not complete(spans) and time.monotonic() < deadline:
            time.sleep(0.1)
            spans = self.receiver.trace(trace_id)
        return spans


def _start_receiver(receiver: TraceReceiver) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _traced_env(stack: LiveStack, receiver_port: int) -> Callable[[str], dict[str, str]]:
    base = {k: v for k, v in _service_env(stack).items() if not k.startswith("OTEL_")}
    base.update(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            # Metrics and logs stay off: only traces are under test.
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        }
    )

    def env_for(service: str) -> dict[str, str]:
        return {**base, "OTEL_SERVICE_NAME": _service_name(service)}

    return env_for


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedStack]:
    from lodestar.auth.tokens import mint_token
    from lodestar.services.gateway.settings import GatewaySettings

    receiver = TraceReceiver()
    server, receiver_port = _start_receiver(receiver)
    stack = LiveStack(tmp_path_factory.mktemp("traced-stack"))
    for name in SERVICES:
        stack.ports[name] = _free_port()
    for name in GRPC_SERVICES:
        stack.metrics_ports[name] = _free_port()
    token = mint_token(GatewaySettings(), "ops-traces", ["admin"], 600)
    traced = TracedStack(stack, receiver, {"Authorization": f"Bearer {token}"})
    try:
        start_services(stack, _traced_env(stack, receiver_port))
        # Earlier traffic first, so that each traced request below is not the
        # first one any service sees (a span parented to a stale request shows).
        with httpx.Client(base_url=stack.gateway, headers=traced.auth, timeout=120) as http:
            created = http.post("/api/v1/collections", json={"name": COLLECTION})
            assert created.status_code == 201, created.text
            texts = [
                "Mars is the red planet.",
                "The Pacific is the deepest ocean.",
                "Leaves make sugar from light.",
            ]
            inserted = http.post(
                "/api/v1/vectors/insert",
                json={"collection": COLLECTION, "points": [{"text": t} for t in texts]},
            )
            assert inserted.status_code == 200, inserted.text
        yield traced
    except (RuntimeError, TimeoutError, AssertionError) as error:
        stack.stop()
        server.stop(None)
        pytest.fail(f"{error}\n{stack.logs()}")
    else:
        stack.stop()
        server.stop(None)


def _traceparent() -> tuple[str, str, str]:
    """A sampled W3C traceparent for a caller's span, with its trace and span ids."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _unconnected(spans: list[ReceivedSpan], caller_span_id: str) -> list[ReceivedSpan]:
    """Spans whose parent is neither in the trace nor the caller's span."""
    known = {span.span_id for span in spans} | {caller_span_id}
    return [span for span in spans if span.parent_span_id not in known]


def _complete(
    caller_span_id: str, services: set[str], names: set[str]
) -> Callable[[list[ReceivedSpan]], bool]:
    def complete(spans: list[ReceivedSpan]) -> bool:
        return (
            {s.service for s in spans} >= services
            and {s.name for s in spans} >= names
            and not _unconnected(spans, caller_span_id)
        )

    return complete


def _assert_one_connected_trace(
    spans: list[ReceivedSpan], caller_span_id: str, services: set[str], names: set[str]
) -> None:
    listing = "\n".join(map(str, spans))
    # Every span the request caused, under the caller's trace id.
    assert {s.service for s in spans} == services, f"services in the trace:\n{listing}"
    assert len(services) >= 3
    missing = names - {s.name for s in spans}
    assert not missing, f"no {sorted(missing)} span in the trace:\n{listing}"
    # One entry point: the gateway's server span, a child of the caller's span.
    roots = [s for s in spans if s.parent_span_id == caller_span_id]
    assert len(roots) == 1, f"spans parented to the caller:\n{listing}"
    assert roots[0].service == _service_name("gateway")
    assert roots[0].kind == SERVER
    assert not _unconnected(spans, caller_span_id), f"spans with no parent in the trace:\n{listing}"
    # Each process hop is a gateway client span and the backend's server span under it.
    by_id = {s.span_id: s for s in spans}
    backend_servers = [s for s in spans if s.kind == SERVER and s is not roots[0]]
    assert {s.service for s in backend_servers} == services - {_service_name("gateway")}
    for span in backend_servers:
        parent = by_id[span.parent_span_id]
        assert parent.kind == CLIENT, f"{span} has parent {parent}"
        assert parent.service == _service_name("gateway"), f"{span} has parent {parent}"
        assert parent.name == span.name, f"{span} has parent {parent}"
    # The real work sits inside the RPC that asked for it (no stale or foreign parent).
    for span in spans:
        if span.name in names and span.kind != SERVER:
            ancestor = by_id[span.parent_span_id]
            while ancestor.kind != SERVER:
                ancestor = by_id[ancestor.parent_span_id]
            assert ancestor.service == span.service, f"{span} is under {ancestor}"


@pytest.mark.slow
def test_grounded_generation_is_one_trace_across_all_services(traced: TracedStack) -> None:
    header, trace_id, caller_span_id = _traceparent()
    with httpx.Client(base_url=traced.stack.gateway, headers=traced.auth, timeout=120) as http:
        answer = http.post(
            "/api/v1/generate",
            json={
                "prompt": "Which planet is red?",
                "max_tokens": 4,
                "temperature": 0,
                "context": {"collection": COLLECTION, "limit": 2},
            },
            headers={"traceparent": header},
        )
    assert answer.status_code == 200, answer.text
    services = {_service_name(s) for s in SERVICES}
    names = {
        "POST /api/v1/generate",
        "embedding.batch",
        "vector.search",
        "inference.prompt",
        "inference.decode",
    }
    spans = traced.wait_for_trace(trace_id, _complete(caller_span_id, services, names))
    _assert_one_connected_trace(spans, caller_span_id, services, names)


@pytest.mark.slow
def test_search_by_text_is_one_trace_through_embedding_and_vector(traced: TracedStack) -> None:
    header, trace_id, caller_span_id = _traceparent()
    with httpx.Client(base_url=traced.stack.gateway, headers=traced.auth, timeout=120) as http:
        found = http.post(
            "/api/v1/vectors/search",
            json={"collection": COLLECTION, "text": "Which ocean is deepest?", "limit": 2},
            headers={"traceparent": header},
        )
    assert found.status_code == 200, found.text
    services = {_service_name(s) for s in ("gateway", "embedding", "vector")}
    names = {"POST /api/v1/vectors/search", "embedding.batch", "vector.search"}
    spans = traced.wait_for_trace(trace_id, _complete(caller_span_id, services, names))
    _assert_one_connected_trace(spans, caller_span_id, services, names)


# Run in a fresh interpreter: a process installs its tracer provider only once.
_PROBE = """
import json, sys
from opentelemetry import trace
from lodestar.runtime import telemetry
from lodestar.runtime.interceptors import server_interceptors

configured = telemetry.configure_tracing("lodestar-probe")
with telemetry.tracer("probe").start_as_current_span("probe") as span:
    recording = span.is_recording()
with telemetry.span(telemetry.tracer("probe"), "probe", {"n": 1}):
    helper_recording = trace.get_current_span().is_recording()
print(json.dumps({
    "configured": configured,
    "provider": type(trace.get_tracer_provider()).__name__,
    "recording": recording,
    "helper_recording": helper_recording,
    "server_interceptors": len(server_interceptors()),
    "client_interceptors": len(telemetry.tracing_client_interceptors()),
    "sdk_loaded": "opentelemetry.sdk.trace" in sys.modules,
}))
"""


def _probe(otel: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # A console exporter prints spans too; the probe's own line is the one to read.
    line = next(x for x in done.stdout.splitlines() if x.startswith('{"configured"'))
    result: dict[str, Any] = json.loads(line)
    return result


@pytest.mark.parametrize(
    "otel",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ],
    ids=["no-variables", "exporter-none", "sdk-disabled"],
)
def test_without_otel_variables_tracing_is_a_no_op(otel: dict[str, str]) -> None:
    assert _probe(otel) == {
        "configured": False,
        "provider": "ProxyTracerProvider",
        "recording": False,
        "helper_recording": False,
        "server_interceptors": 0,
        "client_interceptors": 0,
        "sdk_loaded": False,
    }


def test_an_exporter_variable_installs_the_sdk_provider() -> None:
    # The console exporter needs no endpoint; it shows the probe can tell the two apart.
    assert _probe({"OTEL_TRACES_EXPORTER": "console"}) == {
        "configured": True,
        "provider": "TracerProvider",
        "recording": True,
        "helper_recording": True,
        "server_interceptors": 1,
        "client_interceptors": 4,
        "sdk_loaded": True,
    }
