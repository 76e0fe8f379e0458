"""The prediction service's one check before its workers start: can it read its features?"""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_pipeline.errors import FeatureStoreUnavailable
from ml_pipeline.settings import load_settings
from serving.online_features import check_reachable
from serving.session.testing import free_port


def test_a_work_dir_without_a_feature_store_is_named(tmp_path: Path) -> None:
    settings = load_settings("local", tmp_path, env={})
    with pytest.raises(FeatureStoreUnavailable) as caught:
        check_reachable(settings)
    message = str(caught.value)
    assert str(tmp_path / "feast" / "registry.db") in message and "FITML_WORKDIR" in message
    (tmp_path / "feast").mkdir()
    (tmp_path / "feast" / "registry.db").write_bytes(b"")
    (tmp_path / "feast" / "online_store.db").write_bytes(b"")
    check_reachable(settings)  # both files there: nothing to say


def test_unreachable_servers_are_named_with_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = free_port()
    env = {
        "FITML_FEAST_REGISTRY_URL": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x",
        "FITML_FEAST_OFFLINE_URL": f"postgresql://postgres@127.0.0.1:{closed}/x",
        "FITML_REDIS": f"127.0.0.1:{closed},db=3",
    }
    for name, value in env.items():  # the feature store reads them, as Feast does
        monkeypatch.setenv(name, value)
    with pytest.raises(FeatureStoreUnavailable) as caught:
        check_reachable(load_settings("prod", tmp_path, env=env))
    message = str(caught.value)
    assert f"Redis online store at 127.0.0.1:{closed}" in message
    assert f"SQL registry at 127.0.0.1:{closed}" in message and "FITML_REDIS" in message
