"""JSON log lines carry the span id beside the trace id, as OpenTelemetry's log
data model names them."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from lodestar.runtime.logging import JsonFormatter, _ContextFilter


def test_a_json_log_line_names_the_trace_and_the_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    with tracer.start_as_current_span("work") as span:
        _ContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    context = span.get_span_context()
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")


def test_without_a_span_there_are_no_ids() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    _ContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert "trace_id" not in entry
    assert "span_id" not in entry
