"""The drift history table in PostgreSQL (the prod profile's offline store)."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from evaluation.drift import detect_drift
from evaluation.drift_history import TABLE, append_history, drift_table, read_history

pytestmark = pytest.mark.integration


def test_history_round_trip_in_postgres(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine, text

    url = postgres_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"drift_test_{uuid.uuid4().hex[:8]}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    scoped = f"{url}?options=-csearch_path%3D{schema}"
    try:
        rng = np.random.default_rng(0)
        ref = pd.DataFrame({"user_chest_cm": rng.normal(95, 9, 3000)})
        for shift in (0.0, 5.0):
            cur = pd.DataFrame({"user_chest_cm": rng.normal(95 + shift, 9, 1000)})
            append_history(scoped, detect_drift(ref, cur))
        history = read_history(scoped)
        assert len(history) == 2 and history["drifted"].tolist() == [False, True]
        assert len(drift_table(history)) <= 2
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()
    assert TABLE == "drift_history"
