"""Audit the locked dependencies with pip-audit, and say so plainly when nothing was audited.

pip-audit asks a vulnerability service about each pin (PyPI's JSON API by default). Where that
service does not answer for a package (a mirror that serves only the package index, no
network), pip-audit lists the package as skipped and still prints "No known
vulnerabilities found". This wrapper counts what was really checked and fails the audit,
naming the reason, unless every pin was.

    python deploy/security/audit_locks.py requirements.lock requirements-runtime.lock \
        [--ignore-vuln ID ...]

Exit status: 0 every pin audited, none vulnerable; 1 vulnerabilities found; 2 some pins
could not be audited (the service did not answer for them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AuditSummary:
    """What pip-audit's JSON report says, counted."""

    audited: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    vulnerable: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 when something is vulnerable, else 2 when something was not audited, else 0."""
        if self.vulnerable:
            return 1
        return 2 if self.skipped else 0

    def render(self) -> str:
        """A human summary: counts, the vulnerable pins, and why pins were skipped."""
        total = self.audited + len(self.skipped)
        lines = [f"pip-audit: {self.audited} of {total} pinned packages audited"]
        for name, ids in sorted(self.vulnerable.items()):
            lines.append(f"  VULNERABLE {name}: {', '.join(ids)}")
        if self.skipped:
            reasons = Counter(_reason(r) for r in self.skipped.values())
            lines.append(
                f"  NOT AUDITED: {len(self.skipped)} packages; the vulnerability service did not "
                "answer for them, so no claim is made about them:"
            )
            lines += [f"    {count} x {reason}" for reason, count in reasons.most_common()]
        elif not self.vulnerable:
            lines.append("  no known vulnerabilities")
        return "\n".join(lines)


def _reason(skip_reason: str) -> str:
    return skip_reason.split(":", 1)[0].strip()


def summarise(report: dict[str, Any]) -> AuditSummary:
    """Count pip-audit's JSON report (``pip-audit -f json``)."""
    summary = AuditSummary()
    for dep in report.get("dependencies", []):
        name = f"{dep['name']}=={dep.get('version', '?')}"
        if "skip_reason" in dep:
            summary.skipped[name] = str(dep["skip_reason"])
            continue
        summary.audited += 1
        ids = [v["id"] for v in dep.get("vulns", [])]
        if ids:
            summary.vulnerable[name] = ids
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run pip-audit on the lock files given and print the summary; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+")
    parser.add_argument("--ignore-vuln", action="append", default=[])
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--no-deps", "-f", "json"]
    command += ["--progress-spinner", "off"]
    for lock in args.locks:
        command += ["-r", lock]
    for vuln in args.ignore_vuln:
        command += ["--ignore-vuln", vuln]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return 2
    summary = summarise(report)
    print(summary.render())
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
