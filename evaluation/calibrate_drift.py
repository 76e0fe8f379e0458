"""Calibrate ``fitml drift``: false-alarm rate on same-distribution windows, detection per scenario.

For each seed the generator makes a ``baseline`` world; its first :data:`REFERENCE_DAYS` days
are the reference window (what a champion would have been trained on). Current windows are
the last ``current_days`` days of

* the same baseline world: nothing changed, so any drift flagged is a **false alarm** (the two
  windows come from different time periods, as in production);
* the ``population_shift``, ``runs_small`` and ``unit_bug`` worlds of the same seed: each
  changed in its intended way, so a verdict without drift is a **miss**.

The verdict is the one ``fitml drift`` gives (:func:`evaluation.drift.detect_drift`, real
Evidently). Prediction columns are not part of this calibration (no model is trained per
seed); their thresholds are the generic distance defaults.

Run ``python -m evaluation.calibrate_drift --out var/bench/drift_calibration.json``; the
printed table is the one in the README.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd

from evaluation.drift import MONITORED, ColumnSpec, detect_drift, join_tables, load_window

REFERENCE_DAYS: Final = 90
"""The reference window: days [0, 90) of the generated period, before any scenario starts."""
SCENARIOS: Final[tuple[str, ...]] = ("population_shift", "runs_small", "unit_bug")
MAX_FALSE_ALARM_RATE: Final = 0.05


@dataclass(frozen=True)
class WorldSize:
    """How big each generated world is (the windows' sizes follow from it)."""

    users: int = 15_000
    products: int = 1_500
    events: int = 250_000


def _world(out: Path, size: WorldSize, seed: int, scenario: str) -> tuple[pd.DataFrame, pd.Series]:
    from ml_pipeline.synth import DEFAULT_START, generate

    generate(
        out,
        users=size.users,
        products=size.products,
        events=size.events,
        seed=seed,
        scenario=scenario,
    )
    frame = join_tables(
        pd.read_parquet(out / "events.parquet"),
        pd.read_parquet(out / "users.parquet"),
        pd.read_parquet(out / "products.parquet"),
    )
    days = (frame["event_timestamp"] - pd.Timestamp(DEFAULT_START)).dt.total_seconds() / 86_400
    return load_window(frame), days


def _windows(
    frame: pd.DataFrame, days: pd.Series, current_days: Sequence[int]
) -> dict[int, pd.DataFrame]:
    from ml_pipeline.synth import HORIZON_DAYS

    return {d: frame[days >= HORIZON_DAYS - d] for d in current_days}


def calibrate(
    *,
    seeds: Sequence[int],
    scenario_seeds: Sequence[int],
    size: WorldSize = WorldSize(),
    current_days: Sequence[int] = (14, 4),
    specs: tuple[ColumnSpec, ...] = MONITORED,
    log: Any = None,
) -> dict[str, Any]:
    """Run every comparison and return the records and the summary table.

    Args:
        seeds: seeds of the baseline worlds (false-alarm trials).
        scenario_seeds: seeds (a subset of ``seeds`` or not) whose scenario worlds are made.
        size: the size of each world.
        current_days: lengths of the current windows (the last N days of the period).
        specs: the monitored columns and thresholds under test.
        log: a text stream for progress lines (None: quiet).

    Returns:
        ``records`` (one per comparison: seed, scenario, window, sizes, drifted columns and
        every column's value) and ``summary`` (see :func:`summarise`).
    """
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fitml-calib-") as tmp:
        for seed in sorted(set(seeds) | set(scenario_seeds)):
            base, days = _world(Path(tmp) / "baseline", size, seed, "baseline")
            reference = base[days < REFERENCE_DAYS]
            worlds = ["baseline"] if seed in seeds else []
            worlds += list(SCENARIOS) if seed in scenario_seeds else []
            for scenario in worlds:
                if scenario == "baseline":
                    frame, fdays = base, days
                else:
                    frame, fdays = _world(Path(tmp) / scenario, size, seed, scenario)
                for d, current in _windows(frame, fdays, current_days).items():
                    verdict = detect_drift(reference, current, specs=specs)
                    records.append(
                        {
                            "seed": seed,
                            "scenario": scenario,
                            "current_days": d,
                            "n_reference": verdict.n_reference,
                            "n_current": verdict.n_current,
                            "drift_detected": verdict.drift_detected,
                            "drifted_columns": verdict.drifted_columns,
                            "values": {c.column: c.value for c in verdict.columns},
                        }
                    )
            if log is not None:
                seconds = time.perf_counter() - started
                print(
                    f"seed {seed}: {', '.join(worlds)} done ({seconds:.0f} s)",
                    file=log,
                    flush=True,
                )
    return {"records": records, "summary": summarise(records, specs)}


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the 95% Wilson interval of a proportion k/n."""
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def summarise(
    records: list[dict[str, Any]], specs: tuple[ColumnSpec, ...] = MONITORED
) -> dict[str, Any]:
    """Rates per (scenario, window) and per-column margins.

    Returns:
        ``rows``: per scenario and current window: trials, flagged, rate (false-alarm rate for
        ``baseline``, detection rate otherwise), its 95% Wilson upper bound, median window
        sizes and the columns that flagged; ``columns``: per monitored column its threshold,
        the largest baseline value and the largest value under each scenario; ``ok``: whether
        the false-alarm rate is at most 5% and every scenario was always detected.
    """
    frame = pd.DataFrame(records)
    rows = []
    for (scenario, d), group in frame.groupby(["scenario", "current_days"], sort=False):
        flagged = int(group["drift_detected"].sum())
        cols = pd.Series([c for cs in group["drifted_columns"] for c in cs]).value_counts()
        rows.append(
            {
                "scenario": scenario,
                "current_days": int(d),
                "trials": len(group),
                "flagged": flagged,
                "rate": flagged / len(group),
                "rate_upper95": wilson_upper(flagged, len(group)),
                "n_reference": int(group["n_reference"].median()),
                "n_current": int(group["n_current"].median()),
                "flagging_columns": {str(k): int(v) for k, v in cols.items()},
            }
        )
    values = pd.DataFrame([{**r["values"], "scenario": r["scenario"]} for r in records])
    columns = []
    for s in specs:
        if s.name not in values:
            continue
        grouped = values.groupby("scenario")[s.name]
        columns.append(
            {
                "column": s.name,
                "method": s.method,
                "threshold": s.threshold,
                **{f"max_{k}": float(v) for k, v in grouped.max().items()},
                **{f"min_{k}": float(v) for k, v in grouped.min().items()},
            }
        )
    fa = [r for r in rows if r["scenario"] == "baseline"]
    det = [r for r in rows if r["scenario"] != "baseline"]
    ok = all(r["rate"] <= MAX_FALSE_ALARM_RATE for r in fa) and all(r["rate"] == 1.0 for r in det)
    return {"rows": rows, "columns": columns, "ok": ok}


def format_table(summary: dict[str, Any]) -> str:
    """The calibration table as Markdown (the README's)."""
    lines = [
        "| current window | scenario | reference rows | current rows | trials | flagged "
        "| rate | 95% upper | columns that flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        kind = "false alarms" if r["scenario"] == "baseline" else "detected"
        flags = ", ".join(f"{k} ({v})" for k, v in r["flagging_columns"].items()) or "-"
        lines.append(
            f"| last {r['current_days']} days | {r['scenario']} ({kind}) | {r['n_reference']:,} "
            f"| {r['n_current']:,} | {r['trials']} | {r['flagged']} | {r['rate']:.0%} "
            f"| {r['rate_upper95']:.0%} | {flags} |"
        )
    keys = ["max_baseline", *(f"min_{s}" for s in SCENARIOS)]
    header = " | ".join(k.replace("_", " ", 1) for k in keys)
    lines += [
        "",
        f"| column | method | threshold | {header} |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for c in summary["columns"]:
        values = " | ".join(f"{c.get(k, float('nan')):.3f}" for k in keys)
        lines.append(f"| {c['column']} | {c['method']} | {c['threshold']:g} | {values} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The calibration command; exits 1 when the targets are not met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("var/bench/drift_calibration.json"))
    parser.add_argument("--seeds", type=int, default=40, help="baseline worlds (false alarms)")
    parser.add_argument("--scenario-seeds", type=int, default=10, help="worlds per scenario")
    parser.add_argument("--users", type=int, default=WorldSize.users)
    parser.add_argument("--products", type=int, default=WorldSize.products)
    parser.add_argument("--events", type=int, default=WorldSize.events)
    parser.add_argument("--current-days", type=int, nargs="+", default=[14, 4])
    parser.add_argument(
        "--rescore",
        type=Path,
        help="re-summarise the records of an earlier run with the current thresholds (the "
        "statistics do not depend on the thresholds, so this equals a rerun)",
    )
    args = parser.parse_args(argv)
    if args.rescore is not None:
        earlier = json.loads(args.rescore.read_text())
        earlier["summary"] = summarise(earlier["records"])
        earlier["config"]["rescored_with"] = {s.name: s.threshold for s in MONITORED}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(earlier, indent=2, default=str))
        print(format_table(earlier["summary"]))
        return 0 if earlier["summary"]["ok"] else 1
    started = time.perf_counter()
    result = calibrate(
        seeds=range(args.seeds),
        scenario_seeds=range(args.scenario_seeds),
        size=WorldSize(args.users, args.products, args.events),
        current_days=args.current_days,
        log=sys.stderr,
    )
    result["config"] = {
        "command": "python -m evaluation.calibrate_drift " + " ".join(argv or sys.argv[1:]),
        "seeds": args.seeds,
        "scenario_seeds": args.scenario_seeds,
        "world": vars(WorldSize(args.users, args.products, args.events)),
        "reference_days": REFERENCE_DAYS,
        "current_days": args.current_days,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(format_table(result["summary"]))
    print(
        f"\n{'OK' if result['summary']['ok'] else 'NOT MET'}: false-alarm rate <= "
        f"{MAX_FALSE_ALARM_RATE:.0%} and every scenario detected; {result['config']['seconds']} s"
        f" -> {args.out}"
    )
    return 0 if result["summary"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
