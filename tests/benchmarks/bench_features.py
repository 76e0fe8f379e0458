"""Feature-store benchmark: training-set build, online reads, push-to-visible latency.

Run by ``make bench``::

    python -m tests.benchmarks.bench_features --out var/bench/features.json

Writes medians (and p50/p99 for latencies) as JSON; the training set is built on the
``local`` profile (DuckDB) and the ``prod`` profile (PostgreSQL), with their ratio. Synthetic
data is generated and ingested under ``--workdir`` once per size and reused. Redis /
PostgreSQL figures need the servers (``FITML_TEST_REDIS``, ``FITML_TEST_POSTGRES`` or the
defaults); without them those entries say why they are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

SIZES = {100_000: (10_000, 1_000), 1_000_000: (30_000, 2_000)}


def _prepare(workdir: Path, events: int) -> Path:
    from ml_pipeline.ingest import ingest_synthetic
    from ml_pipeline.synth import generate

    users, products = SIZES.get(events, (max(100, events // 30), max(20, events // 500)))
    raw = workdir / f"raw-{events}"
    work = workdir / f"work-{events}"
    if not (raw / "events.parquet").is_file():
        generate(raw, users=users, products=products, events=events, seed=0)
    if not (work / "offline" / "events.parquet").is_file():
        ingest_synthetic(raw, work)
    return work


def _timed(func: Callable[[], Any]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def bench_training_set(
    workdir: Path, events: int, repeats: int, profile: str = "local"
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """Apply (aggregate job + registry) once, then build the training set ``repeats`` times.

    ``profile`` ``prod`` joins in PostgreSQL (:mod:`features.offline_postgres`) instead of
    DuckDB (:mod:`features.offline`).

    Returns:
        The figures, and the last training set built (None when skipped).
    """
    from ml_pipeline.settings import load_settings

    work = _prepare(workdir, events)
    if profile == "prod":
        with _prod_settings(work) as prod:
            if prod is None:
                return {"events": events, "skipped": "Redis or PostgreSQL not reachable"}, None
            return _bench_training_set(prod, events, repeats)
    return _bench_training_set(load_settings(profile, work), events, repeats)


def _bench_training_set(
    settings: Any, events: int, repeats: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    from features import store as fs

    apply_s = _timed(lambda: fs.apply(settings))
    runs = []
    frame = pd.DataFrame()
    for _ in range(repeats):
        del frame
        gc.collect()
        started = time.perf_counter()
        frame = fs.training_set(settings)
        runs.append(time.perf_counter() - started)
    figures = {
        "events": events,
        "profile": settings.profile,
        "rows": len(frame),
        "apply_s": round(apply_s, 3),
        "training_set_median_s": round(statistics.median(runs), 3),
        "training_set_runs_s": [round(r, 3) for r in runs],
    }
    return figures, frame


def bench_profiles(workdir: Path, events: int, repeats: int) -> dict[str, Any]:
    """The training set on both profiles, their time ratio and whether they are identical."""
    local, local_frame = bench_training_set(workdir, events, repeats)
    prod, prod_frame = bench_training_set(workdir, events, repeats, "prod")
    if prod_frame is not None:
        prod["ratio_to_duckdb"] = round(
            prod["training_set_median_s"] / local["training_set_median_s"], 2
        )
        try:
            pd.testing.assert_frame_equal(prod_frame, local_frame)
            prod["identical_to_local"] = True
        except AssertionError as exc:
            prod["identical_to_local"] = False
            prod["difference"] = str(exc)[:500]
    return {"local": local, "prod": prod}


def _latencies(func: Callable[[], Any], calls: int) -> dict[str, float]:
    for _ in range(20):
        func()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        func()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(float(np.percentile(samples, 50)), 3),
        "p99_ms": round(float(np.percentile(samples, 99)), 3),
        "calls": calls,
    }


def bench_online(settings: Any, calls: int) -> dict[str, Any]:
    """Online read of one (user, product) plus request features for all its sizes; push."""
    from features import store as fs
    from features.feedback import push_feedback
    from features.freshness import enforce_freshness
    from features.transforms import request_features

    fs.apply(settings)
    store = fs.open_store(settings)
    store.materialize(
        start_date=pd.Timestamp("1970-01-02", tz="UTC").to_pydatetime(),
        end_date=pd.Timestamp.now(tz="UTC").to_pydatetime(),
    )
    events = fs.read_events(settings)
    last = events.sort_values("event_timestamp").iloc[-1]
    user, product = str(last.user_id), str(last.product_id)

    def read_only() -> dict[str, Any]:
        return fs.online_features(store, user, product, event_times=True)

    def read_and_score_sizes() -> pd.DataFrame:
        row, _ = enforce_freshness(fs.online_features(store, user, product, event_times=True))
        sizes = list(row["chart_index"])
        frame = pd.DataFrame([row] * len(sizes))
        frame["size_index"] = sizes
        return request_features(frame)

    n_sizes = len(read_only()["chart_index"])
    push_visible = []
    push_total = []
    for i in range(max(5, calls // 50)):
        before = read_only()["hist_n"] or 0.0
        new = pd.DataFrame(
            [
                {
                    "event_id": f"bench-{uuid.uuid4().hex}",
                    "user_id": user,
                    "product_id": product,
                    "size_index": int(last.size_index),
                    "outcome": ("too_small", "fit", "too_large")[i % 3],
                    "event_timestamp": pd.Timestamp.now(tz="UTC"),
                }
            ]
        )
        started = time.perf_counter()
        push_feedback(store, new, settings=settings, offline=False)
        while (read_only()["hist_n"] or 0.0) <= before:
            if time.perf_counter() - started > 10:
                raise RuntimeError("pushed feedback not visible online after 10 s")
        push_visible.append((time.perf_counter() - started) * 1000)
        new["event_id"] = f"bench-{uuid.uuid4().hex}"
        push_total.append(_timed(lambda n=new: push_feedback(store, n, settings=settings)) * 1000)
    return {
        "sizes_per_read": n_sizes,
        "online_read": _latencies(read_only, calls),
        "online_read_all_sizes_with_request_features": _latencies(read_and_score_sizes, calls),
        "push_to_visible_ms_median": round(statistics.median(push_visible), 1),
        "push_to_visible_ms_max": round(max(push_visible), 1),
        "push_online_and_offline_ms_median": round(statistics.median(push_total), 1),
        "pushes": len(push_visible),
    }


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _prod_settings(work: Path) -> Iterator[Any]:
    """The prod profile on ``work`` under a project of its own (None: servers unreachable).

    Afterwards the project's registry entries, offline tables, Redis keys and pushed
    feedback files are removed.
    """
    from features import store as fs
    from ml_pipeline.settings import load_settings
    from serving.session.testing import prod_env

    redis_url = os.environ.get("FITML_TEST_REDIS", "redis://127.0.0.1:6379/0")
    pg = os.environ.get("FITML_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    parsed = urlparse(redis_url)
    if not _reachable(parsed.hostname or "127.0.0.1", parsed.port or 6379) or not _reachable(
        urlparse(pg).hostname or "127.0.0.1", urlparse(pg).port or 5432
    ):
        yield None
        return
    os.environ.update(prod_env(pg, redis_url))
    base = load_settings("prod", work)
    project = f"fitml_bench_{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(update={"feast": base.feast.model_copy(update={"project": project})})
    try:
        yield settings
    finally:
        fs.delete_project(settings)
        for path in (fs.feedback_dir(settings)).glob("*.parquet"):
            path.unlink()


def bench_redis(workdir: Path, events: int, calls: int) -> dict[str, Any]:
    """The online figures on the prod profile: Redis online store, PostgreSQL registry."""
    with _prod_settings(_prepare(workdir, events)) as settings:
        if settings is None:
            return {"skipped": "Redis or PostgreSQL not reachable"}
        return bench_online(settings, calls)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and write its JSON; returns what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("var/bench/features.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: next to --out")
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--online-events", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args(argv)
    workdir = (args.workdir or args.out.parent / "features-work").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    from features import store as fs
    from ml_pipeline.settings import load_settings

    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_start": list(os.getloadavg()),
        "training_set": [bench_profiles(workdir, n, args.repeats) for n in args.events],
    }
    local = load_settings("local", _prepare(workdir, args.online_events))
    try:
        result["online_sqlite"] = bench_online(local, args.calls)
    finally:
        for path in fs.feedback_dir(local).glob("*.parquet"):
            path.unlink()
    result["online_redis"] = bench_redis(workdir, args.online_events, args.calls)
    result["load_average_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
