"""A retailer's own tables: the generated contract and `fitml ingest tables` (CSV and parquet)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ml_pipeline import contract_doc, contracts, sizes
from ml_pipeline.errors import IngestError, NotFoundError
from ml_pipeline.ingest import ingest_tables

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "shop"


def fitml(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the `fitml` command as a user does (the installed entry point's module)."""
    return subprocess.run(
        [sys.executable, "-m", "ml_pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_committed_contract_is_current_and_complete() -> None:
    text = contract_doc.render()
    assert contract_doc.CONTRACT_FILE.read_text() == text, (
        "docs/data-contract.md is stale: run `fitml data contract --out docs/data-contract.md`"
    )
    for table, contract in contract_doc.contract_schemas().items():
        assert f"`{table}.csv`" in text
        for column in contract.columns:
            if column != "problems":
                assert f"| `{column}` |" in text, column
    for system, labels in sizes.SIZE_SCALES.items():
        assert f"| `{system}` | {labels[0]}" in text
    for value in ("`too_small`", "`relaxed`", "`chest`", "100 .. 250", "45 .. 230"):
        assert value in text


def test_contract_ranges_come_from_the_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(contracts.MEASUREMENT_RANGES, "height_cm", (120.0, 230.0))
    assert "120 .. 230" in contract_doc.render()


def test_fitml_data_contract_prints_the_committed_document() -> None:
    done = fitml("data", "contract")
    assert done.returncode == 0, done.stderr
    assert done.stdout == contract_doc.CONTRACT_FILE.read_text()


def test_the_example_folder_ingests_whole_through_the_cli(tmp_path: Path) -> None:
    done = fitml("ingest", "tables", str(EXAMPLE), "--workdir", str(tmp_path / "w"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["quarantined"]["total"] == 0
    assert summary["accepted"] == {
        "users": 3,
        "products": 2,
        "size_charts": 9,
        "events": 6,
        "total": 20,
    }
    users = pd.read_parquet(tmp_path / "w" / "offline" / "users.parquet")
    assert str(users["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert users.set_index("user_id").loc["u003", "weight_kg"] != users["weight_kg"].max()


def _bad_copy(folder: Path) -> Path:
    shutil.copytree(EXAMPLE, folder)
    users = (folder / "users.csv").read_text().splitlines()
    users[1] = users[1].replace(",165,", ",450,")  # u001: height out of range
    users.append("u004,X,170,70,90,80,95,80,regular,2025-01-08T09:00:00Z")  # sex
    users.append("u005,F,170,70,90,80,95,80,regular,yesterday")  # timestamp
    (folder / "users.csv").write_text("\n".join(users) + "\n")
    with (folder / "events.csv").open("a") as f:
        f.write("e0007,u999,p001,M,3,fit,2025-02-13T10:00:00Z\n")  # unknown user
        f.write("e0008,u002,p001,M,3,snug,2025-02-13T10:00:00Z\n")  # outcome
    return folder


def test_bad_rows_are_quarantined_with_file_row_column_and_value(tmp_path: Path) -> None:
    folder = _bad_copy(tmp_path / "shop")
    summary = ingest_tables(folder, tmp_path / "w")
    assert summary.quarantined["users"] == 3
    assert summary.input["total"] == summary.accepted["total"] + summary.quarantined["total"]
    examples = summary.examples
    height = examples["users: height_cm: out of range"]
    assert "users.csv row 1" in height and "450" in height
    assert "X" in examples["users: sex: not F or M"]
    assert any("yesterday" in v for k, v in examples.items() if "event_timestamp" in k)
    assert (
        "events.csv row 1: user_id: unknown user (u001)"
        in examples["events: user_id: unknown user"]
    )  # u001 was quarantined: its try-ons are too, not lost
    assert "snug" in examples["events: outcome: not an outcome"]
    users = pd.read_parquet(tmp_path / "w" / "quarantine" / "users.parquet")
    assert set(users["source"]) == {str(folder / "users.csv")}
    assert set(users["user_id"]) == {"u001", "u004", "u005"}
    events = pd.read_parquet(tmp_path / "w" / "quarantine" / "events.parquet")
    unknown = events[events["reason"] == "user_id: unknown user"]
    assert set(unknown["user_id"]) == {"u001", "u999"}


def test_parquet_and_csv_give_the_same_store(tmp_path: Path) -> None:
    as_parquet = tmp_path / "parquet"
    as_parquet.mkdir()
    for csv in EXAMPLE.glob("*.csv"):
        frame = pd.read_csv(csv)
        if "event_timestamp" in frame:
            frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        frame.to_parquet(as_parquet / f"{csv.stem}.parquet", index=False)
    ingest_tables(EXAMPLE, tmp_path / "a")
    ingest_tables(as_parquet, tmp_path / "b")
    for table in ("users", "products", "size_charts", "events"):
        a = pd.read_parquet(tmp_path / "a" / "offline" / f"{table}.parquet")
        b = pd.read_parquet(tmp_path / "b" / "offline" / f"{table}.parquet")
        pd.testing.assert_frame_equal(a, b, check_dtype=False, check_like=True)


def test_a_missing_column_stops_before_writing_and_names_file_and_column(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "shop"
    shutil.copytree(EXAMPLE, folder)
    products = pd.read_csv(folder / "products.csv").drop(columns="size_system")
    products.to_csv(folder / "products.csv", index=False)
    done = fitml("ingest", "tables", str(folder), "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2
    assert "products.csv" in done.stderr and "'size_system'" in done.stderr
    assert not (tmp_path / "w" / "offline").exists()


def test_unusable_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not a folder"):
        ingest_tables(tmp_path / "nowhere", tmp_path / "w")
    folder = tmp_path / "shop"
    shutil.copytree(EXAMPLE, folder)
    (folder / "events.csv").unlink()
    with pytest.raises(NotFoundError, match=r"events\.parquet or events\.csv"):
        ingest_tables(folder, tmp_path / "w")
    shutil.copy(EXAMPLE / "events.csv", folder / "events.csv")
    pd.read_csv(folder / "users.csv").to_parquet(folder / "users.parquet")
    with pytest.raises(IngestError, match=r"both users\.parquet and users\.csv"):
        ingest_tables(folder, tmp_path / "w")
    (folder / "users.parquet").write_text("not parquet")
    (folder / "users.csv").unlink()
    with pytest.raises(IngestError, match=r"users\.parquet: cannot be read"):
        ingest_tables(folder, tmp_path / "w")
