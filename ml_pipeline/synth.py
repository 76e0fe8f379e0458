"""Synthetic try-on data with a known ground truth: shoppers, a catalogue, sessions, feedback.

:func:`generate` writes the raw tables of :mod:`ml_pipeline.schema` (users, products, size
charts, try-on events) plus ``truth.parquet``, what only the generator knows: for every event
the best size of that product for that shopper and the true outcome probabilities of the size
tried. The world it simulates:

* **Bodies** come from ANSUR II (:mod:`ml_pipeline.ansur`): per sex a multivariate log-normal
  with the survey's means, spreads and correlations. Shoppers self-measure with a little
  noise, leave some measurements blank, and some give none at all (cold start).
* **Catalogue.** Brands size with their own vanity offset (their whole chart is shifted by a
  few cm); each product has a category, the body girth its chart is cut for (chest; pants
  waist or hips), a size system (alpha, numeric, waist), a fit type, a stretch, a published
  size chart over a contiguous part of its scale, and a hidden true cut: some products run
  small or large by a few cm against their own chart. Products enter the catalogue over time;
  women's and men's lines have their own charts.
* **Shoppers** have a hidden ease preference (cm of ease they like over the design ease) and
  a stated ``fit_preference`` that usually agrees with it. They pick a size by habit: either
  from the brand's chart with their own (noisy) measurement, or their usual label regardless
  of the brand's vanity sizing, sometimes one size off.
* **Outcome** is an ordinal logit of the ease mismatch: garment girth minus body girth minus
  the preferred ease, against an acceptable band that stretch widens (mostly on the tight
  side), scaled per body dimension (waistbands tolerate less than chests).

Scenarios for drift monitoring: ``baseline``; ``population_shift`` (more men, heavier and
larger bodies); ``runs_small`` (a new line, brand ``Northline``, cut 4-6 cm small, enters
after day 90); ``unit_bug`` (one sign-up source logs inches as cm: a share of users who sign
up after day 90 have their girths divided by 2.54). Scenarios share the baseline's random
streams, so they differ from it in their intended way, not by reshuffling everything.

Everything is vectorised with numpy (no per-event Python loop): a million events take
well under a minute on two cores.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from ml_pipeline.ansur import load_params
from ml_pipeline.errors import InvalidValueError
from ml_pipeline.schema import (
    CATEGORIES,
    EVENT_COLUMNS,
    FIT_PREFERENCES,
    FIT_TYPES,
    MEASUREMENTS,
    OUTCOMES,
    PRODUCT_COLUMNS,
    SIZE_CHART_COLUMNS,
    TRUTH_COLUMNS,
    USER_COLUMNS,
)
from ml_pipeline.sizes import SIZE_SCALES

SCENARIOS: Final[tuple[str, ...]] = ("baseline", "population_shift", "runs_small", "unit_bug")
"""The worlds :func:`generate` can simulate (see the module docstring)."""

DEFAULT_START: Final[datetime] = datetime(2026, 1, 1, tzinfo=UTC)
HORIZON_DAYS: Final[int] = 180
"""Events span this many days from ``start``."""
SCENARIO_DAY: Final[int] = 90
"""Day (from ``start``) at which the ``runs_small`` line and the ``unit_bug`` source begin."""

OUTPUT_FILES: Final[dict[str, str]] = {
    "users": "users.parquet",
    "products": "products.parquet",
    "size_charts": "size_charts.parquet",
    "events": "events.parquet",
    "truth": "truth.parquet",
    "manifest": "manifest.json",
}

# ---------------------------------------------------------------------------------------------
# Shoppers
SHARE_FEMALE: Final[dict[str, float]] = {"baseline": 0.60, "population_shift": 0.40}
POPULATION_SHIFT_LOG: Final[dict[str, float]] = {
    # added to the log-mean of each measurement under ``population_shift`` (about +x*100 %)
    "height_cm": 0.015,
    "weight_kg": 0.12,
    "chest_cm": 0.04,
    "waist_cm": 0.07,
    "hips_cm": 0.04,
    "inseam_cm": 0.01,
}
SELF_MEASURE_SD: Final[dict[str, float]] = {
    # cm / kg: measurement noise of the values on file (the body itself is the truth)
    "height_cm": 0.5,
    "weight_kg": 0.5,
    "chest_cm": 0.3,
    "waist_cm": 0.3,
    "hips_cm": 0.3,
    "inseam_cm": 0.8,
}
MISSING_RATE: Final[dict[str, float]] = {
    "height_cm": 0.10,
    "weight_kg": 0.12,
    "chest_cm": 0.12,
    "waist_cm": 0.12,
    "hips_cm": 0.18,
    "inseam_cm": 0.25,
}
NO_MEASUREMENTS_RATE: Final[float] = 0.08  # cold-start users: no measurement at all
SEX_MISSING_RATE: Final[float] = 0.03
PREF_MISSING_RATE: Final[float] = 0.10
PREF_STATED_AGREES: Final[float] = 0.90
EASE_CLASS_PROBS: Final[tuple[float, float, float]] = (0.25, 0.50, 0.25)  # slim/regular/relaxed
EASE_CLASS_CM: Final[tuple[float, float, float]] = (-3.0, 0.0, 4.0)  # preferred ease vs design
EASE_WITHIN_SD: Final[float] = 0.3
CHART_READER_SHARE: Final[float] = 0.55  # pick from the brand's chart; the rest by usual label
PICK_EASE_WEIGHT: Final[float] = 0.7  # how much of their preference shoppers size for
READER_BIAS_MEAN: Final[float] = -0.5  # cm: shoppers measure themselves a little small
READER_BIAS_SD: Final[float] = 1.2  # cm: a chart reader's own measuring bias
READER_EVENT_SD: Final[float] = 0.8  # cm: per try-on
LABEL_BIAS_MEAN_STEPS: Final[float] = -0.15  # sizes: usual labels skew optimistic
LABEL_BIAS_STEPS: Final[float] = 0.35  # sizes: how far a shopper's usual label is off
OFF_SIZE_RATE: Final[float] = 0.10  # a try-on one size away from the habitual pick
ACTIVITY_SIGMA: Final[float] = 1.1  # log-normal spread of how many try-ons a user makes
EXISTING_USER_SHARE: Final[float] = 0.40  # users signed up before ``start``
OWN_LINE_SHARE: Final[float] = 0.95  # try-ons in the line (women's/men's) of one's sex

# ---------------------------------------------------------------------------------------------
# Catalogue
BRANDS: Final[tuple[str, ...]] = (
    "Aurelle",
    "Birchwood",
    "Calloway",
    "Dunmore",
    "Everlane Row",
    "Fennick",
    "Greystone",
    "Halden",
    "Isola",
    "Juniper & Co",
    "Kestrel",
    "Linden",
    "Marlowe",
    "Norrland",
    "Oakhurst",
    "Pemberley",
    "Quillon",
    "Rowan Street",
    "Saltmarsh",
    "Tamsin",
)
NEW_LINE_BRAND: Final[str] = "Northline"  # the ``runs_small`` scenario's new product line
BRAND_VANITY_MEAN: Final[float] = 0.3  # cm: brands' charts skew generous on average
BRAND_VANITY_SD: Final[float] = 1.6
CATEGORY_PROBS: Final[dict[str, float]] = {
    "tops": 0.30,
    "knitwear": 0.15,
    "dresses": 0.15,
    "pants": 0.25,
    "outerwear": 0.15,
}
WOMENS_SHARE: Final[float] = 0.60  # of non-dress products
SIZE_SYSTEM_PROBS: Final[dict[tuple[str, str], dict[str, float]]] = {
    # (category, line) -> size system probabilities
    ("tops", "F"): {"alpha": 0.7, "numeric": 0.3},
    ("knitwear", "F"): {"alpha": 0.85, "numeric": 0.15},
    ("outerwear", "F"): {"alpha": 0.6, "numeric": 0.4},
    ("dresses", "F"): {"numeric": 0.7, "alpha": 0.3},
    ("pants", "F"): {"waist": 0.5, "numeric": 0.35, "alpha": 0.15},
    ("tops", "M"): {"alpha": 1.0},
    ("knitwear", "M"): {"alpha": 1.0},
    ("outerwear", "M"): {"alpha": 1.0},
    ("pants", "M"): {"waist": 0.85, "alpha": 0.15},
}
PANTS_HIPS_SHARE: Final[float] = 0.4  # pants on numeric/alpha charts cut for the hips
FIT_TYPE_PROBS: Final[dict[str, tuple[float, float, float]]] = {
    "tops": (0.30, 0.50, 0.20),
    "knitwear": (0.20, 0.45, 0.35),
    "dresses": (0.35, 0.50, 0.15),
    "pants": (0.35, 0.45, 0.20),
    "outerwear": (0.15, 0.50, 0.35),
}
FIT_TYPE_EASE_CM: Final[tuple[float, float, float]] = (-1.5, 0.0, 2.0)  # slim/classic/relaxed
STRETCH_BETA: Final[dict[str, tuple[float, float]]] = {
    "tops": (2.0, 3.0),
    "knitwear": (5.0, 3.0),
    "dresses": (2.0, 4.0),
    "pants": (1.5, 4.0),
    "outerwear": (1.0, 6.0),
}
# Reference charts, body girth (cm) at the centre of each size: centre0 + step*i + grade*i(i-1)/2
CHART_SPECS: Final[dict[tuple[str, str, str], tuple[float, float, float]]] = {
    # (line, system, dimension): (centre of the smallest size, step, grade)
    ("F", "alpha", "chest"): (76.0, 5.5, 0.4),
    ("M", "alpha", "chest"): (84.0, 6.5, 0.4),
    ("F", "numeric", "chest"): (76.0, 3.5, 0.05),
    ("F", "alpha", "waist"): (64.0, 6.5, 0.4),
    ("M", "alpha", "waist"): (72.0, 7.5, 0.4),
    ("F", "numeric", "waist"): (64.0, 3.3, 0.05),
    ("F", "waist", "waist"): (69.85, 2.54, 0.0),  # "24" is cut for a 27.5 in body waist
    ("M", "waist", "waist"): (72.39, 2.54, 0.0),  # men's "24": a 28.5 in body waist
    ("F", "alpha", "hips"): (86.0, 5.5, 0.3),
    ("M", "alpha", "hips"): (86.0, 6.0, 0.3),
    ("F", "numeric", "hips"): (82.0, 3.5, 0.05),
}
OFFERED_TRIM: Final[dict[str, tuple[int, int]]] = {
    # most sizes a product may leave out at the (small, large) end of its system's scale
    "alpha": (1, 1),
    "numeric": (2, 3),
    "waist": (2, 2),
}
CUT_SD: Final[float] = 0.8  # cm: every product's true cut is a little off its chart
RUNS_SMALL_RATE: Final[float] = 0.14
RUNS_LARGE_RATE: Final[float] = 0.12
RUNS_OFF_CM: Final[tuple[float, float]] = (2.5, 5.0)
NEW_LINE_CUT_CM: Final[tuple[float, float]] = (-6.0, -4.0)
NEW_LINE_SHARE: Final[float] = 0.45  # of products entering after SCENARIO_DAY
UNIT_BUG_SHARE: Final[float] = 0.35  # of users signing up after SCENARIO_DAY
EXISTING_PRODUCT_SHARE: Final[float] = 0.30
POPULARITY_SIGMA: Final[float] = 0.8

# ---------------------------------------------------------------------------------------------
# Outcome model: ordinal logit of the ease mismatch d (cm), in chest-equivalent cm x DIM_SCALE
DIM_SCALE: Final[dict[str, float]] = {"chest": 1.0, "hips": 0.8, "waist": 0.6}
BAND_CM: Final[float] = 4.3  # half-width of the comfortable band around the preferred ease
STRETCH_TIGHT_CM: Final[float] = 3.0  # stretch 1 widens the tight side by this much
STRETCH_LOOSE_CM: Final[float] = 1.0
LOGIT_SCALE_CM: Final[float] = 0.7  # outcome noise

_LINES: Final[tuple[str, str]] = ("F", "M")
_SECONDS_PER_DAY: Final[int] = 86_400
_CHUNK: Final[int] = 1 << 17


def _child_rngs(seed: int) -> dict[str, np.random.Generator]:
    names = ("users", "bodies", "products", "events", "outcomes", "scenario")
    seqs = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(s) for name, s in zip(names, seqs, strict=True)}


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    width = max(width, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _choice(rng: np.random.Generator, options: list[Any], probs: list[float], n: int) -> Any:
    p = np.asarray(probs, dtype=float)
    return np.asarray(options, dtype=object)[rng.choice(len(options), size=n, p=p / p.sum())]


def _timestamps(start: datetime, seconds: np.ndarray) -> pd.Series:
    base = pd.Timestamp(start).tz_convert("UTC").as_unit("ns")
    delta = pd.to_timedelta(np.round(seconds).astype(np.int64), unit="s")
    return pd.Series(base + delta).dt.as_unit("ns")


def sample_bodies(
    params: dict[str, Any],
    sex: np.ndarray,
    z: np.ndarray,
    log_shift: np.ndarray | None = None,
) -> np.ndarray:
    """Turn standard-normal draws into bodies with ANSUR's per-sex distribution.

    Args:
        params: ANSUR parameters (:func:`ml_pipeline.ansur.load_params`).
        sex: ``"F"`` / ``"M"`` per body, shape ``(n,)``.
        z: Independent standard normals, shape ``(n, len(MEASUREMENTS))``.
        log_shift: Optional shift of the log-means (``population_shift``), one per measurement.

    Returns:
        Bodies, shape ``(n, len(MEASUREMENTS))``, columns in :data:`MEASUREMENTS` order, in
        cm and kg: a multivariate log-normal whose log-means, log-spreads and log-correlations
        are ANSUR's.
    """
    out = np.empty_like(z, dtype=float)
    for s in _LINES:
        rows = sex == s
        p = params["sexes"][s]
        chol = np.linalg.cholesky(np.asarray(p["log_corr"], dtype=float))
        mean = np.asarray(p["log_mean"], dtype=float)
        if log_shift is not None:
            mean = mean + log_shift
        out[rows] = np.exp(mean + (z[rows] @ chol.T) * np.asarray(p["log_std"], dtype=float))
    return out


def _ref_centres(line: str, system: str, dimension: str) -> np.ndarray:
    c0, step, grade = CHART_SPECS[(line, system, dimension)]
    i = np.arange(len(SIZE_SCALES[system]), dtype=float)
    return c0 + step * i + grade * i * (i - 1) / 2


def _edges(centres: np.ndarray) -> np.ndarray:
    """Edges between consecutive size centres, plus one half-step beyond each end."""
    mid = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (centres[1] - centres[0]) / 2
    last = centres[-1] + (centres[-1] - centres[-2]) / 2
    return np.concatenate([[first], mid, [last]])


def _make_users(
    n: int, params: dict[str, Any], scenario: str, rngs: dict[str, np.random.Generator]
) -> dict[str, Any]:
    rng = rngs["users"]
    horizon = HORIZON_DAYS * _SECONDS_PER_DAY
    existing = rng.random(n) < EXISTING_USER_SHARE
    join = np.where(
        existing,
        -rng.random(n) * 365 * _SECONDS_PER_DAY,
        rng.random(n) * 0.9 * horizon,
    )
    join = np.sort(join)  # user ids follow sign-up order
    profile_ts = join - (60 + rng.random(n) * 3 * _SECONDS_PER_DAY)

    share_f = SHARE_FEMALE.get(scenario, SHARE_FEMALE["baseline"])
    sex = np.where(rng.random(n) < share_f, "F", "M")
    shift = None
    if scenario == "population_shift":
        shift = np.array([POPULATION_SHIFT_LOG[m] for m in MEASUREMENTS])
    body = sample_bodies(params, sex, rngs["bodies"].standard_normal((n, len(MEASUREMENTS))), shift)

    noise_sd = np.array([SELF_MEASURE_SD[m] for m in MEASUREMENTS])
    observed = np.round(body + rng.standard_normal(body.shape) * noise_sd, 1)
    missing = rng.random(body.shape) < np.array([MISSING_RATE[m] for m in MEASUREMENTS])
    missing |= (rng.random(n) < NO_MEASUREMENTS_RATE)[:, None]
    observed[missing] = np.nan

    unit_bug = np.zeros(n, dtype=bool)
    if scenario == "unit_bug":
        late = profile_ts >= SCENARIO_DAY * _SECONDS_PER_DAY
        unit_bug = late & (rngs["scenario"].random(n) < UNIT_BUG_SHARE)
        for m in ("chest_cm", "waist_cm", "hips_cm"):
            j = MEASUREMENTS.index(m)
            observed[unit_bug, j] = np.round(observed[unit_bug, j] / 2.54, 1)

    ease_class = rng.choice(3, size=n, p=np.asarray(EASE_CLASS_PROBS))
    pref_cm = np.asarray(EASE_CLASS_CM)[ease_class] + rng.standard_normal(n) * EASE_WITHIN_SD
    agrees = rng.random(n) < PREF_STATED_AGREES
    neighbour = np.where(ease_class == 1, np.where(rng.random(n) < 0.5, 0, 2), 1)
    stated = np.asarray(FIT_PREFERENCES, dtype=object)[np.where(agrees, ease_class, neighbour)]
    stated[rng.random(n) < PREF_MISSING_RATE] = None
    sex_obs = sex.astype(object)
    sex_obs[rng.random(n) < SEX_MISSING_RATE] = None

    return {
        "n": n,
        "join": join,
        "profile_ts": profile_ts,
        "sex": sex,
        "body": body,
        "observed": observed,
        "pref_cm": pref_cm,
        "stated": stated,
        "sex_obs": sex_obs,
        "unit_bug": unit_bug,
        "chart_reader": rng.random(n) < CHART_READER_SHARE,
        "reader_bias": READER_BIAS_MEAN + rng.standard_normal(n) * READER_BIAS_SD,
        "label_bias": LABEL_BIAS_MEAN_STEPS + rng.standard_normal(n) * LABEL_BIAS_STEPS,
        "activity": rng.lognormal(0.0, ACTIVITY_SIGMA, n),
    }


def _make_products(n: int, scenario: str, rngs: dict[str, np.random.Generator]) -> dict[str, Any]:
    rng = rngs["products"]
    horizon = HORIZON_DAYS * _SECONDS_PER_DAY
    existing = rng.random(n) < EXISTING_PRODUCT_SHARE
    entry = np.where(
        existing, -rng.random(n) * 365 * _SECONDS_PER_DAY, rng.random(n) * (horizon - 3600)
    )
    category = _choice(rng, list(CATEGORIES), [CATEGORY_PROBS[c] for c in CATEGORIES], n)
    line = np.where((category == "dresses") | (rng.random(n) < WOMENS_SHARE), "F", "M").astype(
        object
    )
    # every line present from the start, so any try-on has something to try
    for ln in _LINES:
        rows = np.flatnonzero(line == ln)
        if rows.size:
            entry[rows[np.argmin(entry[rows])]] = -_SECONDS_PER_DAY
    order = np.argsort(entry, kind="stable")  # product ids follow catalogue order
    entry, category, line = entry[order], category[order], line[order]

    system = np.empty(n, dtype=object)
    for (cat, ln), probs in SIZE_SYSTEM_PROBS.items():
        rows = (category == cat) & (line == ln)
        system[rows] = _choice(rng, list(probs), list(probs.values()), int(rows.sum()))
    dimension = np.where(category == "pants", "waist", "chest").astype(object)
    hips = (category == "pants") & (system != "waist") & (rng.random(n) < PANTS_HIPS_SHARE)
    dimension[hips] = "hips"
    fit_type = np.empty(n, dtype=object)
    stretch = np.empty(n)
    for cat in CATEGORIES:
        rows = category == cat
        fit_type[rows] = _choice(rng, list(FIT_TYPES), list(FIT_TYPE_PROBS[cat]), int(rows.sum()))
        a, b = STRETCH_BETA[cat]
        stretch[rows] = np.round(rng.beta(a, b, int(rows.sum())), 2)

    brand_weight = 1.0 / np.arange(1, len(BRANDS) + 1) ** 0.7
    brand_idx = rng.choice(len(BRANDS), size=n, p=brand_weight / brand_weight.sum())
    # the same spread of vanity offsets in every world (uniform, sd BRAND_VANITY_SD), dealt out
    # to brands at random: keeps the outcome mix stable across seeds
    spread = np.sqrt(3.0) * BRAND_VANITY_SD * np.linspace(-1.0, 1.0, len(BRANDS))
    vanity_of_brand = BRAND_VANITY_MEAN + rng.permutation(spread)
    brand = np.asarray(BRANDS, dtype=object)[brand_idx]
    vanity = vanity_of_brand[brand_idx]

    # exactly RUNS_SMALL_RATE of products run small and RUNS_LARGE_RATE large (stratified)
    rank = rng.permutation(n)
    off = rng.uniform(*RUNS_OFF_CM, n)
    cut = rng.standard_normal(n) * CUT_SD
    cut += np.where(rank < round(RUNS_SMALL_RATE * n), -off, 0.0)
    cut += np.where(rank >= n - round(RUNS_LARGE_RATE * n), off, 0.0)
    new_line = np.zeros(n, dtype=bool)
    if scenario == "runs_small":
        srng = rngs["scenario"]
        new_line = (entry >= SCENARIO_DAY * _SECONDS_PER_DAY) & (srng.random(n) < NEW_LINE_SHARE)
        brand[new_line] = NEW_LINE_BRAND
        cut[new_line] = srng.uniform(*NEW_LINE_CUT_CM, int(new_line.sum()))

    scale = np.array([DIM_SCALE[d] for d in dimension])
    n_sizes = np.array([len(SIZE_SCALES[s]) for s in system])
    trim = np.array([OFFERED_TRIM[s] for s in system])
    lo = rng.integers(0, trim[:, 0] + 1)
    hi = n_sizes - 1 - rng.integers(0, trim[:, 1] + 1)

    kmax = max(len(v) for v in SIZE_SCALES.values())
    # published chart: the reference chart shifted by the brand's vanity, rounded to 0.5 cm
    pub_edges = np.full((n, kmax + 1), np.inf)
    spec_keys = list(CHART_SPECS)
    spec_id = np.empty(n, dtype=np.int64)
    for k, key in enumerate(spec_keys):
        rows = (line == key[0]) & (system == key[1]) & (dimension == key[2])
        spec_id[rows] = k
        edges = _edges(_ref_centres(*key))
        shifted = edges[None, :] + (vanity[rows] * scale[rows])[:, None]
        pub_edges[np.ix_(rows, np.arange(edges.size))] = np.round(shifted * 2) / 2
    return {
        "n": n,
        "entry": entry,
        "category": category,
        "line": line,
        "system": system,
        "dimension": dimension,
        "dim_col": np.array([MEASUREMENTS.index(f"{d}_cm") for d in dimension]),
        "scale": scale,
        "fit_type": fit_type,
        "ease": np.asarray(FIT_TYPE_EASE_CM)[[FIT_TYPES.index(f) for f in fit_type]],
        "stretch": stretch,
        "brand": brand,
        "cut": cut * scale,
        "new_line": new_line,
        "lo": lo,
        "hi": hi,
        "pub_edges": pub_edges,
        "spec_id": spec_id,
        "popularity": rng.lognormal(0.0, POPULARITY_SIGMA, n),
    }


def _size_charts(products: dict[str, Any], product_ids: np.ndarray) -> pd.DataFrame:
    counts = products["hi"] - products["lo"] + 1
    prod = np.repeat(np.arange(products["n"]), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    idx = products["lo"][prod] + (np.arange(prod.size) - first)
    labels = {s: np.asarray(v, dtype=object) for s, v in SIZE_SCALES.items()}
    size = np.empty(prod.size, dtype=object)
    systems = products["system"][prod]
    for s, lab in labels.items():
        rows = systems == s
        size[rows] = lab[idx[rows]]
    edges = products["pub_edges"]
    return pd.DataFrame(
        {
            "product_id": product_ids[prod],
            "size": size,
            "size_index": idx.astype(np.int64),
            "dimension": products["dimension"][prod],
            "low_cm": edges[prod, idx],
            "high_cm": edges[prod, idx + 1],
        },
        columns=list(SIZE_CHART_COLUMNS),
    )


def _pick_products(
    t: np.ndarray,
    pool_f: np.ndarray,
    products: dict[str, Any],
    rng: np.random.Generator,
) -> np.ndarray:
    """For each try-on at time ``t`` pick a product already in the catalogue, by popularity."""
    out = np.empty(t.size, dtype=np.int64)
    u = rng.random(t.size)
    pools = {
        "F": np.flatnonzero(products["line"] == "F"),
        "M": np.flatnonzero(products["line"] == "M"),
    }
    if pools["F"].size == 0:
        pool_f = np.zeros_like(pool_f)
    if pools["M"].size == 0:
        pool_f = np.ones_like(pool_f)
    for ln, rows in (("F", pool_f), ("M", ~pool_f)):
        members = pools[ln]  # sorted by entry time already
        if not rows.any():
            continue
        cum = np.cumsum(products["popularity"][members])
        available = np.searchsorted(products["entry"][members], t[rows], side="left")
        available = np.maximum(available, 1)  # the first product of each line predates start
        j = np.searchsorted(cum, u[rows] * cum[available - 1], side="right")
        out[rows] = members[np.minimum(j, available - 1)]
    return out


def _outcome_probs(
    d: np.ndarray, scale: np.ndarray, stretch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(too_small), P(fit), P(too_large) of an ease mismatch ``d`` (cm, garment too loose > 0)."""
    tight = scale * (BAND_CM + STRETCH_TIGHT_CM * stretch)
    loose = scale * (BAND_CM + STRETCH_LOOSE_CM * stretch)
    tau = scale * LOGIT_SCALE_CM
    p_small = 1.0 / (1.0 + np.exp((d + tight) / tau))
    p_not_large = 1.0 / (1.0 + np.exp((d - loose) / tau))
    return p_small, p_not_large - p_small, 1.0 - p_not_large


def _expand(a: np.ndarray, ndim: int) -> np.ndarray:
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def _simulate_tryons(
    users: dict[str, Any], products: dict[str, Any], n: int, rngs: dict[str, np.random.Generator]
) -> dict[str, np.ndarray]:
    rng = rngs["events"]
    horizon = HORIZON_DAYS * _SECONDS_PER_DAY
    w = users["activity"]
    user = rng.choice(users["n"], size=n, p=w / w.sum())
    t0 = np.maximum(users["join"][user], 0.0)
    t = np.floor(t0 + rng.random(n) * (horizon - t0))
    own = rng.random(n) < OWN_LINE_SHARE
    pool_f = (users["sex"][user] == "F") == own
    product = _pick_products(t, pool_f, products, rng)

    scale = products["scale"][product]
    girth = users["body"][user, products["dim_col"][product]]
    pref = users["pref_cm"][user]
    # the size a shopper's habit suggests
    target = girth + scale * PICK_EASE_WEIGHT * pref
    reader = users["chart_reader"][user]
    target_reader = target + users["reader_bias"][user] + rng.standard_normal(n) * READER_EVENT_SD
    idx_reader = np.empty(n, dtype=np.int64)
    for a in range(0, n, _CHUNK):  # index of the published size holding the target
        b = min(n, a + _CHUNK)
        interior = products["pub_edges"][product[a:b], 1:]  # inf beyond the scale never counts
        idx_reader[a:b] = np.sum(interior <= target_reader[a:b, None], axis=1)
    idx_label = np.empty(n, dtype=np.int64)
    label_bias = users["label_bias"][user]
    spec = products["spec_id"][product]
    for k, key in enumerate(CHART_SPECS):
        rows = spec == k
        if rows.any():
            ref_interior = _edges(_ref_centres(*key))[1:-1]
            target_label = target[rows] + label_bias[rows] * CHART_SPECS[key][1]
            idx_label[rows] = np.searchsorted(ref_interior, target_label, side="right")
    tried = np.where(reader, idx_reader, idx_label)
    off = rng.random(n) < OFF_SIZE_RATE
    tried = tried + off * np.where(rng.random(n) < 0.5, -1, 1)
    lo, hi = products["lo"][product], products["hi"][product]
    tried = np.clip(tried, lo, hi)

    # the truth: every offered size's outcome probabilities, in chunks to bound memory
    edges = products["pub_edges"]
    kmax = edges.shape[1] - 1
    ks = np.arange(kmax)
    best = np.empty(n, dtype=np.int64)
    best_fit = np.empty(n)
    probs = np.empty((n, 3))
    for a in range(0, n, _CHUNK):
        b = min(n, a + _CHUNK)
        p = product[a:b]
        centre = (edges[p, :-1] + edges[p, 1:]) / 2 + products["cut"][p, None]
        shift = scale[a:b] * (products["ease"][p] - pref[a:b])
        d = centre - girth[a:b, None] + shift[:, None]
        offered = (ks[None, :] >= lo[a:b, None]) & (ks[None, :] <= hi[a:b, None])
        d = np.where(offered, d, 0.0)
        ps, pf, pl = _outcome_probs(d, scale[a:b, None], products["stretch"][p, None])
        pf = np.where(offered, pf, -1.0)
        top = pf.max(axis=1, keepdims=True)
        # ties (to 1e-12) go to the size whose ease is closer to what the shopper prefers
        closeness = np.where(pf >= top - 1e-12, np.abs(d), np.inf)
        best[a:b] = np.argmin(closeness, axis=1)
        row = np.arange(b - a)
        best_fit[a:b] = pf[row, best[a:b]]
        tried_here = tried[a:b]
        probs[a:b] = np.stack(
            [ps[row, tried_here], pf[row, tried_here], pl[row, tried_here]], axis=1
        )
    probs = np.clip(probs, 0.0, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)
    u = rngs["outcomes"].random(n)
    outcome = (u >= probs[:, 0]).astype(np.int64) + (u >= probs[:, 0] + probs[:, 1])
    return {
        "user": user,
        "product": product,
        "t": t,
        "tried": tried,
        "best": best,
        "best_fit": best_fit,
        "probs": probs,
        "outcome": outcome,
    }


def _labels(system: np.ndarray, index: np.ndarray) -> np.ndarray:
    out = np.empty(index.size, dtype=object)
    for s, labels in SIZE_SCALES.items():
        rows = system == s
        out[rows] = np.asarray(labels, dtype=object)[index[rows]]
    return out


def _check_args(users: int, products: int, events: int, scenario: str) -> None:
    if scenario not in SCENARIOS:
        raise InvalidValueError(
            "scenario", scenario, "is not a known scenario", f"use one of {', '.join(SCENARIOS)}"
        )
    for name, value, least in (
        ("users", users, 1),
        ("products", products, 1),
        ("events", events, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InvalidValueError(
                name, value, f"is not a whole number >= {least}", f"pass e.g. {name}=1000"
            )


def generate(
    out_dir: Path,
    *,
    users: int,
    products: int,
    events: int,
    seed: int,
    scenario: str = "baseline",
    start: datetime | None = None,
    body_params: Path | None = None,
) -> dict[str, Path]:
    """Generate a synthetic world and write its tables to ``out_dir``.

    The same arguments always give the same bytes. Scenarios share the baseline's random
    streams, so e.g. ``runs_small`` changes the new line's products and their outcomes, not
    the shoppers.

    Args:
        out_dir: Folder to write into (created if missing; files of the same name replaced).
        users: Number of shoppers (some make no try-on).
        products: Number of catalogue products.
        events: Number of try-on events.
        seed: Seed of every random draw.
        scenario: One of :data:`SCENARIOS`.
        start: Start of the event period (tz-aware; default 2026-01-01 UTC); events span
            :data:`HORIZON_DAYS` days from it.
        body_params: ANSUR parameter JSON (default: the committed ``params/ansur2.json``).

    Returns:
        Paths by table name: ``users``, ``products``, ``size_charts``, ``events``, ``truth``,
        ``manifest``.

    Raises:
        InvalidValueError: for an unknown scenario, a non-positive count or a naive ``start``.
    """
    _check_args(users, products, events, scenario)
    start = DEFAULT_START if start is None else start
    if start.tzinfo is None:
        raise InvalidValueError(
            "start", start, "has no time zone", "pass an aware datetime, e.g. tzinfo=UTC"
        )
    params = load_params(body_params)
    rngs = _child_rngs(seed)
    u = _make_users(int(users), params, scenario, rngs)
    p = _make_products(int(products), scenario, rngs)
    e = _simulate_tryons(u, p, int(events), rngs)

    user_ids = _ids("u", u["n"], 6)
    product_ids = _ids("p", p["n"], 4)
    users_df = pd.DataFrame({"user_id": user_ids, "sex": u["sex_obs"]})
    for j, m in enumerate(MEASUREMENTS):
        users_df[m] = u["observed"][:, j]
    users_df["fit_preference"] = u["stated"]
    users_df["event_timestamp"] = _timestamps(start, u["profile_ts"])
    products_df = pd.DataFrame(
        {
            "product_id": product_ids,
            "brand": p["brand"],
            "category": p["category"],
            "fit_type": p["fit_type"],
            "stretch": p["stretch"],
            "size_system": p["system"],
            "event_timestamp": _timestamps(start, p["entry"]),
        },
        columns=list(PRODUCT_COLUMNS),
    )
    charts_df = _size_charts(p, product_ids)

    order = np.lexsort((e["product"], e["user"], e["t"]))
    ev = {k: v[order] for k, v in e.items()}
    event_ids = _ids("e", events, 8)
    systems = p["system"][ev["product"]]
    events_df = pd.DataFrame(
        {
            "event_id": event_ids,
            "user_id": user_ids[ev["user"]],
            "product_id": product_ids[ev["product"]],
            "size": _labels(systems, ev["tried"]),
            "size_index": ev["tried"].astype(np.int64),
            "outcome": np.asarray(OUTCOMES, dtype=object)[ev["outcome"]],
            "event_timestamp": _timestamps(start, ev["t"]),
        },
        columns=list(EVENT_COLUMNS),
    )
    truth_df = pd.DataFrame(
        {
            "event_id": event_ids,
            "user_id": events_df["user_id"],
            "product_id": events_df["product_id"],
            "best_size": _labels(systems, ev["best"]),
            "best_size_index": ev["best"].astype(np.int64),
            "p_too_small": ev["probs"][:, 0],
            "p_fit": ev["probs"][:, 1],
            "p_too_large": ev["probs"][:, 2],
        },
        columns=list(TRUTH_COLUMNS),
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in OUTPUT_FILES.items()}
    for name, frame in (
        ("users", users_df[list(USER_COLUMNS)]),
        ("products", products_df),
        ("size_charts", charts_df),
        ("events", events_df),
        ("truth", truth_df),
    ):
        frame.to_parquet(paths[name], index=False)

    counts = np.bincount(ev["outcome"], minlength=3)
    mix = {o: round(float(c) / max(events, 1), 4) for o, c in zip(OUTCOMES, counts, strict=True)}
    manifest = {
        "generator": "ml_pipeline.synth",
        "seed": int(seed),
        "scenario": scenario,
        "start": pd.Timestamp(start).tz_convert("UTC").isoformat(),
        "horizon_days": HORIZON_DAYS,
        "counts": {
            "users": int(users),
            "products": int(products),
            "events": int(events),
            "size_chart_rows": len(charts_df),
            "active_users": int(np.unique(ev["user"]).size),
        },
        "outcome_mix": mix,
        "oracle": {  # how well shoppers' habits and the best sizes fit (truth means)
            "mean_p_fit_of_tried": _mean(ev["probs"][:, 1]),
            "mean_p_fit_of_best": _mean(ev["best_fit"]),
            "tried_is_best": _mean(ev["tried"] == ev["best"]),
        },
        "scenario_detail": _scenario_detail(scenario, u, p, start),
        "files": {k: v.name for k, v in paths.items() if k != "manifest"},
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if values.size else None


def _scenario_detail(
    scenario: str, u: dict[str, Any], p: dict[str, Any], start: datetime
) -> dict[str, Any]:
    since = (pd.Timestamp(start).tz_convert("UTC") + timedelta(days=SCENARIO_DAY)).isoformat()
    if scenario == "runs_small":
        return {"brand": NEW_LINE_BRAND, "products": int(p["new_line"].sum()), "since": since}
    if scenario == "unit_bug":
        return {
            "users_with_inch_girths": int(u["unit_bug"].sum()),
            "columns": ["chest_cm", "waist_cm", "hips_cm"],
            "since": since,
        }
    if scenario == "population_shift":
        return {
            "share_female": SHARE_FEMALE["population_shift"],
            "log_mean_shift": POPULATION_SHIFT_LOG,
        }
    return {"share_female": SHARE_FEMALE["baseline"]}
