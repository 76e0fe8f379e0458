"""Online features for one (shopper, product): the ``fitml`` feature service, read cheaply.

``FeatureStore.get_online_features`` resolves the feature service from the registry on every
call (rebuilding its views from protobuf, type-checking each field): tens of milliseconds per
request on a loaded machine, against well under one for the read itself. :class:`OnlineReader`
resolves the same feature service once, then reads each of its feature views with the online
store's own ``online_read`` (SQLite locally, Redis in prod) and converts values with Feast's
own type map. It returns what :func:`features.store.online_features` returns, value for value
(a test holds it to that), plus each view's event time so freshness can be judged.

This module imports no Feast at import time: the service's deployment hook runs
:func:`check_reachable` in the process that starts the workers, before any of them, and
importing Feast there would add seconds to every cold start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class OnlineRow:
    """The feature-service values of one (shopper, product) and when each view was written.

    Attributes:
        values: feature name -> Python value (None when the entity has no row in the view).
        event_times: view name -> event time of the entity's row (None when absent).
    """

    values: dict[str, Any]
    event_times: dict[str, datetime | None]


class OnlineReader:
    """Reads the ``fitml`` feature service online, with the definitions resolved once.

    Args:
        store: an open ``feast.FeatureStore`` (see :func:`features.store.open_store`).
        service: the feature service to read (default: the one the models were trained with,
            :data:`features.definitions.FEATURE_SERVICE`).
    """

    def __init__(self, store: Any, service: str | None = None) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        from features.definitions import FEATURE_SERVICE

        self._entity_key = EntityKey
        self._value = Value
        self._to_python = feast_value_type_to_python_type
        self._config = store.config
        self._online_store = store._get_provider().online_store
        feature_service = store.get_feature_service(service or FEATURE_SERVICE)
        self.views: list[tuple[Any, str, list[tuple[str, Any]]]] = []
        for projection in feature_service.feature_view_projections:
            view = store.get_feature_view(projection.name)
            join_keys = [view.projection.join_key_map.get(k, k) for k in view.join_keys]
            if len(join_keys) != 1:
                raise ValueError(
                    f"feature view {view.name!r} has join keys {join_keys}; "
                    "OnlineReader reads single-key views only"
                )
            requested = {f.name for f in projection.features}
            fields = [
                (f.name, f.dtype.to_value_type()) for f in view.features if f.name in requested
            ]
            self.views.append((view, join_keys[0], fields))
        self.feature_names = tuple(name for _, _, fields in self.views for name, _ in fields)
        # SQLite's connection is shared by every thread of the process: serialise reads.
        self._lock = threading.Lock()

    def read(self, user_id: str | None, product_id: str) -> OnlineRow:
        """Read every feature of the service for one (user, product).

        A missing ``user_id`` (a guest) reads the empty key, as
        :func:`features.store.online_features` does, so every user feature is None.
        """
        entity = {"user_id": user_id or "", "product_id": product_id}
        values: dict[str, Any] = {"user_id": entity["user_id"], "product_id": product_id}
        times: dict[str, datetime | None] = {}
        empty = self._value()
        for view, join_key, fields in self.views:
            key = self._entity_key(
                join_keys=[join_key], entity_values=[self._value(string_val=entity[join_key])]
            )
            with self._lock:
                ((event_time, read),) = self._online_store.online_read(
                    config=self._config,
                    table=view,
                    entity_keys=[key],
                    requested_features=[name for name, _ in fields],
                )
            times[view.name] = event_time
            for name, value_type in fields:
                proto = empty if read is None else read.get(name, empty)
                values[name] = self._to_python(proto, value_type)
        return OnlineRow(values, times)


def _endpoint(text: str, default_port: int) -> tuple[str, int]:
    """``host:port`` of a URL (``postgresql+psycopg://u@h:5432/db``) or ``h:6379,db=1``."""
    from urllib.parse import urlsplit

    if "://" in text:
        parts = urlsplit(text)
        return parts.hostname or "127.0.0.1", parts.port or default_port
    host, _, port = text.split(",")[0].partition(":")
    return host or "127.0.0.1", int(port or default_port)


def _problems(settings: Any) -> list[str]:
    """What keeps the feature store of ``settings`` from being read (empty: nothing)."""
    import os
    import socket

    import yaml

    from ml_pipeline.settings import expand_env

    raw = yaml.safe_load(settings.feast.config_file.read_text())
    config = expand_env(raw, {**os.environ, "FITML_WORKDIR": str(settings.workdir)})
    registry = config["registry"]
    problems = []
    if isinstance(registry, str):  # a file registry and a SQLite online store
        for path in (registry, config["online_store"]["path"]):
            if not os.path.isfile(path):
                problems.append(f"{path} does not exist")
        return problems
    servers = {
        "the SQL registry": _endpoint(registry["path"], 5432),
        "the offline store": _endpoint(config["offline_store"]["url"], 5432),
        "the Redis online store": _endpoint(config["online_store"]["connection_string"], 6379),
    }
    for name, (host, port) in servers.items():
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            problems.append(f"{name} at {host}:{port} does not answer ({exc.strerror or exc})")
    return problems


def check_reachable(settings: Any) -> None:
    """Fail with what to do when the feature store of ``settings`` cannot be reached.

    The prediction service calls this once before its workers start, so a feature store it
    cannot read stops the service with this message instead of restarting workers forever.
    The check is cheap (files exist, servers accept a connection; no Feast import), so it
    adds nothing noticeable to a cold start.

    Raises:
        FeatureStoreUnavailable: naming the store, what is wrong and the setting to fix.
    """
    from ml_pipeline.errors import FeatureStoreUnavailable

    problems = _problems(settings)
    if not problems:
        return
    if settings.profile == "local":
        where = f"the local feature store of work directory {settings.workdir}"
        fix = (
            "set FITML_WORKDIR to a work directory where `fitml features apply` and "
            "`fitml features materialize` ran (e.g. var/ after `make demo`)"
        )
    else:
        where = f"the prod feature store (Feast project {settings.feast.project!r})"
        fix = (
            "start PostgreSQL and Redis, or point FITML_FEAST_REGISTRY_URL, "
            "FITML_FEAST_OFFLINE_URL and FITML_REDIS at them"
        )
    raise FeatureStoreUnavailable(
        f"{where} cannot be read: {'; '.join(problems)}. To serve, {fix}, then start again."
    )
