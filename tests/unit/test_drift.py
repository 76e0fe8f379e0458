"""Unit tests of the drift verdict, the feedback join and the history table (tiny inline data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.calibrate_drift import wilson_upper
from evaluation.drift import (
    BODY_WASSERSTEIN,
    MONITORED,
    DriftInputError,
    DriftVerdict,
    comparable_specs,
    detect_drift,
    join_feedback,
    load_window,
    monitored_specs,
    outcome_mix,
)
from evaluation.drift_history import (
    append_history,
    drift_table,
    history_rows,
    outcome_mix_over_time,
    read_history,
)
from serving.pseudonym import Pseudonymizer

hash_user = Pseudonymizer({"k1": b"x" * 32})


def _window(
    rng: np.random.Generator,
    n: int,
    *,
    chest_shift: float = 0.0,
    p_small: float = 0.15,
    start: str = "2026-01-01",
) -> pd.DataFrame:
    p_large = 0.13
    return pd.DataFrame(
        {
            "user_chest_cm": rng.normal(95 + chest_shift, 9, n),
            "user_height_cm": rng.normal(170, 9, n),
            "user_sex": rng.choice(["F", "M"], n, p=[0.6, 0.4]),
            "product_category": rng.choice(["tops", "pants", "dresses"], n),
            "size_index": rng.integers(0, 7, n),
            "outcome": rng.choice(
                ["too_small", "fit", "too_large"], n, p=[p_small, 1 - p_small - p_large, p_large]
            ),
            "event_timestamp": pd.date_range(start, periods=n, freq="min", tz="UTC"),
        }
    )


def test_same_distribution_is_not_drift(seed: int) -> None:
    rng = np.random.default_rng(seed)
    verdict = detect_drift(_window(rng, 4000), _window(rng, 2000))
    assert not verdict.drift_detected
    assert verdict.drifted_columns == []
    assert {c.column for c in verdict.columns} == {
        "user_chest_cm",
        "user_height_cm",
        "user_sex",
        "product_category",
        "size_index",
        "outcome",
    }
    assert all(c.method in ("wasserstein", "jensenshannon") for c in verdict.columns)


def test_shifted_girth_and_outcome_mix_are_drift(seed: int) -> None:
    rng = np.random.default_rng(seed)
    verdict = detect_drift(_window(rng, 4000), _window(rng, 2000, chest_shift=3.0, p_small=0.25))
    assert verdict.drift_detected
    assert set(verdict.drifted_columns) == {"user_chest_cm", "outcome"}
    assert verdict.share_by_role["outcome"] == 1.0
    assert (
        verdict.outcome_mix["current"]["too_small"] > verdict.outcome_mix["reference"]["too_small"]
    )


def test_a_public_data_profile_is_monitored_and_absent_profile_fields_are_skipped() -> None:
    rng = np.random.default_rng(0)

    def window(n: int, age: float, body_types: list[float]) -> pd.DataFrame:
        frame = _window(rng, n)
        frame["user_age"] = rng.normal(age, 8, n)
        frame["user_body_type"] = rng.choice(["hourglass", "athletic", "petite"], n, p=body_types)
        frame["user_cup_cm"] = np.nan  # an adapter without bra sizes
        return frame

    verdict = detect_drift(window(4000, 34, [0.5, 0.3, 0.2]), window(2000, 41, [0.2, 0.3, 0.5]))
    assert {"user_age", "user_body_type"} <= set(verdict.drifted_columns)
    assert verdict.skipped_columns["user_cup_cm"] == "fewer than 2 known values in a window"
    assert "user_underbust_cm" not in verdict.skipped_columns  # in neither window: not named


def test_verdict_json_round_trip_and_summary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    html = tmp_path / "r.html"
    verdict = detect_drift(_window(rng, 4000), _window(rng, 2000, chest_shift=5), html=html)
    data = json.loads(verdict.to_json())
    assert data["drift_detected"] is True and data["drifted_columns"] == ["user_chest_cm"]
    chest = next(c for c in data["columns"] if c["column"] == "user_chest_cm")
    assert chest["method"] == "wasserstein" and chest["threshold"] == BODY_WASSERSTEIN
    assert DriftVerdict.from_dict(data) == verdict
    text = verdict.summary()
    assert "DETECTED" in text and "user_chest_cm" in text and len(text.splitlines()) < 40
    assert html.stat().st_size > 10_000


def test_empty_or_disjoint_windows_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DriftInputError, match="nothing to compare"):
        detect_drift(_window(rng, 100), _window(rng, 100).iloc[:0])
    with pytest.raises(DriftInputError, match="nothing to compare"):
        detect_drift(_window(rng, 100)[["user_chest_cm"]], _window(rng, 100)[["user_sex"]])


def test_columns_missing_on_one_side_are_reported_as_skipped() -> None:
    rng = np.random.default_rng(0)
    ref, cur = _window(rng, 100), _window(rng, 100).drop(columns=["outcome"])
    usable, skipped = comparable_specs(load_window(ref), load_window(cur))
    assert "outcome" not in {s.name for s in usable}
    assert skipped == {"outcome": "absent from the current window"}


def test_threshold_overrides_name_unknown_columns() -> None:
    specs = monitored_specs({"outcome": 0.5})
    assert next(s for s in specs if s.name == "outcome").threshold == 0.5
    assert len(specs) == len(MONITORED)
    with pytest.raises(DriftInputError, match="hist_n"):
        monitored_specs({"hist_n": 0.1})


def test_load_window_reads_an_inference_log(tmp_path: Path) -> None:
    record = {
        "logged_at": "2026-03-01T10:00:00+00:00",
        "request_id": "r1",
        "user_hash": "h",
        "product_id": "p1",
        "features": {"user_chest_cm": 90.0, "user_sex": "F"},
        "recommended_size": "M",
        "confidence": 0.7,
    }
    (tmp_path / "inferences-2026-03-01.jsonl").write_text(json.dumps(record) + "\n")
    frame = load_window(tmp_path)
    assert {"user_chest_cm", "user_sex", "recommended_size", "confidence"} <= set(frame.columns)
    assert frame["event_timestamp"].iloc[0] == pd.Timestamp("2026-03-01T10:00:00Z")


def test_unreadable_window_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DriftInputError, match=str(tmp_path)):
        load_window(tmp_path)


def test_join_feedback_by_request_id_and_by_time() -> None:
    logged = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "user_hash": [hash_user("u1"), hash_user("u1"), hash_user("u2")],
            "product_id": ["p1", "p1", "p2"],
            "logged_at": pd.to_datetime(
                ["2026-03-01 10:00", "2026-03-02 10:00", "2026-03-01 10:00"], utc=True
            ),
            "user_chest_cm": [90.0, 91.0, 100.0],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "product_id": ["p1", "p2", "p1"],
            "size_index": [2, 3, 1],
            "outcome": ["fit", "too_small", "fit"],
            "event_timestamp": pd.to_datetime(
                ["2026-03-02 11:00", "2026-03-20 10:00", "2026-03-01 11:00"], utc=True
            ),
        }
    )
    by_time = join_feedback(logged, events, hash_user)
    # u1 joins the latest earlier inference (b); u2's came 19 days before (too old); u3 none
    assert by_time["request_id"].tolist() == ["b"]
    assert by_time["user_chest_cm"].tolist() == [91.0]
    events["request_id"] = ["a", "c", None]
    by_id = join_feedback(logged, events, hash_user)
    assert sorted(by_id["request_id"]) == ["a", "c"]


def test_history_round_trip_and_over_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = _window(rng, 2000)
    path = tmp_path / "offline" / "drift_history.parquet"
    for i, shift in enumerate((0.0, 6.0)):
        cur = _window(rng, 500, chest_shift=shift, start=f"2026-0{i + 3}-01")
        added = append_history(path, detect_drift(ref, cur))
        assert added == len(history_rows(detect_drift(ref, cur)))
    history = read_history(path)
    assert set(history["kind"]) == {"drift", "outcome_share"}
    table = drift_table(history)
    assert len(table) == 2 and table["user_chest_cm"].iloc[1] > 0.1 > table["user_chest_cm"].iloc[0]
    assert read_history(tmp_path / "missing.parquet").empty


def test_outcome_mix_over_time_sums_to_one() -> None:
    events = _window(np.random.default_rng(0), 30_000)
    mix = outcome_mix_over_time(events, freq="W")
    assert np.allclose(mix[["too_small", "fit", "too_large"]].sum(axis=1), 1.0)
    assert mix["events"].sum() == 30_000
    assert outcome_mix(events)["fit"] == pytest.approx(0.72, abs=0.02)


def test_wilson_upper_bound() -> None:
    assert wilson_upper(0, 40) == pytest.approx(0.0876, abs=1e-3)
    assert wilson_upper(5, 5) == 1.0


def test_retrain_trigger_without_a_champion_trains(tmp_path: Path) -> None:
    from ml_pipeline.pipeline import retrain_decision
    from ml_pipeline.settings import load_settings

    retrain, verdict = retrain_decision(load_settings("local", tmp_path))
    assert retrain is True and "no champion" in verdict["reason"]
    assert not (tmp_path / "mlflow.db").exists()  # looking does not create a tracking store
