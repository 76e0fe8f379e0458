"""``fitml drift``: Evidently drift reports on a current window against a reference.

Either side may be a dataset directory (written by ``fitml data generate``), a parquet file of
events, of training-set rows or of logged inferences (JSON lines of the prediction service):
:func:`load_window` turns each into one frame of the monitored columns. The verdict names the
drifted columns, the statistical test and threshold of each, and the share that drifted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import pandas as pd

NUMERIC_COLUMNS: Final[tuple[str, ...]] = (
    "user_height_cm",
    "user_weight_kg",
    "user_chest_cm",
    "user_waist_cm",
    "user_hips_cm",
    "user_inseam_cm",
    "size_index",
    "confidence",
)
CATEGORICAL_COLUMNS: Final[tuple[str, ...]] = (
    "user_fit_preference",
    "product_category",
    "product_size_system",
    "outcome",
    "recommended_size",
)
DATASET_DRIFT_SHARE: Final = 0.5
"""Share of drifted columns above which the whole dataset counts as drifted, besides any
single drifted column."""


class DriftInputError(ValueError):
    """A reference or current window that cannot be read."""


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test."""

    column: str
    method: str
    threshold: float
    value: float
    drifted: bool


@dataclass(frozen=True)
class DriftVerdict:
    """The JSON verdict of one drift run."""

    drift_detected: bool
    drifted_columns: list[str]
    drift_share: float
    n_reference: int
    n_current: int
    columns: list[ColumnDrift] = field(default_factory=list)

    def to_json(self) -> str:
        """The verdict as indented JSON."""
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> str:
        """A one-screen summary for the terminal."""
        lines = [
            f"drift: {'DETECTED' if self.drift_detected else 'none'} "
            f"({len(self.drifted_columns)}/{len(self.columns)} columns, "
            f"reference {self.n_reference:,} rows, current {self.n_current:,} rows)"
        ]
        for c in self.columns:
            mark = "DRIFT" if c.drifted else "ok"
            lines.append(f"  {c.column:<22} {mark:<6} {c.method}: {c.value:.4f} (threshold {c.threshold})")
        return "\n".join(lines)


def load_window(source: Path | pd.DataFrame) -> pd.DataFrame:
    """Read a window into the monitored columns it has.

    Raises:
        DriftInputError: naming the path when it is neither a dataset directory, a parquet
            file nor an inference log.
    """
    if isinstance(source, pd.DataFrame):
        return _monitored(source)
    path = Path(source)
    if path.is_dir() and (path / "events.parquet").is_file():
        events = pd.read_parquet(path / "events.parquet")
        users = pd.read_parquet(path / "users.parquet")
        products = pd.read_parquet(path / "products.parquet")
        users = users.rename(columns={c: f"user_{c}" for c in users.columns if c != "user_id"})
        products = products.rename(
            columns={c: f"product_{c}" for c in products.columns if c != "product_id"}
        )
        frame = events.merge(users, on="user_id", how="left").merge(
            products, on="product_id", how="left"
        )
        return _monitored(frame)
    if path.is_dir() and any(path.glob("*.jsonl")):
        return _monitored(_read_inference_log(sorted(path.glob("*.jsonl"))))
    if path.is_file() and path.suffix == ".parquet":
        return _monitored(pd.read_parquet(path))
    if path.is_file() and path.suffix == ".jsonl":
        return _monitored(_read_inference_log([path]))
    raise DriftInputError(
        f"cannot read a window from {path}: give a dataset directory (with events.parquet), "
        "a parquet file of events or training rows, or an inference log (.jsonl or its folder)"
    )


def _read_inference_log(paths: list[Path]) -> pd.DataFrame:
    records = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]
    frame = pd.json_normalize(records)
    return frame.rename(columns=lambda c: c.removeprefix("features."))


def _monitored(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in (*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS) if c in frame]
    out = frame[columns].copy()
    for c in columns:
        if c in CATEGORICAL_COLUMNS:
            out[c] = out[c].astype(object).where(out[c].notna(), "unknown").astype(str)
        else:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    html: Path | None = None,
    per_column_method: dict[str, str] | None = None,
    threshold: float | None = None,
) -> DriftVerdict:
    """Run Evidently's data drift preset on the shared monitored columns.

    Args:
        reference: the reference window (monitored columns, as :func:`load_window` gives).
        current: the current window.
        html: where to write Evidently's HTML report.
        per_column_method: Evidently stat-test names by column, overriding its defaults.
        threshold: one threshold for every column's test, overriding the defaults.

    Raises:
        DriftInputError: the windows share no monitored column or one of them is empty.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    shared = [c for c in reference.columns if c in current.columns]
    shared = [c for c in shared if reference[c].notna().any() and current[c].notna().any()]
    if not shared or reference.empty or current.empty:
        raise DriftInputError(
            f"nothing to compare: reference {len(reference)} rows, current {len(current)} rows, "
            f"shared monitored columns {shared}"
        )
    definition = DataDefinition(
        numerical_columns=[c for c in shared if c in NUMERIC_COLUMNS],
        categorical_columns=[c for c in shared if c in CATEGORICAL_COLUMNS],
    )
    preset = DataDriftPreset(
        columns=shared,
        drift_share=DATASET_DRIFT_SHARE,
        per_column_method=per_column_method,
        threshold=threshold,
    )
    snapshot = Report([preset]).run(
        current_data=Dataset.from_pandas(current[shared], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[shared], data_definition=definition),
    )
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
    columns = [_column_result(m) for m in snapshot.dict()["metrics"] if "column" in m["config"]]
    drifted = [c.column for c in columns if c.drifted]
    share = len(drifted) / len(columns) if columns else 0.0
    return DriftVerdict(
        drift_detected=bool(drifted),
        drifted_columns=drifted,
        drift_share=share,
        n_reference=len(reference),
        n_current=len(current),
        columns=columns,
    )


def _column_result(metric: dict[str, Any]) -> ColumnDrift:
    config = metric["config"]
    method = str(config.get("method", ""))
    threshold = float(config.get("threshold", 0.05))
    value = float(metric["value"])
    # p-value tests flag drift below the threshold; distances at or above it.
    is_p_value = "p_value" in method.lower() or "p-value" in method.lower()
    drifted = value < threshold if is_p_value else value >= threshold
    return ColumnDrift(config["column"], method, threshold, value, drifted)


def run_drift(
    reference: Path | pd.DataFrame,
    current: Path | pd.DataFrame,
    *,
    json_out: Path | None = None,
    html_out: Path | None = None,
) -> DriftVerdict:
    """Load both windows, compare them and write the JSON verdict and the HTML report."""
    verdict = detect_drift(load_window(reference), load_window(current), html=html_out)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(verdict.to_json())
    return verdict
