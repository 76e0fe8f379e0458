"""The two model wrappers: the fit model and the size model.

Both follow the estimator contract: ``__init__`` stores parameters, ``fit`` validates, learns
and returns ``self``, learned attributes end in ``_``. The preprocessing (a fitted
:class:`TabularEncoder`) and the LightGBM booster are saved and loaded together as one
directory, so serving cannot apply a different transform than training did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.definitions import CATEGORICAL_FEATURES, FIT_MODEL_FEATURES, SIZE_MODEL_FEATURES
from features.transforms import implied_index
from ml_pipeline.schema import OUTCOMES
from training.tuning import class_sample_weights

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
        """Return the model matrix: numeric columns as float, categories as fixed ``Categorical``."""
        if not hasattr(self, "categories_"):
            raise NotFittedError("TabularEncoder is not fitted; call fit() or load() first")
        data: dict[str, Any] = {}
        for column in self.features:
            values = frame[column] if column in frame else pd.Series(np.nan, index=frame.index)
            if column in self.categories_:
                data[column] = pd.Categorical(
                    values.astype(object).where(values.notna(), None).map(
                        lambda v: None if v is None else str(v)
                    ),
                    categories=self.categories_[column],
                )
            else:
                data[column] = pd.to_numeric(values, errors="coerce").astype(float)
        return pd.DataFrame(data, index=frame.index)

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
        self.booster_ = lgb.train(
            self._lgb_params(), dataset, num_boost_round=self.num_boost_round
        )
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() or load()")

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
        model.booster_ = lgb.Booster(model_file=str(Path(directory) / "booster.txt"))
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
        y = self.labels(frame["outcome"] if outcomes is None else outcomes)
        weight = class_sample_weights(y, self.sample_weight_power, len(OUTCOMES))
        return self._fit_matrix(frame, y, weight)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Return an ``(n, 3)`` array of outcome probabilities (rows sum to 1)."""
        self._check_fitted()
        proba = self.booster_.predict(self.encoder_.transform(frame))
        return np.asarray(proba, dtype=float).reshape(len(frame), len(OUTCOMES))


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

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the predicted best size index per row."""
        self._check_fitted()
        return np.asarray(self.booster_.predict(self.encoder_.transform(frame)), dtype=float)
