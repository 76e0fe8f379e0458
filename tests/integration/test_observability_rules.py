"""The observability configuration is valid and complete (promtool, dashboards, runbooks).

- ``promtool check config`` / ``check rules`` / ``test rules`` pass on deploy/observability.
- Every alert is exercised by a ``promtool test rules`` case that expects it to fire.
- Every alert links its own section of docs/runbook.md (what it means, what to do) under the
  deployment's ``runbook_base`` (prometheus.yml's external labels).
- Every dashboard loads, every panel has a query and a provisioned data source.
- The drift dashboard's SQL runs against a real drift history table in PostgreSQL.

(The PromQL of the dashboards is checked against a live Prometheus in
``test_observability_live.py``.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import require

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
PROM = OBS / "prometheus"
DASHBOARDS = sorted((OBS / "grafana" / "dashboards").glob("*.json"))

pytestmark = pytest.mark.integration


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require(
        shutil.which("promtool") is not None, "promtool not installed (apt-get install prometheus)"
    )
    return subprocess.run(
        ["promtool", *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )


def rules() -> list[dict[str, Any]]:
    out = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def alert_names() -> set[str]:
    return {r["alert"] for r in rules() if "alert" in r}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_promtool_checks_the_config_and_rules() -> None:
    config = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    checked = promtool("check", "rules", *sorted(str(p) for p in (PROM / "rules").glob("*.yml")))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    tests = sorted(str(p) for p in (PROM / "tests").glob("*_test.yml"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


def test_every_alert_has_a_test_that_expects_it_to_fire() -> None:
    fired: set[str] = set()
    for path in (PROM / "tests").glob("*_test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert alert_names(), "no alerts found"
    assert alert_names() - fired == set(), "alerts no promtool test expects to fire"


RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "{{ $externalLabels.runbook_base }}/docs/runbook.md#"


def runbook_sections() -> dict[str, str]:
    """The runbook's ``##`` sections by GitHub anchor: their text up to the next one."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.M)
    return {github_anchor(h): body for h, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_links_its_own_runbook_section() -> None:
    sections = runbook_sections()
    linked = set()
    for rule in rules():
        if "alert" not in rule:
            continue
        url = rule["annotations"].get("runbook_url", "")
        anchor = github_anchor(rule["alert"])
        assert url == RUNBOOK_URL + anchor, (rule["alert"], url)
        assert anchor in sections, f"docs/runbook.md has no section '## {rule['alert']}'"
        body = sections[anchor]
        assert "**What it means.**" in body and "**What to do.**" in body, rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        linked.add(anchor)
    assert set(sections) == linked, "runbook sections of no alert: " + str(set(sections) - linked)
    # the README's links into the runbook, and the runbook's own, resolve too
    readme_links = re.findall(r"\(docs/runbook\.md#([\w-]+)\)", (ROOT / "README.md").read_text())
    own_links = re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text())
    assert readme_links, "the README's Operate section links no runbook section"
    for target in readme_links + own_links:
        assert target in sections, f"a link to docs/runbook.md#{target}: no such section"


def test_the_runbook_base_is_an_absolute_url() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    base = config["global"]["external_labels"]["runbook_base"]
    assert re.match(r"^https?://[^/\s]+(/\S*)?$", base) and not base.endswith("/"), base


def test_dashboards_load_and_every_panel_has_a_provisioned_source() -> None:
    sources = yaml.safe_load((OBS / "grafana/provisioning/datasources/fitml.yml").read_text())
    uids = {d["uid"] for d in sources["datasources"]}
    assert {p.stem for p in DASHBOARDS} == {"live-path", "model", "feedback", "drift"}
    seen: set[str] = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in seen and board["panels"], path
        seen.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path
        for panel in board["panels"]:
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, (path.name, panel["title"])
                assert (target.get("expr") or target.get("rawSql") or "").strip()


def dashboard_sql() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                if "rawSql" in target:
                    out.append((panel["title"], target["rawSql"]))
    return out


def grafana_sql(sql: str) -> str:
    """Expand the Grafana macros the dashboards use, as Grafana does for the last 10 years."""
    return re.sub(
        r"\$__timeFilter\((\w+)\)",
        r"\1 BETWEEN now() - interval '3650 days' AND now() + interval '3650 days'",
        sql,
    )


def test_drift_dashboard_sql_runs_on_a_real_drift_history(postgres_dsn: str) -> None:
    import psycopg

    from evaluation.drift import ColumnDrift, DriftVerdict
    from evaluation.drift_history import append_history

    queries = dashboard_sql()
    assert len(queries) >= 2
    schema = f"fitml_obs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        url = postgres_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        url += f"?options=-csearch_path%3D{schema}"
        for drifted in (False, True):
            verdict = DriftVerdict(
                drift_detected=drifted,
                drifted_columns=["chest_cm"] if drifted else [],
                drift_share=0.5 if drifted else 0.0,
                share_by_role={},
                n_reference=100,
                n_current=50,
                columns=[
                    ColumnDrift("chest_cm", "feature", "num", "wasserstein", 0.1, 0.3, drifted),
                    ColumnDrift("brand", "feature", "cat", "jensenshannon", 0.1, 0.02, False),
                ],
                outcome_mix={"current": {"fit": 0.7, "too_small": 0.2, "too_large": 0.1}},
                reference_window={"start": "2026-01-01", "end": "2026-03-01"},
                current_window={"start": "2026-03-01", "end": "2026-03-15"},
            )
            append_history(url, verdict)
        with psycopg.connect(postgres_dsn, options=f"-csearch_path={schema}") as conn:
            for title, sql in queries:
                rows = conn.execute(grafana_sql(sql)).fetchall()
                assert rows, f"{title}: no rows from {sql}"
                assert all(r[0] is not None for r in rows), title
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
