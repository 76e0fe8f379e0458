"""Evaluation results as people read them: the model beside its baselines, then per slice.

:func:`format_evaluation` is what ``fitml evaluate`` prints (the README's tables) and what it
logs to MLflow as ``evaluation/summary.txt``.
"""

from __future__ import annotations

import math
from typing import Any, Final

import pandas as pd

FIT_ROWS: Final = (
    ("fitml LightGBM (Optuna-tuned)", "fit"),
    ("logistic regression baseline", "logreg"),
    ("oracle (the generator's true probabilities)", "oracle"),
)
SIZE_ROWS: Final = (
    ("fitml (fit + size model)", "rec", "feedback_agreement"),
    ("logistic regression", "logreg", "logreg_feedback_agreement"),
    ("the shopper's usual size", "usual", "usual_feedback_agreement"),
    ("size-chart rule", "chart", "chart_feedback_agreement"),
    ("oracle (true best size)", "oracle", "oracle_feedback_agreement"),
)
SLICE_COLUMNS: Final = (
    ("n", "n"),
    ("fit_mean_auc", "fit AUC"),
    ("logreg_mean_auc", "logreg AUC"),
    ("rec_exact_accuracy", "exact"),
    ("rec_within_one", "within 1"),
    ("feedback_agreement", "agrees"),
)


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *[line(r) for r in rows]]


def format_evaluation(
    metrics: dict[str, Any], slices: pd.DataFrame | None = None, *, title: str = ""
) -> str:
    """The fit-model and recommended-size tables beside the baselines, then the slice table.

    Args:
        metrics: :func:`evaluation.evaluate.evaluate` metrics (``fit_*``, ``rec_*``, ...).
        slices: its slice table (one row per slice value), or None.
        title: a first line (e.g. which models were evaluated).
    """
    out = [title] if title else []
    out.append(f"held-out window: {metrics.get('n_test')} try-on events")
    out.append("")
    fit_rows = [
        [label, _num(metrics.get(f"{p}_mean_auc")), _num(metrics.get(f"{p}_log_loss"))]
        for label, p in FIT_ROWS
        if metrics.get(f"{p}_mean_auc") is not None
    ]
    out += _table(["fit model: P(too small, fit, too large)", "mean AUC", "log loss"], fit_rows)
    out.append("")
    size_rows = []
    for label, prefix, agree in SIZE_ROWS:
        exact = "1.000" if prefix == "oracle" else _num(metrics.get(f"{prefix}_exact_accuracy"))
        within = "1.000" if prefix == "oracle" else _num(metrics.get(f"{prefix}_within_one"))
        if metrics.get(agree) is None:
            continue
        size_rows.append([label, exact, within, _num(metrics.get(agree))])
    out += _table(
        ["recommended size", "exact best size", "within one size", "agrees with feedback"],
        size_rows,
    )
    if slices is not None and len(slices):
        out.append("")
        out.append("by slice")
        present = [(c, h) for c, h in SLICE_COLUMNS if c in slices]
        rows = []
        for record in slices.to_dict("records"):
            cells = [f"{record['slice']}={record['value']}"]
            for column, _ in present:
                value = record.get(column)
                cells.append(str(int(value)) if column == "n" else _num(value))
            rows.append(cells)
        out += _table(["slice", *[h for _, h in present]], rows)
    return "\n".join(out)
