"""The hardening probe (``python -m serving.probe``) against the real services, as subprocesses.

Both services run on a copy of the trained work directory (``local`` profile) with a service
token, a 2 s header timeout and their output in files; the probe's nine checks must all pass,
none skipped. This keeps the probe true: a defect that comes back fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from serving.probe import Probe
from serving.session.testing import ServiceProcess, clone_workdir, free_port, start_together

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "probe-key-for-the-test"
TOKEN = "probe-service-token-0123456789abcdef"


@pytest.fixture(scope="module")
def running(
    trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("probe")
    clone = clone_workdir(trained_workdir, root / "var")
    common = {"FITML_SERVICE_TOKEN": TOKEN, "FITML_HEADER_TIMEOUT_S": "2"}
    prediction = ServiceProcess(
        ["serve", "--workdir", str(clone.workdir)], free_port(), root / "predict.log", env=common
    )
    sessions = ServiceProcess(
        ["session-service", "--workdir", str(clone.workdir), "--prediction-url", prediction.url],
        free_port(),
        root / "session.log",
        env={
            **common,
            "FITML_API_KEYS": KEY,
            "FITML_RATE_LIMIT": "2000",
            "FITML_RATE_BURST": "2000",
        },
    )
    with ExitStack() as stack:
        start_together(stack, prediction, sessions)
        yield {"prediction": prediction, "sessions": sessions, "workdir": clone.workdir}


def test_every_defect_of_the_issue_stays_fixed(running: dict[str, object]) -> None:
    prediction, sessions = running["prediction"], running["sessions"]
    assert isinstance(prediction, ServiceProcess) and isinstance(sessions, ServiceProcess)
    probe = Probe(
        sessions.url,
        prediction.url,
        KEY,
        service_token=TOKEN,
        workdir=Path(str(running["workdir"])),
        session_log=sessions.log_path,
        prediction_log=prediction.log_path,
        header_timeout_s=2.0,
    )
    results = probe.run()
    assert [r.defect for r in results] == list(range(1, 10))
    failed = [r.line() for r in results if r.status != "PASS"]
    assert not failed, "\n".join(failed)
    bodies = next(r for r in results if r.defect == 2).figures
    assert bodies["session_20mb_no_key"] == 401 and bodies["prediction_20mb_no_token"] == 401


def test_the_command_line_names_a_failing_check(running: dict[str, object]) -> None:
    """A wrong API key makes the session checks fail: exit 1, and each line says why."""
    prediction, sessions = running["prediction"], running["sessions"]
    assert isinstance(prediction, ServiceProcess) and isinstance(sessions, ServiceProcess)
    done = subprocess.run(
        [sys.executable, "-m", "serving.probe", "--session", sessions.url, "--prediction",
         prediction.url, "--key", "not-a-key", "--workdir", str(running["workdir"]),
         "--only", "9", "8", "--json", str(sessions.log_path.with_name("probe.json"))],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert lines[0].startswith("8  service-auth PASS") and "exit" in lines[0], lines
    assert lines[1].startswith("9  idempotency  FAIL") and "401" in lines[1], lines
    saved = json.loads(sessions.log_path.with_name("probe.json").read_text())
    assert [r["status"] for r in saved] == ["PASS", "FAIL"]
