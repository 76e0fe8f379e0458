"""``fitml pipeline run``: every stage of the loop, in order, into one work directory.

generate -> ingest -> features (apply, materialise) -> training set -> tune + train (MLflow,
registered as challenger) -> promotion gate -> drift report of the latest window against the
training window -> example requests -> a printed summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ml_pipeline.console import emit, library_output
from ml_pipeline.settings import Settings


@dataclass(frozen=True)
class PipelineConfig:
    """How much synthetic data the run makes and how hard it tunes."""

    users: int = 4000
    products: int = 300
    events: int = 80_000
    seed: int = 0
    scenario: str = "baseline"
    n_trials: int | None = None
    timeout_s: float | None = None
    regenerate: bool = False
    if_drift: bool = False
    """Retrain (train, evaluate, promote through the gate) only when the champion's drift
    verdict says so; without a champion, always train."""


@dataclass
class PipelineSummary:
    """What the run did, stage by stage, and where its outputs are."""

    workdir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def render(self, settings: Settings) -> str:
        """The summary printed at the end of the run."""
        m = self.metrics

        def num(key: str) -> str:
            value = m.get(key)
            return "n/a" if value is None else f"{value:.3f}"

        total = sum(self.seconds.values())
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        drifted = ", ".join(self.drift.get("drifted_columns") or [])
        promoted = "champion is now " if self.promotion.get("promoted") else "kept: "
        lines = [
            "",
            f"fitml pipeline: done in {total:.0f} s ({stages})",
            f"  ingested: {_total(self.ingest.get('accepted'))} rows accepted, "
            f"{_total(self.ingest.get('quarantined'))} quarantined (see quarantine/)",
            "",
            f"  test window: {m.get('n_test')} try-on events (the last 15% by time)",
            "  fit model: P(too small, fit, too large)    mean AUC   log loss",
            f"    LightGBM (tuned)                          {num('fit_mean_auc')}      "
            f"{num('fit_log_loss')}",
            f"    logistic regression                       {num('logreg_mean_auc')}      "
            f"{num('logreg_log_loss')}",
            f"    oracle (the generator's probabilities)    {num('oracle_mean_auc')}      "
            f"{num('oracle_log_loss')}",
            "  recommended size                            exact    within 1  agrees w/ feedback",
        ]
        for label, prefix, agree in (
            ("fitml (fit + size model)", "rec", "feedback_agreement"),
            ("logistic regression", "logreg", "logreg_feedback_agreement"),
            ("the shopper's usual size", "usual", "usual_feedback_agreement"),
            ("size-chart rule", "chart", "chart_feedback_agreement"),
            ("oracle (true best size)", "oracle", "oracle_feedback_agreement"),
        ):
            exact = "1.000" if prefix == "oracle" else num(f"{prefix}_exact_accuracy")
            within = "1.000" if prefix == "oracle" else num(f"{prefix}_within_one")
            lines.append(f"    {label:<42}{exact}    {within}     {num(agree)}")
        lines += [
            "",
            f"  promotion: {promoted}{self.promotion.get('challenger_versions')} "
            f"({self.promotion.get('reason')})",
            "  drift (latest window vs training window): "
            + (f"DETECTED in {drifted}" if self.drift.get("drift_detected") else "none"),
            "",
            f"  MLflow runs:   mlflow ui --backend-store-uri {settings.mlflow.tracking_uri} "
            "--port 5000",
            f"                 then open {self.paths.get('mlflow_runs')}",
            f"  drift report:  {self.paths.get('drift_html')}",
            f"  analysts:      fitml monitoring-ui --workdir {settings.workdir}  (drift over time)",
            f"  serve:         {_serve_command(settings)}",
            "  try it:        curl -s -X POST http://127.0.0.1:3000/recommend "
            "-H 'Content-Type: application/json' "
            f'-d "$(head -1 {self.paths.get("examples")})"',
        ]
        return "\n".join(lines)


def _serve_command(settings: Settings) -> str:
    """The command that serves this run's champion, with the run's profile."""
    if settings.profile == "local":
        return f"fitml serve --workdir {settings.workdir}   (or: make serve)"
    return f"fitml serve --profile {settings.profile} --workdir {settings.workdir}"


def _total(counts: Any) -> Any:
    return counts.get("total") if isinstance(counts, dict) else counts


def write_examples(settings: Settings, events: pd.DataFrame, path: Path, n: int = 5) -> Path:
    """Write request bodies ``POST /recommend`` accepts: known users, and one guest."""
    recent = events.sort_values("event_timestamp").tail(200)
    picks = recent.drop_duplicates("user_id").tail(n)
    bodies: list[dict[str, Any]] = [
        {"user_id": str(r.user_id), "product_id": str(r.product_id)} for r in picks.itertuples()
    ]
    if len(picks):
        bodies.append(
            {
                "product_id": str(picks.iloc[0].product_id),
                "measurements": {
                    "height_cm": 168.0,
                    "chest_cm": 94.0,
                    "waist_cm": 78.0,
                    "hips_cm": 100.0,
                },
                "fit_preference": "regular",
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


def retrain_decision(settings: Settings) -> tuple[bool, dict[str, Any]]:
    """The retrain trigger: should the models be retrained on the work directory's data now?

    Compares the window after the champion's training window with that training window, as
    a scheduled check (:func:`evaluation.monitoring.drift_check`: verdict, report, history,
    the analysts' workspace and the MLflow monitoring experiment).

    Returns:
        Whether to retrain, and the verdict as a dict (``{"reason": ...}`` without a champion).
    """
    from evaluation.monitoring import drift_check, has_champion

    if not has_champion(settings):
        return True, {"drift_detected": None, "reason": "no champion yet: train one"}
    verdict = drift_check(settings, scheduled=True)
    return verdict.drift_detected, verdict.to_dict()


def run_pipeline(settings: Settings, config: PipelineConfig = PipelineConfig()) -> PipelineSummary:
    """Run every stage into ``settings.workdir`` and return what happened.

    With ``config.if_drift`` the stages after the training set run only when
    :func:`retrain_decision` says so; otherwise the run stops after the drift check.
    """
    emit("note", f"fitml pipeline into {settings.workdir} (loading the libraries ...)")
    from evaluation.monitoring import drift_check, scheduled_checks
    from features import store
    from ml_pipeline.ingest import ingest_synthetic
    from ml_pipeline.synth import generate
    from training import registry
    from training.promote import promote
    from training.train import train, training_set_path

    summary = PipelineSummary(workdir=settings.workdir)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    planned = [
        "generate",
        "ingest",
        "features",
        "training_set",
        *(["drift_check"] if config.if_drift else []),
        "train",
        "promote",
        "drift",
    ]

    def stage(name: str) -> _Timer:
        return _Timer(summary.seconds, name, planned)

    raw = settings.workdir / "raw"
    with stage("generate"):
        if config.regenerate or not (raw / "events.parquet").is_file():
            generate(
                raw,
                users=config.users,
                products=config.products,
                events=config.events,
                seed=config.seed,
                scenario=config.scenario,
            )
    with stage("ingest"):
        ingested = ingest_synthetic(raw, settings.workdir)
        summary.ingest = json.loads(ingested.to_json())
    with stage("features"):
        store.apply(settings)
        with library_output("Feast materialize"):
            store.materialize(settings)
    with stage("training_set"):  # written to its file; training reads what it needs of it
        training_set_path(settings, rebuild=True)
    if config.if_drift:
        with stage("drift_check"):
            retrain, verdict_dict = retrain_decision(settings)
            summary.drift = verdict_dict
        if not retrain:
            summary.promotion = {
                "promoted": False,
                "challenger_versions": None,
                "reason": "no drift against the champion: retraining skipped",
            }
            summary.paths.update(
                drift_html=str(settings.reports_dir / "drift_report.html"),
                drift_json=str(settings.reports_dir / "drift_verdict.json"),
            )
            summary.paths["examples"] = str(
                write_examples(
                    settings,
                    store.read_offline(settings, "events"),
                    settings.workdir / "examples" / "recommend.jsonl",
                )
            )
            summary.paths["mlflow_runs"] = str(registry.experiment_runs_url(settings))
            (settings.reports_dir / "pipeline_summary.json").write_text(
                json.dumps(summary.__dict__, indent=2, default=str)
            )
            return summary
    with stage("train"):
        result = train(settings, n_trials=config.n_trials, timeout_s=config.timeout_s)
        summary.metrics = result.metrics
    with stage("promote"):
        decision = promote(settings)
        summary.promotion = decision.__dict__
    with stage("drift"):
        html = settings.reports_dir / "drift_report.html"
        json_out = settings.reports_dir / "drift_verdict.json"
        # the (possibly new) champion's training window against the window after it
        verdict = drift_check(settings, json_out=json_out, html_out=html)
        summary.drift = verdict.to_dict()
        # the analysts' page: the same period as weekly checks, over data time
        summary.drift["scheduled_checks"] = [
            {"window_end": v.current_window.get("end"), "drift_detected": v.drift_detected}
            for v in scheduled_checks(settings, every="7D")
        ]
        summary.paths.update(drift_html=str(html), drift_json=str(json_out))
    events = store.read_offline(settings, "events")
    examples = write_examples(settings, events, settings.workdir / "examples" / "recommend.jsonl")
    summary.paths["examples"] = str(examples)
    summary.paths["mlflow_runs"] = str(registry.experiment_runs_url(settings))
    (settings.reports_dir / "pipeline_summary.json").write_text(
        json.dumps(summary.__dict__, indent=2, default=str)
    )
    return summary


STAGE_TITLES: dict[str, str] = {
    "generate": "synthetic data",
    "ingest": "ingest: validate, standardise units, quarantine",
    "features": "Feast feature store: apply, materialise",
    "training_set": "point-in-time training set",
    "drift_check": "drift check against the champion",
    "train": "tune (Optuna) and train both models, log to MLflow",
    "promote": "promotion gate",
    "drift": "drift report: latest window vs training window",
}
"""The header of each stage, as the run shows it."""


class _Timer:
    """Times one stage into ``sink`` and reports its header and its time (ml_pipeline.console)."""

    def __init__(self, sink: dict[str, float], name: str, planned: list[str]) -> None:
        self.sink, self.name = sink, name
        self.tag = f"[{planned.index(name) + 1}/{len(planned)}]" if name in planned else "[-]"

    def __enter__(self) -> None:
        title = STAGE_TITLES.get(self.name, self.name)
        emit("stage_start", f"{self.tag} {title} ...", stage=self.name)
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.sink[self.name] = time.perf_counter() - self.started
        if exc[0] is None:
            emit(
                "stage_end",
                f"{self.tag} {self.name} done in {self.sink[self.name]:.1f} s",
                stage=self.name,
                seconds=self.sink[self.name],
            )
