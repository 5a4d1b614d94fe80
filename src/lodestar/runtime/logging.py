"""Structured logging: plain text for people, one JSON object a line for machines.

Every record carries the current request id (and the trace and span ids when
tracing is on, as OpenTelemetry's log data model names them).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

from lodestar.runtime.context import current_request_id

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        span_context = trace.get_current_span().get_span_context()
        valid = span_context.is_valid
        record.trace_id = format(span_context.trace_id, "032x") if valid else ""
        record.span_id = format(span_context.span_id, "016x") if valid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, ids and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and value not in ("", None):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        return f"{line} [request_id={request_id}]" if request_id else line


class _LodestarHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler this module installs, so that configuring again replaces it."""


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the root logger once for the process (idempotent)."""
    handler = _LodestarHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _LodestarHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
