"""The gateway's outermost layer, as plain ASGI (no per-request task or
buffering, and streams pass straight through).

For every HTTP request it: takes or makes the request id (X-Request-ID in and
out; routes forward it to backends as x-request-id metadata); refuses bodies
over the configured size with 413; adds the RateLimit-* headers a route's
dependency decided (left in the request state, ``state.py``); turns an
unexpected exception into the JSON 500 body; counts the request by route
template, method and status; and writes one access-log line.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import grpc
import orjson
from fastapi import HTTPException
from opentelemetry import propagate, trace

from lodestar.runtime.context import new_request_id, request_id_var
from lodestar.runtime.telemetry import tracing_enabled
from lodestar.services.gateway.errors import JSON, error_payload, internal_error_body
from lodestar.services.gateway.metrics import HTTP_DURATION_BY, HTTP_REQUESTS_BY
from lodestar.services.gateway.state import STATE_RATE_LIMIT, STATE_SUBJECT, request_state

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_access = logging.getLogger("lodestar.gateway.access")
_log = logging.getLogger(__name__)

_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions through
    its body parsing, and the error handlers answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


def _end_server_span(
    span: trace.Span, method: str, route: str | None, status: int, error_type: str
) -> None:
    """OpenTelemetry's HTTP server conventions: ``{method} {route}`` as the name,
    the route template, the status, and ``error.type`` (the exception, else the
    status code) with an error status for a 5xx."""
    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500 or error_type:
        span.set_attribute("error.type", error_type or str(status))
        span.set_status(trace.StatusCode.ERROR)


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        access_log: bool = True,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self._tracer = tracer or trace.get_tracer("lodestar.gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = ""
        content_length: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _VALID_REQUEST_ID.match(value):
                    request_id = value.decode()
            elif name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
        if not request_id:
            request_id = new_request_id()
        token = request_id_var.set(request_id)
        state = request_state(scope)
        status = 500
        started = False
        request_id_header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append(request_id_header)
                decision = state.get(STATE_RATE_LIMIT)
                if decision is not None and status != 429:
                    headers.extend(decision.headers())
                message["headers"] = headers
            await send(message)

        limit = self.max_body_bytes
        received_bytes = 0

        async def receive_wrapper() -> Message:
            nonlocal received_bytes
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > limit:
                    raise BodyTooLarge(limit)
            return message

        span_cm = None
        # FastAPI's own telemetry (or an ASGI instrumentation around the app) may
        # already have opened the server span from the traceparent: one is enough.
        if tracing_enabled() and not trace.get_current_span().get_span_context().is_valid:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            # Named for the method until routing finds the template (semconv).
            span_cm = self._tracer.start_as_current_span(
                scope["method"],
                context=propagate.extract(headers),
                kind=trace.SpanKind.SERVER,
                attributes={
                    "http.request.method": scope["method"],
                    "url.path": scope["path"],
                    "url.scheme": scope.get("scheme", "http"),
                },
            )
            span_cm.__enter__()
        error_type = ""
        try:
            if content_length is not None and content_length > limit:
                await self._too_large(send_wrapper, limit)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except BodyTooLarge:
            if not started:
                await self._too_large(send_wrapper, limit)
        except Exception as error:
            error_type = type(error).__qualname__
            _log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not started:
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", JSON.encode())],
                    }
                )
                await send_wrapper(
                    {"type": "http.response.body", "body": internal_error_body(request_id)}
                )
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            matched = getattr(route, "path_format", None) or getattr(route, "path", None)
            template = matched or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS_BY(template, method, str(status)).inc()
            HTTP_DURATION_BY(template, method).observe(elapsed)
            if self.access_log and _access.isEnabledFor(logging.INFO):
                _access.info(
                    "%s %s %d %.1fms subject=%s",
                    method,
                    scope["path"],
                    status,
                    elapsed * 1000,
                    state.get(STATE_SUBJECT, "-"),
                )
            if span_cm is not None:
                _end_server_span(trace.get_current_span(), method, matched, status, error_type)
                span_cm.__exit__(None, None, None)
            request_id_var.reset(token)

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        body = orjson.dumps(
            error_payload(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is larger than {limit} bytes",
                reason="BODY_TOO_LARGE",
                metadata={"max_body_bytes": str(limit)},
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", JSON.encode()), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
