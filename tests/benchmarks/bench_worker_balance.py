"""How the prediction service's connections and requests spread over its worker processes.

BentoML 1.4 runs the workers under circus, all accepting on one listening socket the arbiter
opened and passed to each (``--fd``); uvicorn runs each on uvloop, whose accept loop takes
every pending connection when it wakes. Keep-alive clients stay on the worker that accepted
them, so who won the accept races decides each worker's share for the connection's life.

This starts the real service (``fitml serve``), drives ``POST /recommend`` with the closed-loop
client of :mod:`tests.benchmarks.bench_serving` (fresh keep-alive connections per run), and
reports per worker: established connections (sampled mid-run with ``ss``) and requests
answered (BentoML's per-process Prometheus files), with req/s and p99. ``--env NAME=VALUE``
starts a variant with extra environment, so settings compare in one run.

Run: ``python -m tests.benchmarks.bench_worker_balance --workdir var --clients 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from .bench_serving import bodies_for, free_port, start, stop, wait_ready
from .load import run_load

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
WORKER_MODULE = "_bentoml_impl.worker.service"


def workers_of(arbiter: int) -> list[int]:
    """The pids of the BentoML worker processes the arbiter ``arbiter`` started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == arbiter and WORKER_MODULE in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def connections_per_worker(port: int, pids: Sequence[int]) -> dict[int, int]:
    """Established connections to ``port`` held by each pid (``ss -tnp``)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts = dict.fromkeys(pids, 0)
    for pid in pids:
        counts[pid] = out.count(f"pid={pid},")
    return counts


def requests_per_worker(prometheus_dir: Path, pids: Sequence[int]) -> dict[int, float]:
    """``/recommend`` requests each worker answered (its own multiprocess counter file)."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = dict.fromkeys(pids, 0.0)
    for pid in pids:
        for path in prometheus_dir.glob(f"counter_{pid}.db"):
            for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
                _metric, name, labels, _help = json.loads(key)
                if name == "bentoml_service_request_total" and '"/recommend"' in json.dumps(labels):
                    counts[pid] += value
    return counts


def measure(
    workdir: Path,
    bodies: Sequence[bytes],
    clients: int,
    seconds: float,
    env_extra: dict[str, str],
    log: Path,
) -> dict[str, Any]:
    """One server start: load at ``clients``; per-worker connections and requests."""
    port = free_port()
    argv = [PY, "-m", "ml_pipeline.cli", "serve", "--workdir", str(workdir), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FITML_RECO_CACHE": "off", **env_extra}
    proc = start(argv, env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        pids = workers_of(proc.pid)
        prom = workdir / "bentoml" / "prometheus_multiproc_dir"
        before = requests_per_worker(prom, pids)
        samples: list[dict[int, int]] = []

        def sample() -> None:
            time.sleep(1.0 + seconds / 2)  # after run_load's 1 s warm-up, mid-run
            samples.append(connections_per_worker(port, pids))

        sampler = threading.Thread(target=sample)
        sampler.start()
        result = run_load("bentoml", port, "/recommend", bodies, clients, seconds)
        sampler.join()
        after = requests_per_worker(prom, pids)
    finally:
        stop(proc)
    served = {pid: after[pid] - before[pid] for pid in pids}
    total = sum(served.values()) or 1.0
    return {
        "env": env_extra,
        "workers": len(pids),
        "connections": sorted(samples[0].values(), reverse=True) if samples else [],
        "requests": sorted(served.values(), reverse=True),
        "busiest_share": round(max(served.values()) / total, 3) if served else None,
        "load": asdict(result),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: each variant ``--repeats`` times (alternating), medians, JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("FITML_BENCH_WORKDIR", "var"))
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="A variant: NAME=VALUE[,NAME=VALUE] added to the service's environment "
        "(repeatable; the default variant, nothing added, always runs first).",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    out_dir = args.out or Path(os.environ.get("FITML_BENCH_DIR", workdir / "bench"))
    out_dir.mkdir(parents=True, exist_ok=True)
    bodies = [json.dumps(b).encode() for b in bodies_for(workdir)]
    variants = [{}] + [dict(kv.split("=", 1) for kv in v.split(",")) for v in args.env]
    runs = []
    for r in range(args.repeats):
        for i, extra in enumerate(variants):
            run = measure(
                workdir, bodies, args.clients, args.seconds, extra, out_dir / f"balance_{i}.log"
            )
            run["repeat"] = r
            runs.append(run)
            load = run["load"]
            print(
                f"{json.dumps(extra) or '{}':<40} conns {run['connections']} requests "
                f"{[int(x) for x in run['requests']]} busiest {run['busiest_share']} "
                f"{load['rps']} req/s p99 {load['p99_ms']} ms non2xx {load['non_2xx']}",
                flush=True,
            )
    summary = []
    for extra in variants:
        mine = [r for r in runs if r["env"] == extra]
        summary.append(
            {
                "env": extra,
                "busiest_share_median": statistics.median(r["busiest_share"] for r in mine),
                "rps_median": statistics.median(r["load"]["rps"] for r in mine),
                "p99_ms_median": statistics.median(r["load"]["p99_ms"] for r in mine),
                "non_2xx": sum(r["load"]["non_2xx"] for r in mine),
            }
        )
    for s in summary:
        print(
            f"median {json.dumps(s['env']):<40} busiest worker {s['busiest_share_median']:.2f} "
            f"of requests, {s['rps_median']:.0f} req/s, p99 {s['p99_ms_median']:.1f} ms, "
            f"non-2xx {s['non_2xx']}"
        )
    result = {"runs": runs, "summary": summary, "load_avg": os.getloadavg()}
    (out_dir / "bench_worker_balance.json").write_text(json.dumps(result, indent=1))
    return result


@pytest.mark.benchmark
def test_bench_worker_balance() -> None:
    """``make bench``: needs a trained work dir (FITML_BENCH_WORKDIR, default ``var``)."""
    workdir = Path(os.environ.get("FITML_BENCH_WORKDIR", "var")).resolve()
    if not (workdir / "mlflow.db").is_file():
        pytest.skip(f"no trained work dir at {workdir}; run `make demo` or set FITML_BENCH_WORKDIR")
    result = main(["--workdir", str(workdir), "--repeats", "1"])
    assert all(s["non_2xx"] == 0 for s in result["summary"])


if __name__ == "__main__":
    main()
