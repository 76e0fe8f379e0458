"""The feature-table job: turns ingested tables into the sources of the Feast feature views.

History aggregates are cumulative and point-in-time correct: the row that includes an event
is stamped one microsecond *after* the event, so a training row for an event (joined as of
its own timestamp) sees only events strictly before it, and events at the same instant do not
see each other. The latest row of each entity is what serving reads online.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from features.definitions import CREATED_TIMESTAMP
from features.transforms import CATALOGUE_SYSTEMS, chart_features, implied_index

STAMP_DELAY: Final = pd.Timedelta(microseconds=1)
BODY_SLOPE_PRIOR: Final = 200.0
"""Ridge on the slope of a product's body-size line (kg squared: about two shoppers 10 kg
from the mean weight at slope 0)."""
LATENT_PRIOR: Final = 1.0
"""Pseudo-events at offset 0 in the latent-size offsets (``hist_item_offset``,
``pstat_user_offset``): one piece of feedback moves them half-way, many nearly all the way."""
FEATURE_TABLES: Final[tuple[str, ...]] = (
    "user_profile",
    "user_history",
    "product_attrs",
    "product_stats",
)


def utc_ns(values: pd.Series) -> pd.Series:
    """Timestamps as timezone-aware UTC with nanosecond resolution (one dtype everywhere)."""
    return pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")


@dataclass(frozen=True)
class FeatureTables:
    """The four feature-view sources, as frames."""

    user_profile: pd.DataFrame
    user_history: pd.DataFrame
    product_attrs: pd.DataFrame
    product_stats: pd.DataFrame

    def write(self, directory: Path) -> dict[str, Path]:
        """Write each table to ``directory/<name>.parquet`` and return the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in FEATURE_TABLES:
            path = directory / f"{name}.parquet"
            getattr(self, name).to_parquet(path, index=False)
            paths[name] = path
        return paths


def user_profile_table(users: pd.DataFrame) -> pd.DataFrame:
    """Profile features: measurements, sex and stated preference, one row per profile update."""
    out = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(str),
            "event_timestamp": utc_ns(users["event_timestamp"]),
            "user_sex": users.get("sex", pd.Series(index=users.index, dtype=object)).astype(object),
            "user_fit_preference": users["fit_preference"].astype(object),
        }
    )
    for column in ("height_cm", "weight_kg", "chest_cm", "waist_cm", "hips_cm", "inseam_cm"):
        out[f"user_{column}"] = pd.to_numeric(users.get(column), errors="coerce").astype(float)
    out["user_sex"] = out["user_sex"].where(out["user_sex"].notna(), "unknown").astype(str)
    out["user_fit_preference"] = (
        out["user_fit_preference"].where(out["user_fit_preference"].notna(), "unknown").astype(str)
    )
    return out


def product_attrs_table(products: pd.DataFrame, size_charts: pd.DataFrame) -> pd.DataFrame:
    """Product attributes with the size chart as arrays (sizes ascending by size index)."""
    charts = size_charts.sort_values(["product_id", "size_index"])
    grouped = charts.groupby("product_id", sort=False)
    arrays = pd.DataFrame(
        {
            "chart_dimension": grouped["dimension"].first(),
            "chart_sizes": grouped["size"].agg(lambda s: [str(v) for v in s]),
            "chart_index": grouped["size_index"].agg(lambda s: [int(v) for v in s]),
            "chart_low": grouped["low_cm"].agg(lambda s: [float(v) for v in s]),
            "chart_high": grouped["high_cm"].agg(lambda s: [float(v) for v in s]),
        }
    )
    out = pd.DataFrame(
        {
            "product_id": products["product_id"].astype(str),
            "event_timestamp": utc_ns(products["event_timestamp"]),
            "product_brand": products["brand"].fillna("unknown").astype(str),
            "product_category": products["category"].fillna("unknown").astype(str),
            "product_fit_type": products["fit_type"].fillna("unknown").astype(str),
            "product_stretch": pd.to_numeric(products["stretch"], errors="coerce").astype(float),
            "product_size_system": products["size_system"].astype(str),
        }
    )
    out = out.join(arrays, on="product_id")
    out["chart_dimension"] = out["chart_dimension"].fillna("none").astype(str)
    for column in ("chart_sizes", "chart_index", "chart_low", "chart_high"):
        out[column] = out[column].apply(lambda v: v if isinstance(v, list) else [])
    return out


def event_offsets(
    events: pd.DataFrame, user_profile: pd.DataFrame, product_attrs: pd.DataFrame
) -> pd.DataFrame:
    """Each event with the size index its outcome implies and that index against the chart pick.

    The shopper's girth is taken from the latest profile at or before the event.
    """
    ev = events[["event_id", "user_id", "product_id", "size_index", "outcome", "event_timestamp"]]
    ev = ev.assign(event_timestamp=utc_ns(ev["event_timestamp"]))
    ev = ev.sort_values("event_timestamp", kind="stable")
    profile = user_profile.sort_values("event_timestamp", kind="stable")
    joined = pd.merge_asof(
        ev,
        profile.rename(columns={"event_timestamp": "profile_timestamp"}),
        left_on="event_timestamp",
        right_on="profile_timestamp",
        by="user_id",
        direction="backward",
    )
    joined = joined.merge(
        product_attrs.drop(columns=["event_timestamp"]), on="product_id", how="left"
    )
    chart = chart_features(joined.reset_index(drop=True))
    implied = implied_index(joined["size_index"].to_numpy(), joined["outcome"])
    out = pd.DataFrame(
        {
            "event_id": joined["event_id"].to_numpy(),
            "user_id": joined["user_id"].to_numpy(),
            "product_id": joined["product_id"].to_numpy(),
            "event_timestamp": joined["event_timestamp"].to_numpy(),
            "outcome": joined["outcome"].to_numpy(),
            "size_system": joined["product_size_system"].to_numpy(),
            "size_index": joined["size_index"].to_numpy(dtype=float),
            "implied_index": implied,
            "implied_offset": implied - chart["chart_pick"].to_numpy(),
            "weight_kg": pd.to_numeric(joined["user_weight_kg"], errors="coerce").to_numpy(
                dtype=float
            ),
        }
    )
    # Latent sizes, decomposed: where the outcome says the right size was, against the
    # product's typical size (the mean size tried on it *before* this event: no label) and
    # against the shopper's usual size in that size system (the mean right size of their
    # *earlier* feedback). Both contexts use strictly earlier events only.
    out["item_off"] = out["implied_index"] - _mean_before(out, ["product_id"], "size_index")
    out["user_off"] = out["implied_index"] - _mean_before(
        out, ["user_id", "size_system"], "implied_index"
    )
    return out


def _mean_before(frame: pd.DataFrame, keys: list[str], column: str) -> np.ndarray:
    """Per row, the mean of ``column`` over its group's rows at strictly earlier instants.

    Rows at the same instant do not see each other; a row with no earlier row gets NaN.
    """
    groups = [*keys, "event_timestamp"]
    values = frame[column].astype(float)
    per_instant = (
        frame[groups]
        .assign(s=values.fillna(0.0), n=values.notna().astype(float))
        .groupby(groups, sort=True, dropna=False)[["s", "n"]]
        .sum()
    )
    level = list(range(len(keys)))
    before = per_instant.groupby(level=level, dropna=False).cumsum()
    before = before.groupby(level=level, dropna=False).shift(1).fillna(0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = before["s"] / before["n"].replace(0.0, np.nan)
    index = pd.MultiIndex.from_frame(frame[groups])
    return mean.reindex(index).to_numpy(dtype=float)


def _cumulative(offsets: pd.DataFrame, key: str, systems: tuple[str, ...]) -> pd.DataFrame:
    frame = offsets.assign(
        n=1.0,
        small=(offsets["outcome"] == "too_small").astype(float),
        large=(offsets["outcome"] == "too_large").astype(float),
        off_sum=offsets["implied_offset"].fillna(0.0),
        off_n=offsets["implied_offset"].notna().astype(float),
        size_sum=offsets["size_index"].fillna(0.0),
        size_n=offsets["size_index"].notna().astype(float),
        implied_sum=offsets["implied_index"].fillna(0.0),
        item_off_sum=offsets["item_off"].fillna(0.0),
        item_off_n=offsets["item_off"].notna().astype(float),
        user_off_sum=offsets["user_off"].fillna(0.0),
        user_off_n=offsets["user_off"].notna().astype(float),
    )
    sums = ["n", "small", "large", "off_sum", "off_n", "size_sum", "size_n", "implied_sum"]
    sums += ["item_off_sum", "item_off_n", "user_off_sum", "user_off_n"]
    # The body-size model of each product: where its feedback put the right size against the
    # shopper's weight (a least-squares line from these running sums).
    body = offsets["weight_kg"].notna() & offsets["implied_index"].notna()
    w = offsets["weight_kg"].where(body, 0.0)
    y = offsets["implied_index"].where(body, 0.0)
    frame = frame.assign(bw_n=body.astype(float), bw_x=w, bw_y=y, bw_xx=w * w, bw_xy=w * y)
    sums += ["bw_n", "bw_x", "bw_y", "bw_xx", "bw_xy"]
    for system in systems:
        mask = (frame["size_system"] == system).to_numpy()
        frame[f"idx_sum_{system}"] = np.where(mask, frame["implied_index"], 0.0)
        frame[f"idx_n_{system}"] = mask.astype(float)
        sums += [f"idx_sum_{system}", f"idx_n_{system}"]
    grouped = frame.groupby([key, "event_timestamp"], sort=True)
    per_instant = grouped[sums].sum()
    per_instant["last_off"] = grouped["implied_offset"].last()
    cum = per_instant[sums].groupby(level=0).cumsum()
    cum["last_off"] = per_instant["last_off"].groupby(level=0).ffill()
    return cum.reset_index()


def user_history_table(offsets: pd.DataFrame) -> pd.DataFrame:
    """The shopper's fit history after each instant they gave feedback (stamped just after)."""
    cum = _cumulative(offsets, "user_id", CATALOGUE_SYSTEMS)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame(
            {
                "user_id": cum["user_id"].astype(str),
                "event_timestamp": cum["event_timestamp"] + STAMP_DELAY,
                CREATED_TIMESTAMP: cum["event_timestamp"] + STAMP_DELAY,
                "hist_n": cum["n"].astype(float),
                "hist_share_small": cum["small"] / cum["n"],
                "hist_share_large": cum["large"] / cum["n"],
                "hist_mean_offset": cum["off_sum"] / cum["off_n"].replace(0, np.nan),
                "hist_last_offset": cum["last_off"].astype(float),
                # One pseudo-event at offset 0 shrinks a short history towards "wears each
                # product's typical size".
                "hist_item_offset": cum["item_off_sum"] / (cum["item_off_n"] + LATENT_PRIOR),
            }
        )
        for system in CATALOGUE_SYSTEMS:
            count = cum[f"idx_n_{system}"].replace(0, np.nan)
            out[f"hist_usual_{system}"] = cum[f"idx_sum_{system}"] / count
    return out


def product_stats_table(offsets: pd.DataFrame) -> pd.DataFrame:
    """Everyone's feedback on the product after each instant (stamped just after)."""
    cum = _cumulative(offsets, "product_id", ())
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "product_id": cum["product_id"].astype(str),
                "event_timestamp": cum["event_timestamp"] + STAMP_DELAY,
                CREATED_TIMESTAMP: cum["event_timestamp"] + STAMP_DELAY,
                "pstat_n": cum["n"].astype(float),
                "pstat_share_small": cum["small"] / cum["n"],
                "pstat_share_large": cum["large"] / cum["n"],
                "pstat_mean_offset": cum["off_sum"] / cum["off_n"].replace(0, np.nan),
                "pstat_size_mean": cum["size_sum"] / cum["size_n"].replace(0, np.nan),
                "pstat_implied_mean": cum["implied_sum"] / cum["size_n"].replace(0, np.nan),
                "pstat_user_offset": cum["user_off_sum"] / (cum["user_off_n"] + LATENT_PRIOR),
                **_body_line(cum),
            }
        )


def _body_line(cum: pd.DataFrame) -> dict[str, pd.Series]:
    """A product's right size against the shopper's weight: mean weight, mean size, slope.

    The slope is shrunk towards 0 by :data:`BODY_SLOPE_PRIOR` (kg squared), so a product
    with little feedback predicts its mean right size for every weight.
    """
    n = cum["bw_n"].replace(0, np.nan)
    x_mean = cum["bw_x"] / n
    y_mean = cum["bw_y"] / n
    sxx = cum["bw_xx"] - cum["bw_x"] * x_mean
    sxy = cum["bw_xy"] - cum["bw_x"] * y_mean
    return {
        "pstat_body_weight": x_mean,
        "pstat_body_size": y_mean,
        "pstat_body_slope": sxy / (sxx.clip(lower=0.0) + BODY_SLOPE_PRIOR),
    }


def build_feature_tables(
    users: pd.DataFrame,
    products: pd.DataFrame,
    size_charts: pd.DataFrame,
    events: pd.DataFrame,
) -> FeatureTables:
    """Compute every feature-view source from the ingested tables."""
    profile = user_profile_table(users)
    attrs = product_attrs_table(products, size_charts)
    offsets = event_offsets(events, profile, attrs)
    return FeatureTables(
        user_profile=profile,
        user_history=user_history_table(offsets),
        product_attrs=attrs,
        product_stats=product_stats_table(offsets),
    )
