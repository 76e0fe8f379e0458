from __future__ import annotations

from pathlib import Path

import pytest

from ml_pipeline.settings import SettingsError, expand_env, load_settings


def test_local_profile_puts_everything_under_the_workdir(tmp_path: Path) -> None:
    settings = load_settings("local", tmp_path / "w", env={})
    assert settings.profile == "local"
    assert settings.workdir == (tmp_path / "w").resolve()
    assert settings.mlflow.tracking_uri == f"sqlite:///{settings.workdir}/mlflow.db"
    assert settings.mlflow.artifact_location.startswith(str(settings.workdir))
    assert settings.optuna.n_trials == 6
    assert settings.feast.config_file.is_file()


def test_environment_overrides_a_default(tmp_path: Path) -> None:
    assert load_settings("local", tmp_path, env={"FITML_TRIALS": "3"}).optuna.n_trials == 3


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "mlflow:\n  tracking_uri: sqlite:///x.db\n  artifact_location: x\n  colour: red\n"
        "feast:\n  config_file: x.yaml\n"
    )
    with pytest.raises(SettingsError) as err:
        load_settings("local", tmp_path, profile_file=bad, env={})
    assert "bad.yaml" in str(err.value)
    assert "mlflow.colour" in str(err.value)


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="local, prod"):
        load_settings("staging", tmp_path)


def test_unset_variable_without_default_is_named() -> None:
    with pytest.raises(SettingsError, match="FITML_NOPE"):
        expand_env({"a": ["${FITML_NOPE}"]}, {})
    assert expand_env({"a": "${X:-1}/${Y}"}, {"Y": "2"}) == {"a": "1/2"}


def test_prod_profile_reads_servers_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        "prod", tmp_path, env={"FITML_MLFLOW_TRACKING_URI": "postgresql+psycopg://h/db"}
    )
    assert settings.mlflow.tracking_uri == "postgresql+psycopg://h/db"
    assert settings.optuna.storage and settings.optuna.storage.startswith("postgresql")


def test_prod_profile_gives_mlflow_and_optuna_databases_of_their_own(tmp_path: Path) -> None:
    settings = load_settings("prod", tmp_path, env={})
    assert settings.mlflow.tracking_uri.endswith("/fitml_mlflow")
    assert settings.optuna.storage and settings.optuna.storage.endswith("/fitml_optuna")


def test_mlflow_and_optuna_in_one_database_is_refused_by_name(tmp_path: Path) -> None:
    same = {
        "FITML_MLFLOW_TRACKING_URI": "postgresql+psycopg://postgres@localhost:5432/app",
        "FITML_OPTUNA_STORAGE": "postgresql://postgres@127.0.0.1:5432/app",
    }
    with pytest.raises(SettingsError, match=r"same database \(127.0.0.1:5432/app\).*OPTUNA"):
        load_settings("prod", tmp_path, env=same)
    apart = {**same, "FITML_OPTUNA_STORAGE": "postgresql://postgres@127.0.0.1:5432/optuna"}
    settings = load_settings("prod", tmp_path, env=apart)
    assert settings.optuna.storage == apart["FITML_OPTUNA_STORAGE"]


def test_local_tuning_has_no_time_ceiling_unless_asked(tmp_path: Path) -> None:
    """The trial count alone decides, so figures repeat however loaded the machine is."""
    assert load_settings("local", tmp_path, env={}).optuna.timeout_s is None
    capped = load_settings("local", tmp_path, env={"FITML_TUNING_TIMEOUT_S": "600"})
    assert capped.optuna.timeout_s == 600.0
    with pytest.raises(SettingsError, match=r"optuna\.timeout_s"):
        load_settings("local", tmp_path, env={"FITML_TUNING_TIMEOUT_S": "ten minutes"})
