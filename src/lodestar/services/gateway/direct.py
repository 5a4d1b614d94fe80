"""Direct dispatch of API requests to their endpoints, past FastAPI's generic
machinery.

FastAPI brings every request through its router, its exception and exit-stack
middleware and its generic dependency solver. On a busy route that costs more
than the route's own work: on a 2-core host it added about 0.4 ms to a GET of
a point at moderate load. For a route whose parameters are simple (scalar path
and query parameters, at most one JSON body model, at most one ``require``
dependency, an ``async`` endpoint returning a ``Response``, no route class
with a handler of its own), this layer does the same work directly:

- it finds the route FastAPI's router would pick: the first route, in order,
  whose path and method match;
- it validates the parameters and the body with the route's own field
  definitions (the same pydantic validation FastAPI runs);
- it runs the dependency (authentication, permission, rate limit, deadline)
  and the endpoint, and renders exceptions with the app's exception handlers.

Everything else goes to FastAPI unchanged: routes that do not fit, HEAD
requests, requests FastAPI's own telemetry follows (when tracing is on),
bodies not declared ``application/json``, and any request whose parameters or
body do not validate, which FastAPI then answers with its 422 (the body is
handed on as it was received). The answers are the same either way; only the
time differs. The layer sits inside ``GatewayMiddleware``, so request ids,
metrics, the body size limit and the access log apply alike.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from re import Pattern
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lodestar.services.gateway.routes.base import GatewayRoute, parse_json_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SCALARS = (str, int, float, bool)


class _Invalid(Exception):
    """A parameter or body that does not validate here: FastAPI answers."""


@dataclass(frozen=True, slots=True)
class _Param:
    name: str  # the endpoint's argument
    alias: str  # the name in the path or query string
    adapter: TypeAdapter[Any]
    required: bool
    default: Any

    def value(self, raw: str | None) -> Any:
        if raw is None:
            if self.required:
                raise _Invalid
            return self.default
        try:
            return self.adapter.validate_python(raw, from_attributes=True)
        except ValidationError:
            raise _Invalid from None


@dataclass(frozen=True, slots=True)
class _Body:
    name: str
    validate: Callable[..., Any]  # validate_python of the body field's validator


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to call one route's endpoint directly."""

    route: APIRoute
    path_params: tuple[_Param, ...]
    query_params: tuple[_Param, ...]
    body: _Body | None
    dependency: tuple[str, Callable[[Request], Awaitable[Any]]] | None


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A route in the router's order; ``plan`` is None for those FastAPI serves."""

    regex: Pattern[str]
    methods: frozenset[str] | None
    route: Route
    plan: _Plan | None


def _adapter(info: FieldInfo) -> TypeAdapter[Any]:
    """The validator FastAPI builds for a field: its type with its constraints."""
    form: Any = Annotated[info.annotation, info]
    return TypeAdapter(form)


def _param(field: Any) -> _Param | None:
    info = field.field_info
    if info.annotation not in _SCALARS:
        return None
    if info.validation_alias is not None and info.validation_alias != field.alias:
        return None
    return _Param(
        field.name,
        field.alias,
        _adapter(info),
        info.is_required(),
        info.get_default(call_default_factory=True),
    )


def plan_for(route: APIRoute) -> _Plan | None:
    """The direct plan of ``route``, or None when FastAPI must serve it."""
    # A route class with its own handler (error shapes, say) is served by it.
    if type(route) not in (APIRoute, GatewayRoute):
        return None
    endpoint = route.endpoint
    if not inspect.iscoroutinefunction(endpoint):
        return None
    try:
        returns = typing.get_type_hints(endpoint).get("return")
    except Exception:
        return None
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        return None
    dependant = route.dependant
    if (
        dependant.header_params
        or dependant.cookie_params
        or dependant.request_param_name
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or len(dependant.body_params) > 1
        or len(dependant.dependencies) > 1
    ):
        return None
    path_params = [_param(f) for f in dependant.path_params]
    query_params = [_param(f) for f in dependant.query_params]
    if None in path_params or None in query_params:
        return None
    body: _Body | None = None
    if dependant.body_params:
        field = dependant.body_params[0]
        info = field.field_info
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        if getattr(info, "embed", False) or not info.is_required():
            return None
        # The model's own validator is the body field's when the field adds no
        # constraints of its own (and costs no schema build).
        validator = model.__pydantic_validator__ if not info.metadata else _adapter(info)
        body = _Body(field.name, validator.validate_python)
    dependency = None
    if dependant.dependencies:
        sub = dependant.dependencies[0]
        # Only the platform's ``require`` dependencies: they take the request alone.
        if not hasattr(sub.call, "route_class") or not inspect.iscoroutinefunction(sub.call):
            return None
        if (
            sub.dependencies
            or sub.path_params
            or sub.query_params
            or sub.header_params
            or sub.cookie_params
            or sub.body_params
            or not sub.request_param_name
            or not sub.name
        ):
            return None
        dependency = (sub.name, sub.call)
    return _Plan(
        route,
        tuple(p for p in path_params if p is not None),
        tuple(p for p in query_params if p is not None),
        body,
        dependency,
    )


def _candidates(app: FastAPI) -> list[_Candidate]:
    """The app's routes in the router's order, up to the first one this layer
    cannot match as the router would."""
    out: list[_Candidate] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, Route) or context.path != route.path:
            break
        plan = plan_for(route) if isinstance(route, APIRoute) else None
        methods = frozenset(route.methods) if route.methods else None
        out.append(_Candidate(route.path_regex, methods, route, plan))
    return out


_JSON_TYPE = re.compile(r"application/(?:[a-z0-9.!#$&^_-]+\+)?json")


def _is_json(content_type: str | None) -> bool:
    """Whether the body is declared JSON in the plain way (``application/json``
    or ``application/...+json``, parameters allowed). FastAPI reads any other
    declaration, or none, its own way."""
    if content_type is None:
        return False
    return _JSON_TYPE.fullmatch(content_type.partition(";")[0].strip().lower()) is not None


class DirectRoutes:
    """The ASGI layer; ``app`` is the rest of the FastAPI stack, ``fastapi_app``
    the application whose routes and exception handlers it uses."""

    def __init__(self, app: ASGIApp, *, fastapi_app: FastAPI, enabled: bool = True) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.enabled = enabled
        self._candidates: list[_Candidate] | None = None

    def routes(self) -> list[_Candidate]:
        if self._candidates is None:
            self._candidates = _candidates(self.fastapi_app)
        return self._candidates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Plan the routes at startup (some milliseconds), not in a request.
            if self.enabled:
                self.routes()
            await self.app(scope, receive, send)
            return
        # FastAPI's own telemetry (on when tracing is) names its server span after
        # the route its router selects: such requests take FastAPI's path.
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope.get("root_path")
            or scope.get("fastapi.telemetry") is not None
        ):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        for candidate in self.routes():
            match = candidate.regex.match(path)
            if match is None or (candidate.methods is not None and method not in candidate.methods):
                continue
            plan = candidate.plan
            if plan is None or method == "HEAD":
                break
            await self._direct(plan, match.groupdict(), scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _direct(
        self, plan: _Plan, raw_path: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        route = plan.route
        path_params = {
            key: route.param_convertors[key].convert(value) for key, value in raw_path.items()
        }
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = path_params
        request = Request(scope, receive, send)
        body: bytes | None = None
        try:
            arguments: dict[str, Any] = {}
            for param in plan.path_params:
                arguments[param.name] = param.value(path_params.get(param.alias))
            if plan.query_params:
                query = QueryParams(scope["query_string"])
                for param in plan.query_params:
                    arguments[param.name] = param.value(query.get(param.alias))
            if plan.body is not None:
                if not _is_json(request.headers.get("content-type")):
                    raise _Invalid
                body = await request.body()
                try:
                    arguments[plan.body.name] = plan.body.validate(
                        parse_json_body(body), from_attributes=True
                    )
                except ValueError:  # not JSON here, or a ValidationError
                    raise _Invalid from None
        except _Invalid:
            await self.app(scope, receive if body is None else _replay(body, receive), send)
            return
        except Exception as error:
            await self._handle(error, request, scope, receive, send)
            return
        try:
            if plan.dependency is not None:
                name, dependency = plan.dependency
                arguments[name] = await dependency(request)
            response: Response = await route.endpoint(**arguments)
        except Exception as error:
            await self._handle(error, request, scope, receive, send)
            return
        await response(scope, receive, send)

    async def _handle(
        self, error: Exception, request: Request, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Answer ``error`` as the app's exception handlers do (else re-raise)."""
        handlers = self.fastapi_app.exception_handlers
        handler = None
        if isinstance(error, HTTPException):
            handler = handlers.get(error.status_code)
        if handler is None:
            for cls in type(error).__mro__:
                handler = handlers.get(cls)
                if handler is not None:
                    break
        if handler is None:
            raise error
        response = handler(request, error)
        if inspect.isawaitable(response):
            response = await response
        if response is not None:
            await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands on an already-read body once, then the connection's."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
