"""The analysts' page: ``fitml monitoring-ui`` serves the scheduled checks over time, and a real
headless browser (Debian's chromium driven by Playwright) shows the latest verdict on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, REPO_ROOT, free_port, require, stop_service, wait_for_http

from evaluation import workspace
from evaluation.drift import compare
from ml_pipeline.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _window(rng: np.random.Generator, start: str, days: int, n: int, shift: float) -> pd.DataFrame:
    ts = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(rng.uniform(0, days, n), unit="D")
    return pd.DataFrame(
        {
            "event_timestamp": ts,
            "user_chest_cm": rng.normal(96 + shift, 8, n),
            "user_height_cm": rng.normal(170, 9, n),
            "product_category": rng.choice(["dress", "top", "jeans"], n, p=[0.4, 0.35, 0.25]),
            "outcome": rng.choice(["too_small", "fit", "too_large"], n, p=[0.15, 0.7, 0.15]),
        }
    )


@pytest.fixture
def monitored_workdir(tmp_path: Path) -> Path:
    """Four scheduled checks, two weeks apart; chest measurements drift from the third on."""
    rng = np.random.default_rng(11)
    settings = load_settings("local", tmp_path / "var")
    reference = _window(rng, "2026-01-01", 90, 4000, 0.0)
    for i, shift in enumerate((0.0, 0.5, 6.0, 9.0)):
        start = pd.Timestamp("2026-04-01") + pd.Timedelta(days=14 * i)
        current = _window(rng, str(start.date()), 14, 1500, shift)
        verdict, snapshot = compare(
            reference,
            current,
            timestamp=current["event_timestamp"].max().floor("s").to_pydatetime(),
        )
        workspace.add_check(workspace.workspace_dir(settings), verdict, snapshot)
    return settings.workdir


def test_the_page_shows_the_latest_verdict_in_a_browser(
    monitored_workdir: Path, tmp_path: Path
) -> None:
    require(CHROMIUM is not None, "chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    log = tmp_path / "ui.log"
    argv = [str(BIN / "fitml"), "monitoring-ui", "--workdir", str(monitored_workdir)]
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url, proc, log, "fitml monitoring-ui", 120)
        shot = tmp_path / "analysts_page.png"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(url, wait_until="networkidle")
                page.get_by_text(workspace.PROJECT_NAME).first.click()
                verdict = page.get_by_text("Latest verdict (DRIFT)")
                verdict.first.wait_for(state="visible", timeout=60_000)
                page.get_by_text("Drift: body measurements").first.wait_for(timeout=60_000)
                page.wait_for_timeout(1500)  # let the plots draw
                page.screenshot(path=str(shot), full_page=True)
                text = page.inner_text("body")
            finally:
                browser.close()
        assert "user_chest_cm" in text  # the verdict names the drifted column
        assert shot.stat().st_size > 20_000
        keep = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)  # for a person to look at after the run
    finally:
        stop_service(proc)  # type: ignore[arg-type]
