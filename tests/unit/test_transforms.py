from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.transforms import chart_pick, implied_index, request_features

LOW = np.array([80.0, 88.0, 96.0])
HIGH = np.array([88.0, 96.0, 104.0])


def test_chart_pick_finds_the_range_and_clamps_at_the_ends() -> None:
    pos = chart_pick(np.array([70.0, 80.0, 87.9, 88.0, 103.9, 140.0, np.nan]), LOW, HIGH)
    assert pos[:6].tolist() == [0, 0, 0, 1, 2, 2]
    assert np.isnan(pos[6])


def row(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "product_id": "p1",
        "size_index": 3.0,
        "chart_index": [2, 3, 4],
        "chart_low": LOW.tolist(),
        "chart_high": HIGH.tolist(),
        "chart_dimension": "chest",
        "user_chest_cm": 90.0,
        "hist_mean_offset": np.nan,
        "pstat_mean_offset": 0.5,
        "product_size_system": "alpha",
        "hist_usual_alpha": 3.0,
        "user_sex": None,
    }
    base.update(overrides)
    return base


def test_request_features_place_the_candidate_against_the_chart() -> None:
    out = request_features(pd.DataFrame([row()]))
    r = out.iloc[0]
    assert r["chart_pick"] == 3  # 90 cm is in the second range, whose size index is 3
    assert r["size_rel_chart"] == 0
    assert r["ease_cm"] == pytest.approx(92.0 - 90.0)
    assert r["size_pos"] == 1 and r["n_sizes"] == 3
    assert r["expected_index"] == pytest.approx(3.5)  # no own history: the product's offset
    assert r["size_rel_usual"] == 0
    assert r["user_sex"] == "unknown"


def test_a_larger_chest_never_picks_a_smaller_size() -> None:
    chests = np.linspace(60, 130, 50)
    frame = pd.DataFrame([row(user_chest_cm=c) for c in chests])
    picks = request_features(frame)["chart_pick"].to_numpy()
    assert np.all(np.diff(picks) >= 0)


def test_missing_girth_or_chart_gives_nan_not_an_error() -> None:
    frame = pd.DataFrame(
        [row(user_chest_cm=None), row(product_id="p2", chart_index=[], chart_low=[], chart_high=[])]
    )
    out = request_features(frame)
    assert np.isnan(out["chart_pick"]).all()
    assert np.isnan(out.loc[1, "ease_cm"])


def test_implied_index_follows_the_outcome() -> None:
    got = implied_index(np.array([3, 3, 3]), ["too_small", "fit", "too_large"])
    assert got.tolist() == [4, 3, 2]
