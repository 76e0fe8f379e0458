"""MLflow tracking and the model registry: where fitml's models are logged, found and promoted.

Both models are logged as MLflow pyfunc models whose ``predict`` returns what serving needs
(probabilities for the fit model, not labels; the size index for the size model). The fitted
encoder and the booster travel inside one artifact directory. New versions get the alias
``challenger``; :func:`promote` moves ``champion``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel

from ml_pipeline.settings import Settings

if TYPE_CHECKING:
    from training.compiled import PredictCost
    from training.models import FitModel, SizeModel

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
REQUEST_ROWS: Final = 17
"""Rows one ``/recommend`` scores at most: a product's longest size chart (numeric 00..24)."""
_PIP_REQUIREMENTS: Final = ["lightgbm==4.7.0", "pandas>=2.3,<2.4", "numpy>=2"]


class FitmlPyfunc(PythonModel):
    """An MLflow pyfunc around a fitml model directory (encoder + booster)."""

    def load_context(self, context: Any) -> None:
        """Load the fitml model from the logged artifact directory."""
        from training.models import FitModel, SizeModel

        directory = Path(context.artifacts["model_dir"])
        kind = (directory / "model.json").read_text()
        self.model: FitModel | SizeModel = (
            FitModel.load(directory) if '"kind": "fit"' in kind else SizeModel.load(directory)
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Fit model: a frame of p_too_small, p_fit, p_too_large; size model: best_size_index."""
        from training.models import FitModel

        if isinstance(self.model, FitModel):
            proba = self.model.predict_proba(model_input)
            return pd.DataFrame(proba, columns=["p_too_small", "p_fit", "p_too_large"])
        return pd.DataFrame({"best_size_index": self.model.predict(model_input)})


def configure(settings: Settings) -> mlflow.MlflowClient:
    """Point MLflow at the profile's tracking store and make sure the experiment exists.

    The experiment's artifact location is set explicitly, so nothing lands in ``./mlruns``.
    """
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    if settings.mlflow.registry_uri:
        mlflow.set_registry_uri(settings.mlflow.registry_uri)
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(settings.mlflow.experiment) is None:
        Path(settings.mlflow.artifact_location).mkdir(parents=True, exist_ok=True)
        location = settings.mlflow.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        client.create_experiment(settings.mlflow.experiment, artifact_location=location)
    mlflow.set_experiment(settings.mlflow.experiment)
    return client


@dataclass(frozen=True)
class LoggedModel:
    """A logged and registered model version."""

    name: str
    version: str
    model_uri: str
    run_id: str


def log_and_register(
    model: FitModel | SizeModel,
    registered_name: str,
    example: pd.DataFrame,
    *,
    alias: str = CHALLENGER,
) -> LoggedModel:
    """Log ``model`` into the active run, register a new version and give it ``alias``."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    cost = _predict_cost(model, example)
    example = example[list(model.features)].head(5).reset_index(drop=True)
    wrapper = FitmlPyfunc()
    wrapper.model = model
    signature = infer_signature(example, wrapper.predict(None, example))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save(Path(tmp) / "model")
        info = mlflow.pyfunc.log_model(
            name=f"{model.kind}_model",
            python_model=FitmlPyfunc(),
            artifacts={"model_dir": str(model_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=_PIP_REQUIREMENTS,
            registered_model_name=registered_name,
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in cost.as_tags().items():
        client.set_model_version_tag(registered_name, version, key, value)
    client.set_registered_model_alias(registered_name, alias, version)
    return LoggedModel(registered_name, version, info.model_uri, run.info.run_id)


def _predict_cost(model: FitModel | SizeModel, rows: pd.DataFrame) -> PredictCost:
    """What one request costs this model: :data:`REQUEST_ROWS` rows scored in one call.

    Recorded as tags of the registered version (``predict_lightgbm_us``, ``predict_trees``;
    ``predict_compiled_us`` too when ``FITML_COMPILED=1``, as compiling takes minutes on a
    large model), so a slower champion shows in the registry before it is served.
    """
    from training.compiled import compiled_enabled, predict_cost

    sample = rows.head(REQUEST_ROWS)
    sample = pd.concat([sample] * -(-REQUEST_ROWS // max(1, len(sample))), ignore_index=True)
    matrix = model.encoder_.matrix(sample.head(REQUEST_ROWS))
    compiled = None
    if compiled_enabled():
        with tempfile.TemporaryDirectory() as tmp:
            compiled = type(model).load(model.save(Path(tmp) / "model")).compile().compiled_
            return predict_cost(model.booster_, matrix, compiled)
    return predict_cost(model.booster_, matrix, compiled)


def load_model(name: str, alias: str = CHAMPION) -> tuple[FitModel | SizeModel, str]:
    """Load the fitml model registered as ``name@alias``.

    Returns:
        The model and its registered version.
    """
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(name, alias)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    wrapper = pyfunc.unwrap_python_model()
    return wrapper.model, str(version.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version of ``name`` holding ``alias``, or None when no version has it."""
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    """Give ``alias`` to version ``version`` of ``name``."""
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
