"""The drift verdict at its calibrated thresholds: quiet on same-distribution windows of a fixed
seed set, and flags every generator scenario (real generator, real Evidently)."""

from __future__ import annotations

import pytest

from evaluation.calibrate_drift import SCENARIOS, WorldSize, calibrate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEEDS = (0, 1, 2, 3)
"""Fixed seeds of the false-alarm trials (the full calibration runs 40; see the README)."""
WORLD = WorldSize(users=6_000, products=600, events=100_000)
"""Smaller than the calibration's worlds: reference ~30k rows, current (last 14 days) ~15k."""


@pytest.fixture(scope="module")
def calibration() -> dict:
    return calibrate(seeds=SEEDS, scenario_seeds=(0,), size=WORLD, current_days=(14,))


def test_no_drift_on_same_distribution_windows(calibration: dict) -> None:
    baseline = [r for r in calibration["records"] if r["scenario"] == "baseline"]
    assert len(baseline) == len(SEEDS)
    assert all(r["n_reference"] > 20_000 and r["n_current"] > 8_000 for r in baseline)
    flagged = {r["seed"]: r["drifted_columns"] for r in baseline if r["drift_detected"]}
    assert flagged == {}, f"false alarms: {flagged}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_is_flagged(calibration: dict, scenario: str) -> None:
    (record,) = [r for r in calibration["records"] if r["scenario"] == scenario]
    assert record["drift_detected"], record["values"]
    expected = {
        "population_shift": {"user_weight_kg", "user_sex"},
        "runs_small": {"outcome"},
        "unit_bug": {"user_chest_cm", "user_waist_cm", "user_hips_cm"},
    }[scenario]
    assert expected <= set(record["drifted_columns"])
