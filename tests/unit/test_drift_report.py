"""The drift report answers first: verdict, summary table with drifted columns first, shares."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.drift import ColumnDrift, DriftVerdict
from evaluation.drift_report import headline, ordered_columns, render_report


def _verdict() -> DriftVerdict:
    columns = [
        ColumnDrift("user_height_cm", "feature", "numerical", "wasserstein", 0.15, 0.02, False),
        ColumnDrift("product_brand", "feature", "categorical", "jensenshannon", 0.15, 0.14, False),
        ColumnDrift("outcome", "outcome", "categorical", "jensenshannon", 0.02, 0.05, True),
        ColumnDrift("user_chest_cm", "feature", "numerical", "wasserstein", 0.15, 0.40, True),
    ]
    return DriftVerdict(
        drift_detected=True,
        drifted_columns=["outcome", "user_chest_cm"],
        drift_share=0.5,
        share_by_role={"feature": 1 / 3, "outcome": 1.0},
        n_reference=4000,
        n_current=2000,
        columns=columns,
        reference_window={"start": "2026-01-01", "end": "2026-03-31"},
        current_window={"start": "2026-04-01", "end": "2026-04-30"},
    )


def _window(seed: int, start: str, n: int, chest: float, small: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "event_timestamp": pd.Timestamp(start, tz="UTC")
            + pd.to_timedelta(rng.uniform(0, 28, n), unit="D"),
            "user_height_cm": rng.normal(170, 8, n),
            "user_chest_cm": rng.normal(chest, 8, n),
            "product_brand": rng.choice(["a", "b", "c"], n),
            "outcome": rng.choice(
                ["too_small", "fit", "too_large"], n, p=[small, 0.85 - small, 0.15]
            ),
        }
    )


def test_columns_are_ordered_drifted_first_then_by_closeness_to_the_threshold() -> None:
    names = [c.column for c in ordered_columns(_verdict())]
    assert names == ["user_chest_cm", "outcome", "product_brand", "user_height_cm"]
    assert headline(_verdict()).startswith("Drift detected in 2 of 4 monitored columns")


def test_the_report_opens_on_the_verdict_then_the_table_then_each_column() -> None:
    html = render_report(
        _verdict(),
        _window(0, "2026-01-01", 4000, 96, 0.15),
        _window(1, "2026-04-01", 2000, 99, 0.3),
        "r_evidently.html",
    )
    verdict_at = html.index('id="verdict"')
    table_at = html.index("<h2>Summary</h2>")
    assert verdict_at < table_at < html.index("id='col-user_chest_cm'")
    order = [html.index(f"id='col-{c}'") for c in ("user_chest_cm", "outcome", "product_brand")]
    assert order == sorted(order)
    assert "outcome: share of rows per category" in html  # shares, not counts
    assert "user_chest_cm over event time" in html and "2026-04" in html
    assert "r_evidently.html" in html


def test_no_drift_says_so_plainly() -> None:
    verdict = DriftVerdict(
        drift_detected=False,
        drifted_columns=[],
        drift_share=0.0,
        share_by_role={},
        n_reference=10,
        n_current=10,
        columns=[
            ColumnDrift("user_sex", "feature", "categorical", "jensenshannon", 0.05, 0.01, False)
        ],
    )
    assert headline(verdict) == "No drift: all 1 monitored columns are within their thresholds"
