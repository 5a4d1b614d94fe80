"""The platform as an MCP server: streamable HTTP at ``/mcp`` (the official
``mcp`` SDK, stateless, JSON responses), for agents.

Tools: ``list_collections``, ``search`` (text, filter), ``ask`` (an answer,
grounded in a collection's passages with their sources when one is named),
``remember`` and ``recall`` (the caller's personal memory, through
``flows.personal`` as the memory routes use it).

Every HTTP request to ``/mcp`` needs the platform's bearer token (401 as on
any route); every tool call then goes through the same ``Requirement`` as the
REST route doing the same work (permission, rate-limit class, deadline), the
same collection allow-list check and the token's tenant, and the same request
models or functions validate its arguments. A refusal is the tool's error result, whose
message starts with the reason (``MISSING_PERMISSION: ...``).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import LodestarError
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import gateway_of
from lodestar.services.gateway.convert import vector as convert
from lodestar.services.gateway.deps import authenticate, require
from lodestar.services.gateway.errors import response_for
from lodestar.services.gateway.flows import personal
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.schemas.inference import GenerateRequest
from lodestar.services.gateway.schemas.vector import SearchRequest
from lodestar.vector.v1 import vector_service_pb2 as vpb

_INSTRUCTIONS = (
    "Lodestar: vector collections, semantic search, retrieval-augmented answers with sources, "
    "and a personal memory. Every tool acts with the permissions of the bearer token."
)

_SEARCH = require(Permission.SEARCH_VECTORS, RouteClass.READ)
_GENERATE = require(Permission.GENERATE_TEXT, RouteClass.GENERATE)
# As the memory routes (``flows.personal_routes``).
_MEMORY_READ = require(Permission.GENERATE_TEXT, RouteClass.READ)
_MEMORY_WRITE = require(Permission.GENERATE_TEXT, RouteClass.WRITE)

Limit = Annotated[int, Field(ge=1, le=50, description="Most results.")]


def _request(ctx: Context) -> Request:
    request = ctx.request_context.request
    if not isinstance(request, Request):
        raise ToolError("INTERNAL: this tool is served over HTTP only")
    return request


async def _call(ctx: Context, requirement: Any) -> Call:
    call: Call = await requirement(_request(ctx))
    return call


def _refusal(error: LodestarError) -> ToolError:
    return ToolError(f"{error.reason}: {error.message}")


def _invalid(error: ValidationError) -> ToolError:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    return ToolError(f"INVALID_ARGUMENT: {where}: {problem['msg']}")


async def _search(call: Call, body: SearchRequest) -> list[dict[str, Any]]:
    call.collection(body.collection)
    vector = (await call.backends.embedding.embed([body.text or ""], call.options))[0]
    request = convert.search_to_proto(body, vector, tenant=call.tenant)
    response = await call.backends.vector.search_points(request, call.options)
    hits: list[dict[str, Any]] = convert.hits_from_proto(
        response, with_payload=True, with_vector=False
    )["points"]
    return hits


def _flows(request: Request) -> FlowsRuntime:
    flows = gateway_of(request).flows
    assert flows is not None  # the MCP server is mounted on gateways with flows
    return flows


def build_server() -> MCPServer:
    """The MCP server and its tools (not yet mounted)."""
    server: MCPServer = MCPServer("lodestar", instructions=_INSTRUCTIONS)

    @server.tool()
    async def list_collections(ctx: Context) -> dict[str, Any]:
        """The collections this token may use, with their size and configuration."""
        try:
            call = await _call(ctx, _SEARCH)
            names: list[dict[str, Any]] = []
            token = ""
            while True:
                response = await call.backends.vector.list_collections(
                    vpb.ListCollectionsRequest(page_size=1000, page_token=token), call.options
                )
                names.extend(
                    convert.collection_from_proto(c).model_dump(mode="json", exclude_none=True)
                    for c in response.collections
                    if call.principal.may_use_collection(c.name)
                )
                token = response.next_page_token
                if not token:
                    return {"collections": names}
        except LodestarError as error:
            raise _refusal(error) from None

    @server.tool()
    async def search(
        ctx: Context,
        collection: str,
        text: str,
        limit: Limit = 5,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Points of ``collection`` nearest to ``text``, optionally filtered (the REST
        API's filter: ``{"must": [{"key": "color", "match": {"keyword": "red"}}]}``)."""
        try:
            body = SearchRequest.model_validate(
                {"collection": collection, "text": text, "limit": limit, "filter": filter}
            )
        except ValidationError as error:
            raise _invalid(error) from None
        try:
            call = await _call(ctx, _SEARCH)
            return {"points": await _search(call, body)}
        except LodestarError as error:
            raise _refusal(error) from None

    @server.tool()
    async def ask(
        ctx: Context,
        question: str,
        collection: str | None = None,
        limit: Limit = 5,
        filter: dict[str, Any] | None = None,
        max_tokens: Annotated[int, Field(ge=1, le=4096)] = 256,
    ) -> dict[str, Any]:
        """An answer to ``question``; with ``collection``, grounded in its most relevant
        passages, which come back as ``sources``."""
        context = None
        if collection is not None:
            context = {"collection": collection, "limit": limit, "filter": filter}
        try:
            body = GenerateRequest.model_validate(
                {
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": max_tokens,
                    "context": context,
                }
            )
        except ValidationError as error:
            raise _invalid(error) from None
        try:
            request = _request(ctx)
            call = await _call(ctx, _GENERATE)
            answer = await gateway_of(request).pipeline.generate(body, call)
        except LodestarError as error:
            raise _refusal(error) from None
        return {
            "answer": answer["text"],
            "sources": answer.get("sources", []),
            "finish_reason": answer["finish_reason"],
        }

    @server.tool()
    async def remember(
        ctx: Context,
        text: Annotated[str, Field(min_length=1, max_length=8000)],
        answer: str = "",
    ) -> dict[str, Any]:
        """Remember something for the caller (a note, or an exchange: ``text`` and its
        ``answer``); ``recall`` and ``memory: true`` generations find it again."""
        try:
            request = _request(ctx)
            call = await _call(ctx, _MEMORY_WRITE)
            item = await personal.remember(call, _flows(request), text, answer)
        except LodestarError as error:
            raise _refusal(error) from None
        return item.as_dict()

    @server.tool()
    async def recall(ctx: Context, query: str, limit: Limit = 5) -> dict[str, Any]:
        """The caller's own remembered items most similar to ``query``, best first."""
        try:
            request = _request(ctx)
            call = await _call(ctx, _MEMORY_READ)
            items = await personal.recall_text(call, _flows(request), query, limit=limit)
        except LodestarError as error:
            raise _refusal(error) from None
        return {"memories": [item.as_dict() for item in items]}

    return server


class McpEndpoint:
    """The ASGI endpoint at ``/mcp``: authenticates the bearer token (the
    gateway's 401 otherwise), then hands the request to the SDK's session manager."""

    def __init__(self, server: MCPServer) -> None:
        # Tokens, not cookies, authorise every request: DNS rebinding gains nothing.
        server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager = server.session_manager

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await authenticate(request, gateway_of(request))
        except LodestarError as error:
            await response_for(error)(scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)


def mcp_route() -> tuple[Route, McpEndpoint]:
    """The ``/mcp`` route and its endpoint, whose ``lifespan`` the app must run."""
    endpoint = McpEndpoint(build_server())
    return Route("/mcp", endpoint=endpoint, methods=["GET", "POST", "DELETE"]), endpoint
