"""The feature-table job: turns ingested tables into the sources of the Feast feature views.

The job has two history modes (``feast.history`` in the settings):

* ``point_in_time`` (the default): history aggregates are cumulative and point-in-time
  correct: the row that includes an event is stamped one microsecond *after* the event, so a
  training row for an event (joined as of its own timestamp) sees only events strictly before
  it, and events at the same instant do not see each other. The latest row of each entity is
  what serving reads online.
* ``oof`` (out of fold), for data without a time order to respect (the paper's random split
  of RentTheRunway): the labelled events are dealt into K seeded folds; version ``k`` of the
  user history and product stats is computed from every event *outside* fold ``k`` (earlier
  and later alike) and version ``K`` from all of them. Each version is one row per entity,
  stamped at its own instant just after every input timestamp (``start + k`` microseconds);
  an entity absent from a version's events gets an all-missing row there, so no join falls
  back to another version. :class:`HistoryFolds` records each event's fold: the training set
  joins an event of fold ``k`` as of version ``k`` (its own fold's labels, its own included,
  are in none of its features) and any other row (a held-out test row, whose label is in no
  table at all) as of version ``K``, which is also the latest row, the one serving reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

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
HistoryMode = Literal["point_in_time", "oof"]
HISTORY_MODES: Final[tuple[str, ...]] = ("point_in_time", "oof")
FOLDS_FILE: Final = "history_folds"
"""``<source dir>/history_folds.parquet`` (event -> fold) and ``.json`` (folds, first
instant): written by the ``oof`` job, absent after a ``point_in_time`` one."""
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
class HistoryFolds:
    """The ``oof`` job's folds: which version of the history views each event reads.

    Attributes:
        folds: K; versions ``0..K-1`` leave one fold out, version ``K`` holds every event.
        start: The instant of version 0 (version ``k`` is stamped ``start + k`` microseconds).
        event_fold: ``event_id`` -> ``fold`` of every labelled event the job read.
    """

    folds: int
    start: pd.Timestamp
    event_fold: pd.DataFrame

    def instant(self, version: int) -> pd.Timestamp:
        """When version ``version`` of the history rows is stamped."""
        return self.start + version * STAMP_DELAY

    def as_of(self, event_ids: pd.Series) -> pd.Series:
        """The instant each event reads the history views at (on ``event_ids``' index).

        A labelled event of fold ``k``: version ``k`` (built without fold ``k``). Any other
        event (not in the job's event log, e.g. a held-out test row): version ``K``.
        """
        fold = event_ids.astype(str).map(
            self.event_fold.set_index("event_id")["fold"].astype("int64")
        )
        steps = fold.fillna(self.folds).astype("int64").to_numpy()
        return pd.Series(
            self.start + pd.to_timedelta(steps * STAMP_DELAY.value, unit="ns"),
            index=event_ids.index,
        ).astype("datetime64[ns, UTC]")

    def write(self, directory: Path) -> None:
        """Write ``history_folds.parquet`` and ``history_folds.json`` into ``directory``."""
        self.event_fold.to_parquet(directory / f"{FOLDS_FILE}.parquet", index=False)
        meta = {"history": "oof", "folds": self.folds, "start": self.start.isoformat()}
        (directory / f"{FOLDS_FILE}.json").write_text(json.dumps(meta) + "\n")

    @classmethod
    def read(cls, directory: Path) -> HistoryFolds | None:
        """The folds the last job wrote into ``directory``; None after a point-in-time job."""
        meta_path = directory / f"{FOLDS_FILE}.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        return cls(
            folds=int(meta["folds"]),
            start=pd.Timestamp(meta["start"]).tz_convert("UTC"),
            event_fold=pd.read_parquet(directory / f"{FOLDS_FILE}.parquet"),
        )


@dataclass(frozen=True)
class FeatureTables:
    """The four feature-view sources, as frames (and the ``oof`` job's folds)."""

    user_profile: pd.DataFrame
    user_history: pd.DataFrame
    product_attrs: pd.DataFrame
    product_stats: pd.DataFrame
    history_folds: HistoryFolds | None = None

    def write(self, directory: Path) -> dict[str, Path]:
        """Write each table to ``directory/<name>.parquet`` and return the paths.

        The ``oof`` job's folds go beside them; a point-in-time job removes earlier ones.
        """
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in FEATURE_TABLES:
            path = directory / f"{name}.parquet"
            getattr(self, name).to_parquet(path, index=False)
            paths[name] = path
        for suffix in (".parquet", ".json"):
            (directory / f"{FOLDS_FILE}{suffix}").unlink(missing_ok=True)
        if self.history_folds is not None:
            self.history_folds.write(directory)
        return paths


PROFILE_NUMBERS: Final[tuple[str, ...]] = (
    "height_cm",
    "weight_kg",
    "chest_cm",
    "waist_cm",
    "hips_cm",
    "inseam_cm",
    "underbust_cm",
    "cup_cm",
    "age",
)
"""Numeric profile columns (``user_<name>`` features); the last three are optional extras a
retailer's profile may carry (missing for synthetic data)."""
PROFILE_TEXTS: Final[tuple[str, ...]] = ("sex", "fit_preference", "body_type")
"""Categorical profile columns (``user_<name>``; ``unknown`` when missing)."""


def user_profile_table(users: pd.DataFrame) -> pd.DataFrame:
    """Profile features, one row per profile update.

    Measurements, sex, stated preference and the optional extras (age, body type, the bra
    size's underbust and cup girths).
    """
    out = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(str),
            "event_timestamp": utc_ns(users["event_timestamp"]),
        }
    )
    for column in PROFILE_TEXTS:
        values = users.get(column, pd.Series(index=users.index, dtype=object)).astype(object)
        out[f"user_{column}"] = values.where(values.notna(), "unknown").astype(str)
    for column in PROFILE_NUMBERS:
        values = users.get(column, pd.Series(index=users.index, dtype=float))
        out[f"user_{column}"] = pd.to_numeric(values, errors="coerce").astype(float)
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
    events: pd.DataFrame,
    user_profile: pd.DataFrame,
    product_attrs: pd.DataFrame,
    context: Literal["before", "others"] = "before",
) -> pd.DataFrame:
    """Each event with the size index its outcome implies and that index against the chart pick.

    The shopper's girth is taken from the latest profile at or before the event. ``context``:
    the latent-size offsets (``item_off``, ``user_off``) are taken against the events strictly
    before (``before``) or against every other event given (``others``, the ``oof`` job).
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
    # *earlier* feedback). Both contexts use strictly earlier events only (point in time), or
    # the other events given, never the event itself (out of fold).
    mean = _mean_before if context == "before" else _mean_others
    out["item_off"] = out["implied_index"] - mean(out, ["product_id"], "size_index")
    out["user_off"] = out["implied_index"] - mean(out, ["user_id", "size_system"], "implied_index")
    return out


def _mean_others(frame: pd.DataFrame, keys: list[str], column: str) -> np.ndarray:
    """Per row, the mean of ``column`` over the other rows of its group (NaN when none)."""
    values = frame[column].astype(float)
    own_s = values.fillna(0.0)
    own_n = values.notna().astype(float)
    grouped = frame[keys].assign(s=own_s, n=own_n).groupby(keys, sort=False, dropna=False)
    s = grouped["s"].transform("sum") - own_s
    n = grouped["n"].transform("sum") - own_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s / n.replace(0.0, np.nan)).to_numpy(dtype=float)


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


def event_folds(event_ids: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Deal events into ``folds`` folds: a seeded permutation of them in ``event_id`` order.

    The same events and seed give the same folds whatever order the events come in.
    """
    ids = event_ids.astype(str).to_numpy()
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    dealt = np.random.default_rng(seed).permutation(len(ids)) % folds
    return dealt[rank].astype(np.int64)


def _history_version(
    events: pd.DataFrame,
    profile: pd.DataFrame,
    attrs: pd.DataFrame,
    instant: pd.Timestamp,
    users: np.ndarray,
    products: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One ``oof`` version: user history and product stats of ``events``, stamped ``instant``.

    Every event counts as one instant (no time order); ``users`` / ``products`` without an
    event here get an all-missing row, so a join as of ``instant`` reads nothing older.
    """
    offsets = event_offsets(events, profile, attrs, context="others")
    offsets = offsets.assign(event_timestamp=instant - STAMP_DELAY)
    out = []
    for table, key, ids in (
        (user_history_table(offsets), "user_id", users),
        (product_stats_table(offsets), "product_id", products),
    ):
        missing = pd.Index(ids).difference(pd.Index(table[key]))
        filler = pd.DataFrame({key: missing.to_numpy(dtype=object)}).reindex(columns=table.columns)
        filler["event_timestamp"] = instant
        filler[CREATED_TIMESTAMP] = instant
        filler = filler.astype(table.dtypes.to_dict())
        out.append(pd.concat([table, filler], ignore_index=True) if len(filler) else table)
    return out[0], out[1]


def oof_history(
    events: pd.DataFrame,
    profile: pd.DataFrame,
    attrs: pd.DataFrame,
    folds: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, HistoryFolds]:
    """The ``oof`` job's user history and product stats (``folds + 1`` versions) and folds.

    Version ``k < folds`` is computed from the events outside fold ``k``, version ``folds``
    from all of them; see the module docstring.
    """
    fold = event_folds(events["event_id"], folds, seed)
    latest = max(
        utc_ns(frame["event_timestamp"]).max() for frame in (events, profile, attrs) if len(frame)
    )
    record = HistoryFolds(
        folds=folds,
        start=latest + STAMP_DELAY,
        event_fold=pd.DataFrame({"event_id": events["event_id"].astype(str), "fold": fold}),
    )
    users = events["user_id"].astype(str).unique()
    products = events["product_id"].astype(str).unique()
    histories, stats = [], []
    for version in range(folds + 1):
        part = events.loc[fold != version] if version < folds else events
        history, product = _history_version(
            part, profile, attrs, record.instant(version), users, products
        )
        histories.append(history)
        stats.append(product)
    return (
        pd.concat(histories, ignore_index=True),
        pd.concat(stats, ignore_index=True),
        record,
    )


def build_feature_tables(
    users: pd.DataFrame,
    products: pd.DataFrame,
    size_charts: pd.DataFrame,
    events: pd.DataFrame,
    *,
    history: HistoryMode = "point_in_time",
    folds: int = 5,
    seed: int = 0,
) -> FeatureTables:
    """Compute every feature-view source from the ingested tables.

    Args:
        users: The ingested shoppers (profile updates).
        products: The ingested products.
        size_charts: The ingested size charts.
        events: The event log (labelled try-on events).
        history: ``point_in_time`` or ``oof`` (see the module docstring).
        folds: K of the ``oof`` history.
        seed: Seeds the ``oof`` folds.
    """
    if history not in HISTORY_MODES:
        raise ValueError(f"history {history!r} is not one of {', '.join(HISTORY_MODES)}")
    profile = user_profile_table(users)
    attrs = product_attrs_table(products, size_charts)
    if history == "oof" and len(events):
        user_history, product_stats, record = oof_history(events, profile, attrs, folds, seed)
        return FeatureTables(
            user_profile=profile,
            user_history=user_history,
            product_attrs=attrs,
            product_stats=product_stats,
            history_folds=record,
        )
    offsets = event_offsets(events, profile, attrs)
    return FeatureTables(
        user_profile=profile,
        user_history=user_history_table(offsets),
        product_attrs=attrs,
        product_stats=product_stats_table(offsets),
    )
