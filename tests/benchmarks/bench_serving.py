"""Benchmark of the prediction service against two floors, over loopback, in one run.

Servers (started one at a time, so they never share the CPU with each other):

- ``bentoml``: the real service (``fitml serve``), ``POST /recommend`` with online features
  and every size of the product scored.
- ``fastapi``: a plain FastAPI + uvicorn app doing exactly the same work (the same
  :class:`serving.predictor.Predictor`): the framework floor.
- ``mlflow``: ``mlflow models serve`` of the champion fit model, ``POST /invocations`` with
  the same candidate rows (features precomputed): a model-only floor.

The closed-loop load generator of :mod:`tests.benchmarks.load` (raw HTTP/1.1, one process) drives
each at 1, 8 and 32 concurrent clients and counts non-2xx answers (a run with any is
invalid). Results: ``bench_serving.json`` under ``$FITML_BENCH_DIR`` (default
``<workdir>/bench``) and a table with ratios to the floors.

Run: ``make bench`` (pytest, marker ``benchmark``), or directly
``.venv/bin/python -m tests.benchmarks.bench_serving --workdir /tmp/svc --seconds 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from .load import LoadResult, run_load

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
CONCURRENCY = (1, 8, 32)
TARGETS = {"p99_ms_c8": 25.0, "rps_c8": 600.0, "rps_ratio_fastapi_c8": 0.5, "cold_start_s": 10.0}


# -- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> float:
    """Seconds until ``url`` answers 200 (raises if the process dies or time runs out)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started by :func:`start` (its whole process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(
    argv: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """Start a server in its own process group (in ``cwd``), output to ``log``."""
    handle = log.open("wb")
    return subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


FASTAPI_APP = textwrap.dedent(
    """
    import gc, sys
    from typing import Annotated
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from ml_pipeline.settings import load_settings
    from serving.predictor import Predictor, UnknownProductError
    from serving.schemas import Measurements, RecommendResponse

    class Body(BaseModel):
        product_id: str
        user_id: str | None = None
        measurements: Measurements | None = None
        fit_preference: str | None = None

    predictor = Predictor(load_settings("local", sys.argv[1])).load()
    gc.collect(); gc.freeze()
    app = FastAPI()

    @app.post("/recommend")
    async def recommend(body: Body) -> RecommendResponse:
        try:
            return predictor.recommend(body.product_id, body.user_id, body.measurements,
                                       body.fit_preference)
        except UnknownProductError as exc:
            raise HTTPException(404, str(exc))

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False)
    """
)


def bodies_for(workdir: Path, n: int = 200) -> list[dict[str, Any]]:
    """Request bodies: known users and guests with measurements, over many products."""
    import pandas as pd

    users = pd.read_parquet(workdir / "offline" / "users.parquet")
    products = pd.read_parquet(workdir / "offline" / "products.parquet")["product_id"].tolist()
    out: list[dict[str, Any]] = []
    for i in range(n):
        user = users.iloc[(i * 37) % len(users)]
        body: dict[str, Any] = {"product_id": products[(i * 13) % len(products)]}
        if i % 4 == 3:  # a guest with measurements
            chest = user.get("chest_cm")
            ok = isinstance(chest, int | float) and chest == chest and 50 <= chest <= 200
            body["measurements"] = {"chest_cm": float(chest) if ok else 95.0}
        else:
            body["user_id"] = str(user["user_id"])
        out.append(body)
    return out


def mlflow_bodies(workdir: Path, bodies: Sequence[dict[str, Any]], n: int = 50) -> list[bytes]:
    """``/invocations`` payloads: each request's candidate rows with the fit model's inputs."""
    import numpy as np

    from features.definitions import FIT_MODEL_FEATURES
    from features.transforms import request_features
    from ml_pipeline.settings import load_settings
    from serving.predictor import Predictor, _columns
    from serving.recommend import candidate_columns

    predictor = Predictor(load_settings("local", workdir))
    from features.store import open_store
    from serving.online_features import OnlineReader

    predictor.reader_ = OnlineReader(open_store(predictor.settings))
    out = []
    for body in bodies[:n]:
        row, _ = predictor.feature_row(body.get("user_id"), body["product_id"], None, None)
        cand = request_features(candidate_columns(_columns([row])))
        records = []
        for i in range(len(cand["size_index"])):
            rec = {}
            for f in FIT_MODEL_FEATURES:
                v = cand[f][i]
                if isinstance(v, np.generic):
                    v = v.item()
                rec[f] = None if isinstance(v, float) and v != v else v
            records.append(rec)
        out.append(json.dumps({"dataframe_records": records}).encode())
    return out


def bench_server(
    name: str,
    argv: list[str],
    env: dict[str, str],
    port: int,
    path: str,
    bodies: Sequence[bytes],
    seconds: float,
    out_dir: Path,
    ready_path: str = "/readyz",
) -> tuple[float, list[LoadResult]]:
    """Start one server, time its cold start, run every concurrency, stop it."""
    proc = start(argv, env, out_dir / f"{name}.log")
    try:
        cold = wait_ready(f"http://127.0.0.1:{port}{ready_path}", proc)
        results = [run_load(name, port, path, bodies, c, seconds) for c in CONCURRENCY]
    finally:
        stop(proc)
    return cold, results


def run_benchmark(workdir: Path, seconds: float, repeats: int, out_dir: Path) -> dict[str, Any]:
    """Run every server ``repeats`` times; return per-run results and medians."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = bodies_for(workdir)
    bodies = [json.dumps(b).encode() for b in raw]
    bin_dir = str(Path(PY).parent)  # `mlflow models serve` runs `uvicorn` from PATH
    # The servers' own cost per answer: the recommendation cache would answer the repeated
    # bodies from memory (bench_reco_cache measures the cache on a realistic replay).
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FITML_RECO_CACHE": "off",
    }
    app_file = out_dir / "fastapi_floor.py"
    app_file.write_text(FASTAPI_APP)
    ml_bodies = mlflow_bodies(workdir, raw)
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        for name in ("bentoml", "fastapi", "mlflow"):
            port = free_port()
            if name == "bentoml":
                argv = [str(Path(PY).parent / "fitml"), "serve", "--workdir", str(workdir)]
                argv += ["--port", str(port)]
                cold, res = bench_server(
                    name, argv, env, port, "/recommend", bodies, seconds, out_dir
                )
            elif name == "fastapi":
                argv = [PY, str(app_file), str(workdir), str(port)]
                cold, res = bench_server(
                    name, argv, env, port, "/recommend", bodies, seconds, out_dir
                )
            else:
                argv = [str(Path(PY).parent / "mlflow"), "models", "serve", "-m"]
                argv += ["models:/fitml-fit-model@champion", "--env-manager", "local"]
                argv += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
                cold, res = bench_server(
                    name,
                    argv,
                    {**env, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking},
                    port,
                    "/invocations",
                    ml_bodies,
                    seconds,
                    out_dir,
                    ready_path="/ping",
                )
            runs.append(
                {"repeat": r, "server": name, "cold_start_s": round(cold, 2)}
                | {"results": [asdict(x) for x in res]}
            )
    return {"runs": runs, "summary": summarise(runs)}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats per (server, concurrency), ratios to the floors, target checks."""
    summary: dict[str, Any] = {}
    for server in ("bentoml", "fastapi", "mlflow"):
        mine = [r for r in runs if r["server"] == server]
        if not mine:
            continue
        entry: dict[str, Any] = {"cold_start_s": statistics.median(r["cold_start_s"] for r in mine)}
        for c in CONCURRENCY:
            rows = [x for r in mine for x in r["results"] if x["concurrency"] == c]
            entry[f"c{c}"] = {
                k: statistics.median(x[k] for x in rows)
                for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")
            } | {
                "non_2xx": sum(x["non_2xx"] for x in rows),
                "errors": sum(x["errors"] for x in rows),
            }
        summary[server] = entry
    bento, fast = summary.get("bentoml"), summary.get("fastapi")
    if bento and fast:
        c8 = bento["c8"]
        checks = {
            "p99_ms_c8": (c8["p99_ms"], c8["p99_ms"] <= TARGETS["p99_ms_c8"]),
            "rps_c8": (c8["rps"], c8["rps"] >= TARGETS["rps_c8"]),
            "rps_ratio_fastapi_c8": (
                round(c8["rps"] / fast["c8"]["rps"], 3),
                c8["rps"] / fast["c8"]["rps"] >= TARGETS["rps_ratio_fastapi_c8"],
            ),
            "cold_start_s": (
                bento["cold_start_s"],
                bento["cold_start_s"] <= TARGETS["cold_start_s"],
            ),
            "zero_non_2xx": (
                c8["non_2xx"],
                all(bento[f"c{c}"]["non_2xx"] == 0 for c in CONCURRENCY),
            ),
        }
        summary["targets"] = {k: {"value": v, "met": ok} for k, (v, ok) in checks.items()}
    return summary


def table(summary: dict[str, Any]) -> str:
    """A plain-text table of the medians with ratios to the floors."""
    lines = [
        f"{'server':<9}{'c':>3}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'non2xx':>8}{'rps/fastapi':>12}{'rps/mlflow':>11}{'p99/fastapi':>12}"
    ]
    for server in ("bentoml", "fastapi", "mlflow"):
        if server not in summary:
            continue
        for c in CONCURRENCY:
            m = summary[server][f"c{c}"]
            fast = summary.get("fastapi", {}).get(f"c{c}")
            mlf = summary.get("mlflow", {}).get(f"c{c}")
            lines.append(
                f"{server:<9}{c:>3}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}{m['p90_ms']:>9.2f}"
                f"{m['p99_ms']:>9.2f}{m['max_ms']:>9.1f}{m['non_2xx']:>8}"
                f"{(m['rps'] / fast['rps']) if fast else float('nan'):>12.2f}"
                f"{(m['rps'] / mlf['rps']) if mlf else float('nan'):>11.2f}"
                f"{(m['p99_ms'] / fast['p99_ms']) if fast else float('nan'):>12.2f}"
            )
    for server in ("bentoml", "fastapi", "mlflow"):
        if server in summary:
            lines.append(f"cold start to ready, {server}: {summary[server]['cold_start_s']:.1f} s")
    for name, check in summary.get("targets", {}).items():
        lines.append(f"target {name}: {check['value']} -> {'met' if check['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run the benchmark, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("FITML_BENCH_WORKDIR", "var"))
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    out_dir = args.out or Path(os.environ.get("FITML_BENCH_DIR", workdir / "bench"))
    result = run_benchmark(workdir, args.seconds, args.repeats, out_dir)
    result["command"] = " ".join(
        [Path(PY).name, "-m", "tests.benchmarks.bench_serving", *(argv or sys.argv[1:])]
    )
    (out_dir / "bench_serving.json").write_text(json.dumps(result, indent=1))
    print(table(result["summary"]))
    print(f"written: {out_dir / 'bench_serving.json'}")
    return result


@pytest.mark.benchmark
def test_bench_serving() -> None:
    """``make bench``: needs a trained work dir (FITML_BENCH_WORKDIR, default ``var``)."""
    workdir = Path(os.environ.get("FITML_BENCH_WORKDIR", "var")).resolve()
    if not (workdir / "mlflow.db").is_file():
        pytest.skip(f"no trained work dir at {workdir}; run `make demo` or set FITML_BENCH_WORKDIR")
    seconds = float(os.environ.get("FITML_BENCH_SECONDS", "5"))
    repeats = int(os.environ.get("FITML_BENCH_REPEATS", "3"))
    result = main(["--workdir", str(workdir), "--seconds", str(seconds), "--repeats", str(repeats)])
    for server in result["summary"]:
        if server in ("bentoml", "fastapi", "mlflow"):
            for c in CONCURRENCY:
                assert result["summary"][server][f"c{c}"]["non_2xx"] == 0, (
                    "a run with errors is invalid"
                )


if __name__ == "__main__":
    main()
