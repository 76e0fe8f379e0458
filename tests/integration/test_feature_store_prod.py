"""The prod profile against the real PostgreSQL (Feast SQL registry) and Redis (online store).

Each test registers its own Feast project (the registry's tables are shared; rows are per
project) and deletes it, with its Redis keys, afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest

from features import store as fs
from features.feedback import push_feedback
from ml_pipeline.ingest import ingest_synthetic
from ml_pipeline.settings import Settings, load_settings
from ml_pipeline.synth import generate

pytestmark = pytest.mark.integration


def _redis_connection_string(url: str) -> str:
    parsed = urlparse(url)
    db = (parsed.path or "/0").lstrip("/") or "0"
    return f"{parsed.hostname}:{parsed.port or 6379},db={db}"


@pytest.fixture
def prod(
    postgres_dsn: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    registry_url = postgres_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    monkeypatch.setenv("FITML_FEAST_REGISTRY_URL", registry_url)
    monkeypatch.setenv("FITML_REDIS", _redis_connection_string(redis_url))
    raw = tmp_path / "raw"
    generate(raw, users=60, products=8, events=600, seed=3)
    ingest_synthetic(raw, tmp_path / "w")
    base = load_settings("prod", tmp_path / "w")
    project = f"fitml_test_{uuid.uuid4().hex[:10]}"
    settings = base.model_copy(update={"feast": base.feast.model_copy(update={"project": project})})
    yield settings
    import redis

    store = fs.open_store(settings)
    store.delete_project(project)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{project}*".encode(), count=1000):
        client.delete(key)


def test_apply_materialize_read_and_push_on_postgres_and_redis(prod: Settings) -> None:
    result = fs.apply(prod)
    assert set(result.views) == {"user_profile", "user_history", "product_attrs", "product_stats"}
    store = fs.open_store(prod)
    assert store.config.online_store.type == "redis"
    assert store.get_feature_service(result.service).name == result.service
    store.materialize(
        start_date=pd.Timestamp("1970-01-02", tz="UTC").to_pydatetime(),
        end_date=pd.Timestamp.now(tz="UTC").to_pydatetime(),
    )
    events = fs.read_events(prod)
    last = events.sort_values("event_timestamp").iloc[-1]
    before = fs.online_features(store, last.user_id, last.product_id)
    assert before["chart_index"]
    assert before["hist_n"] >= 1

    new = pd.DataFrame(
        [
            {
                "event_id": f"pushed-{uuid.uuid4().hex}",
                "user_id": last.user_id,
                "product_id": last.product_id,
                "size_index": int(last.size_index),
                "outcome": "too_large",
                "event_timestamp": pd.Timestamp.now(tz="UTC"),
            }
        ]
    )
    started = time.perf_counter()
    push_feedback(store, new, settings=prod, offline=False)
    after = fs.online_features(store, last.user_id, last.product_id)
    visible_s = time.perf_counter() - started
    assert after["hist_n"] == before["hist_n"] + 1
    assert visible_s < 5.0  # the benchmark measures it; this only guards against a hang

    training = fs.training_set(prod)
    assert len(training) == len(events) + 1  # the pushed event is in the event log
    assert training["event_id"].is_unique
