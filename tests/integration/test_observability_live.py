"""The live path seen from outside: a real Prometheus, Pushgateway and OTLP export.

One stack per module: the prediction service and the session service as real processes on a
copy of the trained work directory, with tracing on (OTLP over HTTP to a receiver in this
test), a Pushgateway holding the drift job's last verdict, and the real ``prometheus`` binary
running the project's configuration (deploy/observability/prometheus/prometheus.yml: targets
rewritten to this test's ports, intervals shortened to 1 s; the rules are the project's).

1. One session is one trace with spans from both services (feature read, model prediction,
   event-store write); its feedback reaches Feast in a ``feast.push`` span that continues the
   feedback request's trace and links the session's; the session service's JSON line of each
   request carries its request id, trace id and the model versions that answered.
2. Prometheus scrapes every target, the SLI series exist, and with the prediction service
   stopped the degraded-share alert goes pending (then firing, after its 5 minutes).
3. Every PromQL expression of every dashboard and every rule is valid against that
   Prometheus and uses only metric names it scraped (or recording rules built from them);
   the firing alerts' runbook links resolve to a section of docs/runbook.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import require

from ml_pipeline.settings import Settings
from serving.session.testing import (
    OtlpReceiver,
    ServiceProcess,
    clone_workdir,
    free_port,
    start_together,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "observability" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy/observability/grafana/dashboards").glob("*.json"))
KEY = "observability-test-key"
API = "/api/v1/tryon"
PUSHGATEWAY = "prometheus-pushgateway"


@dataclass
class Stack:
    settings: Settings
    prediction: ServiceProcess
    session: ServiceProcess
    prometheus: str
    receiver: OtlpReceiver
    root: Path
    bodies: list[dict[str, Any]] = field(default_factory=list)


def wait_until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def prometheus_config(
    source: Path, targets: dict[str, str], key_file: Path, out: Path, interval: str = "1s"
) -> Path:
    """The project's Prometheus configuration with targets, secrets and intervals rewritten."""
    config = yaml.safe_load(source.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(source.parent / f) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key_file)
        for static in job["static_configs"]:
            static["targets"] = [targets[t] for t in static["targets"]]
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def start_prometheus(config: Path, data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, "prometheus ready")
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def stack(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(shutil.which("prometheus") is not None, "prometheus not installed (apt prometheus)")
    require(shutil.which(PUSHGATEWAY) is not None, f"{PUSHGATEWAY} not installed (apt)")
    root = tmp_path_factory.mktemp("observability")
    settings = clone_workdir(trained_workdir, root / "var")
    lines = (settings.workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    bodies = [b for b in map(json.loads, lines) if b.get("user_id")]
    key_file = root / "metrics-key"
    key_file.write_text(KEY + "\n")
    with ExitStack() as stack:
        receiver = OtlpReceiver()
        stack.callback(receiver.close)
        tracing_env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        prediction = ServiceProcess(
            ["serve", "--workdir", str(settings.workdir)],
            free_port(),
            root / "prediction.log",
            env=tracing_env,
        )
        session = ServiceProcess(
            [
                "session-service",
                "--workdir",
                str(settings.workdir),
                "--prediction-url",
                prediction.url,
            ],
            free_port(),
            root / "session.log",
            env={
                **tracing_env,
                "FITML_API_KEYS": KEY,
                "FITML_RATE_LIMIT": "10000",
                "FITML_RATE_BURST": "10000",
                "FITML_LOG_FORMAT": "json",
            },
        )
        gateway_port = free_port()
        gateway = subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{gateway_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        stack.callback(stop, gateway)
        start_together(stack, prediction, session)

        # The drift job's last verdict (written by the pipeline that trained the work dir).
        from evaluation.drift import DriftVerdict
        from evaluation.drift_metrics import push_drift_metrics

        verdict_path = settings.reports_dir / "drift_verdict.json"
        verdict = DriftVerdict.from_dict(json.loads(verdict_path.read_text()))
        gateway_url = f"127.0.0.1:{gateway_port}"
        wait_until(lambda: _answers(f"http://{gateway_url}/-/ready"), 30, "pushgateway ready")
        push_drift_metrics(verdict, gateway_url)

        config = prometheus_config(
            PROM_DIR / "prometheus.yml",
            {
                "prediction:3000": f"127.0.0.1:{prediction.port}",
                "session:8000": f"127.0.0.1:{session.port}",
                "pushgateway:9091": gateway_url,
            },
            key_file,
            root / "prometheus.yml",
        )
        checked = subprocess.run(
            ["promtool", "check", "config", str(config)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        proc, url = start_prometheus(config, root / "tsdb", root / "prometheus.log")
        stack.callback(stop, proc)
        yield Stack(settings, prediction, session, url, receiver, root, bodies)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_session(
    http: httpx.Client, body: dict[str, Any], feedback: bool = True
) -> dict[str, Any]:
    started = http.post(f"{API}/sessions", json=body)
    assert started.status_code == 201, started.text
    session: dict[str, Any] = started.json()
    if feedback:
        sent = http.post(
            f"{API}/sessions/{session['session_id']}/feedback",
            json={
                "event_id": f"fb-{session['session_id']}",  # the idempotency key feedback needs
                "size": session["recommended_size"],
                "outcome": "fit",
            },
        )
        assert sent.status_code == 202, sent.text
    return session


def client(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.session.url, headers={"X-API-Key": KEY}, timeout=15)


def query(stack: Stack, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body


def test_one_session_is_one_trace_across_both_services(stack: Stack) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    with client(stack) as http:
        http.headers["X-Request-ID"] = request_id
        session = start_session(http, stack.bodies[0])
    assert not session["degraded"]

    def session_trace() -> dict[str, list[dict[str, Any]]] | None:
        traces: dict[str, list[dict[str, Any]]] = {}
        for s in list(stack.receiver.spans):
            traces.setdefault(s["trace_id"], []).append(s)
        for spans in traces.values():
            names = {s["name"] for s in spans}
            if "POST /api/v1/tryon/sessions" in names and "model.recommend" in names:
                return {"spans": spans}
        return None

    found = wait_until(session_trace, 30, "a trace of the session start")["spans"]
    services = {s["service"] for s in found}
    assert services == {"fitml-session", "fitml-prediction"}, found
    names = {s["name"] for s in found}
    assert {"features.online_read", "model.recommend", "event_store.save_session"} <= names
    # The prediction service's server span is a child of the session service's span.
    by_id = {s["span_id"]: s for s in found}
    predict_server = [
        s for s in found if s["service"] == "fitml-prediction" and s["name"].startswith("POST")
    ]
    assert predict_server and by_id[predict_server[0]["parent_id"]]["service"] == "fitml-session"
    # The feedback reaches the feature store later (the outbox's delivery loop), in a push span
    # that continues the feedback request's trace and links the session start's span.
    trace_id = found[0]["trace_id"]
    (start,) = [s for s in found if s["name"] == "POST /api/v1/tryon/sessions"]

    session_link = {"trace_id": trace_id, "span_id": start["span_id"]}

    def push_of_session() -> dict[str, Any] | None:
        for s in list(stack.receiver.spans):
            if s["name"] == "feast.push" and session_link in s["links"]:
                return s
        return None

    push = wait_until(push_of_session, 30, "a feast.push span linked to the session's trace")
    feedback_trace = [s for s in stack.receiver.spans if s["trace_id"] == push["trace_id"]]
    by_id = {s["span_id"]: s for s in feedback_trace}
    assert push["service"] == "fitml-session" and push["trace_id"] != trace_id
    assert by_id[push["parent_id"]]["name"].endswith("/feedback"), feedback_trace
    assert "event_store.add_events" in {s["name"] for s in feedback_trace}
    # Each request's log line names its request id, its trace and the models that answered;
    # no raw user id anywhere in the log.
    lines = [
        json.loads(x) for x in stack.session.log_path.read_text().splitlines() if x.startswith("{")
    ]
    mine = [x for x in lines if x.get("request_id") == request_id]
    started = [x for x in mine if x["msg"] == "session started"]
    assert started and started[0]["trace_id"] == trace_id and started[0]["model_versions"], mine
    requests = {x["route"]: x for x in mine if x["msg"] == "request"}
    assert set(requests) == {f"{API}/sessions", f"{API}/sessions/{{session_id}}/feedback"}, mine
    assert requests[f"{API}/sessions"]["trace_id"] == trace_id
    assert requests[f"{API}/sessions/{{session_id}}/feedback"]["trace_id"] == push["trace_id"]
    for line in requests.values():
        assert line["model_versions"] == session["model_versions"] != {}, line
    assert stack.bodies[0]["user_id"] not in stack.session.log_path.read_text()


def test_prometheus_scrapes_the_slis_and_the_degraded_alert_fires(stack: Stack) -> None:
    with client(stack) as http:
        for i in range(8):
            start_session(http, stack.bodies[i % len(stack.bodies)])

    def targets_up() -> bool:
        active = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()["data"]
        health = {t["labels"]["job"]: t["health"] for t in active["activeTargets"]}
        return health == {"fitml-prediction": "up", "fitml-session": "up", "fitml-jobs": "up"}

    wait_until(targets_up, 30, "every target up")
    for name in (
        'tryon_sessions_total{status="ok"}',
        "tryon_session_duration_seconds_bucket",
        "tryon_feedback_total",
        'fitml_session_request_seconds_bucket{le="0.2"}',
        'fitml_session_prediction_seconds_bucket{result="ok"}',
        "fitml_answers_total",
        "fitml_prediction_seconds_bucket",
        "fitml_recommendation_confidence_bucket",
        "fitml_size_shift_bucket",
        'fitml_model_registered_timestamp_seconds{variant="champion"}',
        "fitml_drift_detected",
        "fitml_drift_column_value",
    ):
        wait_until(lambda n=name: query(stack, n)["data"]["result"], 20, f"series {name}")
    # 8 sessions here + 1 in the trace test, each with "fit" on the recommended size (agrees)
    at_least(stack, 'sum(tryon_sessions_total{status="ok"})', 9)
    at_least(stack, 'sum(tryon_feedback_total{agrees="true",variant=~"champion|challenger"})', 9)

    stack.prediction.stop()
    with client(stack) as http:
        for i in range(10):
            assert start_session(http, stack.bodies[i % len(stack.bodies)], feedback=False)[
                "degraded"
            ]

    def alert_state(name: str) -> str | None:
        alerts = httpx.get(f"{stack.prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
        return states[0] if states else None

    assert wait_until(
        lambda: alert_state("TryonDegradedShareHigh") in ("pending", "firing"), 60, "degraded alert"
    )
    share = query(stack, "fitml:tryon_sessions_degraded:ratio_rate5m")["data"]["result"]
    assert float(share[0]["value"][1]) > 0.05
    assert wait_until(
        lambda: alert_state("PredictionServiceDown") in ("pending", "firing"), 30, "service down"
    )
    at_least(stack, "sum(fitml_session_degraded_answers_total)", 10)
    at_least(stack, 'sum(tryon_sessions_total{status="degraded"})', 10)
    # The alerts' runbook links: the deployment's base, then the alert's runbook section.
    base = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["global"]["external_labels"][
        "runbook_base"
    ]
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    alerts = httpx.get(f"{stack.prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    names = {a["labels"]["alertname"] for a in alerts}
    assert {"TryonDegradedShareHigh", "PredictionServiceDown"} <= names
    for alert in alerts:
        name = alert["labels"]["alertname"]
        assert alert["annotations"]["runbook_url"] == f"{base}/docs/runbook.md#{name.lower()}"
        assert f"\n## {name}\n" in runbook, name


def at_least(stack: Stack, expr: str, n: float, timeout_s: float = 20) -> None:
    """Wait until the scalar value of ``expr`` reaches ``n`` (scrapes run every second)."""

    def value() -> float:
        result = query(stack, expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")

    wait_until(lambda: value() >= n, timeout_s, f"{expr} >= {n} (last {value()})")


FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
    "time", "vector", "absent", "round", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names a PromQL expression reads."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if word in FUNCTIONS or after.startswith("("):
            continue
        names.add(word)
    return names


def rules() -> list[dict[str, Any]]:
    out = []
    for path in sorted((PROM_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def recording_rules() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}


def test_every_dashboard_and_rule_query_is_valid_against_scraped_series(stack: Stack) -> None:
    scraped = set(httpx.get(f"{stack.prometheus}/api/v1/label/__name__/values").json()["data"])
    records = recording_rules()

    def resolve(name: str) -> set[str]:
        if name in records:
            return set().union(*(resolve(n) for n in metric_names(records[name])))
        return {name}

    def check(where: str, expr: str) -> None:
        query(stack, expr)
        used = set().union(*(resolve(n) for n in metric_names(expr)))
        assert used, (where, expr)
        missing = used - scraped
        assert not missing, f"{where}: {sorted(missing)} not scraped"

    checked = 0
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                if target.get("expr"):
                    check(f"{path.name} / {panel['title']}", target["expr"])
                    checked += 1
    assert checked >= 30
    for rule in rules():  # alerts and recording rules: no rule may watch a series nobody exports
        check(rule.get("alert") or rule["record"], rule["expr"])
        checked += 1
    assert checked >= 60
