"""``fitml promote``: the gate between the challenger and the champion.

The challenger replaces the champion only when it beats it on the held-out test window by
more than the bootstrap noise: the lower end of a one-sided 95% bootstrap interval of the
difference in the fit model's mean AUC must be above ``min_gain``. With no champion yet, the
challenger is promoted. The decision and its numbers are logged to MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlflow
import numpy as np
import pandas as pd

from evaluation import metrics
from evaluation.experiment import ExperimentReport, online_gate
from ml_pipeline.settings import Settings
from training import registry
from training.models import FitModel
from training.train import TIME_COLUMN, load_training_set, training_columns


@dataclass(frozen=True)
class Decision:
    """What the gate decided and why."""

    promoted: bool
    reason: str
    challenger_versions: dict[str, str]
    champion_versions: dict[str, str] | None
    challenger_auc: float | None = None
    champion_auc: float | None = None
    gain_low: float | None = None
    n_test: int = 0


def _mean_auc(y: np.ndarray, proba: np.ndarray) -> float:
    return metrics.multiclass_auc(y, proba)["mean_auc"]


def bootstrap_gain(
    y: np.ndarray, new: np.ndarray, old: np.ndarray, *, rounds: int = 200, seed: int = 0
) -> np.ndarray:
    """Bootstrap distribution of mean AUC(new) - mean AUC(old) over resampled test rows."""
    rng = np.random.default_rng(seed)
    gains = np.empty(rounds)
    for i in range(rounds):
        at = rng.integers(0, len(y), len(y))
        gains[i] = _mean_auc(y[at], new[at]) - _mean_auc(y[at], old[at])
    return gains


def promote(
    settings: Settings,
    *,
    min_gain: float = 0.0,
    force: bool = False,
    online: ExperimentReport | None = None,
) -> Decision:
    """Move ``champion`` to the challenger versions if the gate says so (or ``force``).

    Args:
        settings: the run's settings.
        min_gain: the offline gate's margin on the test window's mean AUC.
        force: promote without a gate.
        online: a live experiment's report (:func:`evaluation.experiment.workdir_report`):
            when given, the online gate (:func:`evaluation.experiment.online_gate`) decides
            instead of the test window.
    """
    registry.configure(settings)
    names = {
        "fit_model": settings.mlflow.fit_model_name,
        "size_model": settings.mlflow.size_model_name,
    }
    challenger = {k: registry.alias_version(n, registry.CHALLENGER) for k, n in names.items()}
    if any(v is None for v in challenger.values()):
        raise LookupError("no challenger to promote: run `fitml train` first")
    champion = {k: registry.alias_version(n, registry.CHAMPION) for k, n in names.items()}
    chal = {k: str(v) for k, v in challenger.items()}
    if all(v is None for v in champion.values()) or force:
        reason = "forced" if force else "no champion yet"
        decision = Decision(True, reason, chal, None)
    elif champion == challenger:
        decision = Decision(False, "the challenger already is the champion", chal, None)
    elif online is not None:
        promoted, why = online_gate(online)
        champ = {k: str(v) for k, v in champion.items()}
        decision = Decision(promoted, f"online: {why}", chal, champ, n_test=online.n_feedback)
    else:
        champ = {k: str(v) for k, v in champion.items()}
        run = mlflow.MlflowClient().get_model_version(names["fit_model"], chal["fit_model"]).run_id
        if run is None:
            raise LookupError(f"challenger {chal} has no training run to take its test window from")
        test_start = pd.Timestamp(mlflow.get_run(run).data.params["test_start"])
        test = load_training_set(  # the test window, with what the fit model reads
            settings, columns=training_columns(), filters=[(TIME_COLUMN, ">=", test_start)]
        )
        new_model, _ = registry.load_model(names["fit_model"], registry.CHALLENGER)
        old_model, _ = registry.load_model(names["fit_model"], registry.CHAMPION)
        assert isinstance(new_model, FitModel) and isinstance(old_model, FitModel)
        y = FitModel.labels(test["outcome"])
        new_p, old_p = new_model.predict_proba(test), old_model.predict_proba(test)
        gains = bootstrap_gain(y, new_p, old_p, seed=settings.seed)
        low = float(np.quantile(gains, 0.05))
        promoted = low > min_gain
        decision = Decision(
            promoted,
            f"gain 5% bound {low:+.4f} {'>' if promoted else '<='} {min_gain}",
            chal,
            champ,
            challenger_auc=_mean_auc(y, new_p),
            champion_auc=_mean_auc(y, old_p),
            gain_low=low,
            n_test=len(test),
        )
    if decision.promoted:
        for key, name in names.items():
            registry.set_alias(name, registry.CHAMPION, chal[key])
    result = "promoted to champion" if decision.promoted else "kept as challenger"
    description = (
        f"Promotion gate: challenger {decision.challenger_versions} {result} "
        f"({decision.reason})"
        + (
            f"; champion was {decision.champion_versions}, mean AUC "
            f"{decision.champion_auc:.4f} -> {decision.challenger_auc:.4f} on "
            f"{decision.n_test} held-out events"
            if decision.champion_auc is not None and decision.challenger_auc is not None
            else ""
        )
        + "."
    )
    tags = {
        "fitml.kind": "promote",
        "fitml.gate": "promoted" if decision.promoted else "kept",
        registry.DESCRIPTION_TAG: description,
    }
    with mlflow.start_run(run_name="promote", tags=tags) as run:
        mlflow.log_dict(asdict(decision), "promotion.json")
        mlflow.log_param("promoted", decision.promoted)
        if decision.gain_low is not None:
            mlflow.log_metric("gain_low", decision.gain_low)
    if decision.reason != "the challenger already is the champion":
        registry.record_gate(
            chal,
            names,
            promoted=decision.promoted,
            reason=decision.reason,
            decision_run_id=run.info.run_id,
        )
    return decision
