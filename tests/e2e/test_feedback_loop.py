"""The whole feedback loop over real processes, and forgetting a shopper afterwards.

session -> recommendation (prediction service) -> feedback -> the shopper's features change
in the Feast online store -> a later recommendation is computed from them (the prediction
service's inference log shows the features it used) -> the feedback is in the offline event
log the next training run reads -> ``fitml forget-user`` removes the shopper everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from features.store import online_features, open_store, read_events
from ml_pipeline.settings import Settings
from serving.pseudonym import load_pseudonymizer
from serving.session.export import export_feedback
from serving.session.store import SqliteEventStore
from serving.session.testing import ServiceProcess, clone_workdir, free_port, start_together

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "loop-key"
API = "/api/v1/tryon"


def poll(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def logged(settings: Settings, request_id: str) -> dict[str, Any] | None:
    for path in sorted(settings.inference_log_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("request_id") == request_id:
                return record
    return None


@pytest.fixture(scope="module")
def loop(
    trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, httpx.Client]]:
    root = tmp_path_factory.mktemp("loop")
    clone = clone_workdir(trained_workdir, root / "var")
    prediction = ServiceProcess(
        ["serve", "--workdir", str(clone.workdir)], free_port(), root / "predict.log"
    )
    sessions = ServiceProcess(
        ["session-service", "--workdir", str(clone.workdir), "--prediction-url", prediction.url],
        free_port(),
        root / "session.log",
        env={"FITML_API_KEYS": KEY},
    )
    with ExitStack() as stack:
        start_together(stack, prediction, sessions)
        http = stack.enter_context(
            httpx.Client(base_url=sessions.url, headers={"X-API-Key": KEY}, timeout=20)
        )
        yield clone, http


def test_feedback_reaches_the_next_recommendation_then_forget(
    loop: tuple[Settings, httpx.Client],
) -> None:
    settings, http = loop
    examples = (settings.workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    body = next(b for b in map(json.loads, examples) if b.get("user_id"))
    user, product = body["user_id"], body["product_id"]
    store = open_store(settings)
    before = online_features(store, user, product)
    n_before = before["hist_n"] or 0.0

    first = http.post(f"{API}/sessions", json={"user_id": user, "product_id": product})
    assert first.status_code == 201, first.text
    session = first.json()
    assert not session["degraded"] and session["confidence"] is not None
    tried = session["recommended_size"]
    feedback = {
        "event_id": "loop-ev-1",
        "size": tried,
        "outcome": "too_small",
        "notes": {"chest": "tight across the chest"},
    }
    accepted = http.post(f"{API}/sessions/{session['session_id']}/feedback", json=feedback)
    assert accepted.status_code == 202 and accepted.json()["status"] == "accepted"

    p_before = before["pstat_n"] or 0.0
    after = poll(  # user history and product stats are two writes: wait for both
        lambda: (
            (row := online_features(open_store(settings), user, product))["hist_n"] == n_before + 1
            and row["pstat_n"] == p_before + 1
            and row
        ),
        30,
        "the shopper's fit history and the product's stats updated in the online store",
    )

    second = http.post(f"{API}/sessions", json={"user_id": user, "product_id": product})
    assert second.status_code == 201 and not second.json()["degraded"]
    old = poll(lambda: logged(settings, session["prediction_request_id"]), 15, "first logged")
    new = poll(lambda: logged(settings, second.json()["prediction_request_id"]), 15, "logged")
    assert old["features"]["hist_n"] in (None, n_before)
    assert new["features"]["hist_n"] == n_before + 1, "the later recommendation saw the feedback"
    assert new["features"]["hist_last_offset"] == after["hist_last_offset"]

    read = http.get(f"{API}/sessions/{session['session_id']}").json()
    assert [f["event_id"] for f in read["feedback"]] == ["loop-ev-1"]

    # The next training run reads the event log: the pushed feedback is in it, and the
    # event store exports it through ingestion (the event contract) into the offline store.
    assert "loop-ev-1" in set(read_events(settings)["event_id"])
    events_store = SqliteEventStore(settings.workdir / "session" / "events.db")
    summary = export_feedback(settings, events_store)
    assert summary.accepted["events"] == 1 and summary.quarantined["events"] == 0
    offline = pd.read_parquet(settings.offline_dir / "events.parquet")
    assert "loop-ev-1" in set(offline["event_id"])

    # Forget the shopper: every store, reported.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml_pipeline.cli",
            "forget-user",
            user,
            "--workdir",
            str(settings.workdir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    print("\nforget-user removed:", json.dumps(report["removed"], indent=1))
    removed = report["removed"]
    assert removed["event_store:fitml_tryon_events"] == 1
    assert removed["event_store:fitml_tryon_sessions"] == 2
    assert removed["online:user_history"] == 1 and removed["online:user_profile"] == 1
    assert removed["parquet:offline/events.parquet"] >= 1
    assert any(k.startswith("parquet:offline/feedback/") for k in removed)
    assert any(k.startswith("jsonl:inference_log/") and n >= 2 for k, n in removed.items())
    assert online_features(open_store(settings), user, product)["hist_n"] is None
    assert user not in set(pd.read_parquet(settings.offline_dir / "events.parquet")["user_id"])
    assert user not in set(read_events(settings)["user_id"])
    pseudonyms = load_pseudonymizer(settings).all_of(user)
    assert all(
        h not in p.read_text()
        for p in settings.inference_log_dir.glob("*.jsonl")
        for h in pseudonyms
    )
    assert http.get(f"{API}/sessions/{session['session_id']}").status_code == 404
