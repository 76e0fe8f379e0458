"""The session API's browsable docs in a real browser that cannot reach the internet.

The machines fitml runs on often reach no CDN; the docs must then still render. The real
``fitml session-service`` is started on a trained work directory and Debian's headless chromium
(driven by Playwright) opens ``/docs`` and ``/redoc`` with every request that leaves the
machine blocked: the operations render, nothing was fetched from outside, and Swagger UI's
"Authorize" + "Try it out" start a real session with the documented example.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import require

from serving.session.openapi import openapi_document
from serving.session.testing import ServiceProcess, clone_workdir, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "docs-browser-key"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture(scope="module")
def session_url(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("docs-browser")
    clone = clone_workdir(trained_workdir, root / "var")
    with ServiceProcess(
        [
            "session-service",
            "--workdir",
            str(clone.workdir),
            "--prediction-url",
            f"http://127.0.0.1:{free_port()}",  # nothing there: sessions fall back to the chart
        ],
        free_port(),
        root / "session.log",
        env={"FITML_API_KEYS": KEY},
    ) as service:
        yield service.url


class OfflineBrowser:
    """Headless chromium whose requests off this machine are blocked and recorded."""

    def __init__(self) -> None:
        self.blocked: list[str] = []
        self.failed: list[tuple[str, str | None]] = []

    def _route(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")

    def __enter__(self) -> Any:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        context = self._browser.new_context(viewport={"width": 1400, "height": 1100})
        context.route("**/*", self._route)
        page = context.new_page()
        page.on("requestfailed", lambda request: self.failed.append((request.url, request.failure)))
        return page

    def __exit__(self, *exc: object) -> None:
        self._browser.close()
        self._pw.stop()

    def check_stayed_home(self) -> None:
        """Nothing was fetched from outside, and nothing of the service's own failed to load.

        The page's Content-Security-Policy may refuse an off-machine request before it is sent
        (ReDoc's footer logo): that one is fine, and recorded as failed with reason ``csp``.
        """
        assert self.blocked == [], "the page asked for something past the service"
        refused = [url for url, why in self.failed if why == "csp"]
        assert all(urlsplit(url).hostname not in LOOPBACK for url in refused), refused
        assert [(url, why) for url, why in self.failed if why != "csp"] == []


def _keep(shot: Path) -> None:
    keep = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)  # for a person to look at after the run


def test_swagger_ui_renders_and_tries_the_api_without_the_internet(
    session_url: str, tmp_path: Path
) -> None:
    require(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")
    operations = sum(len(ops) for ops in openapi_document()["paths"].values())
    browser = OfflineBrowser()
    with browser as page:
        page.goto(f"{session_url}/docs", wait_until="networkidle")
        page.locator(".opblock").first.wait_for(timeout=60_000)
        assert page.locator(".opblock").count() == operations
        start = page.locator(
            ".opblock-post", has=page.locator('[data-path="/api/v1/tryon/sessions"]')
        )
        assert "Start a try-on session" in start.inner_text()

        page.locator("button.authorize").first.click()
        dialog = page.locator(".auth-container", has_text="APIKeyHeader")
        dialog.locator("input").fill(KEY)
        dialog.locator("button.authorize").click()  # "Apply credentials"
        dialog.locator("button.btn-done").click()

        start.locator(".opblock-summary").click()
        start.locator("button.try-out__btn").click()
        start.locator("button.execute").click()
        answer = start.locator(".live-responses-table tr.response")
        answer.first.wait_for(timeout=60_000)
        answered = answer.first.locator(".response-col_status").inner_text().strip()
        body = answer.first.locator(".response-col_description").inner_text()
        shot = tmp_path / "session_api_docs.png"
        page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    browser.check_stayed_home()
    assert answered == "201", body  # the example started a real session with the key
    assert '"session_id"' in body and '"recommended_size"' in body


def test_redoc_renders_without_the_internet(session_url: str) -> None:
    require(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")
    browser = OfflineBrowser()
    with browser as page:
        page.goto(f"{session_url}/redoc", wait_until="networkidle")
        title = page.get_by_text("Record the shopper's feedback on a size they tried").first
        title.wait_for(timeout=60_000)
        text = page.inner_text("body")
    browser.check_stayed_home()
    assert "Start a try-on session and get a size recommendation" in text
    assert "X-API-Key" in text
