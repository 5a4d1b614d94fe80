"""The server-side layers of every call: request id → tracing → metrics and errors
→ the server's own (its tokens and permissions, ``auth.rpc``).

The request-id and metrics/errors layers wrap each method's handler once, when a
service registers it (``WrappingRegistrar``), rather than as grpc interceptors,
which grpc.aio runs as a chain of coroutines on every call. Each layer wraps the
behaviour itself, so context variables set by an outer layer are visible to
everything inside it. Tracing, when configured, is OpenTelemetry's own grpc
interceptor, and so runs outside the other two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from lodestar.runtime.context import REQUEST_ID_HEADER, new_request_id, request_id_var
from lodestar.runtime.errors import LodestarError, to_grpc_status

_log = logging.getLogger("lodestar.grpc")

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC (for streams: until the last message).",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

Behaviour = Callable[..., Any]
# A wrapper gets the behaviour, the full method name, whether the response is a
# stream and the RPC's type; it returns the new behaviour. It runs once per method,
# not per call: what depends on the call (its metadata) is read from the servicer
# context at call time.
Wrapper = Callable[[Behaviour, str, bool, str], Behaviour]
# The RPC types are the grpc_type label of the usual gRPC server metrics
# (go-grpc-prometheus's values): unary, server_stream, client_stream, bidi_stream.


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, wrapper: Wrapper
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrapper(handler.unary_unary, method, False, "unary"),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrapper(handler.unary_stream, method, True, "server_stream"),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrapper(handler.stream_unary, method, False, "client_stream"),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            wrapper(handler.stream_stream, method, True, "bidi_stream"),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out wrapped (each made once, and
    made again only if the inner handler resolves that method differently)."""

    def __init__(self, inner: grpc.GenericRpcHandler, layers: Sequence[Wrapper]) -> None:
        self._inner = inner
        self._layers = layers
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap_method_handler(handler, method, self._layers)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class WrappingRegistrar:
    """Stands in for the server where services register their handlers (the generated
    ``add_*_to_server`` functions, health, reflection): each method handler reaches
    the server already wrapped in the request-id and metrics/errors layers, and in
    ``inner`` layers (outermost first) inside those."""

    def __init__(self, server: grpc.aio.Server, inner: Sequence[Wrapper] = ()) -> None:
        self._server = server
        self._inner = tuple(inner)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._inner) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service,
            {
                name: wrap_method_handler(h, f"/{service}/{name}", self._inner)
                for name, h in handlers.items()
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def _incoming_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's request id (``x-request-id`` metadata), or empty."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return str(value)
    return ""


def _request_id_wrapper(
    behaviour: Behaviour, method: str, streaming: bool, rpc_type: str
) -> Behaviour:
    if streaming:

        async def stream_behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
            request_id_var.set(_incoming_request_id(context) or new_request_id())
            async for item in behaviour(request, context):
                yield item

        return stream_behaviour

    async def unary_behaviour(request: Any, context: Any) -> Any:
        request_id_var.set(_incoming_request_id(context) or new_request_id())
        return await behaviour(request, context)

    return unary_behaviour


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


async def _abort_for(
    error: BaseException, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    """Turn an exception into the client's status; never leak a stack trace."""
    if isinstance(error, LodestarError):
        if error.code == grpc.StatusCode.INTERNAL:
            _log.error("%s failed: %s", method, error.message)
        await context.abort_with_status(to_grpc_status(error))
    _log.exception("unhandled error in %s", method, exc_info=error)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id_var.get()}); it has been logged",
    )


def _code_name(context: grpc.aio.ServicerContext[Any, Any], default: str) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for member in grpc.StatusCode:
            if member.value[0] == code:
                return member.name
    return default


def _errors_and_metrics_wrapper(
    behaviour: Behaviour, method: str, streaming: bool, rpc_type: str
) -> Behaviour:
    service, name = _split_method(method)
    started = GRPC_STARTED.labels(rpc_type, service, name)
    seconds = GRPC_HANDLING_SECONDS.labels(rpc_type, service, name)
    handled_ok = GRPC_HANDLED.labels(rpc_type, service, name, "OK")

    def done(start: float, code: str) -> None:
        seconds.observe(time.perf_counter() - start)
        if code == "OK":
            handled_ok.inc()
        else:
            GRPC_HANDLED.labels(rpc_type, service, name, code).inc()

    if streaming:

        async def stream_behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
            started.inc()
            start = time.perf_counter()
            code = "OK"
            try:
                async for item in behaviour(request, context):
                    yield item
                code = _code_name(context, "OK")
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except Exception as error:
                code = error.code.name if isinstance(error, LodestarError) else "INTERNAL"
                await _abort_for(error, context, method)
            finally:
                done(start, code)

        return stream_behaviour

    async def unary_behaviour(request: Any, context: Any) -> Any:
        started.inc()
        start = time.perf_counter()
        code = "OK"
        try:
            response = await behaviour(request, context)
            code = _code_name(context, "OK")
            return response
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = _code_name(context, "UNKNOWN")
            raise
        except Exception as error:
            code = error.code.name if isinstance(error, LodestarError) else "INTERNAL"
            await _abort_for(error, context, method)
        finally:
            done(start, code)

    return unary_behaviour


# Outermost first.
_LAYERS: tuple[Wrapper, ...] = (_request_id_wrapper, _errors_and_metrics_wrapper)


def wrap_method_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, inner: Sequence[Wrapper] = ()
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` inside the request-id and metrics/errors layers, and ``inner``
    inside those (so that what they raise is counted and mapped like the rest)."""
    for layer in reversed((*_LAYERS, *inner)):
        handler = _wrap_handler(handler, method, layer)
    return handler


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The grpc interceptors every server gets: tracing's, when tracing is configured
    (the other layers are wrapped around the handlers by ``WrappingRegistrar``)."""
    from lodestar.runtime.telemetry import tracing_server_interceptor

    tracing = tracing_server_interceptor()
    return [] if tracing is None else [tracing]
