"""The MLflow registry follows the work directory it is configured for."""

from __future__ import annotations

from pathlib import Path


def test_configure_points_the_registry_at_the_work_directory_after_another(
    tmp_path: Path,
) -> None:
    # MLflow keeps a registry URI set earlier in the process (set_registry_uri(None) does not
    # clear it): a second work directory's registry must not be the first one's
    import mlflow

    from ml_pipeline.settings import load_settings
    from training import registry

    first = load_settings("local", tmp_path / "a", env={})
    second = load_settings("local", tmp_path / "b", env={})
    for settings in (first, second):
        settings.workdir.mkdir(parents=True)
    try:
        mlflow.set_registry_uri(first.mlflow.tracking_uri)
        mlflow.set_registry_uri(None)
        registry.configure(second)
        assert mlflow.get_registry_uri() == second.mlflow.tracking_uri
    finally:
        mlflow.set_tracking_uri(None)
