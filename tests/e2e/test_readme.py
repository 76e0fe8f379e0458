"""The README's Quickstart, "Your own data", "Session API" and "Analysts" blocks, pasted.

Every fenced ``bash`` block of those sections runs as a user would run it: from a copy of the
repository (its top-level entries linked into a temporary folder, so ``var/`` is fresh), with
the virtual environment's ``bin`` on PATH, in order. A block that says "Ctrl-C stops it"
starts a server: it keeps running (a terminal of its own) while the next blocks run, and is
stopped with Ctrl-C (SIGINT) at the end. Two things differ from a user's machine, to keep the
test small and let it share a machine: ``make demo`` gets small data (``DEMO_ARGS``, one
Optuna trial; enough events that the window after training holds weekly drift checks of at
least 500 rows, which the Analysts page shows), and the README's ports are replaced by free
ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.session.testing import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]

SECTIONS = ("Quickstart", "Your own data", "Session API", "Analysts")
SERVER_MARK = "Ctrl-C stops it"
_FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def readme_blocks(text: str, heading: str) -> list[str]:
    """The ``bash`` blocks of the README section ``## <heading>``."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return _FENCE.findall(text[start : end if end > 0 else len(text)])


def test_readme_sections_parse() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    for heading in SECTIONS:
        assert readme_blocks(text, heading), heading


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "fitml"
    root.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in ("var", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
            (root / entry.name).symlink_to(entry)
    return root


def _wait_port(block: str, process: subprocess.Popen[bytes], log: Path) -> None:
    port = int(re.search(r"--port (\d+)", block).group(1))  # type: ignore[union-attr]
    path = "/readyz" if "fitml serve" in block or "session-service" in block else "/"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server block exited {process.returncode}:\n{block}\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server block did not answer on port {port}:\n{block}\n{log.read_text()}")


@pytest.mark.timeout(2400)  # a small `make demo`, two servers, the session round trip
def test_readme_blocks_work_when_pasted(tmp_path: Path) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    ports = {p: str(free_port()) for p in ("3000", "8000", "5000", "8001")}
    root = _checkout(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FITML_", "BENTOML_"))}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        VIRTUAL_ENV=str(BIN.parent),
        DEMO_ARGS="--users 400 --products 40 --events 10000 --trials 1",
        FITML_TRIALS="1",
        MLFLOW_TRACKING_URI="",
    )
    servers: list[subprocess.Popen[bytes]] = []
    outputs: dict[str, str] = {}
    try:
        for heading in SECTIONS:
            out = []
            for i, block in enumerate(readme_blocks(text, heading)):
                block = re.sub(r"\b(3000|8000|5000|8001)\b", lambda m: ports[m.group(1)], block)
                if SERVER_MARK in block:
                    log = tmp_path / f"server-{heading}-{i}.log"
                    with log.open("wb") as handle:
                        process = subprocess.Popen(
                            ["bash", "-c", block],
                            cwd=root,
                            env=env,
                            stdout=handle,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    servers.append(process)
                    _wait_port(block, process, log)
                    continue
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", block],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                assert done.returncode == 0, f"{heading} block failed:\n{block}\n{done.stderr}"
                out.append(done.stdout)
            outputs[heading] = "\n".join(out)
    finally:
        for process in servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        for process in servers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    quick = outputs["Quickstart"]
    plan = quick[quick.rfind('"recommended_size"') :]
    assert '"recommended_size"' in quick, quick[-3000:]
    # Nothing deleted or created. After materialising, Feast's plan may list "Updated
    # feature view" entries whose only difference is the batch source's meta timestamps.
    assert "Deleted" not in plan and "Created feature" not in plan, plan
    assert "No changes to registry" in plan or "Updated feature view" in plan, plan
    own = outputs["Your own data"]
    assert "# fitml data contract" in own
    summary = json.loads(own[own.index("{") : own.index("\n}\n") + 2])
    assert summary["quarantined"]["total"] == 0 and summary["accepted"]["events"] == 6
    session = outputs["Session API"]
    assert '"session_id"' in session and '"status": "accepted"' in session.replace('":"', '": "')
    assert '"feedback":[{' in session.replace(" ", "") and '"removed"' in session
