"""The server interceptor chain: request id → tracing → metrics and errors.

grpc.aio runs a handler's behaviour after the interceptor returns, in the RPC's
own task, so each interceptor here wraps the behaviour itself: context
variables set by an outer wrapper are visible to everything inside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from lodestar.runtime.context import REQUEST_ID_HEADER, new_request_id, request_id_var
from lodestar.runtime.errors import LodestarError, to_grpc_status

_log = logging.getLogger("lodestar.grpc")

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC (for streams: until the last message).",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

Behaviour = Callable[..., Any]
# A wrapper gets the behaviour, the full method name and whether the response is a
# stream; it returns the new behaviour. It runs once per method, not per call: what
# depends on the call (its metadata) is read from the servicer context at call time.
Wrapper = Callable[[Behaviour, str, bool], Behaviour]


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, wrapper: Wrapper
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrapper(handler.unary_unary, method, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrapper(handler.unary_stream, method, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrapper(handler.stream_unary, method, False),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            wrapper(handler.stream_stream, method, True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once and hands out the wrapped one on every call.

    The wrapped handler is kept per method with the handler it wraps, and made
    again only if the server resolves that method to a different handler."""

    def __init__(self, wrapper: Wrapper) -> None:
        self._wrapper = wrapper
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap_handler(handler, method, self._wrapper)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _incoming_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's request id (``x-request-id`` metadata), or empty."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            return str(value)
    return ""


def _request_id_wrapper(behaviour: Behaviour, method: str, streaming: bool) -> Behaviour:
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


def _errors_and_metrics_wrapper(behaviour: Behaviour, method: str, streaming: bool) -> Behaviour:
    service, name = _split_method(method)
    started = GRPC_STARTED.labels(service, name)
    seconds = GRPC_HANDLING_SECONDS.labels(service, name)
    handled_ok = GRPC_HANDLED.labels(service, name, "OK")

    def done(start: float, code: str) -> None:
        seconds.observe(time.perf_counter() - start)
        (handled_ok if code == "OK" else GRPC_HANDLED.labels(service, name, code)).inc()

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


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The ordered chain every service uses: request id → tracing → metrics/errors."""
    chain: list[grpc.aio.ServerInterceptor] = [_WrappingInterceptor(_request_id_wrapper)]
    from lodestar.runtime.telemetry import tracing_server_interceptor

    tracing = tracing_server_interceptor()
    if tracing is not None:
        chain.append(tracing)
    chain.append(_WrappingInterceptor(_errors_and_metrics_wrapper))
    return chain
