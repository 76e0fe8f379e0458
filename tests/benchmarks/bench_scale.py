"""Cost curves: how training-set build, tuning and training grow with the event count.

Run by ``make bench-scale`` (long: start it in the background)::

    nice python -m tests.benchmarks.bench_scale --out var/bench/scale.json \\
        --cache var/bench/scale-data --sizes 250000,1000000,4000000,16000000

For each size, synthetic data is generated and ingested once into ``--cache`` (reused by
later runs), then three phases run, each in a fresh process so that one phase's memory does
not count in the next:

- ``features``: the aggregate job + Feast registry (``features.store.apply``) and the
  point-in-time training set written to parquet in chunks of 1M events
  (``features.store.write_training_set``);
- ``local``: Optuna tuning of both models in one process (fixed trials), then both final
  fits in one process;
- ``dask``: the same tuning with two ``fitml tune-worker`` processes on one study in
  PostgreSQL, then both final fits with ``lightgbm.dask`` on a two-worker LocalCluster
  reading the training set's parquet in partitions.

Each phase records its wall time and its peak memory: the resident set summed over the phase
process and all its children (tuning workers, Dask scheduler and workers), sampled every
0.2 s with psutil. The test window's fit-model mean AUC is recorded for each engine. The JSON
is rewritten after every phase, so a run stopped part-way keeps what it measured;
``--plot-only`` redraws the PNG and the summary (fitted exponents, where Dask pays off) from
it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (250_000, 1_000_000, 4_000_000, 16_000_000)
PHASES = ("features", "local", "dask")
TRIAL_POINTS: tuple[dict[str, float], ...] = (
    {"learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 50, "feature_fraction": 0.8},
    {"learning_rate": 0.05, "num_leaves": 63, "min_data_in_leaf": 100, "feature_fraction": 0.9},
    {"learning_rate": 0.2, "num_leaves": 15, "min_data_in_leaf": 20, "feature_fraction": 0.7},
    {"learning_rate": 0.08, "num_leaves": 127, "min_data_in_leaf": 200, "feature_fraction": 1.0},
)
"""The parameters of the tuning trials, the same for both engines: a cost comparison of the
engines, not of the points each one's sampler happened to draw."""


def trial_points(kind: str, trials: int) -> list[dict[str, float]]:
    """The fixed points of the first ``trials`` trials of model ``kind``."""
    fixed = {"bagging_fraction": 0.8, "lambda_l1": 1e-3, "lambda_l2": 1e-3}
    points = [{**TRIAL_POINTS[i % len(TRIAL_POINTS)], **fixed} for i in range(trials)]
    if kind == "fit":
        for point in points:
            point["class_weight_power"] = 0.5
    return points


def shape(events: int) -> tuple[int, int]:
    """Users and products for ``events`` try-ons (the ratio of the 1M feature benchmark)."""
    return max(4000, events // 30), max(300, events // 500)


def prepare(cache: Path, events: int) -> Path:
    """Generate and ingest ``events`` synthetic try-ons once; return the work directory."""
    from ml_pipeline.ingest import ingest_synthetic
    from ml_pipeline.synth import generate

    users, products = shape(events)
    raw = cache / f"raw-{events}"
    work = cache / f"work-{events}"
    if not (raw / "manifest.json").is_file():
        generate(raw, users=users, products=products, events=events, seed=0)
    if not (work / "offline" / "events.parquet").is_file():
        ingest_synthetic(raw, work)
    return work


class PeakMemory:
    """Samples the summed resident set of this process tree (or of ``pid``'s) in a thread."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.2) -> None:
        self.pid = pid or os.getpid()
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------
# One phase, in its own process


def _settings(work: Path, optuna_url: str | None = None) -> Any:
    from ml_pipeline.settings import load_settings

    env = {**os.environ, "FITML_TRIALS": "1"}
    return load_settings("local", work, env=env)


def phase_features(work: Path) -> dict[str, Any]:
    """Aggregate job + registry, then the point-in-time training set to parquet."""
    from features import store as fs
    from training.train import TRAINING_SET_FILE

    settings = _settings(work)
    started = time.perf_counter()
    fs.apply(settings)
    applied = time.perf_counter()
    rows = fs.write_training_set(settings, settings.workdir / TRAINING_SET_FILE)
    return {
        "rows": rows,
        "apply_s": round(applied - started, 2),
        "training_set_s": round(time.perf_counter() - applied, 2),
    }


def phase_train(
    work: Path, engine: str, trials: int, max_rounds: int, optuna_url: str | None
) -> dict[str, Any]:
    """Tune both models (fixed trials), fit both, score the fit model on the test window."""
    import pandas as pd

    from evaluation.evaluate import fit_metrics, time_split
    from training import distributed
    from training.models import FitModel, SizeModel
    from training.train import TRAINING_SET_FILE
    from training.tuning import tune_lightgbm

    path = work / TRAINING_SET_FILE
    started = time.perf_counter()
    frame = pd.read_parquet(path)
    split = time_split(frame)
    train, valid, _ = split.windows(frame)
    loaded = time.perf_counter()
    tuned: dict[str, Any] = {}
    for kind, cls in (("fit", FitModel), ("size", SizeModel)):
        if engine == "dask":
            assert optuna_url is not None
            result = distributed.tune_in_workers(
                kind,
                train,
                valid,
                storage_url=optuna_url,
                workers=2,
                n_trials=trials,
                seed=0,
                data_dir=work / "tuning",
                max_rounds=max_rounds,
                initial_params=trial_points(kind, trials),
            )
        else:
            X_tr, y_tr, X_va, y_va, objective, categorical = distributed.tuning_inputs(
                kind, train, valid
            )
            result = tune_lightgbm(
                X_tr,
                y_tr,
                X_va,
                y_va,
                n_trials=trials,
                seed=0,
                categorical=categorical,
                base_params={"num_threads": 1, "num_boost_round": max_rounds},
                log_to_mlflow=False,
                initial_params=trial_points(kind, trials),
                **objective,
            )
        tuned[kind] = cls(
            params=result.best_params,
            num_boost_round=max(1, result.best_iteration),
            sample_weight_power=result.class_weight_power,
        )
    del train, valid
    test = frame[frame["event_timestamp"] >= split.test_start]
    if engine == "dask":
        del frame
    tuned_at = time.perf_counter()
    if engine == "dask":
        distributed.fit_models_on_dask([tuned["fit"], tuned["size"]], path, split)
    else:
        fit_rows = frame[frame["event_timestamp"] < split.test_start]
        del frame
        for model in tuned.values():
            model.fit(fit_rows)
        del fit_rows
    fitted = time.perf_counter()
    auc = fit_metrics(FitModel.labels(test["outcome"]), tuned["fit"].predict_proba(test))
    return {
        "load_s": round(loaded - started, 2),
        "tune_s": round(tuned_at - loaded, 2),
        "fit_s": round(fitted - tuned_at, 2),
        "fit_mean_auc": round(float(auc["mean_auc"]), 5),
        "trees_fit": tuned["fit"].booster_.num_trees(),
    }


# --------------------------------------------------------------------------------------------
# The driver


def run_phase(
    phase: str, work: Path, args: argparse.Namespace, optuna_url: str | None
) -> dict[str, Any]:
    """Run one phase in a child process; its figures plus wall time and peak memory."""
    out = work / f"phase-{phase}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tests.benchmarks.bench_scale", "--phase", phase]
    argv += ["--work", str(work), "--phase-out", str(out)]
    argv += ["--trials", str(args.trials), "--max-rounds", str(args.max_rounds)]
    if optuna_url:
        argv += ["--optuna-url", optuna_url]
    log = work / f"phase-{phase}.log"
    started = time.perf_counter()
    with log.open("wb") as handle:
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
        with PeakMemory(proc.pid) as memory:
            code = proc.wait()
    wall = time.perf_counter() - started
    figures: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
        "exit_code": code,
    }
    if code == 0 and out.is_file():
        figures.update(json.loads(out.read_text()))
    else:
        figures["error"] = log.read_text()[-1500:]
    return figures


def _create_database(dsn: str) -> tuple[str, str]:
    import psycopg

    name = f"fitml_bench_optuna_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return name, f"{base}/{name}"


def _drop_database(dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _available_gb() -> float:
    import psutil

    return float(psutil.virtual_memory().available) / 2**30


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size and phase in order, rewriting ``args.out`` after each phase."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    if args.resume and out.is_file():  # keep every phase a previous run finished
        done = json.loads(out.read_text())["sizes"]
    phases = args.phases.split(",")
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"--phases {args.phases}: {unknown} unknown; use some of {PHASES}")
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_start": os.getloadavg(),
        },
        "config": {"trials": args.trials, "max_rounds": args.max_rounds, "phases": args.phases},
        "sizes": {},
    }
    dsn = os.environ.get("FITML_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    db_name, optuna_url = _create_database(dsn)
    try:
        for events in [int(s) for s in args.sizes.split(",")]:
            entry: dict[str, Any] = {"events": events, "users_products": shape(events)}
            entry.update(done.pop(str(events), {}))
            entry.pop("stopped", None)
            report["sizes"][str(events)] = entry
            todo = [p for p in phases if (entry.get(p) or {}).get("exit_code") != 0]
            if not todo:
                continue
            need = events / 1e6 * args.gb_per_million
            if _available_gb() < need:
                entry["stopped"] = (
                    f"{_available_gb():.1f} GiB available, about {need:.0f} GiB needed"
                )
                _write(out, report)
                break
            started = time.perf_counter()
            work = prepare(Path(args.cache), events)
            entry.setdefault("prepare_s", round(time.perf_counter() - started, 1))
            for phase in todo:
                entry[phase] = run_phase(phase, work, args, optuna_url)
                entry[phase]["load_avg"] = os.getloadavg()
                _write(out, report)
                print(f"{events:>10,} {phase:8} {json.dumps(entry[phase])}", flush=True)
    finally:
        _drop_database(dsn, db_name)
    report["sizes"].update(done)  # sizes of a resumed run that this run did not ask for
    report["machine"]["load_avg_end"] = os.getloadavg()
    report["summary"] = summarise(report)
    _write(out, report)
    return report


def _write(out: Path, report: dict[str, Any]) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(out)


# --------------------------------------------------------------------------------------------
# Curves


def _series(report: dict[str, Any], phase: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for entry in sorted(report["sizes"].values(), key=lambda e: e["events"]):
        figures = entry.get(phase) or {}
        if figures.get("exit_code") == 0 and key in figures:
            xs.append(entry["events"])
            ys.append(figures[key])
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def exponent(x: np.ndarray, y: np.ndarray) -> float | None:
    """The slope of log(y) against log(x): cost ~ events ** exponent (None below 2 points)."""
    keep = (x > 0) & (y > 0)
    if keep.sum() < 2:
        return None
    slope, _ = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)
    return round(float(slope), 3)


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Fitted exponents per phase and cost, and the sizes where Dask is faster than local."""
    summary: dict[str, Any] = {"exponents": {}, "dask_over_local": {}}
    for phase in PHASES:
        for key in ("wall_s", "peak_rss_mb", "tune_s", "fit_s"):
            x, y = _series(report, phase, key)
            if len(x):
                summary["exponents"][f"{phase}.{key}"] = exponent(x, y)
    for key in ("wall_s", "tune_s", "fit_s", "peak_rss_mb"):
        xl, yl = _series(report, "local", key)
        xd, yd = _series(report, "dask", key)
        ratios = {
            str(int(n)): round(float(yd[list(xd).index(n)] / v), 3)
            for n, v in zip(xl, yl, strict=True)
            if n in xd and v > 0
        }
        summary["dask_over_local"][key] = ratios
    wall = summary["dask_over_local"].get("wall_s", {})
    faster = [int(n) for n, r in wall.items() if r < 1]
    summary["dask_faster_from_events"] = min(faster) if faster else None
    summary["dask_crossover_events_extrapolated"] = crossover(
        *_series(report, "local", "wall_s"), *_series(report, "dask", "wall_s")
    )
    return summary


def crossover(xl: np.ndarray, yl: np.ndarray, xd: np.ndarray, yd: np.ndarray) -> int | None:
    """Where the two fitted power laws of wall time cross (None: they do not, or < 2 points).

    An extrapolation from the measured sizes: the events at which the Dask engine's fitted
    cost would fall below the local engine's.
    """
    if len(xl) < 2 or len(xd) < 2:
        return None
    kl, bl = np.polyfit(np.log(xl), np.log(yl), 1)
    kd, bd = np.polyfit(np.log(xd), np.log(yd), 1)
    if kd >= kl:
        return None
    return round(float(np.exp((bd - bl) / (kl - kd))))


def plot(report: dict[str, Any], png: Path) -> None:
    """Time and memory against events, log-log, one line per phase (and cost part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    lines = [
        ("features", "wall_s", "training-set build"),
        ("local", "tune_s", "tuning, 1 process"),
        ("dask", "tune_s", "tuning, 2 workers"),
        ("local", "fit_s", "final fits, local"),
        ("dask", "fit_s", "final fits, lightgbm.dask (2)"),
        ("local", "wall_s", "local total"),
        ("dask", "wall_s", "dask total"),
    ]
    for phase, key, label in lines:
        x, y = _series(report, phase, key)
        if len(x):
            k = exponent(x, y)
            ax_t.plot(x, y, marker="o", label=f"{label} (~n^{k})" if k else label)
    for phase, label in (
        ("features", "training-set build"),
        ("local", "local"),
        ("dask", "dask (2 workers)"),
    ):
        x, y = _series(report, phase, "peak_rss_mb")
        if len(x):
            ax_m.plot(x, y / 1024, marker="o", label=label)
    for ax, ylabel in ((ax_t, "wall time (s)"), (ax_m, "peak memory, summed RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("try-on events")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    cfg = report.get("config", {})
    fig.suptitle(
        f"fitml cost curves ({cfg.get('trials')} trials per model, "
        f"<= {cfg.get('max_rounds')} rounds; {report['machine']['cpus']} cores)"
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Command line: the whole run, one phase (internal), or redraw from the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="var/bench/scale.json")
    parser.add_argument("--png", default=None, help="Default: --out with .png.")
    parser.add_argument("--cache", default="var/bench/scale-data")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--trials", type=int, default=2, help="Optuna trials per model.")
    parser.add_argument("--max-rounds", type=int, default=100, help="Boosting round cap.")
    parser.add_argument(
        "--gb-per-million",
        type=float,
        default=1.0,
        help="Stop before a size needing more memory than is available.",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="Which phases to run at each size (e.g. features alone for the largest sizes).",
    )
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--resume", action="store_true", help="Keep the phases --out already holds finished."
    )
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", help=argparse.SUPPRESS)
    parser.add_argument("--optuna-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        work = Path(args.work)
        if args.phase == "features":
            figures = phase_features(work)
        else:
            figures = phase_train(work, args.phase, args.trials, args.max_rounds, args.optuna_url)
        Path(args.phase_out).write_text(json.dumps(figures))
        return
    out = Path(args.out)
    png = Path(args.png) if args.png else out.with_suffix(".png")
    if args.plot_only:
        report = json.loads(out.read_text())
        report["summary"] = summarise(report)
        _write(out, report)
    else:
        report = run(args)
    plot(report, png)
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
