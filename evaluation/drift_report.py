"""The drift report as analysts read it: the answer first, then the evidence, over time.

:func:`render_report` turns a verdict (:class:`evaluation.drift.DriftVerdict`) and the two
windows it compared into one self-contained HTML page:

1. the verdict in one line (drift or not, which columns) and the window sizes and spans;
2. a summary table of every monitored column, drifted columns first, then by how close the
   statistic is to its threshold (value / threshold);
3. one section per column in the same order: its distribution in both windows (shares of
   each category, densities of numbers, so windows of different sizes compare fairly) and
   its weekly (or daily) mean or category shares over event time, with the reference and
   current windows told apart.

It only draws: every number comes from the verdict. This module imports nothing of fitml's,
so :mod:`evaluation.drift` can use it without an import circle.
"""

from __future__ import annotations

import html as html_lib
from typing import Any, Final

import numpy as np
import pandas as pd

TIME_COLUMN: Final = "event_timestamp"
MAX_CATEGORIES: Final = 12
"""Categories drawn per column (the most frequent in either window); the rest are "other"."""

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
.verdict { font-size: 20px; padding: 12px 16px; border-radius: 6px; margin: 12px 0; }
.drift { background: #fde2e1; border-left: 6px solid #c62828; }
.nodrift { background: #e3f4e4; border-left: 6px solid #2e7d32; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.drifted td { background: #fff1f0; font-weight: 600; }
.col { border-top: 1px solid #ccc; margin-top: 18px; padding-top: 6px; }
.muted { color: #666; font-size: 13px; }
"""


def _ratio(column: Any) -> float:
    return float(column.value / column.threshold) if column.threshold else float("inf")


def ordered_columns(verdict: Any) -> list[Any]:
    """The verdict's columns as the report lists them: drifted first, then by value/threshold."""
    return sorted(verdict.columns, key=lambda c: (not c.drifted, -_ratio(c), c.column))


def headline(verdict: Any) -> str:
    """The verdict in one sentence (what the report, the notebook and the dashboard open on)."""
    if verdict.drift_detected:
        names = ", ".join(verdict.drifted_columns)
        return (
            f"Drift detected in {len(verdict.drifted_columns)} of {len(verdict.columns)} "
            f"monitored columns: {names}"
        )
    return f"No drift: all {len(verdict.columns)} monitored columns are within their thresholds"


def _span(window: dict[str, Any]) -> str:
    if not window.get("start"):
        return "no event times"
    return f"{str(window['start'])[:10]} to {str(window.get('end'))[:10]}"


def _period(reference: pd.DataFrame, current: pd.DataFrame) -> str:
    times = pd.concat([reference.get(TIME_COLUMN), current.get(TIME_COLUMN)]).dropna()
    if times.empty:
        return ""
    span = times.max() - times.min()
    if span > pd.Timedelta(days=60):
        return "W"
    if span > pd.Timedelta(days=3):
        return "D"
    return "h"


def _categories(reference: pd.Series, current: pd.Series) -> list[str]:
    counts = reference.value_counts(normalize=True).add(
        current.value_counts(normalize=True), fill_value=0
    )
    return [str(c) for c in counts.sort_values(ascending=False).index[:MAX_CATEGORIES]]


COLORS: Final = ("#5b7fa6", "#e07b39", "#2e7d32", "#8e44ad", "#c0392b", "#7f8c8d")
_W: Final = 500
_H: Final = 220
_PAD: Final = (42, 10, 18, 46)
"""Left, right, top, bottom margins of a chart, in pixels."""


def _svg(body: list[str], title: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' "
        f"viewBox='0 0 {_W} {_H}' role='img'><title>{html_lib.escape(title)}</title>"
        + "".join(body)
        + "</svg>"
    )


def dash(name: str) -> str:
    """The reference window's lines are dashed."""
    return " stroke-dasharray='5 3'" if "reference" in name else ""


def _axes(y_max: float, label: str, y_min: float = 0.0) -> list[str]:
    left, right, top, bottom = _PAD
    out = [
        f"<line x1='{left}' y1='{_H - bottom}' x2='{_W - right}' y2='{_H - bottom}' "
        "stroke='#999'/>",
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{_H - bottom}' stroke='#999'/>",
        f"<text x='4' y='{top + 4}' font-size='10'>{y_max:.3g}</text>",
        f"<text x='4' y='{_H - bottom}' font-size='10'>{y_min:.3g}</text>",
        f"<text x='4' y='{(top + _H - bottom) / 2}' font-size='10'>{html_lib.escape(label)}</text>",
    ]
    return out


def _legend(names: list[str]) -> list[str]:
    return [
        f"<rect x='{_W - 150}' y='{4 + 12 * i}' width='9' height='9' "
        f"fill='{COLORS[i % len(COLORS)]}'/>"
        f"<text x='{_W - 137}' y='{12 + 12 * i}' font-size='10'>{html_lib.escape(n)}</text>"
        for i, n in enumerate(names)
    ]


def bars_svg(labels: list[str], series: dict[str, list[float]], y_label: str, title: str) -> str:
    """Grouped bars (one group per label, one bar per series) as an inline SVG chart."""
    left, right, top, bottom = _PAD
    y_max = max([v for values in series.values() for v in values] + [1e-12])
    width = (_W - left - right) / max(1, len(labels))
    bar = width * 0.8 / max(1, len(series))
    body = _axes(y_max, y_label)
    for j, label in enumerate(labels):
        x0 = left + j * width + width * 0.1
        for i, values in enumerate(series.values()):
            h = (values[j] / y_max) * (_H - top - bottom)
            body.append(
                f"<rect x='{x0 + i * bar:.1f}' y='{_H - bottom - h:.1f}' width='{bar:.1f}' "
                f"height='{h:.1f}' fill='{COLORS[i]}'><title>{html_lib.escape(label)}: "
                f"{values[j]:.3f}</title></rect>"
            )
        if len(labels) <= 24:
            body.append(
                f"<text x='{x0:.1f}' y='{_H - bottom + 12}' font-size='9' "
                f"transform='rotate(30 {x0:.1f} {_H - bottom + 12})'>"
                f"{html_lib.escape(label[:14])}</text>"
            )
    return _svg(body + _legend(list(series)), title)


def lines_svg(
    x: list[pd.Timestamp],
    series: dict[str, list[float]],
    y_label: str,
    title: str,
    marker: pd.Timestamp | None = None,
) -> str:
    """Lines over time (dates on the x axis, a dashed line at ``marker``) as inline SVG."""
    left, right, top, bottom = _PAD
    values = [v for vs in series.values() for v in vs if v == v]
    if not x or not values:
        return ""
    y_min, y_max = min(values), max(values)
    if y_max - y_min < 1e-9:
        y_min, y_max = y_min - 0.5, y_max + 0.5
    t0, t1 = x[0].value, max(x[-1].value, x[0].value + 1)

    def px(t: pd.Timestamp) -> float:
        return left + (t.value - t0) / (t1 - t0) * (_W - left - right)

    def py(v: float) -> float:
        return _H - bottom - (v - y_min) / ((y_max - y_min) or 1) * (_H - top - bottom)

    body = _axes(y_max, y_label, y_min)
    for i, (name, vs) in enumerate(series.items()):
        points = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in zip(x, vs, strict=True) if v == v)
        body.append(
            f"<polyline points='{points}' fill='none' stroke='{COLORS[i % len(COLORS)]}' "
            f"stroke-width='1.6'{dash(name)}><title>{html_lib.escape(name)}</title></polyline>"
        )
    for t in (x[0], x[len(x) // 2], x[-1]):
        body.append(
            f"<text x='{px(t) - 20:.1f}' y='{_H - bottom + 14}' font-size='10'>"
            f"{t.strftime('%Y-%m-%d')}</text>"
        )
    if marker is not None and t0 <= marker.value <= t1:
        body.append(
            f"<line x1='{px(marker):.1f}' y1='{top}' x2='{px(marker):.1f}' y2='{_H - bottom}' "
            "stroke='#555' stroke-dasharray='4 3'/>"
        )
    body.append(
        f"<text x='{left + 4}' y='{_H - 4}' font-size='10'>event time (current window "
        "right of the dashed line)</text>"
    )
    return _svg(body + _legend(list(series)), title)


def _column_charts(column: Any, reference: pd.DataFrame, current: pd.DataFrame, period: str) -> str:
    """Distribution in both windows and the column over event time, as two inline SVGs."""
    name = column.column
    ref, cur = reference[name], current[name]
    if column.kind == "categorical":
        keep = _categories(ref, cur)
        labels = [*keep, "other"]
        shares = {
            "reference": ref.where(ref.isin(keep), "other").value_counts(normalize=True),
            "current": cur.where(cur.isin(keep), "other").value_counts(normalize=True),
        }
        series = {k: [float(v.get(c, 0.0)) for c in labels] for k, v in shares.items()}
        if not series["reference"][-1] and not series["current"][-1]:
            labels, series = labels[:-1], {k: v[:-1] for k, v in series.items()}
        left = bars_svg(labels, series, "share", f"{name}: share of rows per category")
    else:
        both = pd.concat([ref, cur]).dropna()
        edges = np.histogram_bin_edges(both, bins=min(30, max(2, both.nunique())))
        dens = {
            k: np.histogram(v.dropna(), bins=edges, density=True)[0].tolist()
            for k, v in (("reference", ref), ("current", cur))
        }
        labels = [f"{e:.4g}" for e in edges[:-1]]
        left = bars_svg(labels, dens, "density", f"{name}: distribution")
    right = ""
    if period and TIME_COLUMN in reference and TIME_COLUMN in current:
        over_time: dict[str, pd.Series] = {}
        top = _categories(ref, cur)[:3]
        for window, frame in (("reference", reference), ("current", current)):
            ts = pd.to_datetime(frame[TIME_COLUMN], utc=True).dt.tz_localize(None)
            when = ts.dt.to_period(period).dt.start_time
            if column.kind == "categorical":
                table = pd.crosstab(when, frame[name], normalize="index")
                for category in top:
                    if category in table:
                        over_time[f"{category} ({window})"] = table[category]
            else:
                over_time[f"mean ({window})"] = frame[name].groupby(when).mean()
        grid = pd.concat(over_time, axis=1).sort_index()
        start = pd.to_datetime(current[TIME_COLUMN], utc=True).min()
        marker = None if pd.isna(start) else pd.Timestamp(start).tz_localize(None)
        right = lines_svg(
            list(grid.index),
            {k: grid[k].tolist() for k in grid.columns},
            "share" if column.kind == "categorical" else "mean",
            f"{name} over event time",
            marker=marker,
        )
    return left + right


def render_report(
    verdict: Any, reference: pd.DataFrame, current: pd.DataFrame, evidently_link: str | None
) -> str:
    """The report as one HTML page (see the module docstring).

    Args:
        verdict: the :class:`evaluation.drift.DriftVerdict` of the two windows.
        reference: the reference window's monitored columns (and ``event_timestamp``).
        current: the current window's.
        evidently_link: a relative link to Evidently's per-column report, if written.
    """
    esc = html_lib.escape
    css = "drift" if verdict.drift_detected else "nodrift"
    period = _period(reference, current)
    rows = []
    columns = ordered_columns(verdict)
    for c in columns:
        rows.append(
            f'<tr class="{"drifted" if c.drifted else ""}"><td>{esc(c.column)}</td>'
            f"<td>{'DRIFT' if c.drifted else 'ok'}</td><td>{esc(c.role)}</td>"
            f"<td>{esc(c.method)}</td><td class='num'>{c.value:.4f}</td>"
            f"<td class='num'>{c.threshold:g}</td><td class='num'>{_ratio(c):.2f}</td></tr>"
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>fitml drift report: {'DRIFT' if verdict.drift_detected else 'no drift'}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>fitml drift report</h1>",
        f'<div class="verdict {css}" id="verdict">{esc(headline(verdict))}</div>',
        f"<p>Reference: {verdict.n_reference:,} rows ({_span(verdict.reference_window)}). "
        f"Current: {verdict.n_current:,} rows ({_span(verdict.current_window)}). "
        f"Computed {esc(str(verdict.computed_at)[:19])} UTC.</p>",
    ]
    if verdict.outcome_mix:
        ref_mix, cur_mix = verdict.outcome_mix["reference"], verdict.outcome_mix["current"]
        mix = "; ".join(
            f"{esc(o)} {ref_mix.get(o, 0):.1%} &rarr; {cur_mix.get(o, 0):.1%}" for o in cur_mix
        )
        parts.append(f"<p>Fit-outcome mix (reference &rarr; current): {mix}</p>")
    if verdict.quality:
        q = verdict.quality
        parts.append(
            f"<p>Fit model on joined feedback ({q.get('n_current')} rows): mean AUC "
            f"{q['reference']['mean_auc']:.3f} &rarr; {q['current']['mean_auc']:.3f} "
            f"({'DEGRADED' if q.get('degraded') else 'ok'})</p>"
        )
    parts += [
        "<h2>Summary</h2>",
        "<table><tr><th>column</th><th>result</th><th>role</th><th>statistic</th>"
        "<th>value</th><th>threshold</th><th>value / threshold</th></tr>",
        *rows,
        "</table>",
        "<p class='muted'>Every statistic is a distance (normalised Wasserstein for numbers, "
        "Jensen-Shannon for categories); a column drifts when its value reaches its threshold."
        "</p>",
    ]
    if verdict.skipped_columns:
        skipped = ", ".join(f"{esc(k)} ({esc(v)})" for k, v in verdict.skipped_columns.items())
        parts.append(f"<p class='muted'>Not compared: {skipped}</p>")
    if evidently_link:
        parts.append(
            f"<p>Evidently's per-column report: <a href='{esc(evidently_link)}'>"
            f"{esc(evidently_link)}</a></p>"
        )
    parts.append("<h2>Columns, drifted first</h2>")
    for c in columns:
        if c.column not in reference or c.column not in current:
            continue
        charts = _column_charts(c, reference, current, period)
        parts.append(
            f"<div class='col' id='col-{esc(c.column)}'><h3>{esc(c.column)}: "
            f"{'DRIFT' if c.drifted else 'ok'} ({esc(c.method)} {c.value:.4f} / "
            f"{c.threshold:g})</h3>{charts}</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
