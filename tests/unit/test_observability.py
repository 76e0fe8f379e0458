"""Logs, traces and metrics of the live path, in process (the live stack: integration tests)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from test_session import KEY, make_services, model_answer

from ml_pipeline import logs
from ml_pipeline.errors import ConfigError
from serving import tracing
from serving.recommend import feedback_agrees
from serving.session.app import create_app
from serving.session.observability import Metrics, scrape_key

# -- logs -------------------------------------------------------------------------------


def record(**extra: Any) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "fitml.test", "levelname": "INFO", "msg": "hello"})
    rec.__dict__.update(extra)
    return rec


def test_json_lines_drop_personal_fields_and_carry_context() -> None:
    formatter = logs.JsonFormatter("session", {"build": "b1"})
    token = logs.REQUEST_ID.set("req-7")
    versions = logs.MODEL_VERSIONS.set({"fit_model": "3"})
    try:
        line = formatter.format(
            record(
                user_id="shopper-1",
                chest_cm=97.5,
                notes={"waist": "tight"},
                measurements={"height_cm": 170},
                user_hash="abc",
                product_id="P1",
            )
        )
    finally:
        logs.REQUEST_ID.reset(token)
        logs.MODEL_VERSIONS.reset(versions)
    out = json.loads(line)
    assert out["service"] == "session" and out["request_id"] == "req-7" and out["build"] == "b1"
    assert out["model_versions"] == {"fit_model": "3"} and out["product_id"] == "P1"
    assert out["dropped_fields"] == ["chest_cm", "measurements", "notes", "user_id"]
    for secret in ("shopper-1", "97.5", "tight", "170"):
        assert secret not in line
    assert "trace_id" not in out  # no span: tracing off


def test_text_on_a_terminal_json_otherwise_and_env_wins() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.wants_json(io.StringIO(), env={}) is True
    assert logs.wants_json(Tty(), env={}) is False
    assert logs.wants_json(Tty(), env={"FITML_LOG_FORMAT": "json"}) is True
    assert logs.wants_json(io.StringIO(), env={"FITML_LOG_FORMAT": "text"}) is False
    with pytest.raises(ValueError, match="FITML_LOG_FORMAT"):
        logs.wants_json(io.StringIO(), env={"FITML_LOG_FORMAT": "xml"})


def test_configure_logging_routes_every_logger_through_one_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        logs.configure_logging("fitml", json_lines=True, stream=stream)
        logging.getLogger("uvicorn.error").warning("server says %s", "hi", extra={"user_id": "u"})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    out = json.loads(stream.getvalue().splitlines()[-1])
    assert out["msg"] == "server says hi" and out["service"] == "fitml"
    assert "user_id" not in out


# -- traces -----------------------------------------------------------------------------


@pytest.fixture
def traced() -> Iterator[Any]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    assert tracing.configure_tracing("fitml-test", env={"OTEL_TRACES_EXPORTER": "console"})
    exporter = InMemorySpanExporter()
    provider = tracing._state["provider"]
    provider._active_span_processor._span_processors = ()  # the console exporter: not here
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def test_tracing_is_off_by_default_and_costs_a_shared_no_op() -> None:
    assert tracing.configure_tracing("x", env={}) is False
    assert tracing.configure_tracing("x", env={"OTEL_TRACES_EXPORTER": "none"}) is False
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b")  # one shared null context
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}
    assert logs.trace_ids() == {} or "opentelemetry.trace" in __import__("sys").modules


def test_unsupported_exporters_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        tracing.configure_tracing("x", env={"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="http/protobuf"):
        tracing.configure_tracing(
            "x", env={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    assert not tracing.enabled()


def test_traceparent_carries_the_trace_to_a_server_span(traced: Any) -> None:
    headers: dict[str, str] = {}
    with tracing.span("caller") as caller:
        tracing.inject(headers)
        ids = logs.trace_ids()
    assert headers["traceparent"].split("-")[1] == ids["trace_id"]
    with tracing.server_span("POST /recommend", headers), tracing.span("model.recommend"):
        pass
    spans = {s.name: s for s in traced.get_finished_spans()}
    assert set(spans) == {"caller", "POST /recommend", "model.recommend"}
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert spans["POST /recommend"].parent.span_id == caller.get_span_context().span_id
    assert spans["model.recommend"].parent.span_id == spans["POST /recommend"].context.span_id


def test_prediction_call_carries_the_service_token_and_the_traceparent(traced: Any) -> None:
    import asyncio

    from serving.session.client import PredictionClient

    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json=model_answer())

    async def go() -> Any:
        client = PredictionClient(
            "http://p", transport=httpx.MockTransport(handler), token=lambda: "t" * 32
        )
        with tracing.span("session.start") as parent:
            await client.recommend({"product_id": "P1"})
        await client.close()
        return parent

    parent = asyncio.run(go())
    assert seen[0]["Authorization"] == f"Bearer {'t' * 32}"
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    assert seen[0]["traceparent"].split("-")[1] == trace_id


def test_session_app_traces_a_session_and_its_store_write(traced: Any, tmp_path: Path) -> None:
    app = create_app(make_services(tmp_path, lambda r: httpx.Response(200, json=model_answer())))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        started = client.post("/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P1"})
    assert started.status_code == 201
    spans = {s.name: s for s in traced.get_finished_spans()}
    server = spans["POST /api/v1/tryon/sessions"]
    assert server.attributes["http.response.status_code"] == 201
    assert spans["event_store.save_session"].parent.span_id == server.context.span_id


def test_feedback_delivery_continues_the_feedback_trace_and_links_the_session(
    traced: Any, tmp_path: Path
) -> None:
    pushed: list[Any] = []
    services = make_services(tmp_path, lambda r: httpx.Response(200, json=model_answer()))
    services.deliverer.push = pushed.append
    with TestClient(create_app(services), headers={"X-API-Key": KEY}) as client:
        sid = client.post(
            "/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P1"}
        ).json()["session_id"]
        sent = client.post(
            f"/api/v1/tryon/sessions/{sid}/feedback",
            json={"event_id": "e-trace", "size": "L", "outcome": "fit"},
        )
        assert sent.status_code == 202
    # the app's shutdown ran a last delivery pass: the event is stored and pushed (the
    # shutdown pass may repeat a push the background pass was making: pushes are idempotent)
    assert services.store.has_event("e-trace") and pushed
    assert {e for frame in pushed for e in frame["event_id"]} == {"e-trace"}
    spans = traced.get_finished_spans()
    start = next(s for s in spans if s.name == "POST /api/v1/tryon/sessions")
    feedback = next(s for s in spans if s.name.endswith("/feedback"))
    assert start.context.trace_id != feedback.context.trace_id  # two requests, two traces
    for name in ("event_store.add_events", "feast.push"):
        deliveries = [s for s in spans if s.name == name]
        assert deliveries, name
        for delivery in deliveries:
            assert delivery.context.trace_id == feedback.context.trace_id, name
            assert delivery.parent.span_id == feedback.context.span_id, name
            linked = {(link.context.trace_id, link.context.span_id) for link in delivery.links}
            assert (start.context.trace_id, start.context.span_id) in linked, name
            assert delivery.attributes["fitml.events"] == 1
    # the trace context travels in the outbox only: the stored event has none
    (stored,) = services.store.session_events(sid)
    assert stored.traceparent is None and stored.session_traceparent is None


def test_a_batch_from_several_traces_is_a_root_linking_each(traced: Any) -> None:
    parents = []
    for name in ("request-a", "request-b"):
        with tracing.span(name):
            parents.append(tracing.current_traceparent())
    with tracing.delivery_span("feast.push", [*parents, parents[0], None, "garbage"]):
        pass
    with tracing.delivery_span("feast.push.untraced", [None]):
        pass
    spans = {s.name: s for s in traced.get_finished_spans()}
    batch, untraced = spans["feast.push"], spans["feast.push.untraced"]
    assert batch.parent is None and untraced.parent is None
    assert {link.context.trace_id for link in batch.links} == {
        spans["request-a"].context.trace_id,
        spans["request-b"].context.trace_id,
    }
    assert len(batch.links) == 2 and not untraced.links
    assert batch.context.trace_id not in {link.context.trace_id for link in batch.links}


def test_delivery_spans_cost_a_shared_no_op_when_off() -> None:
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    assert tracing.delivery_span("feast.push", ["00-" + "1" * 32 + "-" + "2" * 16 + "-01"]) is (
        tracing.span("x")
    )


def test_each_request_log_line_carries_request_trace_and_model_versions(
    traced: Any, tmp_path: Path
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    calls = iter([httpx.Response(200, json=model_answer()), httpx.Response(503)])
    services = make_services(tmp_path, lambda r: next(calls, httpx.Response(503)))
    try:
        logs.configure_logging("session", json_lines=True, stream=stream)
        with TestClient(create_app(services), headers={"X-API-Key": KEY}) as client:
            answered = client.post(
                "/api/v1/tryon/sessions",
                json={
                    "user_id": "shopper-secret-41",
                    "product_id": "P1",
                    "measurements": {"chest_cm": 97.25},
                },
                headers={"X-Request-ID": "req-start"},
            )
            sid = answered.json()["session_id"]
            client.post(
                f"/api/v1/tryon/sessions/{sid}/feedback",
                json={
                    "event_id": "e-log",
                    "size": "L",
                    "outcome": "fit",
                    "notes": {"waist": "a secret note"},
                },
                headers={"X-Request-ID": "req-feedback"},
            )
            client.get(f"/api/v1/tryon/sessions/{sid}", headers={"X-Request-ID": "req-read"})
            degraded = client.post(
                "/api/v1/tryon/sessions",
                json={"product_id": "P1", "measurements": {"chest_cm": 97.25}},
                headers={"X-Request-ID": "req-degraded"},
            )
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert degraded.json()["degraded"]
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    requests = {x["request_id"]: x for x in lines if x["msg"] == "request"}
    assert set(requests) == {"req-start", "req-feedback", "req-read", "req-degraded"}
    server_traces = {
        f"{s.context.trace_id:032x}" for s in traced.get_finished_spans() if s.kind.name == "SERVER"
    }
    versions = model_answer()["model_versions"]
    for request_id in ("req-start", "req-feedback", "req-read"):
        line = requests[request_id]
        assert line["model_versions"] == versions, line
        assert line["trace_id"] in server_traces and len(line["span_id"]) == 16, line
        assert line["service"] == "session" and line["status"] in (200, 201, 202), line
    assert requests["req-degraded"]["model_versions"] == {}  # the size chart answered
    assert len({x["trace_id"] for x in requests.values()}) == 4  # one trace per request
    for secret in ("shopper-secret-41", "97.25", "a secret note"):
        assert secret not in text


# -- metrics ----------------------------------------------------------------------------


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_session_starts_count_by_outcome() -> None:
    m = Metrics()
    route = "/api/v1/tryon/sessions"
    statuses = ("ok", "degraded", "not_found", "invalid", "error")
    # Where BentoML was imported first (other test modules), prometheus_client keeps values
    # in multiprocess files shared by every registry of the process: count from a baseline.
    for status in statuses:
        m.tryon_sessions.labels(status)
        m.tryon_duration.labels(status)
    m.latency.labels(route, "POST", "201")
    before = {s: sample(m, "tryon_sessions_total", status=s) for s in statuses}
    slow_before = sample(m, "tryon_session_duration_seconds_bucket", status="degraded", le="0.2")
    count_before = sample(m, "tryon_session_duration_seconds_count", status="degraded")
    total_before = sample(
        m, "fitml_session_request_seconds_count", route=route, method="POST", status="201"
    )
    m.observe_request(route, "POST", 201, 0.02, SimpleNamespace(tryon_status="ok"))
    m.observe_request(route, "POST", 201, 0.3, SimpleNamespace(tryon_status="degraded"))
    m.observe_request(route, "POST", 404, 0.01, SimpleNamespace())
    m.observe_request(route, "POST", 422, 0.01, SimpleNamespace())
    m.observe_request(route, "POST", 500, 0.01, SimpleNamespace())
    m.observe_request("/api/v1/tryon/sessions/{session_id}", "GET", 200, 0.01, SimpleNamespace())
    for status in statuses:
        assert sample(m, "tryon_sessions_total", status=status) - before[status] == 1, status
    slow = sample(m, "tryon_session_duration_seconds_bucket", status="degraded", le="0.2")
    assert slow == slow_before
    assert sample(m, "tryon_session_duration_seconds_count", status="degraded") == count_before + 1
    total = sample(
        m, "fitml_session_request_seconds_count", route=route, method="POST", status="201"
    )
    assert total - total_before == 2


def test_feedback_agreement_is_the_evaluation_definition() -> None:
    sizes = {"S": 2, "M": 3, "L": 4}
    m = Metrics()
    session = {"recommended_size": "M", "variant": "challenger"}
    m.observe_feedback(session, sizes, "M", "fit")  # agrees
    m.observe_feedback(session, sizes, "S", "too_small")  # right size larger than S: agrees
    m.observe_feedback(session, sizes, "L", "fit")  # L fit, M recommended: disagrees
    m.observe_feedback({"recommended_size": "M"}, sizes, "M", "too_large")
    assert (
        sample(m, "tryon_feedback_total", outcome="fit", variant="challenger", agrees="true") == 1
    )
    assert (
        sample(m, "tryon_feedback_total", outcome="too_small", variant="challenger", agrees="true")
        == 1
    )
    assert (
        sample(m, "tryon_feedback_total", outcome="fit", variant="challenger", agrees="false") == 1
    )
    assert (
        sample(m, "tryon_feedback_total", outcome="too_large", variant="unknown", agrees="false")
        == 1
    )
    assert list(feedback_agrees([3, 3, 3], [2, 4, 3], ["too_small", "too_small", "fit"])) == [
        True,
        False,
        True,
    ]


def test_live_app_counts_sessions_feedback_and_serves_a_bearer_scrape(tmp_path: Path) -> None:
    services = make_services(tmp_path, lambda r: httpx.Response(200, json=model_answer()))
    app = create_app(services)
    # A baseline: where BentoML was imported first, prometheus_client shares values between
    # the registries of one process (multiprocess files); create the series, then count.
    services.metrics.tryon_sessions.labels("not_found")
    services.metrics.tryon_feedback.labels("too_large", "champion", "true")
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        before = client.get("/metrics").text
        sid = client.post(
            "/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "P1"}
        ).json()["session_id"]
        client.post(
            f"/api/v1/tryon/sessions/{sid}/feedback",
            json={"event_id": "e1", "size": "L", "outcome": "too_large"},
        )
        assert (
            client.post(
                "/api/v1/tryon/sessions", json={"user_id": "U1", "product_id": "NOPE"}
            ).status_code
            == 404
        )
        scraped = client.get(
            "/metrics", headers={"X-API-Key": "", "Authorization": f"Bearer {KEY}"}
        )
        refused = client.get("/metrics", headers={"X-API-Key": "", "Authorization": "Bearer nope"})
    assert scraped.status_code == 200 and refused.status_code == 401
    text = scraped.text

    def grew(series: str) -> float:
        def value(page: str) -> float:
            found = re.search(re.escape(series) + r" ([0-9.e+]+)", page)
            return float(found.group(1)) if found else 0.0

        return value(text) - value(before)

    assert grew('tryon_sessions_total{status="ok"}') == 1
    assert grew('tryon_sessions_total{status="not_found"}') == 1
    assert grew('tryon_feedback_total{agrees="true",outcome="too_large",variant="champion"}') == 1
    assert 'fitml_session_request_seconds_bucket{le="0.2"' in text
    assert grew('fitml_session_prediction_seconds_count{result="ok"}') == 1  # the one call


def test_prediction_calls_are_timed_by_result(tmp_path: Path) -> None:
    answers = iter(
        [httpx.Response(200, json=model_answer()), httpx.Response(404, json={"detail": "no"})]
    )
    services = make_services(tmp_path, lambda r: next(answers, httpx.Response(503)))
    m = services.metrics
    results = ("ok", "not_found", "server_error", "circuit_open")
    guest = {"product_id": "P1", "measurements": {"chest_cm": 100.0}}
    before = {r: sample(m, "fitml_session_prediction_seconds_count", result=r) for r in results}
    with TestClient(create_app(services), headers={"X-API-Key": KEY}) as client:
        codes = [
            client.post("/api/v1/tryon/sessions", json=guest).status_code
            for _ in range(6)  # ok, 404, then 503s until the circuit opens (2 failures)
        ]
    assert codes == [201, 404, 201, 201, 201, 201]
    grew = {
        r: sample(m, "fitml_session_prediction_seconds_count", result=r) - before[r]
        for r in results
    }
    assert grew == {"ok": 1, "not_found": 1, "server_error": 2, "circuit_open": 0}
    assert sample(m, "fitml_session_degraded_answers_total", reason="circuit_open") >= 2
    assert sample(m, "fitml_session_prediction_seconds_sum", result="ok") > 0


def test_scrape_key_reads_api_key_or_bearer() -> None:
    assert scrape_key({"x-api-key": "k1"}) == "k1"
    assert scrape_key({"authorization": "Bearer k2"}) == "k2"
    assert scrape_key({"authorization": "Basic k3"}) is None
    assert scrape_key({}) is None


def test_prediction_metrics_observe_inference_records() -> None:
    from prometheus_client import REGISTRY

    from serving.telemetry import PredictionMetrics

    m = PredictionMetrics()
    before = REGISTRY.get_sample_value("fitml_size_shift_count", {"variant": "challenger"}) or 0
    hits = REGISTRY.get_sample_value("fitml_reco_cache_total", {"result": "hit"}) or 0
    seen: list[str] = []
    hook = m.hook(lambda rec, shadow: seen.append(rec["request_id"]))
    hook(
        {
            "request_id": "r1",
            "endpoint": "recommend",
            "variant": "challenger",
            "confidence": 0.7,
            "recommended_size": "M",
            "recommended_index": 4,
            "expected_index": 3.2,
            "sizes": [["S", 0.6, 0.3, 0.1], ["M", 0.2, 0.7, 0.1]],
            "latency_ms": 3.5,
            "cache": "hit",
        },
        None,
    )
    hook({"request_id": "r2", "endpoint": "recommend", "sizes": [["M"]]}, None)  # malformed
    assert seen == ["r1", "r2"]
    after = REGISTRY.get_sample_value("fitml_size_shift_count", {"variant": "challenger"})
    assert after == before + 1
    assert REGISTRY.get_sample_value("fitml_reco_cache_total", {"result": "hit"}) == hits + 1
    p_fit = REGISTRY.get_sample_value(
        "fitml_recommended_p_fit_bucket", {"variant": "challenger", "le": "0.7"}
    )
    assert p_fit is not None and p_fit >= 1


def test_drift_verdict_becomes_series() -> None:
    from evaluation.drift import ColumnDrift, DriftVerdict
    from evaluation.drift_metrics import drift_registry

    verdict = DriftVerdict(
        drift_detected=True,
        drifted_columns=["chest_cm"],
        drift_share=0.5,
        share_by_role={},
        n_reference=10,
        n_current=10,
        columns=[
            ColumnDrift("chest_cm", "feature", "num", "wasserstein", 0.1, 0.31, True),
            ColumnDrift("brand", "feature", "cat", "jensenshannon", 0.1, 0.02, False),
        ],
        computed_at="2026-03-01T00:00:00+00:00",
    )
    text = generate_latest(drift_registry(verdict)).decode()
    assert "fitml_drift_detected 1.0" in text
    assert "fitml_drift_last_run_timestamp_seconds 1.7723232e+09" in text
    assert (
        'fitml_drift_column_value{column="chest_cm",method="wasserstein",role="feature"} 0.31'
        in text
    )
    assert 'fitml_drift_column_drifted{column="brand",role="feature"} 0.0' in text
