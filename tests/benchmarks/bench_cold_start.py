"""Cold start to ready of both services: seconds from process start until ``/readyz`` is 200.

Starts the real services the way an operator does (``python -m ml_pipeline.cli serve`` and
``... session-service``), one process at a time, times each until ``/readyz`` answers 200
(polled every 50 ms), stops it, and reports the median of ``--repeats`` starts per service.

``--tree`` may be given several times to compare source trees in one run (e.g. a worktree of
the previous commit: ``git worktree add /tmp/fitml-base main``). Each tree runs with its own
``PYTHONPATH`` and working directory on the same work directory and the same Python, and the
trees take turns within each repeat, so a change of machine load hits all of them alike.
Before the timed starts each (tree, service) is started once untimed: the first start of
the prediction service imports the registry's champion into the work directory's BentoML
store, and every start after it finds the files in the page cache, as a restart would.

Run: ``python -m tests.benchmarks.bench_cold_start --workdir var --repeats 3``
(``--tree /tmp/fitml-base --tree .`` for before/after). Results: ``bench_cold_start.json``
under ``--out`` (default ``<workdir>/bench``) and a table. Targets (issue 17): prediction
service <= 5 s, session service <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .bench_serving import free_port, start, stop, wait_ready

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TARGETS = {"prediction": 5.0, "session": 3.0}
SERVICES = ("prediction", "session")


def tree_label(tree: Path) -> str:
    """``<short commit>`` of a source tree, ``+`` when it has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(tree)
    return commit + ("+" if dirty else "")


def command(service: str, workdir: Path, port: int) -> list[str]:
    """The command line that serves ``service`` on ``port``."""
    cli = [PY, "-m", "ml_pipeline.cli"]
    if service == "prediction":
        return [*cli, "serve", "--workdir", str(workdir), "--port", str(port)]
    # No prediction service behind it: readiness does not depend on one (its circuit opens).
    closed = free_port()
    return [
        *cli,
        "session-service",
        "--workdir",
        str(workdir),
        "--port",
        str(port),
        "--prediction-url",
        f"http://127.0.0.1:{closed}",
    ]


def time_start(tree: Path, service: str, workdir: Path, log: Path) -> float:
    """Start ``service`` from ``tree``, return seconds until ``/readyz`` is 200, stop it."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "FITML_API_KEYS": os.environ.get("FITML_API_KEYS", "bench-cold-start-key"),
    }
    proc = start(command(service, workdir, port), env, log, cwd=tree)
    try:
        return wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    finally:
        stop(proc)


WORKER_START = """
import os, sys
os.environ.update(FITML_WORKDIR=sys.argv[1], FITML_PROFILE="local", FITML_MODEL_SOURCE="store",
                  BENTOML_HOME=os.path.join(sys.argv[1], "bentoml"))
import serving.service as s
inner = s.FitmlService.inner
service = inner.__new__(inner)
inner.__init__(service)
service._close()
"""


def worker_cpu(tree: Path, workdir: Path) -> float:
    """CPU seconds (user + system) of one worker's start from ``tree``: import and load.

    The service class built in a fresh interpreter as a worker builds it, from the models the
    store already holds (run a timed start first). CPU time moves far less with the machine's
    load than wall time does.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [PY, "-c", WORKER_START, str(workdir)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(
    workdir: Path, trees: Sequence[Path], services: Sequence[str], repeats: int, out_dir: Path
) -> dict[str, Any]:
    """Time ``repeats`` starts of each service from each tree; per-run seconds and medians."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [tree_label(tree) for tree in trees]
    for i, tree in enumerate(trees):  # untimed: store import, page cache
        for service in services:
            time_start(tree, service, workdir, out_dir / f"cold_{service}_{i}_warm.log")
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        for i, tree in enumerate(trees):
            for service in services:
                log = out_dir / f"cold_{service}_{i}_{r}.log"
                seconds = time_start(tree, service, workdir, log)
                runs.append(
                    {
                        "repeat": r,
                        "tree": str(tree),
                        "label": labels[i],
                        "service": service,
                        "ready_s": round(seconds, 2),
                    }
                )
                print(f"{labels[i]:<10} {service:<11} start {r + 1}: {seconds:.2f} s", flush=True)
    summary = {}
    for i, tree in enumerate(trees):
        for service in services:
            mine = [
                x["ready_s"] for x in runs if x["tree"] == str(tree) and x["service"] == service
            ]
            summary[f"{labels[i]} {service}"] = {
                "tree": str(tree),
                "service": service,
                "runs_s": mine,
                "median_s": statistics.median(mine),
                "target_s": TARGETS[service],
                "met": statistics.median(mine) <= TARGETS[service],
            }
    return {"runs": runs, "summary": summary, "load_avg": os.getloadavg()}


def table(summary: dict[str, Any]) -> str:
    """The medians, each start's seconds and the target, one line per (tree, service)."""
    lines = [f"{'tree':<10} {'service':<11} {'median s':>9}  {'runs s':<22} target"]
    for key, entry in summary.items():
        label = key.rsplit(" ", 1)[0]
        runs = ", ".join(f"{x:.2f}" for x in entry["runs_s"])
        verdict = "met" if entry["met"] else "NOT met"
        lines.append(
            f"{label:<10} {entry['service']:<11} {entry['median_s']:>9.2f}  {runs:<22} "
            f"<= {entry['target_s']:.0f} s {verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("FITML_BENCH_WORKDIR", "var"))
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="A source tree to start the services from (repeatable; default: this one).",
    )
    parser.add_argument("--service", choices=SERVICES, action="append")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--worker-cpu",
        action="store_true",
        help="Instead: CPU seconds of a prediction worker's start, per tree (median).",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    trees = [t.resolve() for t in (args.tree or [REPO])]
    if args.worker_cpu:
        cpu: dict[str, Any] = {}
        for _ in range(args.repeats):
            for tree in trees:
                cpu.setdefault(tree_label(tree), []).append(round(worker_cpu(tree, workdir), 2))
        for label, runs in cpu.items():
            print(f"{label:<10} worker start CPU s: median {statistics.median(runs):.2f} {runs}")
        print(f"load average {os.getloadavg()}")
        return {"worker_cpu_s": cpu}
    out_dir = args.out or Path(os.environ.get("FITML_BENCH_DIR", workdir / "bench"))
    load_before = os.getloadavg()
    result = run(workdir, trees, args.service or SERVICES, args.repeats, out_dir)
    result["load_avg_before"] = load_before
    result["command"] = " ".join(
        [Path(PY).name, "-m", "tests.benchmarks.bench_cold_start", *(argv or sys.argv[1:])]
    )
    (out_dir / "bench_cold_start.json").write_text(json.dumps(result, indent=1))
    print(table(result["summary"]))
    print(f"load average before {load_before}, after {result['load_avg']}")
    print(f"written: {out_dir / 'bench_cold_start.json'}")
    return result


@pytest.mark.benchmark
def test_bench_cold_start() -> None:
    """``make bench``: needs a trained work dir (FITML_BENCH_WORKDIR, default ``var``)."""
    workdir = Path(os.environ.get("FITML_BENCH_WORKDIR", "var")).resolve()
    if not (workdir / "mlflow.db").is_file():
        pytest.skip(f"no trained work dir at {workdir}; run `make demo` or set FITML_BENCH_WORKDIR")
    repeats = int(os.environ.get("FITML_BENCH_REPEATS", "3"))
    result = main(["--workdir", str(workdir), "--repeats", str(repeats)])
    assert all(len(entry["runs_s"]) == repeats for entry in result["summary"].values())


if __name__ == "__main__":
    main()
