"""The two model wrappers: the fit model and the size model.

Both follow the estimator contract: ``__init__`` stores parameters, ``fit`` validates, learns
and returns ``self``, learned attributes end in ``_``. The preprocessing (a fitted
:class:`TabularEncoder`) and the LightGBM booster are saved and loaded together as one
directory, so serving cannot apply a different transform than training did.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.definitions import CATEGORICAL_FEATURES, FIT_MODEL_FEATURES, SIZE_MODEL_FEATURES
from features.transforms import implied_index
from ml_pipeline.schema import OUTCOMES

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.08,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "verbosity": -1,
    "num_threads": 1,
    "seed": 0,
    "deterministic": True,
}


def model_columns(features: Sequence[str]) -> list[str]:
    """The training-set columns a model is tuned and fitted from.

    Its ``features``, the label, and what the size target and the time windows are computed
    from; tuning workers and Dask workers read only these.
    """
    return list(dict.fromkeys([*features, "outcome", "size_index", "event_timestamp"]))


class NotFittedError(RuntimeError):
    """A model was used before ``fit`` (or ``load``)."""


class TabularEncoder:
    """Selects the model's columns and encodes categories with a vocabulary learned in ``fit``.

    Unknown categories at predict time become missing, which LightGBM routes like unseen.
    """

    def __init__(self, features: Sequence[str], categorical: Sequence[str]) -> None:
        self.features = tuple(features)
        self.categorical = tuple(c for c in categorical if c in self.features)

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn the vocabulary of each categorical column."""
        missing = [f for f in self.features if f not in frame]
        if missing:
            raise KeyError(f"training frame lacks model features: {', '.join(missing)}")
        self.categories_ = {
            column: sorted(str(v) for v in frame[column].dropna().unique())
            for column in self.categorical
        }
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return the model matrix: numbers as float, categories as fixed ``Categorical``."""
        if not hasattr(self, "categories_"):
            raise NotFittedError("TabularEncoder is not fitted; call fit() or load() first")
        data: dict[str, Any] = {}
        for column in self.features:
            values = frame[column] if column in frame else pd.Series(np.nan, index=frame.index)
            if column in self.categories_:
                data[column] = pd.Categorical(
                    values.astype(object)
                    .where(values.notna(), None)
                    .map(lambda v: None if v is None else str(v)),
                    categories=self.categories_[column],
                )
            else:
                data[column] = pd.to_numeric(values, errors="coerce").astype(float)
        return pd.DataFrame(data, index=frame.index)

    def matrix(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Return the model matrix as a float array: what LightGBM makes of :meth:`transform`.

        Categories become their code in the fitted vocabulary (missing or unknown: NaN),
        exactly as LightGBM encodes the ``Categorical`` columns of :meth:`transform`, so
        predicting on this array gives the same numbers without pandas' per-call overhead.
        ``frame`` may be a DataFrame or a dict of equal-length 1-D arrays.
        """
        if not hasattr(self, "categories_"):
            raise NotFittedError("TabularEncoder is not fitted; call fit() or load() first")
        if not hasattr(self, "_codes"):
            self._codes = {
                column: {name: float(code) for code, name in enumerate(names)}
                for column, names in self.categories_.items()
            }
        n = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values())))
        out = np.full((n, len(self.features)), np.nan)
        for j, column in enumerate(self.features):
            if column not in frame:
                continue
            values = frame[column]
            if isinstance(values, pd.Series):
                values = values.to_numpy(dtype=object)
            codes = self._codes.get(column)
            if codes is not None:
                out[:, j] = [
                    np.nan if v is None or v is pd.NA or v != v else codes.get(str(v), np.nan)
                    for v in values
                ]
            else:
                try:
                    out[:, j] = np.asarray(values, dtype=float)
                except (TypeError, ValueError):
                    out[:, j] = pd.to_numeric(pd.Series(values), errors="coerce").astype(float)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the fitted encoder."""
        return {
            "features": list(self.features),
            "categorical": list(self.categorical),
            "categories": self.categories_,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularEncoder:
        """Rebuild a fitted encoder from :meth:`to_dict`'s output."""
        encoder = cls(data["features"], data["categorical"])
        encoder.categories_ = {k: list(v) for k, v in data["categories"].items()}
        return encoder


class _BoosterModel:
    """Shared fit/save/load of a LightGBM booster behind a :class:`TabularEncoder`."""

    kind: ClassVar[str]
    features: ClassVar[tuple[str, ...]]
    source_: Path
    """The ``booster.txt`` the model was loaded from (unset for a model fitted here)."""
    compiled_: Any
    """The compiled booster, once :meth:`compile` ran (a ``training.compiled.CompiledBooster``)."""

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 300,
        sample_weight_power: float = 0.0,
    ) -> None:
        self.params = dict(params or {})
        self.num_boost_round = num_boost_round
        self.sample_weight_power = sample_weight_power

    def _lgb_params(self) -> dict[str, Any]:
        return {**DEFAULT_PARAMS, **self.params, **self._objective()}

    def _objective(self) -> dict[str, Any]:
        raise NotImplementedError

    def _fit_matrix(
        self, frame: pd.DataFrame, target: np.ndarray, weight: np.ndarray | None
    ) -> Self:
        self.encoder_ = TabularEncoder(self.features, CATEGORICAL_FEATURES).fit(frame)
        matrix = self.encoder_.transform(frame)
        dataset = lgb.Dataset(matrix, label=target, weight=weight, free_raw_data=True)
        self.booster_ = lgb.train(self._lgb_params(), dataset, num_boost_round=self.num_boost_round)
        for stale in ("compiled_", "source_"):  # a refit booster is a new model
            self.__dict__.pop(stale, None)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")

    def _matrix(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        self._check_fitted()
        return self.encoder_.matrix(frame)

    def compile(self, cache: Path | None = None) -> Self:
        """Predict from now on with the booster compiled to native code (lleaves).

        The model loaded from a directory compiles its ``booster.txt`` and keeps the object
        code beside it (:func:`training.compiled.compiled_cache_path`); a model fitted in this
        process is saved to a temporary file first. Probabilities stay equal to LightGBM's
        within 1e-6 (``tests/unit/test_compiled.py``).

        Returns:
            ``self``.
        """
        from training.compiled import CompiledBooster

        self._check_fitted()
        source = getattr(self, "source_", None)
        if source is not None and Path(source).is_file():
            self.compiled_ = CompiledBooster(Path(source), cache)
            return self
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "booster.txt"
            self.booster_.save_model(str(path))
            self.compiled_ = CompiledBooster(path, cache or Path(tmp) / "compiled.o")
        return self

    def _predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        compiled = getattr(self, "compiled_", None)
        if compiled is not None:
            return compiled.predict(matrix, num_threads=self._num_threads())
        return np.asarray(self.booster_.predict(matrix, num_threads=self._num_threads()))

    def _num_threads(self) -> int:
        """Prediction threads: as trained (one by default).

        OpenMP's spinning threads are far slower than one thread for a few rows, above all
        on a loaded machine.
        """
        return int(self.params.get("num_threads", DEFAULT_PARAMS["num_threads"]))

    def save(self, directory: Path) -> Path:
        """Save encoder and booster together under ``directory``."""
        self._check_fitted()
        directory.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(directory / "booster.txt"))
        meta = {
            "kind": self.kind,
            "encoder": self.encoder_.to_dict(),
            "params": self.params,
            "num_boost_round": self.num_boost_round,
            "sample_weight_power": self.sample_weight_power,
        }
        (directory / "model.json").write_text(json.dumps(meta, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Load a model saved by :meth:`save`."""
        meta = json.loads((Path(directory) / "model.json").read_text())
        if meta["kind"] != cls.kind:
            raise ValueError(f"{directory} holds a {meta['kind']} model, not a {cls.kind} model")
        model = cls(meta["params"], meta["num_boost_round"], meta["sample_weight_power"])
        model.encoder_ = TabularEncoder.from_dict(meta["encoder"])
        model.source_ = Path(directory) / "booster.txt"
        model.booster_ = lgb.Booster(model_file=str(model.source_))
        return model


class FitModel(_BoosterModel):
    """P(too_small, fit, too_large) for a (shopper, product, size) row."""

    kind = "fit"
    features = FIT_MODEL_FEATURES
    classes = OUTCOMES

    def _objective(self) -> dict[str, Any]:
        return {"objective": "multiclass", "num_class": len(OUTCOMES)}

    @staticmethod
    def labels(outcomes: pd.Series) -> np.ndarray:
        """Class codes of outcome names (``OUTCOMES`` order).

        Raises:
            ValueError: naming an outcome that is not one of ``OUTCOMES``.
        """
        codes = outcomes.map({name: i for i, name in enumerate(OUTCOMES)})
        if codes.isna().any():
            bad = outcomes[codes.isna()].iloc[0]
            raise ValueError(f"unknown outcome {bad!r}; expected one of {', '.join(OUTCOMES)}")
        return codes.to_numpy(dtype=int)

    def fit(self, frame: pd.DataFrame, outcomes: pd.Series | None = None) -> Self:
        """Learn from training rows (``outcome`` column unless ``outcomes`` is given)."""
        from training.tuning import class_sample_weights  # Optuna: training only, not serving

        y = self.labels(frame["outcome"] if outcomes is None else outcomes)
        weight = class_sample_weights(y, self.sample_weight_power, len(OUTCOMES))
        return self._fit_matrix(frame, y, weight)

    def predict_proba(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Return an ``(n, 3)`` array of outcome probabilities (rows sum to 1).

        ``frame`` may be a DataFrame or a dict of equal-length 1-D arrays.
        """
        matrix = self._matrix(frame)
        proba = self._predict_matrix(matrix)
        return np.asarray(proba, dtype=float).reshape(len(matrix), len(OUTCOMES))


class SizeModel(_BoosterModel):
    """The size index that fits the shopper best, on the product's size scale (a real number)."""

    kind = "size"
    features = SIZE_MODEL_FEATURES

    def _objective(self) -> dict[str, Any]:
        return {"objective": "regression"}

    @staticmethod
    def target(frame: pd.DataFrame) -> np.ndarray:
        """The size each training row's outcome implies was right (too small at s: s + 1)."""
        return implied_index(frame["size_index"].to_numpy(), frame["outcome"])

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn from training rows (``size_index`` and ``outcome`` give the target)."""
        return self._fit_matrix(frame, self.target(frame), None)

    def predict(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Return the predicted best size index per row (``frame``: DataFrame or dict of arrays)."""
        return np.asarray(self._predict_matrix(self._matrix(frame)), dtype=float)
