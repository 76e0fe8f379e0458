"""Load test of session start: a closed-loop driver over loopback, prediction service up and down.

Each of ``--clients`` concurrent clients starts a session, waits for the answer, and starts
the next one, for ``--seconds`` per phase. Phase ``up``: the prediction service answers;
phase ``down``: it is stopped, and sessions are answered by the size-chart rule (degraded).
Reports sessions/s and latency percentiles per phase as JSON.

    .venv/bin/python -m tests.benchmarks.bench_session --workdir /tmp/sess --seconds 5

``--profile prod`` trains a prod world on a private stack of the machine's PostgreSQL and
Redis (removed after) and measures both services in the prod profile.

(``make bench`` runs :func:`test_bench_session` on the test suite's trained work directory,
and :func:`test_bench_session_prod`, when pytest collects ``bench_*.py``.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pytest

from serving.session.testing import ServiceProcess, clone_workdir, free_port, start_together

from .load import run_load

KEY = "bench-key"


def closed_loop(
    url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, warmup: float = 1.0
) -> dict[str, Any]:
    """Run ``clients`` closed loops of ``POST /api/v1/tryon/sessions`` for ``seconds``.

    After ``warmup`` seconds of the same load, not counted. Errors are failed connections
    and answers other than 201 (every non-2xx is a 4xx or 5xx here).
    """
    port = int(url.rsplit(":", 1)[1].rstrip("/"))
    run = run_load(
        "session",
        port,
        "/api/v1/tryon/sessions",
        [orjson.dumps(b) for b in bodies],
        clients,
        seconds,
        warmup,
        headers={"X-API-Key": KEY},
        flag=b'"degraded":true',
    )
    return {
        "clients": clients,
        "seconds": run.seconds,
        "sessions": run.requests,
        "sessions_per_s": run.rps,
        "p50_ms": run.p50_ms,
        "p90_ms": run.p90_ms,
        "p99_ms": run.p99_ms,
        "max_ms": run.max_ms,
        "errors": run.errors + run.non_2xx,
        "degraded": run.flagged,
    }


def _phases(
    prediction: ServiceProcess,
    sessions: ServiceProcess,
    bodies: list[dict[str, Any]],
    clients: int,
    seconds: float,
) -> dict[str, Any]:
    """Start both services, measure with the prediction service up, stop it, measure again.

    Each phase also reports the CPU each service's processes spent per session
    (``cpu_ms_per_session``): what bounds throughput on a machine of few cores.
    """
    with ExitStack() as stack:
        start_together(stack, prediction, sessions)
        closed_loop(sessions.url, bodies, clients, 1.0, warmup=0)  # warm-up, not counted
        up = _with_cpu(sessions.url, bodies, clients, seconds, [sessions, prediction])
        prediction.stop()
        down = _with_cpu(sessions.url, bodies, clients, seconds, [sessions])
    return {"up": up, "down": down}


def _cpu_seconds(service: ServiceProcess) -> float:
    """User + system CPU seconds of a service's process and its live descendants."""
    if service.proc is None:
        return 0.0
    root = psutil.Process(service.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _with_cpu(
    url: str,
    bodies: list[dict[str, Any]],
    clients: int,
    seconds: float,
    services: list[ServiceProcess],
) -> dict[str, Any]:
    names = ("session_service", "prediction_service")
    before = [_cpu_seconds(s) for s in services]
    result = closed_loop(url, bodies, clients, seconds, warmup=0)
    spent = [_cpu_seconds(s) - b for s, b in zip(services, before, strict=True)]
    n = max(1, result["sessions"])
    result["cpu_ms_per_session"] = {
        name: round(1000 * cpu / n, 2) for name, cpu in zip(names, spent, strict=False)
    }
    return result


def _session_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **(env or {}),
        "FITML_API_KEYS": KEY,
        "FITML_RATE_LIMIT": "100000",
        "FITML_RATE_BURST": "100000",
    }


def run_bench(
    workdir: Path,
    seconds: float = 5.0,
    clients: int = 8,
    env: dict[str, str] | None = None,
    code: Path | None = None,
) -> dict[str, Any]:
    """Clone ``workdir``, start both services, measure session start with prediction up/down.

    Args:
        env: extra environment of both services (e.g. the ``OTEL_*`` tracing variables).
        code: another fitml checkout to run both services from (see :func:`run_ab`).
    """
    with tempfile.TemporaryDirectory(prefix="bench-session-") as tmp:
        root = Path(tmp)
        clone = clone_workdir(workdir, root / "var")
        lines = (clone.workdir / "examples" / "recommend.jsonl").read_text().splitlines()
        prediction = ServiceProcess(
            ["serve", "--workdir", str(clone.workdir)],
            free_port(),
            root / "predict.log",
            # the prediction service's own cost: its cache would answer the repeated bodies
            env={"FITML_RECO_CACHE": "off", **(env or {})},
            code=code,
        )
        sessions = ServiceProcess(
            [
                "session-service",
                "--workdir",
                str(clone.workdir),
                "--prediction-url",
                prediction.url,
            ],
            free_port(),
            root / "session.log",
            env=_session_env(env),
            code=code,
        )
        return {
            "profile": "local",
            **_phases(prediction, sessions, _bodies(lines), clients, seconds),
        }


def run_ab(
    workdir: Path, baseline: Path, seconds: float = 5.0, clients: int = 8, rounds: int = 3
) -> dict[str, Any]:
    """Session start of this checkout against ``baseline`` (another fitml checkout, e.g. a
    ``git worktree`` of an earlier commit), in alternating rounds on the same work directory
    and with the same load generator, so the machine's load falls on both alike.

    Reports each side's medians over the rounds (prediction service up) and this checkout's
    ratios to the baseline.
    """
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    for _ in range(rounds):
        for side, code in (("baseline", baseline.resolve()), ("this", None)):
            runs[side].append(run_bench(workdir, seconds, clients, code=code)["up"])
    keys = ("sessions_per_s", "p50_ms", "p99_ms")
    medians = {
        side: {k: statistics.median(r[k] for r in results) for k in keys}
        | {"errors": sum(r["errors"] for r in results)}
        | {"degraded": sum(r["degraded"] for r in results)}
        | {
            f"cpu_ms_per_session_{name}": statistics.median(
                r["cpu_ms_per_session"][name] for r in results
            )
            for name in ("session_service", "prediction_service")
        }
        for side, results in runs.items()
    }
    return {
        "clients": clients,
        "rounds": rounds,
        "seconds": seconds,
        "baseline_code": str(baseline.resolve()),
        "median": medians,
        "ratio": {k: round(medians["this"][k] / medians["baseline"][k], 3) for k in keys},
        "runs": runs,
    }


def _bodies(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


PROD_WORLD = ("--trials", "6")
"""``fitml pipeline run`` options of the prod benchmark's world: ``make demo``'s data and
seed, and the local profile's 6 tuning trials (the prod profile's default is 20)."""


def run_bench_prod(
    seconds: float = 5.0,
    clients: int = 8,
    postgres_dsn: str = "postgresql://127.0.0.1:5432/test",
    redis_url: str = "redis://127.0.0.1:6379/0",
    world: tuple[str, ...] = PROD_WORLD,
) -> dict[str, Any]:
    """Session start in the ``prod`` profile, on a private prod stack that is removed after.

    ``fitml pipeline run --profile prod`` trains the world (MLflow and Optuna in PostgreSQL,
    features in PostgreSQL and Redis); then both services run with ``--profile prod``: the
    prediction service reads features from Redis and checks the service token, the session
    service writes sessions to PostgreSQL and rate-limits in Redis.
    """
    from tests.prodstack import private_prod_stack

    with tempfile.TemporaryDirectory(prefix="bench-session-prod-") as tmp:
        root = Path(tmp)
        workdir = root / "var"
        with private_prod_stack(postgres_dsn, redis_url, workdir) as stack:
            argv = [sys.executable, "-m", "ml_pipeline.cli", "pipeline", "run", "--profile"]
            argv += ["prod", "--workdir", str(workdir), *world]
            started = time.perf_counter()
            run = subprocess.run(argv, env={**os.environ, **stack.env}, capture_output=True)
            if run.returncode != 0:
                raise RuntimeError(f"prod pipeline failed: {run.stderr.decode()[-3000:]}")
            trained_s = time.perf_counter() - started
            lines = (workdir / "examples" / "recommend.jsonl").read_text().splitlines()
            prediction = ServiceProcess(
                ["serve", "--profile", "prod", "--workdir", str(workdir)],
                free_port(),
                root / "predict.log",
                env={**stack.env, "FITML_RECO_CACHE": "off"},
                ready_timeout_s=180,
            )
            sessions = ServiceProcess(
                [
                    "session-service", "--profile", "prod", "--workdir", str(workdir),
                    "--prediction-url", prediction.url,
                ],
                free_port(),
                root / "session.log",
                env=_session_env(stack.env),
                ready_timeout_s=180,
            )  # fmt: skip
            phases = _phases(prediction, sessions, _bodies(lines), clients, seconds)
    return {"profile": "prod", "world": list(world), "pipeline_s": round(trained_s, 1), **phases}


def _check_and_keep(result: dict[str, Any], name: str) -> None:
    """Print ``result``, keep it as ``name`` under ``FITML_BENCH_DIR``, and check its phases:
    no error, no degraded answer while the prediction service is up, all degraded after."""
    print("\n" + json.dumps(result, indent=2))
    out = os.environ.get("FITML_BENCH_DIR")
    if out:
        Path(out, name).write_text(json.dumps(result, indent=2))
    assert result["up"]["errors"] == 0 and result["down"]["errors"] == 0
    assert result["up"]["degraded"] == 0
    assert result["down"]["degraded"] == result["down"]["sessions"]


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_session(trained_workdir: Path) -> None:
    _check_and_keep(run_bench(trained_workdir, seconds=5.0, clients=8), "session.json")


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_session_prod(postgres_dsn: str, redis_url: str) -> None:
    _check_and_keep(run_bench_prod(5.0, 8, postgres_dsn, redis_url), "session_prod.json")


def off_hook_cost_ns(n: int = 200_000) -> dict[str, float]:
    """Nanoseconds per call of what a session start runs of tracing while it is off."""
    from serving import tracing

    assert not tracing.enabled()
    headers: dict[str, str] = {}

    def per_request() -> None:  # the span sites of one session start, off
        with tracing.span(f"event_store.{getattr(per_request, '__name__', 'call')}"):
            pass
        tracing.current_traceparent()  # kept with the session record (and with feedback)
        tracing.inject(headers)
        with tracing.span("features.online_read"):
            pass
        with tracing.span("model.recommend", {"fitml.variant": "champion"}):
            pass

    timings = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(n):
            per_request()
        timings.append((time.perf_counter_ns() - started) / n)
    return {"per_session_ns_median_of_5": round(float(np.median(timings)), 1)}


def run_tracing_cost(workdir: Path, seconds: float = 5.0, clients: int = 8) -> dict[str, Any]:
    """Tracing off, on (every session sampled, OTLP to a local receiver), off again.

    The two "off" runs show the noise of the machine; "on" the cost of recording and
    exporting every span. With the cost of the off path measured in process.
    """
    from serving.session.testing import OtlpReceiver

    receiver = OtlpReceiver(keep=False)
    on = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    try:
        runs = {
            "off": run_bench(workdir, seconds, clients)["up"],
            "on_sampled_all": run_bench(workdir, seconds, clients, env=on)["up"],
            "off_again": run_bench(workdir, seconds, clients)["up"],
        }
    finally:
        receiver.close()
    off_p50 = float(np.mean([runs["off"]["p50_ms"], runs["off_again"]["p50_ms"]]))
    hook = off_hook_cost_ns()
    return {
        **runs,
        "spans_received_when_on": receiver.received,
        "off_hooks": hook,
        "off_hooks_share_of_p50": hook["per_session_ns_median_of_5"] / (off_p50 * 1e6),
        "off_vs_off_again_p50": round(runs["off_again"]["p50_ms"] / runs["off"]["p50_ms"], 3),
        "on_vs_off_p50": round(runs["on_sampled_all"]["p50_ms"] / off_p50, 3),
        "load_average": os.getloadavg(),
    }


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_tracing_cost(trained_workdir: Path) -> None:
    result = run_tracing_cost(trained_workdir, seconds=5.0, clients=8)
    print("\n" + json.dumps(result, indent=2))
    out = os.environ.get("FITML_BENCH_DIR")
    if out:
        Path(out, "session_tracing.json").write_text(json.dumps(result, indent=2))
    for phase in ("off", "on_sampled_all", "off_again"):
        assert result[phase]["errors"] == 0 and result[phase]["degraded"] == 0
    assert result["spans_received_when_on"] > 0
    assert result["off_hooks_share_of_p50"] < 0.001  # the off path: under 0.1% of a session


def serve_variant(workdir: Path, port: int, prediction_url: str, guard: bool) -> None:
    """Serve the session service as ``fitml session-service`` does, with or without its guard.

    ``guard=False`` swaps :class:`serving.limits.RequestGuard` (credentials from the headers,
    body and header caps, the body timeout) for a pass-through that lets every request in as
    an all-scopes caller: the baseline of :func:`run_hardening_cost`. Everything else (uvicorn
    and its head deadline, the routes, rate limiting, the stores) is the same.
    """
    import uvicorn
    from starlette.middleware import Middleware

    from ml_pipeline.settings import load_settings
    from serving.limits import RequestGuard, request_deadline_protocol, uvicorn_limits
    from serving.session.auth import SCOPES, Principal
    from serving.session.config import load_session_config
    from serving.session.observability import configure_logging
    from serving.session.server import build_app, limits_of

    configure_logging()
    config = load_session_config(load_settings("local", workdir), prediction_url)
    app = build_app(config)
    if not guard:
        anyone = Principal("bench", "api_key", frozenset(SCOPES))

        class PassThrough:
            def __init__(self, app: Any, **_: Any) -> None:
                self.app = app

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] == "http":
                    scope.setdefault("state", {})["principal"] = anyone
                await self.app(scope, receive, send)

        swapped = [m for m in app.user_middleware if m.cls is RequestGuard]
        assert len(swapped) == 1, "the session app no longer installs one RequestGuard"
        app.user_middleware[app.user_middleware.index(swapped[0])] = Middleware(PassThrough)
    limits = limits_of(config)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        http=request_deadline_protocol(limits.header_timeout_s),
        **uvicorn_limits(limits),
    )


def run_hardening_cost(
    workdir: Path, seconds: float = 5.0, clients: int = 8, rounds: int = 3
) -> dict[str, Any]:
    """Session start with the request guard (auth + limits) on vs. off, in one run.

    One prediction service; the session service restarted as ``on`` / ``off`` in turn for
    ``rounds`` rounds, the order swapped every round (so drift of the machine's load and of the
    event store's size hits both), each measured for
    ``seconds`` after a 1 s warm-up. Reports each run, the median p50 / p99 per variant and
    their ratios (on / off).
    """
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        root = Path(tmp)
        clone = clone_workdir(workdir, root / "var")
        lines = (clone.workdir / "examples" / "recommend.jsonl").read_text().splitlines()
        bodies = [json.loads(line) for line in lines]
        prediction = ServiceProcess(
            ["serve", "--workdir", str(clone.workdir)], free_port(), root / "predict.log"
        )
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        with prediction:
            for i in range(rounds):
                for variant in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    port = free_port()
                    service = ServiceProcess(
                        [],
                        port,
                        root / f"session-{variant}.log",
                        env={
                            "FITML_API_KEYS": KEY,
                            "FITML_RATE_LIMIT": "100000",
                            "FITML_RATE_BURST": "100000",
                        },
                    )
                    service.args = [
                        sys.executable, "-m", "tests.benchmarks.bench_session",
                        "--serve-variant", variant, "--workdir", str(clone.workdir),
                        "--port", str(port), "--prediction-url", prediction.url,
                    ]  # fmt: skip
                    with service:
                        result = closed_loop(service.url, bodies, clients, seconds)
                    runs[variant].append(result)
    median = {
        v: {q: float(np.median([r[q] for r in rs])) for q in ("p50_ms", "p99_ms", "sessions_per_s")}
        for v, rs in runs.items()
    }
    return {
        "runs": runs,
        "median": median,
        "p50_on_vs_off": round(median["on"]["p50_ms"] / median["off"]["p50_ms"], 3),
        "p99_on_vs_off": round(median["on"]["p99_ms"] / median["off"]["p99_ms"], 3),
        "load_average": os.getloadavg(),
    }


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_hardening_cost(trained_workdir: Path) -> None:
    result = run_hardening_cost(trained_workdir, seconds=5.0, clients=8, rounds=3)
    print("\n" + json.dumps(result, indent=2))
    out = os.environ.get("FITML_BENCH_DIR")
    if out:
        Path(out, "session_guard.json").write_text(json.dumps(result, indent=2))
    for runs in result["runs"].values():
        assert all(r["errors"] == 0 and r["degraded"] == 0 for r in runs)
    assert result["p99_on_vs_off"] < 2.0  # the guard must not double the tail


def main() -> None:
    """Command line: ``bench_session.py --workdir DIR [--seconds S] [--clients N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="A trained work directory (local profile).")
    parser.add_argument(
        "--profile",
        choices=("local", "prod"),
        default="local",
        help="prod: train a prod world on a private stack (PostgreSQL, Redis) and measure it.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="Per phase (keep it short).")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", type=Path, help="Also write the result here.")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="Another fitml checkout (e.g. a git worktree of an earlier commit): measure it "
        "against this one in alternating rounds (local profile).",
    )
    parser.add_argument(
        "--tracing-cost", action="store_true", help="Tracing off / on / off instead."
    )
    parser.add_argument(
        "--hardening-cost", action="store_true", help="Request guard on / off instead."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Rounds of --baseline or of --hardening-cost (on/off).",
    )
    parser.add_argument("--serve-variant", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prediction-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workdir is None and args.profile == "local":
        parser.error("--workdir is required with the local profile")
    if args.serve_variant:  # the session service of one variant (run_hardening_cost)
        serve_variant(args.workdir, args.port, args.prediction_url, args.serve_variant == "on")
        return
    if args.hardening_cost:
        result = run_hardening_cost(args.workdir.resolve(), args.seconds, args.clients, args.rounds)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    if args.profile == "prod":
        result = run_bench_prod(args.seconds, args.clients)
    elif args.baseline is not None:
        result = run_ab(
            args.workdir.resolve(), args.baseline, args.seconds, args.clients, args.rounds
        )
    else:
        run = run_tracing_cost if args.tracing_cost else run_bench
        result = run(args.workdir.resolve(), args.seconds, args.clients)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
