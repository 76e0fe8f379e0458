"""Importing Feast and LightGBM in the services without what only development and training use.

Two libraries do work at import that a service never needs, and it is most of a service's
cold start:

- **Feast** decorates its definition classes (``FeatureView``, ``Entity``, ``Field``, the data
  sources, ...) with typeguard's ``@typechecked``. typeguard 4 instruments each method when
  the class is defined, re-reading and re-compiling its module's source: about 5 of the 7 s of
  ``import feast`` on this project's 2-core machines (typeguard issue #468). typeguard
  documents the decorator as a no-op under ``python -O``, for checks "not meant to be run in
  production". The services only read the online store through definitions Feast itself
  deserialises from its registry; they never build one from user input.
- **LightGBM** imports scikit-learn (and with it SciPy's statistics) when it is installed, for
  its scikit-learn estimator API (``LGBMClassifier``...), 1 to 2 s. Serving predicts with
  ``lightgbm.Booster`` only; scikit-learn is an optional dependency of LightGBM.

So the prediction service's workers and the session service import both inside these blocks,
as ``python -O`` (Feast) or an installation without scikit-learn (LightGBM) would; nothing
else changes. Jobs and tests that build Feast definitions or train keep both. The answers are
the same (the contract and trained-model tests run through these imports), and
``tests/unit/test_lean_imports.py`` checks what the serving path imports.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


def _passthrough(target: Any = None, **_options: Any) -> Any:
    """``typechecked`` as it is under ``python -O``: the target itself (also as a factory)."""
    if target is None:
        return _passthrough
    return target


@contextlib.contextmanager
def feast_without_typechecks() -> Iterator[None]:
    """Within this block, Feast modules imported for the first time skip typeguard.

    Import Feast (and open the store, which imports the profile's online and offline store
    modules) inside it. Feast modules this process already imported keep their checks.
    """
    import typeguard

    original = typeguard.typechecked
    typeguard.typechecked = _passthrough  # type: ignore[assignment]
    try:
        yield
    finally:
        typeguard.typechecked = original


@contextlib.contextmanager
def lightgbm_without_sklearn() -> Iterator[None]:
    """Within this block, a first ``import lightgbm`` does not import scikit-learn.

    LightGBM then runs as it does where scikit-learn is not installed: ``Booster``, ``train``
    and ``Dataset`` as always, its scikit-learn estimators unavailable in this process. Has no
    effect when LightGBM or scikit-learn is already imported.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        yield
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` now fails
    try:
        yield
    finally:
        if sys.modules.get("sklearn", ...) is None:
            del sys.modules["sklearn"]


@contextlib.contextmanager
def serving_imports() -> Iterator[None]:
    """Both: what a service's models and feature store import, without the dead weight."""
    with feast_without_typechecks(), lightgbm_without_sklearn():
        yield
