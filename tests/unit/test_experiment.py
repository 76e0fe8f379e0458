"""Online evaluation of a challenger: the join, the intervals and the sequential test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.experiment import (
    CHALLENGER,
    CHAMPION,
    agrees,
    experiment_report,
    join_feedback,
    msprt_p_values,
    online_gate,
    proportion_ci,
    read_inference_log,
    workdir_report,
)
from serving.pseudonym import Pseudonymizer

SIZES = ["S", "M", "L"]
T0 = pd.Timestamp("2026-05-01", tz="UTC")

hash_user = Pseudonymizer({"k1": b"x" * 32})


def _world(
    seed: int, n: int, agree_rate: dict[str, float], *, shadow: bool = False
) -> tuple[list[dict], pd.DataFrame]:
    """An inference log and feedback where each variant's answer agrees at a known rate."""
    rng = np.random.default_rng(seed)
    records, feedback = [], []
    for i in range(n):
        user = f"u{i}"
        variant = CHAMPION if shadow else (CHALLENGER if rng.random() < 0.5 else CHAMPION)
        at = T0 + pd.Timedelta(minutes=i)
        tried = int(rng.integers(0, 3))

        def recommendation(name: str, tried: int = tried) -> int:
            # Agreeing answer: the tried size with "fit"; else a different size.
            return tried if rng.random() < agree_rate[name] else (tried + 1) % 3

        rec = recommendation(variant)
        record = {
            "logged_at": at.isoformat(),
            "request_id": f"r{i}",
            "endpoint": "recommend",
            "user_hash": hash_user(user),
            "product_id": "p1",
            "variant": variant,
            "recommended_size": SIZES[rec],
            "sizes": [[s, 0.2, 0.6, 0.2] for s in SIZES],
        }
        if shadow:
            record["shadow"] = {"recommended_size": SIZES[recommendation(CHALLENGER)]}
        records.append(record)
        feedback.append(
            {
                "user_id": user,
                "product_id": "p1",
                "size": SIZES[tried],
                "outcome": "fit",
                "event_timestamp": at + pd.Timedelta(seconds=30),
            }
        )
    return records, pd.DataFrame(feedback)


def _write_log(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    lines.append(json.dumps({"endpoint": "predict_fit", "request_id": "x", "logged_at": "2026"}))
    (directory / "inferences-2026-05-01.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def test_agreement_matches_the_offline_definition() -> None:
    got = agrees(
        np.array([2, 1, 0, 1, 1]),
        np.array([1, 1, 1, 1, 2]),
        ["too_small", "fit", "too_large", "too_small", "fit"],
    )
    assert got.tolist() == [1, 1, 1, 0, 0]


def test_wilson_interval_holds_the_share_and_stays_in_bounds() -> None:
    e = proportion_ci(0, 10)
    assert e.value == 0 and e.low == pytest.approx(0, abs=1e-12) and 0 < e.high < 0.35
    e = proportion_ci(80, 100)
    assert e.low < 0.8 < e.high and e.high - e.low < 0.2


def test_a_better_challenger_is_detected_and_passes_the_gate(tmp_path: Path) -> None:
    records, feedback = _world(0, 1_500, {CHAMPION: 0.6, CHALLENGER: 0.75})
    path = tmp_path / "fb.parquet"
    feedback.to_parquet(path)
    report = workdir_report(_write_log(tmp_path / "log", records), path, pseudonyms=hash_user)
    assert report.mode == "split" and report.n_feedback == 1_500
    a = report.agreement
    assert a[CHAMPION].low < 0.6 < a[CHAMPION].high
    assert a[CHALLENGER].low < 0.75 < a[CHALLENGER].high
    assert report.agreement_diff is not None and report.agreement_diff.low > 0
    assert report.sequential is not None and report.sequential.decided
    assert report.sequential.favours == CHALLENGER
    assert report.sequential.decided_after is not None
    assert report.sequential.decided_after < 1_500
    assert online_gate(report)[0]


@pytest.mark.parametrize("seed", range(3))
def test_equal_variants_rarely_decide(seed: int) -> None:
    # Always-valid: over many A/A experiments at most ~alpha decide; with 3 seeds, none should.
    records, feedback = _world(seed, 1_000, {CHAMPION: 0.7, CHALLENGER: 0.7})
    log = pd.DataFrame(records)
    log["logged_at"] = pd.to_datetime(log["logged_at"], utc=True)
    log["shadow_size"] = None
    report = experiment_report(join_feedback(log, feedback, hash_user))
    assert report.sequential is not None and not report.sequential.decided
    promote, why = online_gate(report)
    assert not promote and "not enough evidence" in why


def test_false_alarm_rate_of_the_sequential_test_is_bounded() -> None:
    rng = np.random.default_rng(1)
    alarms = 0
    runs = 200
    for _ in range(runs):
        groups = rng.integers(0, 2, 400).astype(float)
        values = (rng.random(400) < 0.7).astype(float)
        p, _ = msprt_p_values(groups, values)
        alarms += bool(p[-1] < 0.05)
    # alpha plus two binomial standard errors of the estimate over 200 runs
    assert alarms / runs <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs)


def test_shadow_mode_pairs_the_variants_on_the_same_feedback(tmp_path: Path) -> None:
    records, feedback = _world(2, 800, {CHAMPION: 0.9, CHALLENGER: 0.6}, shadow=True)
    report = workdir_report(
        _write_log(tmp_path / "log", records), _jsonl(tmp_path, feedback), pseudonyms=hash_user
    )
    assert report.mode == "shadow"
    assert report.agreement[CHAMPION].n == report.agreement[CHALLENGER].n == 800
    assert report.sequential is not None and report.sequential.favours == CHAMPION
    assert CHALLENGER not in report.log_loss
    assert not online_gate(report)[0]


def _jsonl(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "fb.jsonl"
    frame.assign(event_timestamp=frame["event_timestamp"].astype(str)).to_json(
        path, orient="records", lines=True
    )
    return path


def test_join_prefers_request_id_and_skips_feedback_without_an_answer(tmp_path: Path) -> None:
    records, feedback = _world(3, 4, {CHAMPION: 1.0, CHALLENGER: 1.0})
    log = read_inference_log(_write_log(tmp_path, records))
    assert len(log) == 4  # the predict_fit line is not an answer
    feedback = pd.concat(
        [
            feedback,
            pd.DataFrame(  # a shopper who never got an answer
                [
                    {
                        "user_id": "stranger",
                        "product_id": "p1",
                        "size": "M",
                        "outcome": "fit",
                        "event_timestamp": T0,
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    # Feedback 0 names request r3 explicitly, although the shopper of r0 gave it.
    feedback["request_id"] = ["r3", None, None, None, None]
    joined = join_feedback(log, feedback, hash_user)
    assert len(joined) == 4
    assert set(joined["variant"]) <= {CHAMPION, CHALLENGER}
    assert joined["p_outcome"].eq(0.6).all()


def test_missing_feedback_columns_are_named() -> None:
    with pytest.raises(ValueError, match="outcome"):
        join_feedback(pd.DataFrame(), pd.DataFrame({"user_id": ["u"]}), hash_user)


def test_no_inference_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no inference log"):
        read_inference_log(tmp_path)
