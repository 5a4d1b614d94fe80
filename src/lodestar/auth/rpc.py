"""Tokens and permissions on the gRPC services: the same rules as the REST routes.

A call's bearer token comes in its ``authorization`` metadata (``Bearer <JWT>``), is
verified by the platform's one verifier (``auth.tokens``) and must grant the
permission ``RPC_RULES`` names for the method: the permission of the REST route that
makes the call (SearchPoints → SearchVectors, DeleteCollection → ManageCollections).
A missing permission is PERMISSION_DENIED naming it; a call without a token passes
unchecked unless the server requires tokens, and then it is UNAUTHENTICATED.

The token's tenant and collection allow-list bind the call, as the gateway's ``Call``
binds a REST request: a request's ``tenant`` may only repeat the token's tenant (an
empty one is filled in), so that the vector service confines every read and write to
it; every collection a request names must be on the allow-list, and lists are
filtered to it (analytics at their source: the allow-list restricts the request, so
that totals and popular queries count only the collections the token may use); a
tenant-scoped token cannot change, delete or snapshot a whole collection, which would
touch other tenants' points.

Health and reflection stay open: orchestrators probe health without credentials, and
reflection describes the API that the repository publishes anyway.

``RpcAuthorizer.wrap`` is the server interceptor: a layer of the server's one chain
(``runtime.interceptors``), inside the error layer, so that a refusal is a domain
error mapped to its status, counted and logged like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import Message

from lodestar.auth.permissions import Permission, Principal, missing_permission
from lodestar.auth.tokens import TokenVerifier
from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import PermissionDenied, Unauthenticated
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import vector_service_pb2 as vpb

AUTHORIZATION_METADATA: Final = "authorization"

# Services every caller may use (see the module docstring).
OPEN_SERVICES: Final = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

Check = Callable[[Any, Principal], None]


def _nothing(_request: Any, _principal: Principal) -> None:
    return None


@dataclass(frozen=True, slots=True)
class RpcRule:
    """What a method needs: ``permission`` (a tuple: any one of them; None: any valid
    token), ``bind`` (checks the request against the principal and narrows it) and
    ``screen`` (removes from the response what the principal may not see)."""

    permission: Permission | tuple[Permission, ...] | None
    bind: Check = _nothing
    screen: Check | None = None


def allowed_collection(name: str, principal: Principal) -> None:
    """PERMISSION_DENIED unless the token's allow-list has ``name``."""
    if not principal.may_use_collection(name):
        raise PermissionDenied(
            f"this token may not use collection {name!r}",
            reason="COLLECTION_NOT_ALLOWED",
            metadata={"collection": name},
        )


def bind_tenant(request: Any, principal: Principal) -> None:
    """The request's ``tenant`` made the token's: kept when it is, filled in when
    empty, refused when it names another (a token without a tenant may name any)."""
    tenant = principal.tenant
    if not tenant:
        return
    if request.tenant and request.tenant != tenant:
        raise PermissionDenied(
            f"this token is confined to tenant {tenant!r}; the request names {request.tenant!r}",
            reason="TENANT_NOT_ALLOWED",
            metadata={"tenant": tenant},
        )
    request.tenant = tenant


def _whole_collection(action: str) -> Check:
    def check(_request: Any, principal: Principal) -> None:
        if principal.tenant:
            raise PermissionDenied(
                f"a tenant-scoped token cannot {action}; it would affect other tenants' points",
                reason="TENANT_SCOPED_TOKEN",
                metadata={"tenant": principal.tenant},
            )

    return check


def _all(*checks: Check) -> Check:
    def check(request: Any, principal: Principal) -> None:
        for one in checks:
            one(request, principal)

    return check


def _named(field: str) -> Check:
    def check(request: Any, principal: Principal) -> None:
        allowed_collection(getattr(request, field), principal)

    return check


def _named_if_set(field: str) -> Check:
    def check(request: Any, principal: Principal) -> None:
        name = getattr(request, field)
        if name:
            allowed_collection(name, principal)

    return check


_points = _all(_named("collection"), bind_tenant)


def _batch_search(request: vpb.BatchSearchPointsRequest, principal: Principal) -> None:
    for search in request.searches:
        _points(search, principal)


# What each operation of a batch needs, as the REST batch route asks.
_OPERATION_PERMISSIONS: Final = {
    "upsert": Permission.INSERT_VECTORS,
    "delete": Permission.DELETE_VECTORS,
    "set_payload": Permission.UPDATE_VECTORS,
    "delete_payload_keys": Permission.UPDATE_VECTORS,
}


def _batch_update(request: vpb.BatchUpdatePointsRequest, principal: Principal) -> None:
    _points(request, principal)
    for operation in request.operations:
        kind = operation.WhichOneof("kind")
        needed = _OPERATION_PERMISSIONS.get(kind or "")
        if needed is not None and not principal.has(needed):
            raise missing_permission(needed)


def _keep(items: Any, visible: Callable[[Any], bool]) -> None:
    kept = [item for item in items if visible(item)]
    del items[:]
    items.extend(kept)


def _screen_collections(response: vpb.ListCollectionsResponse, principal: Principal) -> None:
    if principal.collections is not None:
        _keep(response.collections, lambda c: principal.may_use_collection(c.name))


_GLOB_CHARACTERS: Final = frozenset("*?[")


def _bind_analytics(request: Any, principal: Principal) -> None:
    """Analytics over the collections the token may use alone, as a list call is
    filtered: the allow-list becomes the request's ``collections`` restriction, which
    the service applies before it computes any figure (totals and popular queries
    included). The request may narrow it to names the token may use or to the
    token's own patterns; any other entry is PERMISSION_DENIED, as a named
    collection off the list is. A token that may use no collection is refused."""
    _named_if_set("collection")(request, principal)
    allowed = principal.collections
    if allowed is None:
        return
    if not allowed:
        raise PermissionDenied(
            "this token may use no collection, so it may see no analytics of one",
            reason="COLLECTION_NOT_ALLOWED",
            metadata={"collection": request.collection or "*"},
        )
    for entry in request.collections:
        if entry in allowed:
            continue
        if _GLOB_CHARACTERS.isdisjoint(entry):
            allowed_collection(entry, principal)
        else:
            raise PermissionDenied(
                f"this token may not use every collection matching {entry!r}",
                reason="COLLECTION_NOT_ALLOWED",
                metadata={"collection": entry},
            )
    if not request.collections:
        request.collections.extend(allowed)


def _method(service: Any, name: str) -> str:
    return f"/{service.full_name}/{name}"


_EMBEDDING = epb.DESCRIPTOR.services_by_name["EmbeddingService"]
_INFERENCE = ipb.DESCRIPTOR.services_by_name["InferenceService"]
_VECTOR = vpb.DESCRIPTOR.services_by_name["VectorService"]
_ANALYTICS = apb.DESCRIPTOR.services_by_name["AnalyticsService"]

P = Permission
_SEARCH = RpcRule(P.SEARCH_VECTORS, _points)
_SNAPSHOTS = RpcRule(
    P.CREATE_SNAPSHOTS,
    _all(_named("collection"), _whole_collection("use a collection's snapshots")),
)

# Every RPC of every service, by full method name (a test checks that none is left
# out). Permissions are those of the REST routes that make the calls.
RPC_RULES: Mapping[str, RpcRule] = {
    # Embedding texts is part of inserting, updating, searching and generating.
    _method(_EMBEDDING, "EmbedTexts"): RpcRule(
        (P.SEARCH_VECTORS, P.INSERT_VECTORS, P.UPDATE_VECTORS, P.GENERATE_TEXT)
    ),
    _method(_EMBEDDING, "GetModelInfo"): RpcRule(None),
    _method(_INFERENCE, "GenerateText"): RpcRule(P.GENERATE_TEXT),
    _method(_INFERENCE, "StreamGenerateText"): RpcRule(P.GENERATE_TEXT),
    _method(_INFERENCE, "BatchGenerateText"): RpcRule(P.GENERATE_TEXT),
    _method(_INFERENCE, "CountTokens"): RpcRule(P.GENERATE_TEXT),
    _method(_INFERENCE, "GetModelInfo"): RpcRule(None),
    _method(_VECTOR, "CreateCollection"): RpcRule(P.MANAGE_COLLECTIONS, _named("name")),
    _method(_VECTOR, "GetCollection"): RpcRule(P.SEARCH_VECTORS, _named("name")),
    _method(_VECTOR, "ListCollections"): RpcRule(P.SEARCH_VECTORS, screen=_screen_collections),
    _method(_VECTOR, "UpdateCollection"): RpcRule(
        P.MANAGE_COLLECTIONS,
        _all(_named("name"), _whole_collection("change a collection's configuration")),
    ),
    _method(_VECTOR, "DeleteCollection"): RpcRule(
        P.MANAGE_COLLECTIONS, _all(_named("name"), _whole_collection("delete a collection"))
    ),
    _method(_VECTOR, "UpsertPoints"): RpcRule(P.INSERT_VECTORS, _points),
    _method(_VECTOR, "GetPoints"): _SEARCH,
    _method(_VECTOR, "UpdatePoints"): RpcRule(P.UPDATE_VECTORS, _points),
    _method(_VECTOR, "SetPayload"): RpcRule(P.UPDATE_VECTORS, _points),
    _method(_VECTOR, "DeletePayloadKeys"): RpcRule(P.UPDATE_VECTORS, _points),
    _method(_VECTOR, "DeletePoints"): RpcRule(P.DELETE_VECTORS, _points),
    _method(_VECTOR, "BatchUpdatePoints"): RpcRule(
        (P.INSERT_VECTORS, P.UPDATE_VECTORS, P.DELETE_VECTORS), _batch_update
    ),
    _method(_VECTOR, "ListPoints"): _SEARCH,
    _method(_VECTOR, "CountPoints"): _SEARCH,
    _method(_VECTOR, "SearchPoints"): _SEARCH,
    _method(_VECTOR, "BatchSearchPoints"): RpcRule(P.SEARCH_VECTORS, _batch_search),
    _method(_VECTOR, "RecommendPoints"): _SEARCH,
    _method(_VECTOR, "ClusterPoints"): _SEARCH,
    _method(_VECTOR, "CreateSnapshot"): _SNAPSHOTS,
    _method(_VECTOR, "ListSnapshots"): _SNAPSHOTS,
    _method(_VECTOR, "RestoreSnapshot"): RpcRule(
        P.CREATE_SNAPSHOTS,
        _all(
            _named("collection"),
            _named_if_set("target_collection"),
            _whole_collection("use a collection's snapshots"),
        ),
    ),
    _method(_VECTOR, "DeleteSnapshot"): _SNAPSHOTS,
    _method(_VECTOR, "DownloadSnapshot"): _SNAPSHOTS,
    _method(_ANALYTICS, "GetSearchAnalytics"): RpcRule(P.VIEW_ANALYTICS, _bind_analytics),
    _method(_ANALYTICS, "GetVectorAnalytics"): RpcRule(P.VIEW_ANALYTICS, _bind_analytics),
    _method(_ANALYTICS, "GetUsageAnalytics"): RpcRule(P.VIEW_ANALYTICS),
    _method(_ANALYTICS, "ListSearchQueries"): RpcRule(P.VIEW_ANALYTICS, _bind_analytics),
    # Usage records are the gateway's to write: the analytics they feed must not be
    # forged by a caller.
    _method(_ANALYTICS, "RecordUsage"): RpcRule(P.ADMINISTER_SYSTEM),
}


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None without one."""
    for key, value in metadata or ():
        if key != AUTHORIZATION_METADATA:
            continue
        text = value.decode() if isinstance(value, bytes) else value
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "the authorization metadata must be 'Bearer <token>'",
                reason="MALFORMED_AUTHORIZATION",
            )
        return token.strip()
    return None


def _require(permission: Permission | tuple[Permission, ...] | None, principal: Principal) -> None:
    if permission is None:
        return
    if isinstance(permission, Permission):
        if not principal.has(permission):
            raise missing_permission(permission)
        return
    if not any(principal.has(p) for p in permission):
        names = "|".join(p.value for p in permission)
        raise PermissionDenied(
            "this call needs one of the " + ", ".join(p.value for p in permission) + " permissions",
            reason="MISSING_PERMISSION",
            metadata={"permission": names},
        )


Behaviour = Callable[..., Any]


class RpcAuthorizer:
    """The per-call layer of a server (``runtime.interceptors``): verifies the token,
    checks the method's permission, binds the request, screens the response."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        required: bool,
        rules: Mapping[str, RpcRule] = RPC_RULES,
    ) -> None:
        self._verifier = verifier
        self._required = required
        self._rules = rules

    async def admit(self, method: str, request: Message, context: Any) -> Principal | None:
        """The caller's principal (None: no token, and none required), once its call
        is allowed; raises UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        token = bearer_token(context.invocation_metadata())
        if token is None:
            if self._required:
                raise Unauthenticated(
                    "a bearer token is required (authorization metadata)", reason="MISSING_TOKEN"
                )
            return None
        principal = await self._verifier.verify(token)
        rule = self._rules.get(method)
        if rule is None:
            raise PermissionDenied(f"{method} is not open to tokens", reason="UNKNOWN_METHOD")
        _require(rule.permission, principal)
        rule.bind(request, principal)
        return principal

    def wrap(self, behaviour: Behaviour, method: str, streaming: bool, rpc_type: str) -> Behaviour:
        """``behaviour`` behind the checks (a ``runtime.interceptors.Wrapper``)."""
        if method.lstrip("/").partition("/")[0] in OPEN_SERVICES:
            return behaviour
        rule = self._rules.get(method)
        screen = rule.screen if rule is not None else None
        admit = self.admit

        if streaming:

            async def stream_behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
                await admit(method, request, context)
                async for item in behaviour(request, context):
                    yield item

            return stream_behaviour

        async def unary_behaviour(request: Any, context: Any) -> Any:
            principal = await admit(method, request, context)
            response = await behaviour(request, context)
            if screen is not None and principal is not None and response is not None:
                screen(response, principal)
            return response

        return unary_behaviour
