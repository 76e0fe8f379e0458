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

from ml_pipeline.console import library_output
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


EXPERIMENT_KIND_TAG: Final = "mlflow.experimentKind"
"""The experiment tag the MLflow UI reads to pick its view (model training vs GenAI)."""
MODEL_TRAINING: Final = "custom_model_development"
DESCRIPTION_TAG: Final = "mlflow.note.content"
"""Where the MLflow UI shows (and edits) a run's or an experiment's description."""
EXPERIMENT_DESCRIPTIONS: Final = {
    "training": "fitml training runs: each `train` run tunes (nested Optuna trials) and fits the "
    "fit model and the size model, evaluates them on the held-out window beside the baselines "
    "and registers them as challenger; `promote` runs hold the gate's decisions.",
    "monitoring": "fitml scheduled drift checks of the champion (one run per checked window), "
    "kept apart from the training runs.",
}


MLFLOW_UI: Final = "http://127.0.0.1:5000"
"""Where ``mlflow ui --port 5000`` answers (the README's command)."""
MODEL_TRAINING_VIEW: Final = "workflowType=machine_learning"
"""The MLflow UI's query parameter that selects its "Model training" views."""


def runs_url(experiment_id: str, ui: str = MLFLOW_UI) -> str:
    """The MLflow UI page of an experiment's runs table, in the UI's model-training views.

    MLflow 3.17's UI does not read the experiment's ``mlflow.experimentKind`` tag to choose
    between its GenAI and model-training views: a "GenAI / Model training" switch in its
    sidebar does, remembered per browser and GenAI by default, so a fresh browser opens any
    experiment on the GenAI overview ("Traces 0"). The ``workflowType`` parameter of this
    link sets the switch, and the experiment then opens on its runs.
    """
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"


def experiment_runs_url(settings: Settings, ui: str = MLFLOW_UI) -> str | None:
    """:func:`runs_url` of the settings' training experiment (None before its first run)."""
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    return None if experiment is None else runs_url(str(experiment.experiment_id), ui)


def ensure_experiment(settings: Settings, name: str, *, kind: str = "training") -> str:
    """The id of experiment ``name``, created with the profile's artifact location if missing.

    The experiment is marked as model training (``mlflow.experimentKind``, what MLflow's API
    and other MLflow UIs read; MLflow 3.17's UI also needs :func:`runs_url`'s link) and
    carries a description.
    """
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        Path(settings.mlflow.artifact_location).mkdir(parents=True, exist_ok=True)
        location = settings.mlflow.artifact_location
        if "://" not in location:
            location = Path(location).resolve().as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
        tags: dict[str, str] = {}
    else:
        experiment_id = experiment.experiment_id
        tags = experiment.tags
    if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    if DESCRIPTION_TAG not in tags and kind in EXPERIMENT_DESCRIPTIONS:
        client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, EXPERIMENT_DESCRIPTIONS[kind])
    return str(experiment_id)


def configure(settings: Settings) -> mlflow.MlflowClient:
    """Point MLflow at the profile's tracking store and make sure the experiment exists.

    The experiment's artifact location is set explicitly, so nothing lands in ``./mlruns``;
    it is marked as model training (:func:`ensure_experiment`).
    """
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    # always set: MLflow keeps a registry URI set earlier in the process (set_registry_uri(None)
    # does not clear it), and the registry would then not follow the tracking store
    mlflow.set_registry_uri(settings.mlflow.registry_uri or settings.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    ensure_experiment(settings, settings.mlflow.experiment)
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
    with tempfile.TemporaryDirectory() as tmp, library_output("MLflow log_model"):
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


def _metric(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "n/a" if value is None else f"{float(value):.3f}"


def describe_training(
    run_id: str,
    fit: LoggedModel,
    size: LoggedModel,
    metrics: dict[str, Any],
    *,
    n_train: int,
    test_start: Any,
    trials: dict[str, int],
) -> None:
    """Write what a training run did onto the run and both new model versions.

    The run's description says what was tuned and trained and how it scored beside the
    baselines; each version's description says what the model predicts, where it came from
    and its held-out figures. The gate's decision is added later (:func:`record_gate`).
    """
    client = mlflow.MlflowClient()
    window = f"events before {str(test_start)[:10]}"
    figures = (
        f"fit model mean AUC {_metric(metrics, 'fit_mean_auc')} (logistic regression "
        f"{_metric(metrics, 'logreg_mean_auc')}); recommended size exact "
        f"{_metric(metrics, 'rec_exact_accuracy')}, within one "
        f"{_metric(metrics, 'rec_within_one')}, agrees with feedback "
        f"{_metric(metrics, 'feedback_agreement')}"
    )
    client.set_tag(
        run_id,
        DESCRIPTION_TAG,
        f"Tuned with Optuna ({trials['fit']} trials for the fit model, {trials['size']} for "
        f"the size model) and trained on {n_train:,} try-ons ({window}); scored on the "
        f"held-out window of {metrics.get('n_test')} events: {figures}. Registered "
        f"{fit.name} v{fit.version} and {size.name} v{size.version} as challenger; the "
        "promotion gate decides on champion.",
    )
    what = {
        fit.name: "Fit model: P(too small, fit, too large) for a (shopper, product, size).",
        size.name: "Size model: the best size index of a product for a shopper.",
    }
    for model in (fit, size):
        client.update_model_version(
            model.name,
            model.version,
            description=f"{what[model.name]} Trained in run {run_id} on {n_train:,} try-ons "
            f"({window}); held-out window: {figures}. Gate: not yet decided.",
        )
        client.set_model_version_tag(model.name, model.version, "fitml.gate", "pending")


def record_gate(
    versions: dict[str, str],
    names: dict[str, str],
    *,
    promoted: bool,
    reason: str,
    decision_run_id: str,
) -> None:
    """Write the promotion gate's decision onto the challenger versions and their training run.

    Args:
        versions: the challenger's version per model key (``fit_model``, ``size_model``).
        names: the registered name per model key.
        promoted: whether the challenger became champion.
        reason: the gate's reason (e.g. the bootstrap bound of the AUC gain).
        decision_run_id: the ``promote`` run that holds the decision.
    """
    client = mlflow.MlflowClient()
    result = "promoted to champion" if promoted else "kept as challenger (not promoted)"
    training_runs = set()
    for key, version in versions.items():
        name = names[key]
        mv = client.get_model_version(name, version)
        client.set_model_version_tag(
            name, version, "fitml.gate", "promoted" if promoted else "kept"
        )
        client.set_model_version_tag(name, version, "fitml.gate_reason", reason)
        client.set_model_version_tag(name, version, "fitml.gate_run_id", decision_run_id)
        text = (mv.description or "").replace("Gate: not yet decided.", "").rstrip()
        client.update_model_version(name, version, description=f"{text} Gate: {result} ({reason}).")
        if mv.run_id:
            training_runs.add(mv.run_id)
    for run_id in training_runs:
        client.set_tag(run_id, "fitml.gate", "promoted" if promoted else "kept")
        client.set_tag(run_id, "fitml.gate_reason", reason)
