"""The dependency audit says plainly what it could not audit (deploy/security/audit_locks.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "audit_locks", ROOT / "deploy/security/audit_locks.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_locks"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_pin_audited_and_clean_passes() -> None:
    summary = _module().summarise(
        {"dependencies": [{"name": "a", "version": "1", "vulns": []}], "fixes": []}
    )
    assert summary.exit_code == 0
    assert "1 of 1 pinned packages audited" in summary.render()


def test_unanswered_pins_fail_and_are_named_not_reported_clean() -> None:
    report = {
        "dependencies": [
            {"name": "a", "version": "1", "skip_reason": "Dependency not found on PyPI and ..."},
            {"name": "b", "version": "2", "skip_reason": "Dependency not found on PyPI and ..."},
            {"name": "c", "version": "3", "vulns": []},
        ]
    }
    summary = _module().summarise(report)
    assert summary.exit_code == 2
    text = summary.render()
    assert "1 of 3 pinned packages audited" in text
    assert "NOT AUDITED: 2 packages" in text and "2 x Dependency not found on PyPI" in text
    assert "no known vulnerabilities" not in text


def test_a_vulnerable_pin_fails_with_its_advisory() -> None:
    report = {"dependencies": [{"name": "a", "version": "1", "vulns": [{"id": "GHSA-x"}]}]}
    summary = _module().summarise(report)
    assert summary.exit_code == 1
    assert "VULNERABLE a==1: GHSA-x" in summary.render()


def test_static_analysis_finds_nothing_outside_the_triaged_baseline() -> None:
    """``make audit``'s bandit step: a new finding must be reviewed (deploy/security/TRIAGE.md)."""
    import subprocess

    bandit = Path(sys.executable).with_name("bandit")
    argv = [str(bandit), "-q", "-r", "ml_pipeline", "features", "training", "serving"]
    argv += ["evaluation", "-b", "deploy/security/bandit-baseline.json"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
