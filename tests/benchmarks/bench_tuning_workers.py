"""Tuning workers: does a second ``fitml tune-worker`` on the same study finish sooner?

Run (part of ``make bench-scale``)::

    python -m tests.benchmarks.bench_tuning_workers --events 250000 --trials 4 --repeats 3

On a cached synthetic work directory of :mod:`tests.benchmarks.bench_scale` (made if
missing), the fit model is tuned through :func:`training.distributed.tune_in_workers` with a
fixed number of trials on a study in PostgreSQL, by 1 and then by 2 worker processes,
alternating, ``--repeats`` times. Both run the same fixed parameter points
(:func:`tests.benchmarks.bench_scale.trial_points`), so the comparison is of the workers, not
of the points a sampler drew. Every run is checked: exactly ``--trials`` finished trials, each
point once, none left running. Writes the wall times, their medians and the ratio
(2 workers / 1 worker) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .bench_scale import _create_database, _drop_database, prepare, trial_points


def run_once(work: Path, optuna_url: str, workers: int, trials: int, tag: str) -> dict[str, Any]:
    """Tune the fit model with ``workers`` processes; wall seconds and the study's trials."""
    import pandas as pd

    from evaluation.evaluate import time_split
    from training import distributed
    from training.train import TRAINING_SET_FILE

    frame = pd.read_parquet(work / TRAINING_SET_FILE)
    train, valid, _ = time_split(frame).windows(frame)
    points = trial_points("fit", trials)
    started = time.perf_counter()
    result = distributed.tune_in_workers(
        "fit",
        train,
        valid,
        storage_url=optuna_url,
        workers=workers,
        n_trials=trials,
        seed=0,
        data_dir=work / "tuning",
        max_rounds=100,
        study_name=f"bench-workers-{tag}",
        initial_params=points,
    )
    wall = time.perf_counter() - started
    states = [t.state.name for t in result.study.get_trials(deepcopy=False)]
    done = [t for t in result.study.get_trials(deepcopy=False) if t.state.is_finished()]
    seen = sorted((t.params["learning_rate"], t.params["num_leaves"]) for t in done)
    expected = sorted((p["learning_rate"], p["num_leaves"]) for p in points)
    if len(done) != trials or seen != expected or "RUNNING" in states:
        raise RuntimeError(f"{workers} workers: trials {states}, points {seen} != {expected}")
    return {"workers": workers, "wall_s": round(wall, 2), "trials": len(done)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=250_000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default="var/bench/scale-data")
    parser.add_argument("--out", default="var/bench/tuning_workers.json")
    args = parser.parse_args(argv)
    work = prepare(Path(args.cache), args.events)
    if not (work / "training_set.parquet").is_file():
        from .bench_scale import phase_features

        phase_features(work)
    dsn = os.environ.get("FITML_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    db_name, optuna_url = _create_database(dsn)
    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "events": args.events,
        "trials": args.trials,
        "load_avg_start": os.getloadavg(),
        "runs": runs,
    }
    try:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                run = run_once(work, optuna_url, workers, args.trials, f"{repeat}-{workers}")
                run["load_avg"] = os.getloadavg()
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        _drop_database(dsn, db_name)
    medians = {w: statistics.median(r["wall_s"] for r in runs if r["workers"] == w) for w in (1, 2)}
    report["median_wall_s"] = medians
    report["ratio_2_over_1"] = round(medians[2] / medians[1], 3)
    report["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("median_wall_s", "ratio_2_over_1")}))


if __name__ == "__main__":
    main()
