"""The ``fitml`` command line: a thin layer over the plain function of each stage."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_pipeline.settings import DEFAULT_WORKDIR, Settings, SettingsError, load_settings

app = typer.Typer(
    help="fitml: size and fit recommendations for live try-on sessions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Synthetic data.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature store.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Every stage, in order.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Public benchmarks.", no_args_is_help=True)
ingest_app = typer.Typer(
    help="Validate and load raw data into the offline store.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(ingest_app, name="ingest")
app.add_typer(features_app, name="features")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(benchmark_app, name="benchmark")

Workdir = Annotated[
    Path, typer.Option("--workdir", "-w", help="Where everything the run writes lives.")
]
Profile = Annotated[str, typer.Option("--profile", "-p", help="Settings profile: local or prod.")]


def _settings(workdir: Path, profile: str) -> Settings:
    return load_settings(profile, workdir)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Directory to write the tables to.")],
    users: Annotated[int, typer.Option(min=1)] = 4000,
    products: Annotated[int, typer.Option(min=1)] = 300,
    events: Annotated[int, typer.Option(min=1)] = 80_000,
    seed: int = 0,
    scenario: Annotated[
        str, typer.Option(help="baseline, population_shift, runs_small, unit_bug")
    ] = "baseline",
) -> None:
    """Generate synthetic users, products with size charts, try-on events and ground truth."""
    from ml_pipeline.synth import generate

    paths = generate(
        out, users=users, products=products, events=events, seed=seed, scenario=scenario
    )
    _echo_json({k: str(v) for k, v in paths.items()})


def _ingest(
    kind: str, path: Path, workdir: Path, summary: Path | None, max_reject_rate: float | None
) -> None:
    from ml_pipeline import ingest

    func = {
        "synthetic": ingest.ingest_synthetic,
        "renttherunway": ingest.ingest_renttherunway,
        "modcloth": ingest.ingest_modcloth,
    }[kind]
    from ml_pipeline.errors import RejectRateExceededError

    try:
        text = func(path, workdir, max_reject_rate=max_reject_rate).to_json()
        failure = None
    except RejectRateExceededError as exc:  # everything is written; report, then fail
        text, failure = exc.summary_json or "{}", exc
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(text)
    typer.echo(text)
    if failure is not None:
        raise failure


SummaryOpt = Annotated[Path | None, typer.Option("--summary", help="Write the JSON summary here.")]
RejectOpt = Annotated[
    float | None,
    typer.Option(
        "--max-reject-rate", help="Exit non-zero when more than this share is quarantined."
    ),
]


@ingest_app.command("synthetic")
def ingest_synthetic_cmd(
    path: Path,
    workdir: Workdir = DEFAULT_WORKDIR,
    summary: SummaryOpt = None,
    max_reject_rate: RejectOpt = None,
) -> None:
    """Ingest a directory written by `fitml data generate`."""
    _ingest("synthetic", path, workdir, summary, max_reject_rate)


@ingest_app.command("renttherunway")
def ingest_rtr_cmd(
    path: Path,
    workdir: Workdir = DEFAULT_WORKDIR,
    summary: SummaryOpt = None,
    max_reject_rate: RejectOpt = None,
) -> None:
    """Ingest a RentTheRunway JSON-lines file (.json, .json.gz, .jsonl.gz)."""
    _ingest("renttherunway", path, workdir, summary, max_reject_rate)


@ingest_app.command("modcloth")
def ingest_modcloth_cmd(
    path: Path,
    workdir: Workdir = DEFAULT_WORKDIR,
    summary: SummaryOpt = None,
    max_reject_rate: RejectOpt = None,
) -> None:
    """Ingest a ModCloth JSON-lines file."""
    _ingest("modcloth", path, workdir, summary, max_reject_rate)


@features_app.command("apply")
def features_apply(workdir: Workdir = DEFAULT_WORKDIR, profile: Profile = "local") -> None:
    """Compute the feature tables from ingested data and register the Feast definitions."""
    from features.store import apply

    result = apply(_settings(workdir, profile))
    _echo_json(result.__dict__)


@features_app.command("materialize")
def features_materialize(workdir: Workdir = DEFAULT_WORKDIR, profile: Profile = "local") -> None:
    """Load the latest feature values into the online store."""
    from features.store import materialize

    seconds = materialize(_settings(workdir, profile))
    typer.echo(f"materialised in {seconds:.1f} s")


@features_app.command("training-set")
def features_training_set(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
) -> None:
    """Build one point-in-time correct row per ingested event (applies the features first)."""
    from features.store import apply, training_set

    settings = _settings(workdir, profile)
    apply(settings)
    frame = training_set(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    typer.echo(f"{len(frame):,} rows x {frame.shape[1]} columns -> {out}")


@app.command()
def train(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    trials: Annotated[int | None, typer.Option(help="Optuna trials per model.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Tuning budget per model, seconds.")] = None,
) -> None:
    """Tune and train both models, log them to MLflow and register them as challenger."""
    from training.train import train as run_train

    result = run_train(_settings(workdir, profile), n_trials=trials, timeout_s=timeout)
    _echo_json(
        {
            "run_id": result.run_id,
            "fit_model": result.fit_model.__dict__,
            "size_model": result.size_model.__dict__,
            "metrics": result.metrics,
        }
    )


@app.command()
def evaluate(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    alias: Annotated[str, typer.Option(help="Registry alias to evaluate.")] = "champion",
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    """Score a registered model pair on the held-out window, beside the baselines."""
    from evaluation.evaluate import evaluate_alias

    metrics = evaluate_alias(_settings(workdir, profile), alias)
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2, default=str))
    _echo_json(metrics)


@app.command()
def promote(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    force: Annotated[bool, typer.Option(help="Promote without the gate.")] = False,
) -> None:
    """Promote the challenger to champion if it beats the champion beyond bootstrap noise."""
    from training.promote import promote as run_promote

    _echo_json(run_promote(_settings(workdir, profile), force=force).__dict__)


@app.command()
def serve(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    host: str = "127.0.0.1",
) -> None:
    """Serve the prediction service (BentoML) until stopped.

    Beyond 127.0.0.1 it needs a service token (FITML_SERVICE_TOKEN_FILE or FITML_SERVICE_TOKEN).
    """
    from serving.service_auth import ServiceTokens, check_bind

    check_bind(host, ServiceTokens.from_env())
    settings = _settings(workdir, profile)
    env = {
        **os.environ,
        "FITML_SERVE_HOST": host,
        "FITML_WORKDIR": str(settings.workdir),
        "FITML_PROFILE": profile,
        "BENTOML_HOME": str(settings.workdir / "bentoml"),
    }
    argv = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:FitmlService",
        "--host",
        host,
        "--port",
        str(port),
    ]
    os.execvpe(argv[0], argv, env)


@app.command("session-service")
def session_service(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    prediction_url: Annotated[
        str | None,
        typer.Option("--prediction-url", help="Prediction service (default: the profile's port)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 in a container).")
    ] = "127.0.0.1",
) -> None:
    """Serve the try-on session API (API keys from FITML_API_KEYS or FITML_API_KEYS_FILE)."""
    from serving.session.config import load_session_config
    from serving.session.server import serve as serve_sessions

    serve_sessions(
        load_session_config(_settings(workdir, profile), prediction_url), port=port, host=host
    )


@app.command("forget-user")
def forget_user_cmd(
    user_id: Annotated[str, typer.Argument(help="The shopper to forget.")],
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
) -> None:
    """Remove a shopper from the event store, offline + online feature stores and logs."""
    from serving.session.config import event_store_spec, table_prefix
    from serving.session.forget import forget_user

    settings = _settings(workdir, profile)
    report = forget_user(settings, user_id, event_store_spec(settings), table_prefix())
    _echo_json(report.as_dict())


@app.command()
def drift(
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Reference window: dataset dir, events/training/inference parquet, or "
            "inference log (default: the champion's training window)."
        ),
    ] = None,
    current: Annotated[
        Path | None,
        typer.Option(
            help="Current window, same kinds (default: the window after the champion's "
            "training window)."
        ),
    ] = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Verdict JSON (default: <workdir>/reports/drift_verdict.json)."
        ),
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Evidently report (default: <workdir>/reports/drift_report.html)."
        ),
    ] = None,
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="Feedback events (parquet) to join to an inference log "
            "(default: the ingested events)."
        ),
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit 3 when drift is detected.")
    ] = False,
    log_mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow/--no-mlflow", help="Log verdict and report beside the champion's run."
        ),
    ] = True,
    history: Annotated[
        bool,
        typer.Option(
            "--history/--no-history", help="Append the verdict to the drift history table."
        ),
    ] = True,
) -> None:
    """Compare a current window with a reference: Evidently HTML report + JSON verdict."""
    from evaluation.drift import drift_check

    settings = _settings(workdir, profile)
    json_out = json_out or settings.reports_dir / "drift_verdict.json"
    html_out = html_out or settings.reports_dir / "drift_report.html"
    verdict = drift_check(
        settings,
        reference,
        current,
        json_out=json_out,
        html_out=html_out,
        feedback=feedback,
        log_mlflow=log_mlflow,
        record_history=history,
    )
    typer.echo(verdict.summary())
    typer.echo(f"verdict: {json_out}\nreport:  {html_out}")
    gateway = os.environ.get("FITML_PUSHGATEWAY")
    if gateway:
        from evaluation.drift_metrics import push_drift_metrics

        push_drift_metrics(verdict, gateway)
        typer.echo(f"metrics: pushed to {gateway}")
    if fail_on_drift and verdict.drift_detected:
        raise typer.Exit(code=3)


@pipeline_app.command("run")
def pipeline_run(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    users: Annotated[int, typer.Option(min=1)] = 4000,
    products: Annotated[int, typer.Option(min=1)] = 300,
    events: Annotated[int, typer.Option(min=1)] = 80_000,
    seed: int = 0,
    trials: Annotated[int | None, typer.Option(help="Optuna trials per model.")] = None,
    regenerate: Annotated[
        bool, typer.Option(help="Generate new raw data even if some exists.")
    ] = False,
    if_drift: Annotated[
        bool,
        typer.Option(
            "--if-drift", help="Retrain and promote only when the champion's drift verdict says so."
        ),
    ] = False,
) -> None:
    """Run the whole loop: data, features, training, promotion, drift."""
    from ml_pipeline.pipeline import PipelineConfig, run_pipeline

    settings = _settings(workdir, profile)
    config = PipelineConfig(
        users=users,
        products=products,
        events=events,
        seed=seed,
        n_trials=trials,
        regenerate=regenerate,
        if_drift=if_drift,
    )
    summary = run_pipeline(settings, config)
    typer.echo(summary.render(settings))


@benchmark_app.command("renttherunway")
def benchmark_rtr(
    train_path: Annotated[
        Path, typer.Option("--train", help="RentTheRunway JSON lines to train on.")
    ],
    test_path: Annotated[
        Path | None, typer.Option("--test", help="Score here (default: a seeded 80/10/10 split).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
    seed: int = 0,
    trials: Annotated[int | None, typer.Option(help="Optuna trials.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Tuning budget, seconds.")] = None,
) -> None:
    """Train the fit model on RentTheRunway and score it beside the published results."""
    from evaluation.public_benchmark import format_table, run_renttherunway

    kwargs: dict[str, Any] = {"seed": seed, "json_out": json_out}
    if trials is not None:
        kwargs["n_trials"] = trials
    if timeout is not None:
        kwargs["timeout_s"] = timeout
    result = run_renttherunway(train_path, test_path, **kwargs)
    typer.echo(format_table(result))


def main() -> None:
    """Run the CLI; expected errors print one clear line and exit 2."""
    import warnings

    from ml_pipeline.errors import FitmlError
    from ml_pipeline.logs import configure_logging

    # Libraries' deprecation notices are for their developers, not for fitml's users.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    # JSON lines when run as a job (no terminal), short text lines on a terminal.
    configure_logging("fitml", logging.WARNING)
    try:
        app()
    except (FitmlError, SettingsError, FileNotFoundError, LookupError) as exc:
        typer.secho(f"fitml: error: {exc}", err=True, fg="red")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
