"""Compiled boosters: a model's LightGBM trees as native code (treelite + tl2cgen), for serving.

LightGBM walks its trees through a generic interpreter; :class:`CompiledBooster` turns the
same ``booster.txt`` into C with treelite / tl2cgen, compiles it with the system's C compiler
into a shared library and predicts through it. The library is cached beside the model, named
after the machine it was built on (:func:`compiled_cache_path`), so a model is compiled once
per machine type (at import into the serving store) and later loads take milliseconds.
Probabilities equal LightGBM's to within floating-point summation order
(``tests/unit/test_compiled.py`` holds them to 1e-6).

Serving uses it only when ``FITML_COMPILED=1``: on the demo's 2,778-tree fit model, the
compiled library scored one request's 17 rows about as fast as LightGBM (1.06x, on a heavily
loaded machine) after a compile of minutes, so the default stays LightGBM until a measurement
on a quiet machine says otherwise. (lleaves 1.3, the LLVM alternative that needs no C
compiler, does not run with the locked llvmlite 0.50: it calls the removed
``PassManagerBuilder``.)

:func:`predict_cost` measures what one request's prediction costs, both ways.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

CACHE_PREFIX: Final = "compiled-"
COMPILED_ENV: Final = "FITML_COMPILED"
"""``1``: serve compiled boosters; ``0`` (default): serve LightGBM's own predict."""
TOOLCHAIN_ENV: Final = "FITML_CC"
"""The C compiler tl2cgen calls (default ``gcc``)."""


def host_signature() -> str:
    """A short name of the machine type the library is built for (native code is not portable)."""
    return f"{platform.system().lower()}-{platform.machine()}-py{platform.python_version()}"


def compiled_cache_path(booster_file: Path) -> Path:
    """Where the shared library of ``booster_file`` built on this machine type is kept."""
    return Path(booster_file).parent / f"{CACHE_PREFIX}{host_signature()}.so"


def compiled_enabled(env: dict[str, str] | None = None) -> bool:
    """Whether serving should use compiled boosters (``FITML_COMPILED``, default off)."""
    value = (os.environ if env is None else env).get(COMPILED_ENV, "0").strip().lower()
    return value in ("1", "true", "yes", "on")


class CompiledBooster:
    """A LightGBM model file compiled to a shared library; ``predict`` answers like LightGBM.

    Args:
        booster_file: the ``booster.txt`` LightGBM saved.
        cache: the library to load (or to build when missing); default
            :func:`compiled_cache_path`.
    """

    def __init__(self, booster_file: Path, cache: Path | None = None) -> None:
        import tl2cgen

        self.booster_file = Path(booster_file)
        self.cache = compiled_cache_path(self.booster_file) if cache is None else Path(cache)
        started = time.perf_counter()
        built = False
        if not self.cache.is_file():
            self._build(self.cache)
            built = True
        self.compile_s = time.perf_counter() - started if built else 0.0
        self._predictor = tl2cgen.Predictor(str(self.cache), nthread=1)
        self._dmatrix = tl2cgen.DMatrix
        self.n_classes = int(np.max(self._predictor.num_class))

    def _build(self, target: Path) -> None:
        import tl2cgen
        import treelite

        model = treelite.frontend.load_lightgbm_model(self.booster_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build into a private file and move it in place: a reader never sees half a library.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            part = Path(tmp) / target.name
            tl2cgen.export_lib(
                model,
                toolchain=os.environ.get(TOOLCHAIN_ENV, "gcc"),
                libpath=str(part),
                params={"parallel_comp": max(1, os.cpu_count() or 1)},
                verbose=False,
            )
            os.replace(part, target)

    def predict(self, matrix: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """Probabilities (classifier: ``(n, classes)``) or values (regression: ``(n,)``).

        ``matrix`` is the float model matrix of :meth:`training.models.TabularEncoder.matrix`.
        """
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        out = np.asarray(self._predictor.predict(self._dmatrix(data, dtype="float64")))
        n = len(data)
        return out.reshape(n, self.n_classes) if self.n_classes > 1 else out.reshape(n)


@dataclass(frozen=True)
class PredictCost:
    """What scoring one request's rows costs, median over repeats (microseconds)."""

    rows: int
    trees: int
    lightgbm_us: float
    compiled_us: float | None

    def as_tags(self) -> dict[str, str]:
        """The cost as registry tags (``predict_*``)."""
        tags = {
            "predict_rows": str(self.rows),
            "predict_trees": str(self.trees),
            "predict_lightgbm_us": f"{self.lightgbm_us:.1f}",
        }
        if self.compiled_us is not None:
            tags["predict_compiled_us"] = f"{self.compiled_us:.1f}"
        return tags


def predict_cost(
    booster: Any,
    matrix: np.ndarray,
    compiled: CompiledBooster | None = None,
    repeats: int = 200,
) -> PredictCost:
    """Median time of one ``predict`` call on ``matrix`` (one request's rows), both ways."""

    def median_us(call: Any) -> float:
        call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return float(np.median(times) * 1e6)

    lightgbm_us = median_us(lambda: booster.predict(matrix, num_threads=1))
    compiled_us = None if compiled is None else median_us(lambda: compiled.predict(matrix))
    return PredictCost(len(matrix), int(booster.num_trees()), lightgbm_us, compiled_us)
