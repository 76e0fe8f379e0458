"""The analysts' page: an Evidently UI workspace of the scheduled drift checks.

Every scheduled check (``fitml drift --scheduled``, and the demo's checks) adds one Evidently
snapshot to the project ``fitml drift monitoring`` in ``<workdir>/monitoring``, stamped with
the end of its current window, so the dashboard's panels are drawn over data time, not over
the time the checks happened to run. Checking the same window again replaces its snapshot.

The dashboard opens on the latest verdict, then the drift statistics of each column group
over time (each panel names its threshold) and the quality signals: the fit-outcome mix of
the feedback and, when the window carries the fit model's predictions, its mean predicted
P(fit) beside the observed fit share.

``fitml monitoring-ui`` serves it (Evidently's own UI, ``evidently ui --workspace ...``).
It is handed verdicts and snapshots and imports only :mod:`evaluation.drift_report`, so
:mod:`evaluation.monitoring` can use it without an import circle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ml_pipeline.settings import Settings

PROJECT_NAME: Final = "fitml drift monitoring"
WINDOW_KEY: Final = "fitml_current_window_end"
"""Snapshot metadata naming the checked window (a re-check of it replaces the snapshot)."""
VERDICT_FILE: Final = "fitml_latest_verdict.json"

PANEL_GROUPS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "Body measurements",
        (
            "user_height_cm",
            "user_weight_kg",
            "user_chest_cm",
            "user_waist_cm",
            "user_hips_cm",
            "user_inseam_cm",
        ),
    ),
    ("Shopper attributes", ("user_sex", "user_fit_preference")),
    (
        "Catalogue and size tried",
        (
            "product_category",
            "product_size_system",
            "product_fit_type",
            "product_brand",
            "product_stretch",
            "size_index",
        ),
    ),
    (
        "Predictions",
        ("pred_p_too_small", "pred_p_fit", "pred_p_too_large", "confidence", "recommended_size"),
    ),
    ("Fit outcome", ("outcome",)),
)
"""The dashboard's drift panels: one per group of monitored columns."""


def workspace_dir(settings: Settings) -> Path:
    """Where the analysts' workspace of ``settings`` lives."""
    return settings.workdir / "monitoring"


def _open(path: Path) -> Any:
    from evidently.ui.workspace import Workspace

    path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def project(path: Path) -> Any:
    """The workspace's monitoring project, created on first use."""
    ws = _open(path)
    found = ws.search_project(PROJECT_NAME)
    if found:
        return ws, found[0]
    created = ws.create_project(
        PROJECT_NAME,
        description="Scheduled drift checks of the champion fit model: one snapshot per "
        "checked window, drawn over the window's end (data time).",
    )
    return ws, created


def add_check(path: Path, verdict: Any, snapshot: Any) -> str:
    """Add one scheduled check's snapshot and redraw the dashboard around its verdict.

    Args:
        path: the workspace folder (:func:`workspace_dir`).
        verdict: the check's :class:`evaluation.drift.DriftVerdict`.
        snapshot: the Evidently snapshot of the same comparison
            (:func:`evaluation.drift.compare`), stamped with the current window's end.

    Returns:
        The snapshot's id in the workspace.
    """
    from evaluation.drift_report import headline

    ws, proj = project(path)
    window = str(verdict.current_window.get("end") or verdict.computed_at)
    for snapshot_id in ws.list_runs(proj.id):
        stored = ws.get_run(proj.id, snapshot_id)
        if stored is not None and stored.metadata.get(WINDOW_KEY) == window:
            ws.delete_run(proj.id, snapshot_id)
    snapshot._metadata[WINDOW_KEY] = window
    snapshot._metadata["fitml_verdict"] = "drift" if verdict.drift_detected else "no drift"
    snapshot._tags = sorted({*snapshot._tags, "drift" if verdict.drift_detected else "no drift"})
    ref = ws.add_run(proj.id, snapshot, name=f"check {window[:10]}: {headline(verdict)}")
    latest = _latest_verdict(path, verdict, window)
    ws.save_dashboard(proj.id, dashboard(latest, [c.column for c in verdict.columns]))
    return str(ref.id)


def _latest_verdict(path: Path, verdict: Any, window: str) -> dict[str, Any]:
    """The verdict of the latest checked window (by data time) the workspace holds."""
    from evaluation.drift_report import headline

    file = path / VERDICT_FILE
    known = json.loads(file.read_text()) if file.is_file() else {}
    if not known or known.get("window", "") <= window:
        known = {
            "window": window,
            "headline": headline(verdict),
            "drift_detected": bool(verdict.drift_detected),
            "n_current": int(verdict.n_current),
            "computed_at": str(verdict.computed_at),
        }
        file.write_text(json.dumps(known, indent=2))
    return known


def latest_verdict(path: Path) -> dict[str, Any] | None:
    """What the dashboard shows as the latest verdict, or None before the first check."""
    file = path / VERDICT_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def dashboard(latest: dict[str, Any], columns: list[str]) -> Any:
    """The project's dashboard: the latest verdict, drift per column group, quality."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel, text_panel

    mark = "DRIFT" if latest["drift_detected"] else "OK"
    panels = [
        text_panel(
            title=f"Latest verdict ({mark}): {latest['headline']}",
            description=f"Scheduled check of the window ending {latest['window'][:10]} "
            f"({latest['n_current']:,} rows) against the champion's training window. "
            "Every panel below is drawn over the end of each checked window.",
        )
    ]
    for title, group in PANEL_GROUPS:
        present = [c for c in group if c in columns]
        if not present:
            continue
        panels.append(
            line_plot_panel(
                title=f"Drift: {title.lower()}",
                description="distance to the training window per check (normalised "
                "Wasserstein for numbers, Jensen-Shannon for categories); see the "
                "drift report for each column's threshold",
                values=[
                    PanelMetric(legend=c, metric="ValueDrift", metric_labels={"column": c})
                    for c in present
                ],
                size="half",
            )
        )
    panels.append(
        line_plot_panel(
            title="Quality: fit-outcome mix of the feedback",
            description="share of too small / fit / too large per checked window",
            values=[
                PanelMetric(
                    legend=o,
                    metric="CategoryCount",
                    metric_labels={
                        "column": "outcome",
                        "categories": str([o]),
                        "value_type": "share",
                    },
                )
                for o in ("too_small", "fit", "too_large")
            ],
            size="half",
        )
    )
    if "pred_p_fit" in columns:
        panels.append(
            line_plot_panel(
                title="Quality: predicted P(fit), mean per checked window",
                description="the fit model's mean probability of a fit on the tried sizes; "
                "compare with the observed fit share beside it",
                values=[
                    PanelMetric(
                        legend="mean P(fit)",
                        metric="MeanValue",
                        metric_labels={"column": "pred_p_fit"},
                    )
                ],
                size="half",
            )
        )
    panels.append(
        line_plot_panel(
            title="Rows per checked window",
            values=[PanelMetric(legend="rows", metric="RowCount", metric_labels={})],
            size="half",
        )
    )
    tab = DashboardTabModel(title="Drift over time", panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def ui_command(path: Path, *, host: str, port: int) -> list[str]:
    """The command that serves the workspace with Evidently's UI."""
    import sys

    return [
        str(Path(sys.executable).parent / "evidently"),
        "ui",
        "--workspace",
        str(path),
        "--host",
        host,
        "--port",
        str(port),
    ]
