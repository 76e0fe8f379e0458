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
data_app = typer.Typer(help="Synthetic data and the data contract.", no_args_is_help=True)
features_app = typer.Typer(help="The Feast feature store.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Every stage, in order.", no_args_is_help=True)
benchmark_app = typer.Typer(help="Public benchmarks.", no_args_is_help=True)
experiment_app = typer.Typer(
    help="Online experiments: champion vs challenger.", no_args_is_help=True
)
ingest_app = typer.Typer(
    help="Validate and load raw data into the offline store.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(ingest_app, name="ingest")
app.add_typer(features_app, name="features")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(experiment_app, name="experiment")
bento_app = typer.Typer(help="The prediction service as a Bento.", no_args_is_help=True)
app.add_typer(bento_app, name="bento")
dead_letters_app = typer.Typer(
    help="Sessions and feedback a store refused: the session outbox's dead-letter table.",
    no_args_is_help=True,
)
app.add_typer(dead_letters_app, name="dead-letters")

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
    users: Annotated[int, typer.Option(min=1, help="Synthetic shoppers.")] = 4000,
    products: Annotated[int, typer.Option(min=1, help="Synthetic products.")] = 300,
    events: Annotated[int, typer.Option(min=1, help="Synthetic try-on events.")] = 80_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
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


@data_app.command("contract")
def data_contract(
    out: Annotated[
        Path | None, typer.Option(help="Write the Markdown here instead of printing it.")
    ] = None,
) -> None:
    """Print the data contract (files, columns, types, units, allowed values) as Markdown."""
    from ml_pipeline.contract_doc import render

    text = render()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"data contract -> {out}")


def _ingest(
    kind: str, path: Path, workdir: Path, summary: Path | None, max_reject_rate: float | None
) -> None:
    from ml_pipeline import ingest

    func = {
        "synthetic": ingest.ingest_synthetic,
        "tables": ingest.ingest_tables,
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


@ingest_app.command("tables")
def ingest_tables_cmd(
    path: Annotated[
        Path, typer.Argument(help="Folder with users, products, events [, size_charts] files.")
    ],
    workdir: Workdir = DEFAULT_WORKDIR,
    summary: SummaryOpt = None,
    max_reject_rate: RejectOpt = None,
) -> None:
    """Ingest your own tables: <table>.parquet or <table>.csv, as `fitml data contract` says."""
    _ingest("tables", path, workdir, summary, max_reject_rate)


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
    import pyarrow.parquet as pq

    from features.store import apply, write_training_set

    settings = _settings(workdir, profile)
    apply(settings)
    rows = write_training_set(settings, out)
    typer.echo(f"{rows:,} rows x {len(pq.read_schema(out).names)} columns -> {out}")


@app.command()
def train(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    trials: Annotated[int | None, typer.Option(help="Optuna trials per model.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Tuning budget per model, seconds.")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Tuning worker processes on one shared Optuna study.")
    ] = 1,
    engine: Annotated[
        str, typer.Option(help="Fit the final models here (local) or with lightgbm.dask (dask).")
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (default with --engine dask: a LocalCluster)."),
    ] = None,
) -> None:
    """Tune and train both models, log them to MLflow and register them as challenger."""
    from training.train import train as run_train

    result = run_train(
        _settings(workdir, profile),
        n_trials=trials,
        timeout_s=timeout,
        workers=workers,
        engine=engine,
        scheduler=scheduler,
    )
    _echo_json(
        {
            "run_id": result.run_id,
            "fit_model": result.fit_model.__dict__,
            "size_model": result.size_model.__dict__,
            "metrics": result.metrics,
        }
    )


@app.command("tune-worker")
def tune_worker(
    study: Annotated[str, typer.Option(help="The shared study to take trials from.")],
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    storage: Annotated[
        str | None, typer.Option(help="Optuna database URL (default: the profile's).")
    ] = None,
    index: Annotated[
        int | None, typer.Option(help="Distinct per worker; seeds it (default: the pid).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="The study's training rows, if elsewhere on this host.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Run queued trials of a shared study (made by `fitml train --workers N`) until done."""
    from training.distributed import run_tune_worker

    url = storage or _settings(workdir, profile).optuna.storage
    if url is None:
        raise typer.BadParameter("no Optuna database: pass --storage or use the prod profile")
    report = run_tune_worker(
        url,
        study,
        worker_index=index,
        data_path=None if data is None else str(data),
        timeout_s=timeout,
    )
    _echo_json(report.__dict__)


@app.command()
def evaluate(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    alias: Annotated[str, typer.Option(help="Registry alias to evaluate.")] = "champion",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the flat metrics to this JSON file.")
    ] = None,
    log_mlflow: Annotated[
        bool,
        typer.Option(
            "--mlflow/--no-mlflow", help="Log the evaluation as a run of the training experiment."
        ),
    ] = True,
) -> None:
    """Score a registered model pair on its held-out window: tables beside the baselines."""
    from evaluation.evaluate import evaluate_registered, log_evaluation
    from evaluation.tables import format_evaluation

    settings = _settings(workdir, profile)
    evaluation, versions = evaluate_registered(settings, alias)
    text = format_evaluation(
        evaluation.metrics,
        evaluation.slices,
        title=f"{alias}: fit model v{versions['fit_model']}, size model v{versions['size_model']}",
    )
    typer.echo(text)
    if json_out is not None:
        metrics = {**evaluation.metrics, "model_versions": versions}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(metrics, indent=2, default=str))
    if log_mlflow:
        run_id = log_evaluation(settings, evaluation, alias, versions, text)
        typer.echo(f"\nlogged to MLflow run {run_id} ({settings.mlflow.tracking_uri})")


@app.command()
def promote(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    force: Annotated[bool, typer.Option(help="Promote without the gate.")] = False,
    online: Annotated[
        bool, typer.Option(help="Gate on live feedback (`fitml experiment report`).")
    ] = False,
) -> None:
    """Promote the challenger to champion if it beats the champion beyond bootstrap noise."""
    from training.promote import promote as run_promote

    settings = _settings(workdir, profile)
    report = None
    if online:
        from evaluation.experiment import workdir_report
        from features.store import feedback_dir
        from serving.pseudonym import load_pseudonymizer

        report = workdir_report(
            settings.inference_log_dir,
            feedback_dir(settings),
            pseudonyms=load_pseudonymizer(settings),
        )
    _echo_json(run_promote(settings, force=force, online=report).__dict__)


@app.command()
def serve(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
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


@bento_app.command("build")
def bento_build(workdir: Workdir = DEFAULT_WORKDIR, profile: Profile = "local") -> None:
    """Package the prediction service and the work dir's champion models; prints the tag."""
    from serving.bento_build import build

    typer.echo(build(_settings(workdir, profile)))


@bento_app.command("export")
def bento_export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="An empty or new folder to write the models to.")
    ],
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
) -> None:
    """Export the registry's champion (and challenger) models for a champion image.

    Writes a BentoML model store and its manifest (fitml-models.json) to OUT; build the image
    with `make champion-image` (deploy/champion.Dockerfile). Prints the manifest.
    """
    from serving.bento_export import export_models

    _echo_json(export_models(_settings(workdir, profile), out))


@app.command("session-service")
def session_service(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8000,
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
    if report.incomplete:
        for reason in report.incomplete:
            typer.secho(f"fitml: error: erasure incomplete: {reason}", err=True, fg="red")
        raise SystemExit(2)


def _outbox(settings: Settings) -> Any:
    from serving.session.store import Outbox

    path = settings.workdir / "session" / "outbox.db"
    if not path.is_file():
        raise FileNotFoundError(
            f"no session outbox at {path}; run this where `fitml session-service` keeps its "
            "work directory (--workdir)"
        )
    return Outbox(path)


@dead_letters_app.command("list")
def dead_letters_list(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    kind: Annotated[
        str | None, typer.Option(help="Only this kind: session, event, push or pushed.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the stores refused, oldest first: id, kind, key, attempts, when and why."""
    outbox = _outbox(_settings(workdir, profile))
    try:
        rows = [d for d in outbox.dead(limit=1_000_000) if kind is None or d["kind"] == kind]
        counts = outbox.dead_letters()
    finally:
        outbox.close()
    if as_json:
        _echo_json({"counts": counts, "items": rows[:limit]})
        return
    from datetime import UTC, datetime

    typer.echo(f"{len(rows)} dead letter(s): " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    for d in rows[:limit]:
        when = datetime.fromtimestamp(d["dead_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{d['id']:>6}  {d['kind']:<7} {d['key']:<36} attempts {d['attempts']:<3} "
            f"{when}Z  {d['reason']}"
        )


@dead_letters_app.command("replay")
def dead_letters_replay(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Dead-letter ids (from `list`) to put back.")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Put back every dead letter (of --kind).")
    ] = False,
    kind: Annotated[
        str | None, typer.Option(help="Only this kind: session, event, push or pushed.")
    ] = None,
    deliver: Annotated[
        bool,
        typer.Option(
            help="Run one delivery pass now, to the profile's stores, and say where each item "
            "ended (for a stopped service; a running one delivers them within a second)."
        ),
    ] = False,
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
) -> None:
    """Put dead letters back into the outbox once their cause is fixed."""
    from serving.session.config import event_store_spec, table_prefix
    from serving.session.delivery import Deliverer, feast_push, replay_dead_letters
    from serving.session.store import open_event_store

    if not ids and not replay_all:
        raise typer.BadParameter("give dead-letter ids (see `fitml dead-letters list`) or --all")
    if ids and replay_all:
        raise typer.BadParameter("give either dead-letter ids or --all, not both")
    settings = _settings(workdir, profile)
    outbox = _outbox(settings)
    store = None
    try:
        deliverer = None
        if deliver:
            store = open_event_store(
                event_store_spec(settings), settings.workdir / "session", table_prefix()
            )
            deliverer = Deliverer(outbox, store, feast_push(settings))
        try:
            report = replay_dead_letters(outbox, ids or None, kind, deliverer)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    finally:
        if store is not None:
            store.close()
        outbox.close()
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
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled",
            help="A scheduled check: also append it to the drift history, add it to the "
            "analysts' workspace and log it in the MLflow monitoring experiment (ad-hoc "
            "checks write only their own files).",
        ),
    ] = False,
) -> None:
    """Compare a current window with a reference: HTML report + JSON verdict."""
    from evaluation.monitoring import drift_check

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
        scheduled=scheduled,
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


@app.command("monitoring-ui")
def monitoring_ui(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the page on 127.0.0.1.")
    ] = 8001,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the analysts' page: scheduled drift checks over time (Evidently UI) until stopped."""
    from evaluation.workspace import latest_verdict, ui_command, workspace_dir

    path = workspace_dir(_settings(workdir, profile))
    if latest_verdict(path) is None:
        typer.secho(
            f"fitml: no scheduled drift check in {path} yet: run `fitml pipeline run` or "
            "`fitml drift --scheduled` first",
            err=True,
            fg="red",
        )
        raise typer.Exit(code=2)
    typer.echo(f"analysts' page: http://{host}:{port}  (workspace {path}; Ctrl-C stops it)")
    argv = ui_command(path, host=host, port=port)
    os.execvp(argv[0], argv)


@pipeline_app.command("run")
def pipeline_run(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    users: Annotated[int, typer.Option(min=1, help="Synthetic shoppers.")] = 4000,
    products: Annotated[int, typer.Option(min=1, help="Synthetic products.")] = 300,
    events: Annotated[int, typer.Option(min=1, help="Synthetic try-on events.")] = 80_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
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
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results to this JSON file.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the tuning.")] = 0,
    trials: Annotated[int | None, typer.Option(help="Optuna trials.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Tuning budget, seconds.")] = None,
    protocol: Annotated[
        str, typer.Option(help="random (seeded 80/10/10) or time (last 15% by time).")
    ] = "random",
    history: Annotated[
        str | None,
        typer.Option(
            help="The feature job's history: oof (out of fold) or point_in_time "
            "(default: oof for random, point_in_time for time)."
        ),
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Folds of the oof history.")] = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
) -> None:
    """Run the product's stages on RentTheRunway and score them beside the published results."""
    from evaluation.public_benchmark import format_table, run_renttherunway

    kwargs: dict[str, Any] = {
        "seed": seed,
        "json_out": json_out,
        "protocol": protocol,
        "workdir": workdir,
        "profile": profile,
        "history": history,
        "folds": folds,
    }
    if trials is not None:
        kwargs["n_trials"] = trials
    if timeout is not None:
        kwargs["timeout_s"] = timeout
    result = run_renttherunway(train_path, test_path, **kwargs)
    typer.echo(format_table(result))


@experiment_app.command("report")
def experiment_report_cmd(
    workdir: Workdir = DEFAULT_WORKDIR,
    profile: Profile = "local",
    feedback: Annotated[
        Path | None,
        typer.Option(help="Feedback events (parquet, folder, JSON lines); default: pushed."),
    ] = None,
    alpha: Annotated[float, typer.Option(help="False-alarm rate of the sequential test.")] = 0.05,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    """Champion vs challenger on live feedback joined to the inference log."""
    from dataclasses import asdict

    from evaluation.experiment import format_report, online_gate, workdir_report
    from features.store import feedback_dir
    from serving.pseudonym import load_pseudonymizer

    settings = _settings(workdir, profile)
    report = workdir_report(
        settings.inference_log_dir,
        feedback or feedback_dir(settings),
        pseudonyms=load_pseudonymizer(settings),
        alpha=alpha,
    )
    promote_ok, why = online_gate(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        data = {**asdict(report), "gate": {"promote": promote_ok, "reason": why}}
        json_out.write_text(json.dumps(data, indent=2, default=str))
    typer.echo(format_report(report))
    typer.echo(f"gate: {'promote' if promote_ok else 'keep the champion'}: {why}")


def main() -> None:
    """Run the CLI; expected errors print one clear line and exit 2."""
    from ml_pipeline.console import configure_console
    from ml_pipeline.errors import FitmlError
    from ml_pipeline.logs import configure_logging

    # JSON lines when run as a job (no terminal), short text lines on a terminal; stage headers
    # and tuning progress on stderr; libraries' deprecation notices and INFO chatter are for
    # their developers, not for fitml's users.
    configure_logging("fitml", logging.WARNING)
    configure_console()
    try:
        app()
    except (FitmlError, SettingsError, FileNotFoundError, LookupError) as exc:
        typer.secho(f"fitml: error: {exc}", err=True, fg="red")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
