"""The whole permission matrix: every route × every default role → 2xx or 403
naming the missing permission; plus collection allow-lists and tenant scope."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from lodestar.auth.permissions import DEFAULT_ROLES, Permission
from lodestar.services.gateway.app import route_security
from lodestar.services.gateway.documents.jobs import JobRecord
from tests.gateway.harness import ROLES, RunningGateway

P = Permission
SAMPLE_JOB = "job-sample"

# One valid request per route (method, path template) → (url, json body, permission
# the request exercises). A route without an entry fails test_every_route_has_a_sample.
# A permission of None: any valid token.
SAMPLES: dict[tuple[str, str], tuple[str, dict[str, Any] | None, Permission | None]] = {
    ("GET", "/api/v1/health"): ("/api/v1/health", None, P.HEALTH_CHECK),
    ("GET", "/api/v1/metrics"): ("/api/v1/metrics", None, P.VIEW_METRICS),
    ("GET", "/metrics"): ("/metrics", None, P.VIEW_METRICS),
    ("POST", "/api/v1/generate"): ("/api/v1/generate", {"prompt": "hi"}, P.GENERATE_TEXT),
    ("POST", "/api/v1/generate/batch"): (
        "/api/v1/generate/batch",
        {"requests": [{"prompt": "a"}, {"messages": [{"role": "user", "content": "b"}]}]},
        P.GENERATE_TEXT,
    ),
    ("POST", "/api/v1/vectors/insert"): (
        "/api/v1/vectors/insert",
        {"collection": "alpha", "points": [{"id": 7, "vector": [1, 0, 0, 0]}, {"text": "x"}]},
        P.INSERT_VECTORS,
    ),
    ("POST", "/api/v1/vectors/batch"): (
        "/api/v1/vectors/batch",
        {"collection": "alpha", "operations": [{"upsert": {"points": [{"text": "y"}]}}]},
        P.INSERT_VECTORS,
    ),
    ("POST", "/api/v1/vectors/search"): (
        "/api/v1/vectors/search",
        {"collection": "alpha", "text": "hello"},
        P.SEARCH_VECTORS,
    ),
    ("POST", "/api/v1/vectors/search/batch"): (
        "/api/v1/vectors/search/batch",
        {"searches": [{"collection": "alpha", "vector": [1, 0, 0, 0]}]},
        P.SEARCH_VECTORS,
    ),
    ("POST", "/api/v1/vectors/recommend"): (
        "/api/v1/vectors/recommend",
        {"collection": "alpha", "positive": [1]},
        P.SEARCH_VECTORS,
    ),
    ("POST", "/api/v1/vectors/cluster"): (
        "/api/v1/vectors/cluster",
        {"collection": "alpha", "num_clusters": 2},
        P.SEARCH_VECTORS,
    ),
    ("GET", "/api/v1/vectors/{id}"): ("/api/v1/vectors/1?collection=alpha", None, P.SEARCH_VECTORS),
    ("PUT", "/api/v1/vectors/{id}"): (
        "/api/v1/vectors/1?collection=alpha",
        {"payload": {"k": "v"}},
        P.UPDATE_VECTORS,
    ),
    ("DELETE", "/api/v1/vectors/{id}"): (
        "/api/v1/vectors/1?collection=alpha",
        None,
        P.DELETE_VECTORS,
    ),
    ("POST", "/api/v1/collections"): (
        "/api/v1/collections",
        {"name": "beta", "dimension": 4},
        P.MANAGE_COLLECTIONS,
    ),
    ("GET", "/api/v1/collections"): ("/api/v1/collections", None, P.SEARCH_VECTORS),
    ("GET", "/api/v1/collections/{name}"): ("/api/v1/collections/alpha", None, P.SEARCH_VECTORS),
    ("PUT", "/api/v1/collections/{name}"): (
        "/api/v1/collections/alpha",
        {"add_payload_fields": {"color": "keyword"}},
        P.MANAGE_COLLECTIONS,
    ),
    ("DELETE", "/api/v1/collections/{name}"): (
        "/api/v1/collections/alpha",
        None,
        P.MANAGE_COLLECTIONS,
    ),
    ("POST", "/api/v1/collections/{name}/snapshot"): (
        "/api/v1/collections/alpha/snapshot",
        None,
        P.CREATE_SNAPSHOTS,
    ),
    ("GET", "/api/v1/collections/{name}/snapshots"): (
        "/api/v1/collections/alpha/snapshots",
        None,
        P.CREATE_SNAPSHOTS,
    ),
    ("POST", "/api/v1/collections/{name}/snapshots/{snapshot}/restore"): (
        "/api/v1/collections/alpha/snapshots/snap-1/restore",
        {"target_collection": "alpha-copy"},
        P.CREATE_SNAPSHOTS,
    ),
    ("DELETE", "/api/v1/collections/{name}/snapshots/{snapshot}"): (
        "/api/v1/collections/alpha/snapshots/snap-1",
        None,
        P.CREATE_SNAPSHOTS,
    ),
    ("GET", "/api/v1/collections/{name}/snapshots/{snapshot}"): (
        "/api/v1/collections/alpha/snapshots/snap-1",
        None,
        P.CREATE_SNAPSHOTS,
    ),
    ("POST", "/api/v1/collections/{name}/documents"): (
        "/api/v1/collections/alpha/documents",
        {"text": "Lodestar keeps documents.", "id": "doc-2"},
        P.INSERT_VECTORS,
    ),
    ("GET", "/api/v1/collections/{name}/documents"): (
        "/api/v1/collections/alpha/documents",
        None,
        P.SEARCH_VECTORS,
    ),
    ("GET", "/api/v1/collections/{name}/documents/{document_id}"): (
        "/api/v1/collections/alpha/documents/doc-1",
        None,
        P.SEARCH_VECTORS,
    ),
    ("DELETE", "/api/v1/collections/{name}/documents/{document_id}"): (
        "/api/v1/collections/alpha/documents/doc-1",
        None,
        P.DELETE_VECTORS,
    ),
    ("GET", "/api/v1/jobs/{id}"): (f"/api/v1/jobs/{SAMPLE_JOB}", None, P.SEARCH_VECTORS),
    ("DELETE", "/api/v1/jobs/{id}"): (f"/api/v1/jobs/{SAMPLE_JOB}", None, P.INSERT_VECTORS),
    ("GET", "/api/v1/analytics/vectors"): ("/api/v1/analytics/vectors", None, P.VIEW_ANALYTICS),
    ("GET", "/api/v1/analytics/search"): ("/api/v1/analytics/search", None, P.VIEW_ANALYTICS),
    ("GET", "/api/v1/analytics/usage"): ("/api/v1/analytics/usage", None, P.VIEW_ANALYTICS),
    ("POST", "/api/v1/collections/{name}/points/scroll"): (
        "/api/v1/collections/alpha/points/scroll",
        {"page_size": 10},
        P.SEARCH_VECTORS,
    ),
    ("POST", "/api/v1/collections/{name}/points/count"): (
        "/api/v1/collections/alpha/points/count",
        {},
        P.SEARCH_VECTORS,
    ),
    ("GET", "/api/v1/me"): ("/api/v1/me", None, None),
}


@pytest.fixture(autouse=True)
async def _sample_job(gateway: RunningGateway) -> None:
    """A finished document job of collection alpha, for the jobs routes' samples."""
    documents = gateway.app.state.gateway.documents
    await documents.runner.store.create(
        JobRecord(SAMPLE_JOB, "alpha", "", "alice", "doc-1", status="succeeded")
    )


async def _send(
    client: httpx.AsyncClient, method: str, url: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(method, url, json=body, headers=headers)


def test_every_route_has_a_sample(gateway: RunningGateway) -> None:
    routes = {(r.method, r.path) for r in route_security(gateway.app)}
    assert routes == set(SAMPLES), (routes - set(SAMPLES), set(SAMPLES) - routes)
    for entry in route_security(gateway.app):
        permission = SAMPLES[(entry.method, entry.path)][2]
        declared = entry.permission
        assert permission == declared or (isinstance(declared, tuple) and permission in declared)


def test_default_roles_form_a_ladder() -> None:
    order = [DEFAULT_ROLES[r] for r in ROLES]
    assert all(a < b for a, b in itertools.pairwise(order))
    assert DEFAULT_ROLES["admin"] == frozenset(Permission)


@pytest.mark.parametrize("role", ROLES)
async def test_permission_matrix(
    gateway: RunningGateway, client: httpx.AsyncClient, role: str
) -> None:
    headers = gateway.auth(role)
    failures = []
    for (method, _), (url, body, permission) in SAMPLES.items():
        response = await _send(client, method, url, body, headers)
        allowed = permission is None or permission in DEFAULT_ROLES[role]
        if allowed and not 200 <= response.status_code < 300:
            failures.append(f"{method} {url}: {response.status_code} {response.text}")
        if not allowed:
            assert permission is not None
            error = response.json().get("error", {}) if response.status_code == 403 else {}
            if response.status_code != 403 or permission.value not in error.get("message", ""):
                failures.append(
                    f"{method} {url}: expected 403 naming {permission}, got "
                    f"{response.status_code} {response.text}"
                )
            elif permission.value not in error["details"]["metadata"]["permission"].split("|"):
                failures.append(f"{method} {url}: 403 details do not name {permission}")
    assert not failures, "\n".join(failures)


async def test_no_token_is_401_everywhere_but_liveness(client: httpx.AsyncClient) -> None:
    for (method, _), (url, body, _) in SAMPLES.items():
        response = await _send(client, method, url, body, {})
        if url == "/api/v1/health":
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}
            continue
        assert response.status_code == 401, (method, url, response.text)
        error = response.json()["error"]
        assert error["code"] == "UNAUTHENTICATED"
        assert error["details"]["reason"] == "MISSING_TOKEN"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_explicit_permissions_claim_adds_to_roles(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    headers = gateway.auth("viewer", permissions=["GenerateText"])
    response = await client.post("/api/v1/generate", json={"prompt": "hi"}, headers=headers)
    assert response.status_code == 200
    response = await client.delete("/api/v1/vectors/1?collection=alpha", headers=headers)
    assert response.status_code == 403


async def test_batch_needs_the_permission_of_each_operation(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    body = {
        "collection": "alpha",
        "operations": [
            {"upsert": {"points": [{"id": 1, "vector": [1, 0, 0, 0]}]}},
            {"delete": {"ids": [2]}},
        ],
    }
    user = await client.post("/api/v1/vectors/batch", json=body, headers=gateway.auth("user"))
    assert user.status_code == 403
    assert user.json()["error"]["details"]["metadata"]["permission"] == "DeleteVectors"
    editor = await client.post("/api/v1/vectors/batch", json=body, headers=gateway.auth("editor"))
    assert editor.status_code == 200, editor.text
    assert [r["affected_count"] for r in editor.json()["results"]] == [1, 1]


async def test_collection_allow_list(gateway: RunningGateway, client: httpx.AsyncClient) -> None:
    headers = gateway.auth("operator", collections=["docs-*"])
    ok = await client.post(
        "/api/v1/vectors/search", json={"collection": "docs-1", "text": "q"}, headers=headers
    )
    assert ok.status_code == 200
    refused = await client.post(
        "/api/v1/vectors/search", json={"collection": "alpha", "text": "q"}, headers=headers
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["details"]["reason"] == "COLLECTION_NOT_ALLOWED"
    listed = await client.get("/api/v1/collections", headers=headers)
    assert [c["name"] for c in listed.json()["collections"]] == ["docs-1", "docs-2"]
    batch = await client.post(
        "/api/v1/vectors/search/batch",
        json={
            "searches": [{"collection": "docs-2", "text": "a"}, {"collection": "x", "text": "b"}]
        },
        headers=headers,
    )
    assert batch.status_code == 403
    restore = await client.post(
        "/api/v1/collections/docs-1/snapshots/s/restore",
        json={"target_collection": "elsewhere"},
        headers=headers,
    )
    assert restore.status_code == 403


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("DELETE", "/api/v1/collections/alpha", None),
        ("PUT", "/api/v1/collections/alpha", {"remove_payload_fields": ["x"]}),
        ("POST", "/api/v1/collections/alpha/snapshot", None),
        ("GET", "/api/v1/collections/alpha/snapshots", None),
        ("POST", "/api/v1/collections/alpha/snapshots/s/restore", None),
        ("DELETE", "/api/v1/collections/alpha/snapshots/s", None),
        ("GET", "/api/v1/collections/alpha/snapshots/s", None),
    ],
)
async def test_tenant_tokens_cannot_act_on_whole_collections(
    gateway: RunningGateway, client: httpx.AsyncClient, method: str, url: str, body: Any
) -> None:
    response = await _send(client, method, url, body, gateway.auth("admin", tenant="acme"))
    assert response.status_code == 403
    assert response.json()["error"]["details"]["reason"] == "TENANT_SCOPED_TOKEN"
