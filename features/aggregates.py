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
from features.transforms import BODY_COLUMN, CATALOGUE_SYSTEMS, chart_features, implied_index

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

    Rows come in event-time order (one per event and matching product row). ``user_id``,
    ``product_id``, ``outcome`` and ``size_system`` are categoricals (``user_id`` and
    ``product_id`` with their categories in ascending order): tens of millions of events are
    joined and grouped through integer codes, never through their strings.
    """
    stamps = utc_ns(events["event_timestamp"])
    order = np.argsort(_nanoseconds(stamps), kind="stable")
    users, user_ids = _codes(events["user_id"])
    products, product_ids = _codes(events["product_id"])

    # The profile as of each event: merge_asof by the shopper's code.
    profile = user_profile.sort_values("event_timestamp", kind="stable")
    profile_user = user_ids.get_indexer(profile["user_id"])
    right = pd.DataFrame(
        {
            "at": profile["event_timestamp"].array,
            "user": profile_user,
            "profile_row": np.arange(len(profile)),
        }
    )[profile_user >= 0]
    left = pd.DataFrame({"at": stamps.array.take(order), "user": users[order]})
    as_of = pd.merge_asof(left, right, on="at", by="user", direction="backward")
    profile_of_event = np.empty(len(events), dtype=np.int64)
    profile_of_event[order] = as_of["profile_row"].fillna(-1).to_numpy(dtype=np.int64)
    del left, right, as_of

    # Each event with its product's attribute rows (a left merge on the product's code).
    attr_product = product_ids.get_indexer(product_attrs["product_id"])
    matched = pd.merge(
        pd.DataFrame({"product": products[order], "event_row": order}),
        pd.DataFrame(
            {
                "product": np.where(attr_product >= 0, attr_product, -2),
                "attr_row": np.arange(len(product_attrs)),
            }
        ),
        on="product",
        how="left",
    )
    rows = matched["event_row"].to_numpy(dtype=np.int64)
    attr = matched["attr_row"].fillna(-1).to_numpy(dtype=np.int64)
    prof = profile_of_event[rows]
    del matched, profile_of_event

    size_index = events["size_index"].to_numpy(dtype=float)[rows]
    outcomes = events["outcome"].to_numpy(dtype=object)[rows]
    product = products[rows]
    chart_input: dict[str, np.ndarray] = {
        "product_id": np.where(product >= 0, product, np.nan),
        "size_index": size_index,
    }
    for column in ("chart_dimension", "chart_index", "chart_low", "chart_high"):
        chart_input[column] = _take(product_attrs[column].to_numpy(dtype=object), attr)
    for column in BODY_COLUMN.values():
        if column in profile:
            chart_input[column] = _take(profile[column].to_numpy(dtype=float), prof)
    chart_pick = chart_features(chart_input)["chart_pick"]
    del chart_input
    implied = implied_index(size_index, outcomes)
    outcome_codes, outcome_values = pd.factorize(outcomes)
    del outcomes
    system_codes, systems = pd.factorize(product_attrs["product_size_system"])
    system_codes = np.append(system_codes, -1)  # attr -1 (no product row): missing
    weight = pd.to_numeric(profile["user_weight_kg"], errors="coerce").to_numpy(dtype=float)
    out = pd.DataFrame(
        {
            "event_id": events["event_id"].to_numpy()[rows],
            "user_id": pd.Categorical.from_codes(users[rows], categories=user_ids),
            "product_id": pd.Categorical.from_codes(product, categories=product_ids),
            "event_timestamp": stamps.array.take(rows),
            "outcome": pd.Categorical.from_codes(outcome_codes, categories=outcome_values),
            "size_system": pd.Categorical.from_codes(system_codes[attr], categories=systems),
            "size_index": size_index,
            "implied_index": implied,
            "implied_offset": implied - chart_pick,
            "weight_kg": _take(weight, prof),
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


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, missing (NaN) where ``rows`` is -1."""
    if not len(values):
        return np.full(len(rows), np.nan, dtype=values.dtype if values.dtype == object else float)
    taken = values[np.maximum(rows, 0)]
    taken[rows < 0] = np.nan
    return taken


def _nanoseconds(stamps: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch (UTC)."""
    return utc_ns(stamps).to_numpy(dtype="datetime64[ns]").view(np.int64)


def _codes(values: pd.Series, ordered: bool = True) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of ``values`` and the value of each code (-1: missing).

    ``ordered``: the codes number the values in ascending order (else in any order).
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        if not ordered or values.cat.categories.is_monotonic_increasing:
            return values.cat.codes.to_numpy(dtype=np.int64), values.cat.categories
        values = values.astype(object)
    codes, uniques = pd.factorize(values, sort=ordered)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


def _key_codes(frame: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """One code per distinct combination of ``keys`` (missing values are values too)."""
    combined = np.zeros(len(frame), dtype=np.int64)
    for key in keys:
        codes, uniques = _codes(frame[key], ordered=False)
        combined = combined * (len(uniques) + 1) + (codes + 1)
    return combined


@dataclass(frozen=True)
class _Groups:
    """Rows grouped by entity and instant, the groups in (entity, instant) order.

    Sums are pandas' grouped sums over the rows in their order, and running totals pandas'
    grouped cumulative sums over the groups in order, so every value is the one a grouped
    frame would give; only integer codes are grouped, one column at a time.

    Attributes:
        rows: Per row, its group (missing: the row is in no group).
        entities: Per group, its entity (dense codes in group order).
        first: Per group, its first row.
    """

    rows: pd.Categorical
    entities: pd.Categorical
    first: np.ndarray

    @classmethod
    def of(cls, entity: np.ndarray, instant: np.ndarray | None = None) -> _Groups:
        """Group rows by ``entity`` code (< 0: in no group) and ``instant`` (None: one each)."""
        kept = np.flatnonzero(entity >= 0)
        if instant is not None:
            kept = kept[np.argsort(instant[kept], kind="stable")]
        order = kept[np.argsort(entity[kept], kind="stable")]
        new_entity = np.ones(len(order), dtype=bool)
        new_entity[1:] = entity[order[1:]] != entity[order[:-1]]
        new_group = new_entity.copy()
        if instant is not None:
            new_group[1:] |= instant[order[1:]] != instant[order[:-1]]
        group_of_row = np.full(len(entity), -1, dtype=np.int64)
        group_of_row[order] = np.cumsum(new_group) - 1
        groups = int(new_group.sum())
        entity_of_group = np.cumsum(new_entity[new_group]) - 1
        return cls(
            rows=pd.Categorical.from_codes(group_of_row, categories=pd.RangeIndex(groups)),
            entities=pd.Categorical.from_codes(
                entity_of_group, categories=pd.RangeIndex(int(new_entity.sum()))
            ),
            first=order[new_group],
        )

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per group, the sum of ``values`` over its rows (missing values count as 0)."""
        series = pd.Series(values, dtype=float)
        return series.groupby(self.rows, observed=False).sum().to_numpy(dtype=float)

    def last(self, values: np.ndarray) -> np.ndarray:
        """Per group, the last non-missing value of its rows (NaN when none)."""
        series = pd.Series(values, dtype=float)
        return series.groupby(self.rows, observed=False).last().to_numpy(dtype=float)

    def running(self, per_group: np.ndarray) -> np.ndarray:
        """Per group, the total of ``per_group`` over its entity's groups up to it."""
        series = pd.Series(per_group, dtype=float)
        return series.groupby(self.entities, observed=False).cumsum().to_numpy(dtype=float)

    def before(self, per_group: np.ndarray) -> np.ndarray:
        """Per group, the total of ``per_group`` over its entity's earlier groups (0: none)."""
        running = pd.Series(self.running(per_group))
        earlier = running.groupby(self.entities, observed=False).shift(1).fillna(0.0)
        return earlier.to_numpy(dtype=float)

    def carried(self, per_group: np.ndarray) -> np.ndarray:
        """Per group, the latest non-missing value of ``per_group`` in its entity so far."""
        series = pd.Series(per_group, dtype=float)
        return series.groupby(self.entities, observed=False).ffill().to_numpy(dtype=float)


def _filled(values: np.ndarray) -> np.ndarray:
    """``values`` with missing ones as 0."""
    return np.where(np.isnan(values), 0.0, values)


def _known(values: np.ndarray) -> np.ndarray:
    """1.0 where ``values`` is known, 0.0 where missing."""
    return (~np.isnan(values)).astype(float)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.where(den == 0, np.nan, den)


def _mean_others(frame: pd.DataFrame, keys: list[str], column: str) -> np.ndarray:
    """Per row, the mean of ``column`` over the other rows of its group (NaN when none)."""
    values = frame[column].to_numpy(dtype=float)
    groups = _Groups.of(_key_codes(frame, keys))
    row_group = groups.rows.codes
    own_s = _filled(values)
    s = groups.sums(own_s)[row_group] - own_s
    own_n = _known(values)
    n = groups.sums(own_n)[row_group] - own_n
    return _ratio(s, n)


def _mean_before(frame: pd.DataFrame, keys: list[str], column: str) -> np.ndarray:
    """Per row, the mean of ``column`` over its group's rows at strictly earlier instants.

    Rows at the same instant do not see each other; a row with no earlier row gets NaN.
    """
    values = frame[column].to_numpy(dtype=float)
    groups = _Groups.of(_key_codes(frame, keys), _nanoseconds(frame["event_timestamp"]))
    s = groups.before(groups.sums(_filled(values)))
    n = groups.before(groups.sums(_known(values)))
    return _ratio(s, n)[groups.rows.codes]


class _Cumulative:
    """An entity's running totals of its events' values after each instant it has events.

    One row per (entity, instant), in that order (entities ascending); each total is
    computed when asked, one column at a time.
    """

    def __init__(self, offsets: pd.DataFrame, key: str) -> None:
        codes, self._ids = _codes(offsets[key])
        self._groups = _Groups.of(codes, _nanoseconds(offsets["event_timestamp"]))
        self._entity = codes[self._groups.first]
        self._offsets = offsets

    def ids(self) -> np.ndarray:
        """The entity of each row, as strings."""
        return self._ids.astype(str).take(self._entity).to_numpy(dtype=object)

    def stamped(self) -> pd.Series:
        """Each row's instant plus :data:`STAMP_DELAY` (when the row becomes visible)."""
        at = self._offsets["event_timestamp"].iloc[self._groups.first]
        return at.reset_index(drop=True) + STAMP_DELAY

    def column(self, name: str) -> np.ndarray:
        """One offsets column as floats."""
        return self._offsets[name].to_numpy(dtype=float)

    def total(self, values: np.ndarray) -> np.ndarray:
        """The running total of per-event ``values`` (missing values count as 0)."""
        return self._groups.running(self._groups.sums(values))

    def count(self, mask: np.ndarray) -> np.ndarray:
        """The running count of events where ``mask`` holds."""
        return self.total(np.asarray(mask, dtype=float))

    def last(self, values: np.ndarray) -> np.ndarray:
        """The latest non-missing value of per-event ``values`` (NaN before any)."""
        return self._groups.carried(self._groups.last(values))


def _feedback_mix(cum: _Cumulative, offsets: pd.DataFrame, prefix: str) -> dict[str, np.ndarray]:
    """The feedback so far: ``<prefix>_n``, ``_share_small``, ``_share_large``, ``_mean_offset``.

    The mean offset is the right size against the chart pick; the shopper's history and the
    product's stats count them alike.
    """
    outcome = offsets["outcome"]
    n = cum.count(np.ones(len(offsets), dtype=bool))
    offset = cum.column("implied_offset")
    return {
        f"{prefix}_n": n,
        f"{prefix}_share_small": cum.count((outcome == "too_small").to_numpy()) / n,
        f"{prefix}_share_large": cum.count((outcome == "too_large").to_numpy()) / n,
        f"{prefix}_mean_offset": _ratio(cum.total(_filled(offset)), cum.count(~np.isnan(offset))),
    }


def user_history_table(offsets: pd.DataFrame) -> pd.DataFrame:
    """The shopper's fit history after each instant they gave feedback (stamped just after)."""
    cum = _Cumulative(offsets, "user_id")
    stamped = cum.stamped()
    item_off = cum.column("item_off")
    out = pd.DataFrame(
        {
            "user_id": cum.ids(),
            "event_timestamp": stamped,
            CREATED_TIMESTAMP: stamped,
            **_feedback_mix(cum, offsets, "hist"),
            "hist_last_offset": cum.last(cum.column("implied_offset")),
            # One pseudo-event at offset 0 shrinks a short history towards "wears each
            # product's typical size".
            "hist_item_offset": cum.total(_filled(item_off))
            / (cum.count(~np.isnan(item_off)) + LATENT_PRIOR),
        }
    )
    implied = cum.column("implied_index")
    for system in CATALOGUE_SYSTEMS:
        mask = (offsets["size_system"] == system).to_numpy()
        out[f"hist_usual_{system}"] = _ratio(
            cum.total(np.where(mask, implied, 0.0)), cum.count(mask)
        )
    return out


def product_stats_table(offsets: pd.DataFrame) -> pd.DataFrame:
    """Everyone's feedback on the product after each instant (stamped just after)."""
    cum = _Cumulative(offsets, "product_id")
    stamped = cum.stamped()
    size = cum.column("size_index")
    size_n = cum.count(~np.isnan(size))
    implied = cum.column("implied_index")
    user_off = cum.column("user_off")
    return pd.DataFrame(
        {
            "product_id": cum.ids(),
            "event_timestamp": stamped,
            CREATED_TIMESTAMP: stamped,
            **_feedback_mix(cum, offsets, "pstat"),
            "pstat_size_mean": _ratio(cum.total(_filled(size)), size_n),
            "pstat_implied_mean": _ratio(cum.total(_filled(implied)), size_n),
            "pstat_user_offset": cum.total(_filled(user_off))
            / (cum.count(~np.isnan(user_off)) + LATENT_PRIOR),
            **_body_line(cum, implied),
        }
    )


def _body_line(cum: _Cumulative, implied: np.ndarray) -> dict[str, pd.Series]:
    """A product's right size against the shopper's weight: mean weight, mean size, slope.

    The body-size model of each product: where its feedback put the right size against the
    shopper's weight, a least-squares line from running sums. The slope is shrunk towards 0
    by :data:`BODY_SLOPE_PRIOR` (kg squared), so a product with little feedback predicts its
    mean right size for every weight.
    """
    weight = cum.column("weight_kg")
    body = ~np.isnan(weight) & ~np.isnan(implied)
    w = np.where(body, weight, 0.0)
    y = np.where(body, implied, 0.0)
    n = pd.Series(cum.count(body)).replace(0, np.nan)
    sum_x = pd.Series(cum.total(w))
    sum_y = pd.Series(cum.total(y))
    x_mean = sum_x / n
    y_mean = sum_y / n
    sxx = pd.Series(cum.total(w * w)) - sum_x * x_mean
    sxy = pd.Series(cum.total(w * y)) - sum_x * y_mean
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
