from __future__ import annotations

import numpy as np

from training.promote import bootstrap_gain


def test_bootstrap_gain_is_centred_on_zero_for_the_same_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 400)
    proba = rng.dirichlet([1, 1, 1], 400)
    gains = bootstrap_gain(y, proba, proba, rounds=50, seed=seed)
    assert np.allclose(gains, 0.0)


def test_bootstrap_gain_sees_a_better_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 400)
    good = np.full((400, 3), 0.1)
    good[np.arange(400), y] = 0.8
    noise = rng.dirichlet([1, 1, 1], 400)
    gains = bootstrap_gain(y, good, noise, rounds=50, seed=seed)
    assert np.quantile(gains, 0.05) > 0.2
