"""The console in a real browser against the real stack, clicked the way a
person uses it: sign in, collections, documents, search and its map, chat with
citations and feedback, analytics, a viewer's limits, markup shown as text,
accessibility and the offline API docs."""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.conftest import KB, Stack, axe_source, keep_screenshot, sign_in

pytestmark = pytest.mark.slow
# The stack shares two cores with the browser: give the page time.
expect.set_options(timeout=30_000)


def admin(stack: Stack) -> str:
    return stack.token("ada", "admin")


def test_sign_in_create_and_delete_a_collection(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack))
    expect(page.locator("#whoami")).to_have_text("ada (admin)")
    form = page.locator("#create-collection")
    form.get_by_label("Name").fill("made-in-ui")
    form.get_by_role("button", name="Add payload field").click()
    form.get_by_label("Payload field").fill("lang")
    form.get_by_label("Type").select_option("keyword")
    form.get_by_role("button", name="Create collection").click()
    row = page.locator("#collection-list tr", has_text="made-in-ui")
    expect(row).to_contain_text("ready")
    assert stack.call("GET", "/api/v1/collections/made-in-ui")["config"]["payload_schema"] == {
        "lang": "keyword"
    }
    page.get_by_role("button", name="Details of made-in-ui").click()
    expect(page.locator("#collection-details")).to_contain_text("lang")
    page.get_by_role("button", name="Create snapshot").click()
    expect(page.locator("#snapshots table")).to_be_visible()
    keep_screenshot(page, "console-collections.png")
    page.get_by_role("button", name="Delete made-in-ui").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#collection-list")).not_to_contain_text("made-in-ui")
    with pytest.raises(urllib.error.HTTPError):
        stack.call("GET", "/api/v1/collections/made-in-ui")


def test_a_snapshot_downloads_from_the_collections_page(page: Any, stack: Stack) -> None:
    token = admin(stack)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    sign_in(page, stack, token)
    page.get_by_role("button", name=f"Details of {KB}").click()
    page.get_by_role("button", name="Create snapshot").click()
    downloads = page.locator("#snapshots").get_by_role("button", name=re.compile("^Download "))
    expect(downloads.first).to_be_visible()
    listed = stack.call("GET", f"/api/v1/collections/{KB}/snapshots")["snapshots"]
    with page.expect_download() as caught:
        page.get_by_role("button", name=f"Download {listed[0]['name']}").click()
    download = caught.value
    assert download.suggested_filename == listed[0]["name"]
    data = Path(download.path()).read_bytes()
    assert len(data) == listed[0]["size_bytes"]
    assert hashlib.sha256(data).hexdigest() == listed[0]["checksum"]
    assert data.startswith(b"LODESTAR-SNAPSHOT")
    expect(page.locator("#status")).to_contain_text(f"Downloaded {listed[0]['name']}")
    assert not [u for u in urls if token in u]


def test_a_bad_token_is_refused(page: Any, stack: Stack) -> None:
    page.goto(f"{stack.url}/console/")
    page.get_by_label("Token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#status")).to_contain_text("401")
    expect(page.locator("#nav")).to_be_hidden()


def test_upload_a_document_and_see_it_listed(page: Any, stack: Stack, tmp_path: Any) -> None:
    with urllib.request.urlopen(f"{stack.url}/openapi.json") as reply:
        openapi = json.loads(reply.read())
    if "/api/v1/collections/{name}/documents" not in openapi["paths"]:
        sign_in(page, stack, admin(stack), "documents")
        expect(page.get_by_role("note")).to_contain_text("not available")
        pytest.xfail("this gateway has no documents API yet (issue 22)")
    note = tmp_path / "harbour.md"
    note.write_text("# Harbour notes\n\nThe harbour master of Lodestar Point is Ines Okafor.\n")
    sign_in(page, stack, admin(stack), "documents")
    page.get_by_label("Collection", exact=True).select_option(KB)
    page.get_by_label("File (text, Markdown, HTML or PDF)").set_input_files(str(note))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-state")).to_contain_text("uploaded", timeout=120_000)
    expect(page.locator("#document-list")).to_contain_text("harbour", ignore_case=True)


def test_search_finds_the_hit_and_more_like_this(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack), "search")
    page.get_by_label("Collection", exact=True).select_option(KB)
    page.get_by_label("Query", exact=True).fill("a cat sitting on a mat")
    page.get_by_label("Limit").fill("3")
    page.locator("#search-form").get_by_role("button", name="Search").click()
    first = page.locator("#search-results .hit").first
    expect(first).to_contain_text("The cat sat on the mat.")
    expect(page.locator("#search-results .hit")).to_have_count(3)
    first.get_by_role("button", name=re.compile("^More like")).click()
    expect(page.locator("#search-results h3")).to_contain_text("More like")
    expect(page.locator("#search-results .hit").first).to_contain_text("cat", ignore_case=True)


def test_the_map_shows_the_sample_in_clusters(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack), "search")
    page.get_by_label("Collection", exact=True).select_option(KB)
    page.get_by_label("Clusters").fill("3")
    page.get_by_role("button", name="Show map").click()
    expect(page.locator("#map-info")).to_have_text(re.compile(r"^\d+ points in 3 clusters\.$"))
    drawn = page.evaluate(
        """() => {
          const chart = window.Chart.getChart(document.getElementById('map-canvas'));
          return chart.data.datasets.map((d) => [d.label, d.data.length]);
        }"""
    )
    assert sorted(label for label, _ in drawn) == ["cluster 0", "cluster 1", "cluster 2"]
    total = stack.call("POST", f"/api/v1/collections/{KB}/points/count", {})["count"]
    assert sum(n for _, n in drawn) == total


def test_chat_streams_an_answer_with_citations_and_takes_feedback(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack), "chat")
    page.get_by_label("Answer from collection").select_option(KB)
    page.get_by_label("Max tokens").fill("24")
    page.get_by_label("Message").fill("Who is the lighthouse keeper of Lodestar Point?")
    page.get_by_role("button", name="Send").click()
    sources = page.get_by_role("list", name="Sources")
    expect(sources).to_contain_text("Marguerite Vale", timeout=120_000)
    expect(sources.locator("li").first).to_contain_text("[1]")
    expect(page.locator(".answer-text")).not_to_be_empty(timeout=120_000)
    # Offered once the answer is done and stored.
    helpful = page.get_by_role("button", name="Helpful", exact=True)
    expect(helpful).to_be_visible(timeout=180_000)
    helpful.click()
    expect(page.locator(".feedback")).to_contain_text("Feedback recorded: helpful")
    keep_screenshot(page, "console-chat.png")
    stored = stack.call(
        "POST",
        "/api/v1/collections/conversations/points/scroll",
        {"filter": {"must": [{"key": "feedback_score", "range": {"gte": 5}}]}},
    )
    assert any("lighthouse keeper" in p["payload"].get("prompt", "") for p in stored["points"]), (
        stored
    )


def test_chat_history_and_memory_can_be_listed_and_forgotten(page: Any, stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/openapi.json") as reply:
        paths = json.loads(reply.read())["paths"]
    if "/api/v1/conversations" not in paths or "/api/v1/memory" not in paths:
        sign_in(page, stack, stack.token("cleo", "user"), "chat")
        expect(page.locator("#chat-history")).to_contain_text("not available")
        expect(page.get_by_label("Memory (not available here)")).to_be_disabled()
        pytest.xfail("this gateway has no conversations or memory API yet (issue 23)")
    sign_in(page, stack, stack.token("cleo", "user"), "chat")
    page.get_by_label("Answer from collection").select_option("")
    page.get_by_label("Memory").check()
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Message").fill("My favourite colour is teal.")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Helpful", exact=True)).to_be_visible(timeout=180_000)
    history = page.locator("#chat-history")
    expect(history).to_contain_text("My favourite colour is teal.")
    memory = page.get_by_role("list", name="Remembered")
    expect(memory).to_contain_text("My favourite colour is teal.")
    page.get_by_role("button", name="Forget everything").click()
    page.get_by_role("dialog").get_by_role("button", name="Forget everything").click()
    expect(page.locator("#chat-memory")).to_contain_text("Nothing remembered.")
    assert stack.call("GET", "/api/v1/memory", token=stack.token("cleo", "user"))["items"] == []


def _searches(page: Any) -> int:
    text = page.locator("#search-total").inner_text()
    match = re.search(r"Searches: (\d+)", text)
    assert match, text
    return int(match.group(1))


def _timeline(page: Any) -> dict[str, Any]:
    """What the two charts over time draw: searches in all, the latency series, and
    how many buckets each has."""
    return dict(
        page.evaluate(
            """() => {
              const chart = (id) => window.Chart.getChart(document.getElementById(id));
              const volume = chart('chart-volume-time').data.datasets[0].data;
              const latency = chart('chart-latency-time').data.datasets;
              return {
                volume: volume.reduce((sum, p) => sum + p.y, 0),
                buckets: volume.length,
                percentiles: latency.map((d) => d.label),
                points: latency[2].data.length,
                starts: volume.map((p) => p.x),
              };
            }"""
        )
    )


def test_analytics_change_after_a_search(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack), "analytics")
    expect(page.locator("#chart-latency")).to_be_visible()
    expect(page.locator("#chart-latency-time")).to_be_visible()
    expect(page.locator("#chart-volume-time")).to_be_visible()
    before = _searches(page)
    before_timeline = _timeline(page)
    stack.call("POST", "/api/v1/vectors/search", {"collection": KB, "text": "lighthouse"})
    deadline = time.monotonic() + 30
    while _searches(page) <= before:
        assert time.monotonic() < deadline, "the search count did not change"
        time.sleep(1)
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_load_state("networkidle")
    expect(page.locator("#analytics table")).to_contain_text("lighthouse")
    charts = page.evaluate("() => Object.keys(window.Chart.instances).length")
    assert charts == 7
    # Over time: every search so far lies in the timeline (a minute a bucket), the
    # search just made included, with the three percentiles drawn beside it.
    after = _timeline(page)
    assert after["volume"] == _searches(page) > before_timeline["volume"]
    assert after["percentiles"] == ["p50", "p95", "p99"]
    assert after["points"] == after["buckets"] >= 1
    # Hourly buckets: the charts are redrawn with buckets starting on the hour.
    page.get_by_label("Timeline").select_option("3600")
    page.wait_for_function(
        """() => {
          const chart = window.Chart.getChart(document.getElementById('chart-volume-time'));
          const starts = chart ? chart.data.datasets[0].data.map((p) => p.x) : [];
          return starts.length > 0 && starts.every((x) => x % 3600000 === 0);
        }"""
    )
    assert _timeline(page)["volume"] == after["volume"]
    # The console's own files and the docs are not API usage.
    routes = {u["route"] for u in stack.call("GET", "/api/v1/analytics/usage")["usage"]}
    assert "GET /api/v1/me" in routes
    assert not [r for r in routes if r.startswith(("GET /console", "GET /openapi"))], routes


def test_a_viewer_sees_no_write_controls_and_a_forged_request_is_refused(
    page: Any, stack: Stack
) -> None:
    sign_in(page, stack, stack.token("vera", "viewer"))
    expect(page.locator("#collection-list")).to_contain_text(KB)
    expect(page.locator("#create-collection")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Delete"))).to_have_count(0)
    nav = page.locator("#nav")
    expect(nav).not_to_contain_text("Chat")
    expect(nav).not_to_contain_text("Analytics")
    page.get_by_role("link", name="Points").click()
    expect(page.locator("#points-list tr")).not_to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^(Edit|Delete)"))).to_have_count(0)
    # What the page would send if its controls were there: the API refuses it.
    statuses = page.evaluate(
        """async (kb) => {
          const auth = { Authorization: `Bearer ${sessionStorage.getItem('lodestar.token')}`,
                         'Content-Type': 'application/json' };
          const create = await fetch('/api/v1/collections',
            { method: 'POST', headers: auth, body: JSON.stringify({ name: 'forged' }) });
          const drop = await fetch(`/api/v1/collections/${kb}`,
            { method: 'DELETE', headers: auth });
          return [create.status, drop.status];
        }""",
        KB,
    )
    assert statuses == [403, 403]
    assert stack.call("GET", f"/api/v1/collections/{KB}")["name"] == KB


def test_a_payload_holding_markup_shows_as_text(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack), "points")
    page.get_by_label("Collection", exact=True).select_option(KB)
    page.get_by_role("button", name="Show points").click()
    listing = page.locator("#points-list")
    expect(listing).to_contain_text("<script>window.__pwned=1</script>")
    assert listing.locator("script, img").count() == 0
    assert page.evaluate("() => window.__pwned") is None


def test_points_filter_edit_and_delete(page: Any, stack: Stack) -> None:
    stack.call(
        "POST",
        "/api/v1/vectors/insert",
        {"collection": KB, "points": [{"id": 4242, "text": "edit me", "payload": {"title": "e"}}]},
    )
    sign_in(page, stack, admin(stack), "points")
    page.get_by_label("Collection", exact=True).select_option(KB)
    page.get_by_role("button", name="Add condition").click()
    page.get_by_label("Payload key").fill("title")
    page.get_by_label("Test").select_option("keyword")
    page.get_by_label("Value").fill("e")
    page.get_by_role("button", name="Show points").click()
    expect(page.locator("#points-count")).to_have_text("1 matching points; page 1.")
    page.get_by_role("button", name="Edit payload of 4242").click()
    page.get_by_label("Payload of point 4242 (JSON)").fill('{"title": "e", "checked": true}')
    page.get_by_role("button", name="Save payload").click()
    expect(page.locator("#points-list")).to_contain_text('"checked": true')
    point = stack.call("GET", f"/api/v1/vectors/4242?collection={KB}")
    assert point["payload"] == {"title": "e", "checked": True}
    page.get_by_role("button", name="Delete point 4242").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#points-count")).to_have_text("0 matching points; page 1.")


def test_the_token_stays_out_of_urls_and_storage_outlives_no_tab(page: Any, stack: Stack) -> None:
    token = admin(stack)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    sign_in(page, stack, token, "points")
    page.get_by_role("button", name="Show points").click()
    expect(page.locator("#points-list tr")).not_to_have_count(0)
    assert urls
    assert not [u for u in urls if token in u]
    assert page.evaluate("() => localStorage.length") == 0
    assert page.evaluate("() => sessionStorage.getItem('lodestar.token')") == token


PAGES = ["collections", "points", "documents", "search", "chat", "analytics", "health"]


def test_no_critical_accessibility_violations(browser: Any, stack: Stack) -> None:
    # axe is injected as a script, which the console's own CSP would refuse.
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    try:
        sign_in(page, stack, admin(stack))
        page.add_script_tag(content=axe_source())
        found = {}
        for name in PAGES:
            page.get_by_role("link", name=name.capitalize(), exact=True).click()
            page.locator("#page-title").wait_for()
            page.wait_for_load_state("networkidle")
            result = page.evaluate("async () => (await axe.run(document)).violations")
            found[name] = [
                (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                for v in result
                if v["impact"] == "critical"
            ]
        assert not any(found.values()), found
    finally:
        context.close()


def test_the_console_page_refuses_inline_script(page: Any, stack: Stack) -> None:
    sign_in(page, stack, admin(stack))
    blocked = page.evaluate(
        """() => new Promise((resolve) => {
          document.addEventListener('securitypolicyviolation',
            (e) => resolve(e.violatedDirective), { once: true });
          const s = document.createElement('script');
          s.textContent = 'window.__inline = 1';
          document.body.append(s);
          setTimeout(() => resolve(window.__inline ? 'ran' : 'silent'), 2000);
        })"""
    )
    assert blocked.startswith("script-src")


def test_api_docs_render_offline(page: Any, stack: Stack) -> None:
    local = re.compile(rf"^{re.escape(stack.url)}/")
    page.route(
        "**/*",
        lambda route: route.continue_() if local.match(route.request.url) else route.abort(),
    )
    page.goto(f"{stack.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Lodestar")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    page.goto(f"{stack.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("Lodestar", timeout=60_000)
    page.goto(f"{stack.url}/console/")
    docs_link = page.get_by_role("link", name="API docs (Swagger UI)")
    expect(docs_link).to_have_attribute("href", "/docs")
