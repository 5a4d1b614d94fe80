"""The console's browser tests: the stack ``lodestar run`` starts (as
processes, on free ports), Debian's Chromium driven by Playwright, and a
screenshot of the page kept for every failed test."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lodestar.auth.tokens import mint_token
from lodestar.services.gateway.settings import GatewaySettings
from tests.stack.launch import run_env, start_run

CHROMIUM = "/usr/bin/chromium"
STARTUP_TIMEOUT_S = 300
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-results" / "console"
AXE = Path(__file__).resolve().parents[2] / ".tools" / "console-npm" / "axe-core" / "axe.min.js"

# Seeded through the REST API: a small knowledge base with titled passages,
# and a payload that holds markup (it must show as text).
KB = "kb"
XSS_PAYLOAD = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
PASSAGES = [
    "The cat sat on the mat.",
    "Cats purr when they are happy and sleep sixteen hours a day.",
    "Dogs love to play fetch in the park.",
    "The lighthouse keeper of Lodestar Point is named Marguerite Vale.",
    "Paris is the capital of France.",
    "The Eiffel Tower is in Paris and was finished in 1889.",
    "Vectors are stored in Qdrant collections.",
    "Embeddings map texts to points in a vector space.",
]


@dataclass
class Stack:
    url: str
    settings: GatewaySettings

    def token(self, sub: str, *roles: str) -> str:
        return mint_token(self.settings, sub, list(roles), 3600)

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {token or self.token('admin', 'admin')}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            text = reply.read()
        return json.loads(text) if text else None


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"the browser tests need {CHROMIUM} (make system-deps)")
    env = run_env(tmp_path_factory.mktemp("console-stack"))
    process, banner = start_run(env, STARTUP_TIMEOUT_S)
    try:
        url = f"http://127.0.0.1:{env['LODESTAR_GATEWAY_PORT']}"
        assert f"{url}/console/" in banner, banner
        running = Stack(url, GatewaySettings())
        _seed(running)
        yield running
        process.terminate()
        process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _seed(stack: Stack) -> None:
    stack.call("POST", "/api/v1/collections", {"name": KB, "payload_schema": {"title": "keyword"}})
    points: list[dict[str, Any]] = [
        {"text": text, "payload": {"title": f"passage {i}", "text": text}}
        for i, text in enumerate(PASSAGES)
    ]
    points.append({"text": "markup", "payload": {"title": "markup", "note": XSS_PAYLOAD}})
    stack.call("POST", "/api/v1/vectors/insert", {"collection": KB, "points": points})


@pytest.fixture(scope="package")
def browser(stack: Stack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context's page; on failure its screenshot is kept in
    test-results/console/."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    if request.node.stash.get(_FAILED, False):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors


def sign_in(page: Any, stack: Stack, token: str, where: str = "collections") -> None:
    page.goto(f"{stack.url}/console/#/{where}")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#whoami").wait_for()


def axe_source() -> str:
    if not AXE.is_file():
        pytest.skip("axe-core is not fetched (make console-assets)")
    return AXE.read_text()


def keep_screenshot(page: Any, name: str) -> None:
    """The README's screenshots, refreshed when LODESTAR_CONSOLE_SCREENSHOTS is set."""
    target = os.environ.get("LODESTAR_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / name), full_page=True)


__all__ = ["KB", "XSS_PAYLOAD", "Stack", "axe_source", "keep_screenshot", "sign_in"]
