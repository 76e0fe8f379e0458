"""What the recommendation cache saves, and how often it can, on a realistic replay.

In one process, on a copy of a trained work dir (the real Feast store and champion models):

- **Cost per answer**: :meth:`serving.predictor.Predictor.recommend` with the cache off, on a
  miss (the key computed and stored as well) and on a hit; medians over the same requests,
  and the hit's cost as a ratio to the uncached one.
- **Hit rate on a replay**: the last events of the log are replayed as new try-on sessions in
  time order: a recommendation for the shopper and product, then the session's feedback,
  pushed to the feature store every ``--batch`` sessions as the session service delivers it.
  Each push changes the shopper's and product's features, so only answers whose inputs did
  not change can hit. ``--views`` recommendations per session model a shopper reopening the
  product before saying how it fits; guests are replayed beside known shoppers.
- **Hit rate on repeats**: the same requests again with nothing pushed (the upper bound).

Run: ``make bench`` (marker ``benchmark``) or
``.venv/bin/python -m tests.benchmarks.bench_reco_cache --workdir var --out var/bench``.
Results: ``reco_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest


def _timed(predictor: Any, requests: Sequence[dict[str, Any]]) -> list[float]:
    out = []
    for request in requests:
        started = time.perf_counter()
        predictor.recommend(**request, log=False)
        out.append((time.perf_counter() - started) * 1e6)
    return out


def cost(settings: Any, requests: Sequence[dict[str, Any]], repeats: int = 3) -> dict[str, Any]:
    """Median microseconds per answer: uncached, a miss, a hit (same requests, same process)."""
    from serving.predictor import Predictor
    from serving.reco_cache import LocalCache

    plain = Predictor(settings, cache=LocalCache(1)).load()
    plain.cache = None
    cached = Predictor(settings, cache=LocalCache(len(requests) + 1)).load()
    try:
        _timed(plain, requests[:50])  # warm up both
        _timed(cached, requests[:50])
        runs: dict[str, list[float]] = {"uncached_us": [], "miss_us": [], "hit_us": []}
        for _ in range(repeats):
            cached.cache = LocalCache(len(requests) + 1)
            runs["uncached_us"].append(statistics.median(_timed(plain, requests)))
            runs["miss_us"].append(statistics.median(_timed(cached, requests)))
            runs["hit_us"].append(statistics.median(_timed(cached, requests)))
    finally:
        plain.close()
        cached.close()
    out: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    out["hit_over_uncached"] = round(out["hit_us"] / out["uncached_us"], 3)
    out["miss_over_uncached"] = round(out["miss_us"] / out["uncached_us"], 3)
    out["runs"] = runs
    return out


def sessions_from_log(settings: Any, n: int) -> pd.DataFrame:
    """The log's last ``n`` events as new sessions after the log ends (new ids, same order)."""
    events = pd.read_parquet(settings.offline_dir / "events.parquet")
    events = events.sort_values("event_timestamp").tail(n).reset_index(drop=True)
    shift = events["event_timestamp"].max() - events["event_timestamp"].min()
    shift = shift + pd.Timedelta(days=1)
    return events.assign(
        event_id=[f"replay-{uuid.uuid4().hex}" for _ in range(len(events))],
        event_timestamp=events["event_timestamp"] + shift,
    )


def replay(
    settings: Any, sessions: pd.DataFrame, *, views: int, batch: int, guest_every: int
) -> dict[str, Any]:
    """Hit rate of the cache when the sessions' feedback is pushed as they go."""
    from features.feedback import push_feedback
    from features.store import open_store
    from serving.predictor import Predictor
    from serving.reco_cache import LocalCache

    sessions = sessions.reset_index(drop=True)
    cache = LocalCache(100_000)
    predictor = Predictor(settings, cache=cache).load()
    store = open_store(settings)
    pending: list[int] = []
    pushes = 0
    columns = ["event_id", "user_id", "product_id", "size", "outcome", "event_timestamp"]
    try:
        for i, event in enumerate(sessions.itertuples(index=False)):
            user = None if guest_every and i % guest_every == 0 else str(event.user_id)
            for _ in range(views):
                predictor.recommend(str(event.product_id), user, log=False)
            pending.append(i)
            if len(pending) == batch:
                push_feedback(store, sessions.loc[pending, columns], settings=settings)
                pushes += 1
                pending = []
        return {
            "sessions": len(sessions),
            "views_per_session": views,
            "push_every_sessions": batch,
            "guest_share": round(1 / guest_every, 3) if guest_every else 0.0,
            "pushes": pushes,
            "lookups": cache.stats.hits + cache.stats.misses,
            "hit_rate": round(cache.stats.hit_rate, 4),
        }
    finally:
        predictor.close()


def repeats_hit_rate(settings: Any, requests: Sequence[dict[str, Any]]) -> float:
    """Hit rate when the same requests come twice and nothing changes between them."""
    from serving.predictor import Predictor
    from serving.reco_cache import LocalCache

    cache = LocalCache(100_000)
    predictor = Predictor(settings, cache=cache).load()
    try:
        _timed(predictor, list(requests) * 2)
    finally:
        predictor.close()
    return round(cache.stats.hit_rate, 4)


def run(workdir: Path, sessions: int, batch: int) -> dict[str, Any]:
    """Everything above on a copy of ``workdir`` (pushes never touch the original)."""
    from serving.session.testing import clone_workdir

    with tempfile.TemporaryDirectory(prefix="bench-reco-cache-") as tmp:
        settings = clone_workdir(workdir, Path(tmp) / "var")
        replayed = sessions_from_log(settings, sessions)
        requests = [
            {"product_id": str(e.product_id), "user_id": str(e.user_id)}
            for e in replayed.itertuples(index=False)
        ]
        result: dict[str, Any] = {"cost": cost(settings, requests)}
        result["repeats_hit_rate"] = repeats_hit_rate(settings, requests)
        result["replays"] = [
            replay(settings, replayed.iloc[part], views=views, batch=batch, guest_every=guests)
            for part, views, guests in (
                (slice(0, sessions // 3), 1, 0),
                (slice(sessions // 3, 2 * sessions // 3), 2, 0),
                (slice(2 * sessions // 3, sessions), 1, 4),
            )
        ]
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run, write ``reco_cache.json``, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("var"), help="a trained work dir")
    parser.add_argument("--out", type=Path, default=None, help="folder of reco_cache.json")
    parser.add_argument("--sessions", type=int, default=600, help="sessions replayed")
    parser.add_argument("--batch", type=int, default=10, help="sessions per feedback push")
    args = parser.parse_args(argv)
    result = run(args.workdir.resolve(), args.sessions, args.batch)
    out = args.out or args.workdir / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reco_cache.json").write_text(json.dumps(result, indent=1))
    c = result["cost"]
    print(
        f"per answer (median us): uncached {c['uncached_us']}, miss {c['miss_us']}, "
        f"hit {c['hit_us']} (hit/uncached {c['hit_over_uncached']}, "
        f"miss/uncached {c['miss_over_uncached']})"
    )
    print(f"hit rate, same requests twice: {result['repeats_hit_rate']}")
    for r in result["replays"]:
        print(
            f"hit rate, replay of {r['sessions']} sessions, {r['views_per_session']} view(s) "
            f"each, guests {r['guest_share']}, push every {r['push_every_sessions']}: "
            f"{r['hit_rate']}"
        )
    return result


@pytest.mark.benchmark
def test_bench_reco_cache() -> None:
    """``make bench``: needs a trained work dir (FITML_BENCH_WORKDIR, default ``var``)."""
    workdir = Path(os.environ.get("FITML_BENCH_WORKDIR", "var")).resolve()
    if not (workdir / "mlflow.db").is_file():
        pytest.skip(f"no trained work dir at {workdir}; run `make demo` or set FITML_BENCH_WORKDIR")
    out = Path(os.environ.get("FITML_BENCH_DIR", workdir / "bench"))
    result = main(["--workdir", str(workdir), "--out", str(out)])
    assert result["cost"]["hit_us"] < result["cost"]["uncached_us"]


if __name__ == "__main__":
    main(sys.argv[1:])
