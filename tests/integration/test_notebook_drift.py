"""The analysts' drift notebook runs top to bottom from ``notebooks/`` of a checkout, on its
``var/``, and its drill-down agrees with the verdict it shows."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

from evaluation.drift import join_tables, load_window
from evaluation.drift_history import backfill, history_location, read_history
from ml_pipeline.cli import app
from ml_pipeline.ingest import ingest_synthetic
from ml_pipeline.settings import load_settings
from ml_pipeline.synth import DEFAULT_START, SCENARIO_DAY, generate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "drift_review.ipynb"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A work directory with ingested ``runs_small`` data, a verdict, a report and a history."""
    raw, work = tmp_path / "raw", tmp_path / "work"
    generate(raw, users=3000, products=300, events=40_000, seed=3, scenario="runs_small")
    ingest_synthetic(raw, work)
    events = pd.read_parquet(work / "offline" / "events.parquet")
    day = SCENARIO_DAY
    cut = pd.Timestamp(DEFAULT_START) + pd.Timedelta(days=day)
    events[events["event_timestamp"] < cut].to_parquet(tmp_path / "reference.parquet")
    late = pd.Timestamp(DEFAULT_START) + pd.Timedelta(days=150)
    events[events["event_timestamp"] >= late].to_parquet(tmp_path / "current.parquet")
    settings = load_settings("local", work)
    # weekly history first (as if monitored all along), then today's check through the CLI
    frame = load_window(
        join_tables(
            events,
            pd.read_parquet(work / "offline" / "users.parquet"),
            pd.read_parquet(work / "offline" / "products.parquet"),
        )
    )
    reference = frame[frame["event_timestamp"] < cut]
    backfill(history_location(settings), reference, frame, start=cut, freq="14D")
    result = CliRunner().invoke(
        app,
        [
            "drift",
            "--reference",
            str(tmp_path / "reference.parquet"),
            "--current",
            str(tmp_path / "current.parquet"),
            "--workdir",
            str(work),
        ],
    )
    assert result.exit_code == 0, result.output
    return work


def _checkout(tmp_path: Path, workdir: Path) -> Path:
    """A checkout as analysts have one: the notebook in notebooks/, the work dir as var/."""
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    (root / "evaluation").mkdir()
    shutil.copy(NOTEBOOK.parents[1] / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    (root / "var").symlink_to(workdir, target_is_directory=True)
    return root / "notebooks" / NOTEBOOK.name


def _kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for this interpreter in a temporary JUPYTER_PATH (nothing in $HOME)."""
    spec = tmp_path / "jupyter" / "kernels" / "fitml-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "fitml (test)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return "fitml-test"


def test_drift_notebook_runs_from_notebooks(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FITML_WORKDIR", raising=False)  # it must find var/ by itself
    kernel = _kernel(tmp_path, monkeypatch)
    notebook = _checkout(tmp_path, workdir)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb, kernel_name=kernel, timeout=180, resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"work directory: {workdir.resolve()}" in text
    assert "Drift detected in" in text  # runs_small: the outcome mix and brands moved
    verdict = json.loads((workdir / "reports" / "drift_verdict.json").read_text())
    column = max(
        (c for c in verdict["columns"] if c["drifted"]), key=lambda c: c["value"] / c["threshold"]
    )["column"]
    assert f"{column}: DRIFT" in text  # the drill-down opens on the most drifted column
    # ... and on the verdict's own windows: its shares differ where the verdict says so
    reference = pd.read_parquet(verdict["windows"]["reference"])[column]
    current = pd.read_parquet(verdict["windows"]["current"])[column]
    if reference.dtype == object:
        moved = reference.value_counts(normalize=True).sub(
            current.value_counts(normalize=True), fill_value=0
        )
        assert moved.abs().max() > 0.01
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # drift over time, outcome mix, the drill-down
    history = read_history(history_location(load_settings("local", workdir)))
    assert history["current_end"].nunique() >= 4
    assert re.search(r"(\d+) checked windows in the history", text)
