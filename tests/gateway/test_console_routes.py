"""The routes the console needs: who am I, the points browser's scroll and
count, the console's files with their security headers, and the API docs
pages served from the package's vendored assets."""

from __future__ import annotations

import re

import httpx
import pytest

from lodestar.services.gateway.console import VENDOR_DIR
from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway


async def test_me_reports_the_tokens_identity(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        "/api/v1/me", headers=gateway.auth("viewer", sub="vera", collections=["docs-*"])
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "subject": "vera",
        "roles": ["viewer"],
        "permissions": ["HealthCheck", "SearchVectors"],
        "tenant": "",
        "collections": ["docs-*"],
    }
    admin = (await client.get("/api/v1/me", headers=gateway.auth("admin", tenant="acme"))).json()
    assert admin["tenant"] == "acme"
    assert "AdministerSystem" in admin["permissions"]
    assert "collections" not in admin  # every collection
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_scroll_and_count_forward_filter_page_and_tenant(
    gateway: RunningGateway, client: httpx.AsyncClient, fakes: FakeBackends
) -> None:
    headers = gateway.auth("viewer", tenant="acme")
    flt = {"must": [{"key": "color", "match": {"keyword": "red"}}]}
    scroll = await client.post(
        "/api/v1/collections/alpha/points/scroll",
        json={"filter": flt, "page_size": 7, "page_token": "abc", "with_vector": True},
        headers=headers,
    )
    assert scroll.status_code == 200, scroll.text
    assert scroll.json() == {"points": [], "next_page_token": ""}
    count = await client.post(
        "/api/v1/collections/alpha/points/count", json={"filter": flt}, headers=headers
    )
    assert count.json() == {"count": 3}
    listed: pb.ListPointsRequest = fakes.vector.recorder.last("ListPoints")
    assert (listed.collection, listed.page_size, listed.page_token) == ("alpha", 7, "abc")
    assert listed.with_vector
    assert listed.with_payload
    assert listed.tenant == "acme"
    assert listed.filter.must[0].field.key == "color"
    counted: pb.CountPointsRequest = fakes.vector.recorder.last("CountPoints")
    assert counted.tenant == "acme"
    assert counted.filter.must[0].field.match.keyword == "red"


async def test_scroll_refuses_collections_outside_the_allow_list(
    gateway: RunningGateway, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        "/api/v1/collections/alpha/points/scroll",
        json={},
        headers=gateway.auth("viewer", collections=["docs-*"]),
    )
    assert response.status_code == 403
    assert response.json()["error"]["details"]["reason"] == "COLLECTION_NOT_ALLOWED"
    bad = await client.post(
        "/api/v1/collections/alpha/points/scroll",
        json={"page_size": 0},
        headers=gateway.auth("viewer"),
    )
    assert bad.status_code in (400, 422)
    # A boolean is true or false, not a number.
    number = await client.post(
        "/api/v1/collections/alpha/points/scroll",
        json={"with_vector": 0},
        headers=gateway.auth("viewer"),
    )
    assert number.status_code == 422
    assert number.json()["error"]["details"]["field_violations"][0]["field"] == "with_vector"


async def test_console_is_served_with_a_strict_content_security_policy(
    client: httpx.AsyncClient,
) -> None:
    redirect = await client.get("/console")
    assert redirect.status_code in (307, 308)
    page = await client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    # No inline script or style in the page itself: every script has a src.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)
    assert "<style" not in page.text
    assert " style=" not in page.text
    script = await client.get("/console/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert (await client.get("/console/../app.py")).status_code == 404


@pytest.mark.skipif(
    not (VENDOR_DIR / "swagger-ui" / "swagger-ui-bundle.js").is_file(),
    reason="vendored assets not fetched (make console-assets)",
)
async def test_api_docs_load_their_scripts_from_the_package(client: httpx.AsyncClient) -> None:
    for path, asset in (
        ("/docs", "/console/vendor/swagger-ui/swagger-ui-bundle.js"),
        ("/redoc", "/console/vendor/redoc/redoc.standalone.js"),
    ):
        page = await client.get(path)
        assert page.status_code == 200
        assert asset in page.text
        assert "cdn.jsdelivr.net" not in page.text
        assert "fonts.googleapis.com" not in page.text
        served = await client.get(asset)
        assert served.status_code == 200
        assert len(served.content) > 100_000
