"""``fitml drift``: is the current window still the world the champion was trained on?

A current window is compared with a reference window (by default the champion's training
window) over three groups of columns, each with its own Evidently statistic and threshold:

* **features** (data drift): body measurements, stated preference, catalogue attributes and
  the size tried, as the model sees them;
* **predictions** (prediction drift): the fit model's probabilities for the size tried, or
  the logged recommendation and confidence of the prediction service;
* **outcome** (the fit-outcome mix of the feedback: too small / fit / too large), the first
  quality signal, available as soon as feedback arrives.

Once feedback has arrived for logged requests, :func:`feedback_quality` joins the inference
log to the feedback events, scores the fit model on them and compares its classification
quality (Evidently's ``ClassificationPreset``) with the reference quality.

Every statistic is a *distance* with an effect-size threshold, never a p-value: with windows of
tens of thousands of rows a p-value test flags differences too small to matter. The monitored
columns are those that are stationary when nothing changes (a same-distribution window of the
``baseline`` generator, from a later time period, stays below every threshold); counters that
grow with time (``hist_n``, ``pstat_n``) are deliberately not monitored. The thresholds are
calibrated by :mod:`evaluation.calibrate_drift` (false-alarm rate over many seeds, detection
rate per generator scenario).

Either window may be a dataset directory (written by ``fitml data generate``), a parquet file
of events (joined to the work directory's users and products), of training-set rows or of
logged inferences, or an inference log (JSON lines, or their folder): :func:`load_window`
turns each into one frame of the columns it has.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import pandas as pd

from ml_pipeline.errors import FitmlError

if TYPE_CHECKING:
    from serving.pseudonym import Pseudonymizer

Kind = Literal["numerical", "categorical"]
Role = Literal["feature", "prediction", "outcome"]
OUTCOME_LABELS: Final[tuple[str, ...]] = ("too_small", "fit", "too_large")
UNKNOWN: Final = "unknown"


class DriftInputError(FitmlError, ValueError):
    """A reference or current window that cannot be read or compared."""


@dataclass(frozen=True)
class ColumnSpec:
    """How one monitored column is compared.

    Attributes:
        name: column name (as in the training set: ``user_*``, ``product_*``, ...).
        kind: ``numerical`` or ``categorical``.
        role: ``feature`` (data drift), ``prediction`` or ``outcome``.
        method: Evidently stat-test name; all are distances (drift when value >= threshold).
        threshold: the effect size at which the column counts as drifted.
    """

    name: str
    kind: Kind
    role: Role
    method: str
    threshold: float


# Thresholds per column type, calibrated by ``python -m evaluation.calibrate_drift`` (the
# README's table, 40 baseline seeds x 2 window sizes, 10 seeds per scenario). Largest value on
# same-distribution windows -> smallest value under the scenario that should move it:
# body measurements 0.092 -> 0.32 (population_shift inseam); size tried 0.067 -> 0.32;
# stretch 0.091 (nothing should move it); outcome 0.017 -> 0.027 (population_shift), 0.042
# (runs_small); brand 0.071 -> 0.22 (runs_small). The outcome threshold has the thinnest
# margin: below ~10k current rows its sampling noise approaches 0.02.
BODY_WASSERSTEIN: Final = 0.15
"""Normed Wasserstein (in reference standard deviations) for body measurements."""
ORDINAL_WASSERSTEIN: Final = 0.15
"""Normed Wasserstein for the size tried and the garment's stretch."""
SHOPPER_JS: Final = 0.05
"""Jensen-Shannon distance for the shopper's stated attributes (sex, fit preference)."""
CATALOGUE_JS: Final = 0.10
"""Jensen-Shannon distance for catalogue attributes (category, size system, fit type)."""
BRAND_JS: Final = 0.15
"""Brands churn with the catalogue (a few popular products move the mix): looser."""
OUTCOME_JS: Final = 0.02
"""Jensen-Shannon distance of the outcome mix: ~3 points of too-small share moved."""
PREDICTION_WASSERSTEIN: Final = 0.10
"""Normed Wasserstein for predicted probabilities and confidence."""
PREDICTION_JS: Final = 0.10
"""Jensen-Shannon distance for the recommended size label."""


def _num(name: str, role: Role, threshold: float) -> ColumnSpec:
    return ColumnSpec(name, "numerical", role, "wasserstein", threshold)


def _cat(name: str, role: Role, threshold: float) -> ColumnSpec:
    return ColumnSpec(name, "categorical", role, "jensenshannon", threshold)


MONITORED: Final[tuple[ColumnSpec, ...]] = (
    _num("user_height_cm", "feature", BODY_WASSERSTEIN),
    _num("user_weight_kg", "feature", BODY_WASSERSTEIN),
    _num("user_chest_cm", "feature", BODY_WASSERSTEIN),
    _num("user_waist_cm", "feature", BODY_WASSERSTEIN),
    _num("user_hips_cm", "feature", BODY_WASSERSTEIN),
    _num("user_inseam_cm", "feature", BODY_WASSERSTEIN),
    _cat("user_sex", "feature", SHOPPER_JS),
    _cat("user_fit_preference", "feature", SHOPPER_JS),
    # the profile a public-data or retailer adapter may carry (the synthetic world has none:
    # skipped there as "fewer than 2 known values"); not calibrated on their own, they take
    # the thresholds of the body measurements and stated attributes they stand beside
    _num("user_age", "feature", BODY_WASSERSTEIN),
    _num("user_underbust_cm", "feature", BODY_WASSERSTEIN),
    _num("user_cup_cm", "feature", BODY_WASSERSTEIN),
    _cat("user_body_type", "feature", SHOPPER_JS),
    _cat("product_category", "feature", CATALOGUE_JS),
    _cat("product_size_system", "feature", CATALOGUE_JS),
    _cat("product_fit_type", "feature", CATALOGUE_JS),
    _cat("product_brand", "feature", BRAND_JS),
    _num("product_stretch", "feature", ORDINAL_WASSERSTEIN),
    _num("size_index", "feature", ORDINAL_WASSERSTEIN),
    _num("pred_p_too_small", "prediction", PREDICTION_WASSERSTEIN),
    _num("pred_p_fit", "prediction", PREDICTION_WASSERSTEIN),
    _num("pred_p_too_large", "prediction", PREDICTION_WASSERSTEIN),
    _num("confidence", "prediction", PREDICTION_WASSERSTEIN),
    _cat("recommended_size", "prediction", PREDICTION_JS),
    _cat("outcome", "outcome", OUTCOME_JS),
)
"""Every column fitml monitors, with its test and threshold."""

QUALITY_AUC_DROP: Final = 0.03
"""The fit model's quality counts as degraded when its mean one-vs-rest AUC on joined feedback
falls this far below the reference quality."""
FEEDBACK_JOIN_WINDOW: Final = pd.Timedelta(days=7)
"""Feedback without a ``request_id`` joins the latest inference for the same shopper and
product at most this long before it."""
TIME_COLUMN: Final = "event_timestamp"


def monitored_specs(
    overrides: dict[str, float] | None = None, specs: tuple[ColumnSpec, ...] = MONITORED
) -> tuple[ColumnSpec, ...]:
    """The monitored columns with some thresholds replaced.

    Raises:
        DriftInputError: naming a column in ``overrides`` that is not monitored.
    """
    overrides = overrides or {}
    names = {s.name for s in specs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise DriftInputError(
            f"cannot set thresholds of {unknown}: not monitored; use some of {sorted(names)}"
        )
    return tuple(
        ColumnSpec(s.name, s.kind, s.role, s.method, overrides.get(s.name, s.threshold))
        for s in specs
    )


# ---------------------------------------------------------------------------------------------
# Verdict


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test result."""

    column: str
    role: str
    kind: str
    method: str
    threshold: float
    value: float
    drifted: bool


@dataclass(frozen=True)
class DriftVerdict:
    """The JSON verdict of one drift run.

    ``drift_detected`` is true when any monitored column drifted or the fit model's quality on
    joined feedback degraded; ``drifted_columns`` names the columns (and ``fit_model_quality``
    for the latter).
    """

    drift_detected: bool
    drifted_columns: list[str]
    drift_share: float
    share_by_role: dict[str, float]
    n_reference: int
    n_current: int
    columns: list[ColumnDrift] = field(default_factory=list)
    skipped_columns: dict[str, str] = field(default_factory=dict)
    outcome_mix: dict[str, dict[str, float]] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    reference_window: dict[str, str | None] = field(default_factory=dict)
    current_window: dict[str, str | None] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)
    """Where the compared windows were saved (``reference`` / ``current`` parquet paths)."""
    computed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    methodology: str = (
        "distance statistics with per-column effect-size thresholds (evaluation.drift."
        "MONITORED), calibrated by evaluation.calibrate_drift; drift when value >= threshold"
    )

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain JSON-able values."""
        return asdict(self)

    def to_json(self) -> str:
        """The verdict as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftVerdict:
        """Read a verdict back from :meth:`to_dict` output (e.g. a verdict JSON file)."""
        data = dict(data)
        data["columns"] = [ColumnDrift(**c) for c in data.get("columns", [])]
        return cls(**data)

    def summary(self) -> str:
        """A one-screen summary for the terminal."""
        head = "DETECTED" if self.drift_detected else "none"
        lines = [
            f"drift: {head}  ({len([c for c in self.columns if c.drifted])}/{len(self.columns)}"
            f" columns drifted; reference {self.n_reference:,} rows"
            f"{_span(self.reference_window)}, current {self.n_current:,} rows"
            f"{_span(self.current_window)})",
        ]
        for role in ("feature", "prediction", "outcome"):
            cols = [c for c in self.columns if c.role == role]
            if not cols:
                continue
            lines.append(f"  {role}s ({self.share_by_role.get(role, 0.0):.0%} drifted)")
            for c in sorted(cols, key=lambda c: (not c.drifted, -c.value / c.threshold)):
                mark = "DRIFT" if c.drifted else "ok"
                bar = "#" * min(20, round(10 * c.value / c.threshold))
                lines.append(
                    f"    {c.column:<22} {mark:<5} {c.method:<13} {c.value:7.4f} "
                    f"/ {c.threshold:<5g} {bar}"
                )
        if self.outcome_mix:
            ref, cur = self.outcome_mix.get("reference", {}), self.outcome_mix.get("current", {})
            mix = ", ".join(
                f"{o} {ref.get(o, float('nan')):.1%} -> {cur.get(o, float('nan')):.1%}"
                for o in OUTCOME_LABELS
            )
            lines.append(f"  outcome mix: {mix}")
        if self.quality:
            q = self.quality
            lines.append(
                f"  fit model on joined feedback ({q.get('n_current')} rows): mean AUC "
                f"{q.get('reference', {}).get('mean_auc', float('nan')):.3f} -> "
                f"{q.get('current', {}).get('mean_auc', float('nan')):.3f}"
                f" ({'DEGRADED' if q.get('degraded') else 'ok'})"
            )
        if self.skipped_columns:
            lines.append(f"  not compared: {', '.join(sorted(self.skipped_columns))}")
        return "\n".join(lines)


def _span(window: dict[str, str | None]) -> str:
    if not window.get("start"):
        return ""
    return f" {str(window['start'])[:10]}..{str(window.get('end'))[:10]}"


# ---------------------------------------------------------------------------------------------
# Windows


def join_tables(
    events: pd.DataFrame, users: pd.DataFrame | None, products: pd.DataFrame | None
) -> pd.DataFrame:
    """Events with the shopper's and the product's attributes as ``user_*`` / ``product_*``.

    Profiles are taken as of their latest update (the raw tables hold one row per user).
    """
    frame = events
    if users is not None and "user_id" in frame:
        u = users.sort_values(TIME_COLUMN).drop_duplicates("user_id", keep="last")
        u = u.drop(columns=[TIME_COLUMN], errors="ignore")
        u = u.rename(columns={c: f"user_{c}" for c in u.columns if c != "user_id"})
        frame = frame.merge(u, on="user_id", how="left")
    if products is not None and "product_id" in frame:
        p = products.drop_duplicates("product_id", keep="last")
        p = p.drop(columns=[TIME_COLUMN], errors="ignore")
        p = p.rename(columns={c: f"product_{c}" for c in p.columns if c != "product_id"})
        frame = frame.merge(p, on="product_id", how="left")
    return frame


def load_window(source: Path | pd.DataFrame, *, workdir: Path | None = None) -> pd.DataFrame:
    """Read a window into the monitored columns it has (plus ``event_timestamp``).

    Args:
        source: a frame; a dataset directory (``events.parquet``, ``users.parquet``,
            ``products.parquet``); a parquet file of events, training-set rows or logged
            inferences; an inference log (``.jsonl`` or a folder of them).
        workdir: for a parquet of bare events: the work directory whose ingested users and
            products are joined to them.

    Raises:
        DriftInputError: naming the path when it is none of these.
    """
    if isinstance(source, pd.DataFrame):
        return _monitored(source)
    path = Path(source)
    if path.is_dir() and (path / "events.parquet").is_file():
        return _monitored(_read_dataset_dir(path))
    if path.is_dir() and any(path.glob("*.jsonl")):
        return _monitored(read_inference_log(path))
    if path.is_file() and path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        if "user_id" in frame and not any(c.startswith("user_") and c != "user_id" for c in frame):
            frame = _join_workdir_tables(frame, path, workdir)
        return _monitored(frame)
    if path.is_file() and path.suffix == ".jsonl":
        return _monitored(read_inference_log(path))
    raise DriftInputError(
        f"cannot read a window from {path}: give a dataset directory (with events.parquet), "
        "a parquet file of events, training rows or logged inferences, or an inference log "
        "(.jsonl or its folder)"
    )


def _read_dataset_dir(path: Path) -> pd.DataFrame:
    def table(name: str) -> pd.DataFrame | None:
        file = path / f"{name}.parquet"
        return pd.read_parquet(file) if file.is_file() else None

    events = table("events")
    assert events is not None
    return join_tables(events, table("users"), table("products"))


def _join_workdir_tables(events: pd.DataFrame, path: Path, workdir: Path | None) -> pd.DataFrame:
    """Bare events: join users/products found beside the file or in the work directory."""
    for folder in (path.parent, workdir / "offline" if workdir else None):
        if folder is not None and (folder / "users.parquet").is_file():
            products = folder / "products.parquet"
            return join_tables(
                events,
                pd.read_parquet(folder / "users.parquet"),
                pd.read_parquet(products) if products.is_file() else None,
            )
    return events


def read_inference_log(source: Path) -> pd.DataFrame:
    """The prediction service's inference log (a ``.jsonl`` file or a folder) as a frame.

    Feature values are flattened to their names (``features.user_chest_cm`` ->
    ``user_chest_cm``) and ``logged_at`` is parsed to UTC, also as ``event_timestamp``.
    """
    path = Path(source)
    paths = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    records = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]
    if not records:
        raise DriftInputError(f"no logged inferences in {path}")
    frame = pd.json_normalize(records, max_level=1)
    frame = frame.rename(columns=lambda c: c.removeprefix("features."))
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True)
    frame[TIME_COLUMN] = frame["logged_at"]
    return frame


def _monitored(frame: pd.DataFrame) -> pd.DataFrame:
    specs = {s.name: s for s in MONITORED}
    columns = [c for c in specs if c in frame]
    out = frame[columns].copy()
    for c in columns:
        if specs[c].kind == "categorical":
            values = out[c].astype(object)
            out[c] = values.where(values.notna(), UNKNOWN).astype(str)
        else:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    if TIME_COLUMN in frame:
        out[TIME_COLUMN] = pd.to_datetime(frame[TIME_COLUMN], utc=True)
    return out


def add_predictions(frame: pd.DataFrame, fit_model: Any) -> pd.DataFrame:
    """Add the fit model's probabilities for the size tried as ``pred_p_*`` columns.

    Args:
        frame: training-set rows (the model's features as of each event).
        fit_model: a fitted :class:`training.models.FitModel` (anything with
            ``predict_proba(frame) -> (n, 3)``).
    """
    proba = np.asarray(fit_model.predict_proba(frame), dtype=float)
    out = frame.copy()
    for j, label in enumerate(OUTCOME_LABELS):
        out[f"pred_p_{label}"] = proba[:, j]
    return out


def _window_bounds(frame: pd.DataFrame) -> dict[str, str | None]:
    if TIME_COLUMN not in frame or frame[TIME_COLUMN].isna().all():
        return {"start": None, "end": None}
    ts = frame[TIME_COLUMN]
    return {"start": ts.min().isoformat(), "end": ts.max().isoformat()}


def outcome_mix(frame: pd.DataFrame) -> dict[str, float]:
    """Share of each outcome among the rows with feedback (empty when there is none)."""
    if "outcome" not in frame:
        return {}
    known = frame["outcome"][frame["outcome"].isin(OUTCOME_LABELS)]
    if known.empty:
        return {}
    shares = known.value_counts(normalize=True)
    return {o: float(shares.get(o, 0.0)) for o in OUTCOME_LABELS}


# ---------------------------------------------------------------------------------------------
# Comparing


def comparable_specs(
    reference: pd.DataFrame, current: pd.DataFrame, specs: tuple[ColumnSpec, ...] = MONITORED
) -> tuple[list[ColumnSpec], dict[str, str]]:
    """The specs both windows can be compared on, and why the others are skipped."""
    usable: list[ColumnSpec] = []
    skipped: dict[str, str] = {}
    for s in specs:
        if s.name not in reference or s.name not in current:
            if s.name in reference or s.name in current:
                side = "current" if s.name in reference else "reference"
                skipped[s.name] = f"absent from the {side} window"
            continue
        ref, cur = reference[s.name], current[s.name]
        if s.kind == "categorical":
            ref, cur = ref[ref != UNKNOWN], cur[cur != UNKNOWN]
        if ref.notna().sum() < 2 or cur.notna().sum() < 2:
            skipped[s.name] = "fewer than 2 known values in a window"
            continue
        if s.name == "outcome" and (ref.nunique() < 2 or cur.nunique() < 1):
            skipped[s.name] = "no feedback in a window"
            continue
        usable.append(s)
    return usable, skipped


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    specs: tuple[ColumnSpec, ...] = MONITORED,
    html: Path | None = None,
    quality: dict[str, Any] | None = None,
) -> DriftVerdict:
    """Compare the monitored columns of two windows with Evidently and give the verdict.

    Each column is one Evidently ``ValueDrift`` metric with the column's own method and
    threshold; the value Evidently computes is the value in the verdict and the report.

    Args:
        reference: the reference window (as :func:`load_window` gives).
        current: the current window.
        specs: the monitored columns (default :data:`MONITORED`).
        html: where to write the HTML report (:func:`write_report`).
        quality: the fit model's quality on joined feedback (:func:`feedback_quality`).

    Raises:
        DriftInputError: a window is empty or the windows share no monitored column.
    """
    verdict, snapshot = compare(reference, current, specs=specs, quality=quality)
    if html is not None:
        write_report(verdict, snapshot, reference, current, html)
    return verdict


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    specs: tuple[ColumnSpec, ...] = MONITORED,
    quality: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
) -> tuple[DriftVerdict, Any]:
    """:func:`detect_drift` without the report: the verdict and Evidently's snapshot.

    Args:
        reference: the reference window.
        current: the current window.
        specs: the monitored columns.
        quality: the fit model's quality on joined feedback.
        timestamp: the snapshot's time (default: now); a scheduled check stamps it with the
            end of its current window, so the analysts' dashboard is drawn over data time.

    Raises:
        DriftInputError: a window is empty or the windows share no monitored column.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import CategoryCount, MeanValue, RowCount, ValueDrift

    reference, current = _monitored(reference), _monitored(current)
    usable, skipped = comparable_specs(reference, current, specs)
    if reference.empty or current.empty or not usable:
        raise DriftInputError(
            f"nothing to compare: reference {len(reference)} rows, current {len(current)} rows, "
            f"comparable monitored columns {[s.name for s in usable]}"
        )
    names = [s.name for s in usable]
    definition = DataDefinition(
        numerical_columns=[s.name for s in usable if s.kind == "numerical"],
        categorical_columns=[s.name for s in usable if s.kind == "categorical"],
    )
    metrics: list[Any] = [
        ValueDrift(column=s.name, method=s.method, threshold=s.threshold) for s in usable
    ]
    # what the analysts' dashboard draws over time beside the drift statistics
    metrics.append(RowCount())
    if "outcome" in names:
        metrics += [CategoryCount(column="outcome", category=o) for o in OUTCOME_LABELS]
    if "pred_p_fit" in names:
        metrics.append(MeanValue(column="pred_p_fit"))
    snapshot = Report(metrics).run(  # Evidently 0.7: current first, then reference
        current_data=Dataset.from_pandas(current[names], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[names], data_definition=definition),
        timestamp=timestamp,
    )
    values = {
        m["config"]["column"]: float(m["value"])
        for m in snapshot.dict()["metrics"]
        if m["config"].get("type", "").endswith("ValueDrift")
    }
    columns = [
        ColumnDrift(
            column=s.name,
            role=s.role,
            kind=s.kind,
            method=s.method,
            threshold=s.threshold,
            value=values[s.name],
            drifted=bool(values[s.name] >= s.threshold),
        )
        for s in usable
    ]
    return _verdict(reference, current, columns, skipped, quality), snapshot


def write_report(
    verdict: DriftVerdict,
    snapshot: Any,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    html: Path,
) -> Path:
    """Write the drift report: the verdict first, then every column, drifted ones first.

    ``html`` opens on the verdict and a summary table (drifted columns first, then by how
    close each is to its threshold); each column follows in that order with its distribution
    in both windows (proportions for categories, densities for numbers) and its weekly (or
    daily) mean or category shares over event time. Evidently's own per-column report is
    written beside it (``<name>_evidently.html``) and linked.

    Returns:
        The report's path.
    """
    from evaluation.drift_report import render_report

    html.parent.mkdir(parents=True, exist_ok=True)
    evidently_html = html.with_name(html.stem + "_evidently.html")
    snapshot.save_html(str(evidently_html))
    html.write_text(
        render_report(verdict, _monitored(reference), _monitored(current), evidently_html.name)
    )
    return html


def _verdict(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[ColumnDrift],
    skipped: dict[str, str],
    quality: dict[str, Any] | None,
) -> DriftVerdict:
    drifted = [c.column for c in columns if c.drifted]
    if quality and quality.get("degraded"):
        drifted.append("fit_model_quality")
    by_role: dict[str, float] = {}
    for role in ("feature", "prediction", "outcome"):
        cols = [c for c in columns if c.role == role]
        if cols:
            by_role[role] = sum(c.drifted for c in cols) / len(cols)
    mix = {"reference": outcome_mix(reference), "current": outcome_mix(current)}
    return DriftVerdict(
        drift_detected=bool(drifted),
        drifted_columns=drifted,
        drift_share=sum(c.drifted for c in columns) / len(columns) if columns else 0.0,
        share_by_role=by_role,
        n_reference=len(reference),
        n_current=len(current),
        columns=columns,
        skipped_columns=skipped,
        outcome_mix=mix if mix["reference"] and mix["current"] else {},
        quality=quality,
        reference_window=_window_bounds(reference),
        current_window=_window_bounds(current),
    )


# ---------------------------------------------------------------------------------------------
# Quality on joined feedback


def join_feedback(
    inferences: pd.DataFrame, events: pd.DataFrame, pseudonyms: Pseudonymizer
) -> pd.DataFrame:
    """Join logged inferences to the feedback events they led to.

    Feedback that carries the ``request_id`` of the answer joins on it. Otherwise it joins the
    latest inference for the same shopper (hashed) and product logged at most
    :data:`FEEDBACK_JOIN_WINDOW` before it.

    Args:
        inferences: :func:`read_inference_log` output.
        events: feedback events (``user_id``, ``product_id``, ``size_index``, ``outcome``,
            ``event_timestamp``; optionally ``request_id``).
        pseudonyms: the keys the log's pseudonyms were made with (every known key is tried).

    Returns:
        One row per feedback event with an inference: the logged features, ``size_index`` of
        the size tried, ``outcome``, ``model_versions.fit_model`` and ``event_timestamp`` (of
        the feedback).
    """
    feedback = events[events["outcome"].isin(OUTCOME_LABELS)].copy()
    feedback[TIME_COLUMN] = pd.to_datetime(feedback[TIME_COLUMN], utc=True)
    logged = inferences.drop(columns=["size_index", "outcome", TIME_COLUMN], errors="ignore")
    keep = ["size_index", "outcome", TIME_COLUMN]
    if "request_id" in feedback and feedback["request_id"].notna().any():
        return feedback[["request_id", *keep]].merge(logged, on="request_id", how="inner")
    feedback["_row"] = range(len(feedback))
    feedback["user_hash"] = [sorted(pseudonyms.all_of(str(u))) for u in feedback["user_id"]]
    feedback = feedback.explode("user_hash")  # one row per key the log may have used
    logged = logged.dropna(subset=["user_hash"]).sort_values("logged_at")
    feedback = feedback.sort_values(TIME_COLUMN)
    joined = pd.merge_asof(
        feedback[["_row", "user_hash", "product_id", *keep]],
        logged,
        left_on=TIME_COLUMN,
        right_on="logged_at",
        by=["user_hash", "product_id"],
        direction="backward",
        tolerance=FEEDBACK_JOIN_WINDOW,
    )
    joined = joined.dropna(subset=["logged_at"]).sort_values("logged_at")
    joined = joined.drop_duplicates("_row", keep="last").sort_values([TIME_COLUMN, "_row"])
    return joined.drop(columns="_row").reset_index(drop=True)


def score_feedback(joined: pd.DataFrame, fit_model: Any) -> pd.DataFrame:
    """The fit model's probabilities for the size each shopper tried and told us about.

    The logged features are the online feature row of the request; the request-time features
    for the size tried come from the one definition in :mod:`features.transforms`.
    """
    from features.transforms import request_features

    rows = request_features(joined.reset_index(drop=True))
    return add_predictions(rows, fit_model)


def classification_quality(scored: pd.DataFrame) -> dict[str, float]:
    """Mean one-vs-rest AUC, log loss, accuracy and outcome mix of scored feedback rows."""
    from evaluation.evaluate import fit_metrics

    rows = scored[scored["outcome"].isin(OUTCOME_LABELS)]
    y = rows["outcome"].map({o: i for i, o in enumerate(OUTCOME_LABELS)}).to_numpy()
    proba = rows[[f"pred_p_{o}" for o in OUTCOME_LABELS]].to_numpy(dtype=float)
    out = {k: float(v) for k, v in fit_metrics(y, proba).items()}
    out["accuracy"] = float((proba.argmax(axis=1) == y).mean())
    out["n"] = float(len(rows))
    return out


def feedback_quality(
    reference_scored: pd.DataFrame,
    current_scored: pd.DataFrame,
    *,
    html: Path | None = None,
    max_auc_drop: float = QUALITY_AUC_DROP,
) -> dict[str, Any]:
    """Compare the fit model's quality on current feedback with its reference quality.

    Args:
        reference_scored: rows with ``outcome`` and ``pred_p_*`` where the quality is known to
            be good (the champion's held-out test window).
        current_scored: joined and scored feedback (:func:`join_feedback`,
            :func:`score_feedback`).
        html: where to write Evidently's classification report (current vs reference).
        max_auc_drop: degradation threshold on the mean one-vs-rest AUC.
    """
    ref = classification_quality(reference_scored)
    cur = classification_quality(current_scored)
    if html is not None:
        _classification_report(reference_scored, current_scored, html)
    return {
        "reference": ref,
        "current": cur,
        "n_current": int(cur["n"]),
        "metric": "mean_auc",
        "max_drop": max_auc_drop,
        "degraded": bool(ref["mean_auc"] - cur["mean_auc"] > max_auc_drop),
    }


def _classification_report(reference: pd.DataFrame, current: pd.DataFrame, html: Path) -> None:
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.presets import ClassificationPreset

    def frame(scored: pd.DataFrame) -> pd.DataFrame:
        rows = scored[scored["outcome"].isin(OUTCOME_LABELS)]
        proba = rows[[f"pred_p_{o}" for o in OUTCOME_LABELS]].to_numpy(dtype=float)
        out = pd.DataFrame(proba, columns=list(OUTCOME_LABELS))
        out["target"] = rows["outcome"].to_numpy()
        out["prediction"] = np.asarray(OUTCOME_LABELS)[proba.argmax(axis=1)]
        return out

    definition = DataDefinition(
        categorical_columns=["target", "prediction"],
        numerical_columns=list(OUTCOME_LABELS),
        classification=[
            MulticlassClassification(
                target="target",
                prediction_labels="prediction",
                prediction_probas=list(OUTCOME_LABELS),
            )
        ],
    )
    snapshot = Report([ClassificationPreset()]).run(
        current_data=Dataset.from_pandas(frame(current), data_definition=definition),
        reference_data=Dataset.from_pandas(frame(reference), data_definition=definition),
    )
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))


# ---------------------------------------------------------------------------------------------
# The command


def run_drift(
    reference: Path | pd.DataFrame,
    current: Path | pd.DataFrame,
    *,
    json_out: Path | None = None,
    html_out: Path | None = None,
    workdir: Path | None = None,
    quality: dict[str, Any] | None = None,
    specs: tuple[ColumnSpec, ...] = MONITORED,
) -> DriftVerdict:
    """Load both windows, compare them, write the JSON verdict and the HTML report.

    Args:
        reference: the reference window (see :func:`load_window`).
        current: the current window.
        json_out: where to write the verdict.
        html_out: where to write Evidently's report.
        workdir: work directory whose ingested users/products join bare event files.
        quality: the fit model's quality on joined feedback (:func:`feedback_quality`).
        specs: the monitored columns.
    """
    verdict = detect_drift(
        load_window(reference, workdir=workdir),
        load_window(current, workdir=workdir),
        specs=specs,
        html=html_out,
        quality=quality,
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(verdict.to_json())
    return verdict
