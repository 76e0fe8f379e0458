"""Body-size parameters derived from the ANSUR II anthropometric survey.

The synthetic data generator (:mod:`ml_pipeline.synth`) draws shoppers' bodies from per-sex
multivariate distributions fitted here to the public ANSUR II tables (US Army, 2012: 1,986
women and 4,082 men). Only the small derived JSON is committed, never the survey CSVs::

    python -m ml_pipeline.ansur /work/shared/data/ansur2 --out ml_pipeline/params/ansur2.json

The JSON holds, per sex, the count, means, standard deviations and correlation matrix of the
six measurements of :data:`ml_pipeline.schema.MEASUREMENTS` in fitml units (cm, kg), and the
same statistics of their natural logarithms (what the generator samples from: body
measurements are right-skewed, a log-normal fits them better than a normal).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from ml_pipeline.errors import InvalidValueError
from ml_pipeline.schema import MEASUREMENTS

ANSUR_COLUMNS: Final[dict[str, tuple[str, float]]] = {
    # fitml measurement: (ANSUR II column, factor from ANSUR units to fitml units)
    "height_cm": ("stature", 0.1),  # mm -> cm
    "weight_kg": ("weightkg", 0.1),  # 0.1 kg -> kg
    "chest_cm": ("chestcircumference", 0.1),
    "waist_cm": ("waistcircumference", 0.1),
    "hips_cm": ("buttockcircumference", 0.1),
    "inseam_cm": ("crotchheight", 0.1),
}
"""Where each of fitml's measurements comes from in the ANSUR II tables."""

ANSUR_FILES: Final[dict[str, str]] = {
    "F": "ANSUR_II_FEMALE_Public.csv",
    "M": "ANSUR_II_MALE_Public.csv",
}
"""The public ANSUR II file of each sex."""

DEFAULT_PARAMS_PATH: Final[Path] = Path(__file__).with_name("params") / "ansur2.json"
"""The committed derived parameters (made by this module's command)."""


def read_ansur(data_dir: Path) -> dict[str, pd.DataFrame]:
    """Read the ANSUR II tables and convert the measurements fitml uses to cm and kg.

    Args:
        data_dir: Folder holding ``ANSUR_II_FEMALE_Public.csv`` and ``ANSUR_II_MALE_Public.csv``.

    Returns:
        Per sex (``"F"``, ``"M"``), a frame with the columns of
        :data:`~ml_pipeline.schema.MEASUREMENTS`, rows with any value missing dropped.

    Raises:
        InvalidValueError: if a file is missing or lacks a needed column.
    """
    frames: dict[str, pd.DataFrame] = {}
    for sex, name in ANSUR_FILES.items():
        path = Path(data_dir) / name
        if not path.is_file():
            raise InvalidValueError(
                "data_dir",
                str(data_dir),
                f"has no {name}",
                "point it at the folder holding the ANSUR II public CSVs "
                "(e.g. /work/shared/data/ansur2)",
            )
        # The public files are not all valid UTF-8 (birth places); the columns used are numbers.
        raw = pd.read_csv(path, encoding="latin-1", low_memory=False)
        lower = {c.lower(): c for c in raw.columns}
        out = {}
        for measurement, (column, factor) in ANSUR_COLUMNS.items():
            if column not in lower:
                raise InvalidValueError(
                    "column",
                    column,
                    f"is missing from {path}",
                    "use the unmodified ANSUR II public CSV",
                )
            out[measurement] = pd.to_numeric(raw[lower[column]], errors="coerce") * factor
        frames[sex] = pd.DataFrame(out, columns=list(MEASUREMENTS)).dropna().reset_index(drop=True)
    return frames


def _stats(values: np.ndarray) -> dict[str, Any]:
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1)
    corr = np.corrcoef(values, rowvar=False)
    return {
        "mean": [round(float(v), 4) for v in mean],
        "std": [round(float(v), 4) for v in std],
        "corr": [[round(float(v), 5) for v in row] for row in corr],
    }


def derive_params(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Derive the per-sex body statistics the generator samples from.

    Args:
        frames: Per sex, measurements in fitml units (see :func:`read_ansur`).

    Returns:
        A JSON-ready dict: ``measurements`` (the order of every vector and matrix) and, per sex
        under ``sexes``, ``n``, ``mean``, ``std``, ``corr`` (cm/kg) and ``log_mean``,
        ``log_std``, ``log_corr`` (of the natural logarithms).
    """
    sexes: dict[str, Any] = {}
    for sex, frame in frames.items():
        values = frame[list(MEASUREMENTS)].to_numpy(dtype=float)
        natural = _stats(values)
        logs = _stats(np.log(values))
        sexes[sex] = {
            "n": len(frame),
            **natural,
            "log_mean": [round(v, 6) for v in logs["mean"]],
            "log_std": [round(v, 6) for v in logs["std"]],
            "log_corr": logs["corr"],
        }
    return {
        "source": "ANSUR II public data (US Army Natick, 2012), "
        + ", ".join(ANSUR_FILES[s] for s in frames),
        "units": "cm for lengths and girths, kg for weight",
        "measurements": list(MEASUREMENTS),
        "ansur_columns": {m: c for m, (c, _) in ANSUR_COLUMNS.items()},
        "sexes": sexes,
    }


def load_params(path: Path | None = None) -> dict[str, Any]:
    """Load derived body parameters (by default the committed ``params/ansur2.json``).

    Args:
        path: The JSON made by :func:`write_params`; ``None`` for the committed one.

    Returns:
        The parameters as written by :func:`derive_params`.

    Raises:
        InvalidValueError: if the file does not exist or lacks per-sex statistics.
    """
    path = DEFAULT_PARAMS_PATH if path is None else Path(path)
    if not path.is_file():
        raise InvalidValueError(
            "body_params",
            str(path),
            "does not exist",
            "make it with `python -m ml_pipeline.ansur <ansur2 folder> --out <path>`",
        )
    params = json.loads(path.read_text())
    if list(params.get("measurements", [])) != list(MEASUREMENTS) or not params.get("sexes"):
        raise InvalidValueError(
            "body_params",
            str(path),
            "is not an ANSUR parameter file for the current measurement list",
            "regenerate it with `python -m ml_pipeline.ansur`",
        )
    return params


def write_params(data_dir: Path, out: Path) -> dict[str, Any]:
    """Read ANSUR II from ``data_dir``, derive the parameters and write them as JSON to ``out``.

    Args:
        data_dir: Folder with the ANSUR II public CSVs.
        out: Where to write the JSON (its folder is created).

    Returns:
        The parameters written.
    """
    params = derive_params(read_ansur(data_dir))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params, indent=1) + "\n")
    return params


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m ml_pipeline.ansur DATA_DIR --out PATH``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ml_pipeline.ansur", description=__doc__.splitlines()[0]
    )
    parser.add_argument("data_dir", type=Path, help="folder with the ANSUR II public CSVs")
    parser.add_argument("--out", type=Path, default=DEFAULT_PARAMS_PATH, help="JSON to write")
    args = parser.parse_args(argv)
    params = write_params(args.data_dir, args.out)
    counts = ", ".join(f"{s}: {v['n']}" for s, v in params["sexes"].items())
    print(f"wrote {args.out} ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
