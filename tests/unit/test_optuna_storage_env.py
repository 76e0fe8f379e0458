"""The local profile tunes in memory unless FITML_OPTUNA_STORAGE names a storage to watch."""

from __future__ import annotations

from pathlib import Path

from ml_pipeline.settings import load_settings


def test_local_storage_is_in_memory_unless_named(tmp_path: Path) -> None:
    assert load_settings("local", tmp_path, env={}).optuna.storage is None
    url = f"sqlite:///{tmp_path}/optuna.db"
    named = load_settings("local", tmp_path, env={"FITML_OPTUNA_STORAGE": url})
    assert named.optuna.storage == url
