"""Size charts and profiles for the fallback answer: the project's one size-chart rule.

When the prediction service cannot answer, a session is answered by
:func:`features.transforms.chart_pick` (the size whose published range holds the shopper's
girth) on the product's chart. Charts come from the offline feature table the online store is
materialised from (``offline/features/product_attrs.parquet``), with the Feast online store
for products added since; the shopper's girth from the request, else their profile in the
online store, else the offline profile table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.transforms import BODY_COLUMN, chart_pick
from ml_pipeline.settings import Settings

log = logging.getLogger(__name__)

CHART_FEATURES = ("chart_dimension", "chart_sizes", "chart_index", "chart_low", "chart_high")
PROFILE_FEATURES = tuple(f"user_{d}_cm" for d in ("chest", "waist", "hips"))


@dataclass(frozen=True)
class Chart:
    """One product's size chart: sizes ascending, their indices and body ranges."""

    product_id: str
    dimension: str
    sizes: tuple[str, ...]
    indices: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    def index_of(self, size: str) -> int | None:
        """The size index of ``size``, or None if the product does not offer it."""
        try:
            return self.indices[self.sizes.index(size)]
        except ValueError:
            return None


@dataclass(frozen=True)
class ChartAnswer:
    """The size-chart rule's pick, and why it had less to go on."""

    size: str
    size_index: int
    note: str
    fallbacks: tuple[str, ...]


def chart_from_row(product_id: str, row: dict[str, Any]) -> Chart | None:
    """A :class:`Chart` from ``chart_*`` feature values (offline row or online read)."""
    sizes = row.get("chart_sizes")
    if sizes is None or len(sizes) == 0:
        return None
    return Chart(
        product_id=product_id,
        dimension=str(row.get("chart_dimension") or "none"),
        sizes=tuple(str(s) for s in sizes),
        indices=tuple(int(i) for i in row["chart_index"]),
        low=tuple(float(v) for v in row["chart_low"]),
        high=tuple(float(v) for v in row["chart_high"]),
    )


def chart_rule(chart: Chart, girth_cm: float | None) -> ChartAnswer:
    """Answer with the size chart: :func:`features.transforms.chart_pick` on the girth.

    Without the girth the chart is cut for, the middle size of the chart is given, and the
    fallbacks say so.
    """
    body = np.array([np.nan if girth_cm is None else float(girth_cm)])
    pos = chart_pick(body, np.asarray(chart.low), np.asarray(chart.high))[0]
    where = chart.dimension if chart.dimension in BODY_COLUMN else "body"
    if np.isnan(pos):
        at = (len(chart.sizes) - 1) // 2
        return ChartAnswer(
            size=chart.sizes[at],
            size_index=chart.indices[at],
            note=(
                f"{chart.sizes[at]} is the middle of the size chart; add your {where} "
                "measurement for a better pick."
            ),
            fallbacks=(f"no {where} measurement: middle of the size chart",),
        )
    at = int(pos)
    return ChartAnswer(
        size=chart.sizes[at],
        size_index=chart.indices[at],
        note=f"{chart.sizes[at]} is the size chart's pick for your {where} measurement.",
        fallbacks=(),
    )


class OnlineReader:
    """Reads single rows of the Feast online store (thread-safe, lazily opened)."""

    def __init__(self, settings: Settings, store: Any | None = None) -> None:
        self.settings = settings
        self._store = store
        self._lock = threading.Lock()

    @property
    def store(self) -> Any:
        """The Feast feature store (opened on first use)."""
        if self._store is None:
            from serving.lean_imports import feast_without_typechecks

            # Feast as `python -O` imports it (seconds off the service's start).
            with feast_without_typechecks():
                from features.store import open_store

                self._store = open_store(self.settings, online_only=True)
        return self._store

    def warm_up(self) -> bool:
        """Open the store and read once: importing Feast takes seconds.

        The service does it on a thread of its own while it starts
        (:func:`serving.session.server.build_services`).

        Returns:
            Whether the online store answered.
        """
        from serving.lean_imports import feast_without_typechecks

        try:
            # The first read loads the registry and the profile's store modules.
            with feast_without_typechecks():
                self.read("user_profile", PROFILE_FEATURES, "user_id", "__warm_up__")
        except Exception as exc:  # down at start: reads fall back to the offline tables
            log.warning("online store not answering at start", extra={"error": type(exc).__name__})
            return False
        return True

    def read(self, view: str, names: tuple[str, ...], key: str, value: str) -> dict[str, Any]:
        """Feature values of one entity of one view (None where missing)."""
        with self._lock:
            response = self.store.get_online_features(
                features=[f"{view}:{name}" for name in names], entity_rows=[{key: value}]
            )
            data = response.to_dict()
        return {name: data[name][0] for name in names}


class ChartBook:
    """Every product's chart, loaded from the offline feature table; online for the rest."""

    def __init__(
        self,
        settings: Settings | None,
        online: OnlineReader | None = None,
        charts: Iterable[Chart] = (),
    ) -> None:
        self.settings = settings
        self.online = online
        self._charts: dict[str, Chart] = {c.product_id: c for c in charts}
        self._profiles: dict[str, dict[str, float]] | None = None
        self._lock = threading.Lock()

    def load(self) -> ChartBook:
        """Read the charts of the offline ``product_attrs`` table; returns ``self``.

        Raises:
            FileNotFoundError: no feature tables; run ``fitml pipeline run`` (or
                ``fitml features apply``) into the work directory first.
        """
        if self.settings is None:
            raise ValueError("ChartBook.load needs settings: pass the work directory's settings")
        path = self.settings.offline_dir / "features" / "product_attrs.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"no product charts at {path}; run `fitml pipeline run --workdir "
                f"{self.settings.workdir}` (or `fitml features apply`) first"
            )
        frame = pd.read_parquet(path, columns=["product_id", "event_timestamp", *CHART_FEATURES])
        frame = frame.sort_values("event_timestamp").drop_duplicates("product_id", keep="last")
        charts = {}
        for row in frame.to_dict("records"):
            chart = chart_from_row(str(row["product_id"]), row)
            if chart is not None:
                charts[chart.product_id] = chart
        self._charts = charts
        return self

    def __len__(self) -> int:
        return len(self._charts)

    def loaded(self, product_id: str) -> Chart | None:
        """The product's chart if it is already in memory (no I/O: safe on the event loop)."""
        return self._charts.get(product_id)

    def get(self, product_id: str) -> Chart | None:
        """The product's chart (offline table, else the online store), or None if unknown."""
        chart = self._charts.get(product_id)
        if chart is not None or self.online is None:
            return chart
        try:
            row = self.online.read("product_attrs", CHART_FEATURES, "product_id", product_id)
        except Exception as exc:  # online store down: the product is unknown for now
            log.warning("online chart read failed", extra={"error": type(exc).__name__})
            return None
        chart = chart_from_row(product_id, row)
        if chart is not None:
            with self._lock:
                self._charts[product_id] = chart
        return chart

    def girth(self, user_id: str, dimension: str) -> float | None:
        """The shopper's girth for a chart of ``dimension``: online profile, else offline."""
        column = BODY_COLUMN.get(dimension)
        if column is None:
            return None
        if self.online is not None:
            try:
                row = self.online.read("user_profile", PROFILE_FEATURES, "user_id", user_id)
                value = row.get(column)
                if value is not None and not np.isnan(value):
                    return float(value)
            except Exception as exc:  # fall through to the offline profile
                log.warning("online profile read failed", extra={"error": type(exc).__name__})
        value = self._offline_profiles().get(user_id, {}).get(column)
        return None if value is None or np.isnan(value) else float(value)

    def _offline_profiles(self) -> dict[str, dict[str, float]]:
        with self._lock:
            if self._profiles is None:
                path = (
                    None
                    if self.settings is None
                    else self.settings.offline_dir / "features" / "user_profile.parquet"
                )
                if path is not None and path.is_file():
                    frame = pd.read_parquet(
                        path, columns=["user_id", "event_timestamp", *PROFILE_FEATURES]
                    )
                    frame = frame.sort_values("event_timestamp").drop_duplicates(
                        "user_id", keep="last"
                    )
                    self._profiles = frame.set_index("user_id")[list(PROFILE_FEATURES)].to_dict(
                        "index"
                    )
                else:
                    self._profiles = {}
            return self._profiles
