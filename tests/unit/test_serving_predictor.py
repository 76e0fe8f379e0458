"""Unit tests of the serving plumbing: variant routing, staleness, the inference log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_pipeline.settings import load_settings
from serving.inference_log import InferenceLog, loggable
from serving.predictor import CHALLENGER, CHAMPION, Predictor
from serving.pseudonym import Pseudonymizer

hash_user = Pseudonymizer({"k1": b"x" * 32})

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def predictor(tmp_path: Path, share: float = 0.0, shadow: bool = False) -> Predictor:
    p = Predictor(
        load_settings("local", tmp_path), challenger_share=share, shadow=shadow, now=lambda: NOW
    )
    p.variants_ = {CHAMPION: object(), CHALLENGER: object()}  # type: ignore[dict-item]
    return p


def test_variant_share_is_sticky_per_user_and_close_to_the_share(tmp_path: Path) -> None:
    p = predictor(tmp_path, share=0.3)
    hashes = [hash_user(f"u{i}") for i in range(4000)]
    picks = [p.variant_for(h) for h in hashes]
    assert picks == [p.variant_for(h) for h in hashes]  # sticky
    assert abs(picks.count(CHALLENGER) / len(picks) - 0.3) < 0.03


@pytest.mark.parametrize(("share", "shadow"), [(0.0, False), (0.5, True)])
def test_champion_answers_without_share_or_in_shadow_mode(
    tmp_path: Path, share: float, shadow: bool
) -> None:
    p = predictor(tmp_path, share=share, shadow=shadow)
    assert {p.variant_for(hash_user(f"u{i}")) for i in range(200)} == {CHAMPION}


def test_without_a_challenger_the_champion_answers(tmp_path: Path) -> None:
    p = predictor(tmp_path, share=1.0)
    del p.variants_[CHALLENGER]
    assert p.variant_for(hash_user("u1")) == CHAMPION


def test_hash_user_hides_the_id() -> None:
    assert hash_user(None) is None and hash_user("") is None
    h = hash_user("u000123")
    assert h is not None and h.startswith("k1.") and len(h) == 35 and "u000123" not in h


def test_log_writes_joinable_records_without_identifiers(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, interval=0.01)
    features = {"user_id": "u1", "product_id": "p1", "x": np.float64(1.5), "y": float("nan")}
    log.append({"request_id": "r1", "user_hash": hash_user("u1")}, features=features)
    assert log.flush()
    log.close()
    [path] = tmp_path.glob("inferences-*.jsonl")
    record = json.loads(path.read_text())
    assert record["request_id"] == "r1"
    assert record["features"] == {"x": 1.5, "y": None}
    assert "u1" not in path.read_text().replace(record["user_hash"], "")


def test_log_rotates_past_max_bytes(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, interval=0.01, max_bytes=200)
    for i in range(5):
        log.append({"request_id": f"r{i}", "pad": "x" * 150})
        assert log.flush()
    log.close()
    assert len(list(tmp_path.glob("inferences-*.jsonl"))) >= 3


def test_log_drops_rather_than_blocks_when_full(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, max_queue=2, interval=60)
    for i in range(5):
        log.append({"request_id": f"r{i}"})
    assert log.dropped == 3
    log.close()


def test_loggable_converts_arrays() -> None:
    assert loggable({"a": np.array([1, 2]), "product_id": "p"}) == {"a": [1, 2]}


class FakeReader:
    """Stands in for the online store read (unit test: no Feast)."""

    def __init__(self, times: dict[str, datetime | None]) -> None:
        self.times = times

    def read(self, user_id: str | None, product_id: str) -> Any:
        from serving.online_features import OnlineRow

        values = {
            "user_id": user_id or "",
            "product_id": product_id,
            "user_height_cm": 170.0,
            "user_chest_cm": 95.0,
            "hist_n": 4.0,
            "hist_mean_offset": 0.5,
            "chart_dimension": "chest",
            "chart_sizes": ["S", "M"],
            "chart_index": [2, 3],
            "pstat_n": 10.0,
        }
        return OnlineRow(values, dict(self.times))


def test_stale_fit_history_is_dropped_and_said_once(tmp_path: Path) -> None:
    p = predictor(tmp_path)
    p.reader_ = FakeReader(  # type: ignore[assignment]
        {"user_history": NOW - timedelta(days=900), "product_stats": NOW - timedelta(days=10)}
    )
    row, fallbacks = p.feature_row("u1", "p1", None, None)
    assert row["hist_n"] is None and row["hist_mean_offset"] is None
    assert row["pstat_n"] == 10.0
    assert len(fallbacks) == 1 and "fit history" in fallbacks[0]


def test_fresh_features_have_no_fallback(tmp_path: Path) -> None:
    p = predictor(tmp_path)
    p.reader_ = FakeReader({"user_history": NOW, "product_stats": NOW})  # type: ignore[assignment]
    _, fallbacks = p.feature_row("u1", "p1", None, None)
    assert fallbacks == []
