"""``fitml forget-user``: remove one shopper's data from every store of a work directory.

Removes, and counts: the session service's sessions and feedback events (event store) and
pending outbox items; every parquet table under the work directory with a ``user_id`` column
(raw, ingested offline tables, quarantine, the feature views' offline sources, the training
set); the shopper's rows of the Feast online store (every user-keyed view); and every JSON-lines
record under the work directory (inference logs, example requests) carrying the user id or its
hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ml_pipeline.settings import Settings
from serving.pseudonym import load_pseudonymizer
from serving.session.store import DEFAULT_PREFIX, ErasureIncomplete, Outbox, open_event_store

SKIP_DIRS = ("session",)
"""Work-directory folders handled through their own store, not scanned as files."""


@dataclass
class ForgetReport:
    """What was removed, per place (``kind:path-or-table`` -> rows)."""

    user_hash: str
    removed: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    """Stores where deleted data may still be readable in files, and what to do."""

    @property
    def total(self) -> int:
        """Rows removed everywhere."""
        return sum(self.removed.values())

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (printed as JSON by the CLI)."""
        return {
            "user_hash": self.user_hash,
            "total": self.total,
            "removed": self.removed,
            "notes": self.notes,
            "incomplete": self.incomplete,
        }


def forget_user(
    settings: Settings,
    user_id: str,
    event_store: str = "sqlite",
    table_prefix: str = DEFAULT_PREFIX,
) -> ForgetReport:
    """Remove ``user_id``'s data from the work directory's stores and report what went.

    Args:
        settings: the work directory and feature store.
        user_id: the shopper to forget.
        event_store: the session service's event store (``sqlite`` or a PostgreSQL DSN).
        table_prefix: the prefix of the event store's tables.

    Raises:
        ValueError: ``user_id`` is empty.
    """
    if not user_id:
        raise ValueError("user_id is empty; give the id of the shopper to forget")
    pseudonyms = load_pseudonymizer(settings)
    report = ForgetReport(user_hash=pseudonyms(user_id) or "")
    hashes = pseudonyms.all_of(user_id)
    state_dir = settings.workdir / "session"

    store = open_event_store(event_store, state_dir, table_prefix)
    try:
        store.ensure()
        for table, n in store.forget_user(user_id).items():
            report.removed[f"event_store:{table}"] = n
        try:
            store.compact()
        except ErasureIncomplete as exc:  # the rows are deleted; their bytes may remain
            report.incomplete.append(str(exc))
    finally:
        store.close()
    outbox_path = state_dir / "outbox.db"
    if outbox_path.is_file():
        outbox = Outbox(outbox_path)
        try:
            report.removed["outbox"] = outbox.forget_user(user_id)
            outbox.compact()
        finally:
            outbox.close()

    for path in sorted(_files(settings.workdir, ".parquet")):
        n = _forget_parquet(path, user_id)
        if n:
            report.removed[f"parquet:{path.relative_to(settings.workdir)}"] = n
    for path in sorted(_files(settings.workdir, ".jsonl")):
        n = _forget_jsonl(path, user_id, hashes)
        if n:
            report.removed[f"jsonl:{path.relative_to(settings.workdir)}"] = n

    if (settings.feast_dir).exists():
        from features.store import forget_offline_user, open_store

        feature_store = open_store(settings)
        for table, n in forget_offline_user(feature_store, user_id).items():
            report.removed[f"offline:{table}"] = n
        for view, n in _forget_online(feature_store, user_id).items():
            report.removed[f"online:{view}"] = n
    report.notes.append(
        "product fit statistics keep this shopper's past feedback only as anonymous counts "
        "until the next `fitml features apply` recomputes them from the remaining events"
    )
    report.notes.append(
        "models already trained on this shopper's feedback are not changed; the next "
        "`fitml pipeline run` trains without it"
    )
    return report


def _files(root: Path, suffix: str) -> list[Path]:
    out = []
    for directory, subdirs, files in os.walk(root):
        if Path(directory) == root:
            subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS]
        out += [Path(directory) / f for f in files if f.endswith(suffix)]
    return out


def _forget_parquet(path: Path, user_id: str) -> int:
    try:
        if "user_id" not in pq.read_schema(path).names:
            return 0
    except Exception:  # not a readable parquet file (e.g. being written): leave it
        return 0
    frame = pd.read_parquet(path)
    keep = frame["user_id"].astype(str) != user_id
    removed = int((~keep).sum())
    if removed:
        tmp = path.with_name(f".{path.name}.forget.tmp")
        frame.loc[keep].reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    return removed


def _forget_jsonl(path: Path, user_id: str, hashes: set[str]) -> int:
    kept, removed = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            kept.append(line)
            continue
        if isinstance(record, dict) and (
            record.get("user_id") == user_id or record.get("user_hash") in hashes
        ):
            removed += 1
        else:
            kept.append(line)
    if removed:
        tmp = path.with_name(f".{path.name}.forget.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return removed


def _forget_online(store: Any, user_id: str) -> dict[str, int]:
    """Delete the shopper from every user-keyed view of ``store``'s online store.

    Returns:
        View (or Redis key) -> entities deleted (0 or 1).
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    config = store.config
    views = [v for v in store.list_feature_views() if "user_id" in v.join_keys]
    key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
    version = config.entity_key_serialization_version
    kind = getattr(config.online_store, "type", "sqlite")
    removed: dict[str, int] = {}
    if kind == "sqlite":
        import sqlite3

        from feast.infra.online_stores.helpers import compute_table_id

        path = Path(config.online_store.path)
        if not path.is_absolute():
            path = Path(config.repo_path) / path
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        from serving.session.store import scrub_sqlite

        blob = serialize_entity_key(key, entity_key_serialization_version=version)
        conn = sqlite3.connect(path, timeout=10)
        try:
            conn.execute("PRAGMA secure_delete=ON")
            with conn:
                for view in views:
                    table = compute_table_id(config.project, view, versioning)
                    try:
                        cur = conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (blob,))
                    except sqlite3.OperationalError:  # view never materialised
                        continue
                    removed[view.name] = 1 if cur.rowcount > 0 else 0  # entities, not values
            scrub_sqlite(conn)
        finally:
            conn.close()
    elif kind == "redis":
        from feast.infra.online_stores.helpers import _redis_key

        online = store._get_provider().online_store
        client = online._get_client(config.online_store)
        n = int(client.delete(_redis_key(config.project, key, version)))
        removed["redis:user"] = n
    else:
        raise NotImplementedError(
            f"forget-user cannot delete from a {kind!r} online store; delete the user_id "
            f"{user_id!r} entity by hand"
        )
    return removed
