"""The models of the service in the BentoML model store, kept in step with the MLflow registry.

The service declares its models at class scope as :class:`RegistryModel` references (a
BentoML model reference that knows its registered name and alias). BentoML resolves them
once per deployment, before the workers start (``bentoml serve``) or when packaging
(``bentoml build``); resolving looks up which version holds the alias in the MLflow registry
and, when the store lacks it, imports that version: the model directory with the fitted
encoder and the booster, exactly as training saved it, tagged
``fitml-<kind>-<alias>:v<version>``. The lookup itself goes around MLflow's client when it
can (:func:`stored_alias_tag`): when the store already holds the version the registry names,
starting the service imports no MLflow at all. Inside a built Bento there is no registry
(:func:`model_source` is ``store``): the packaged model is used as it is.

The resolved tag is handed to the workers through the environment, so a worker loads the
very version the deployment resolved and never imports MLflow (faster cold start).

A champion image (``fitml bento export``, ``make champion-image``) carries its models as a
BentoML model store of their own, read-only, named by ``FITML_MODEL_STORE``: the service then
serves those (``store``) and never asks the registry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import bentoml
from _bentoml_sdk.models import BentoModel
from bentoml.exceptions import NotFound

from ml_pipeline.settings import Settings, load_settings

KINDS: Final = ("fit", "size")
SOURCE_ENV: Final = "FITML_MODEL_SOURCE"
"""``registry``: follow the MLflow aliases; ``store``: use the BentoML store only. Default:
``store`` inside a built Bento (its packaged models) or with ``FITML_MODEL_STORE`` set (a
champion image), ``registry`` anywhere else."""
STORE_ENV: Final = "FITML_MODEL_STORE"
"""A BentoML model store folder (what ``fitml bento export`` writes) to serve from instead of
``$BENTOML_HOME/models``; used when the model source is ``store``."""


def bento_root() -> Path | None:
    """The built Bento this code runs from (its folder holds ``bento.yaml``), or None.

    A Bento packs the code under ``<bento>/src/``, so this module is then
    ``<bento>/src/serving/bento_models.py``.
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "bento.yaml").is_file() else None


def model_source() -> str:
    """Where the service's models come from: ``FITML_MODEL_SOURCE``, else by where it runs."""
    source = os.environ.get(SOURCE_ENV)
    if source:
        if source not in ("registry", "store"):
            raise ValueError(f"{SOURCE_ENV}={source!r}: expected 'registry' or 'store'")
        return source
    packaged = bento_root() is not None or bool(os.environ.get(STORE_ENV))
    return "store" if packaged else "registry"


_active_store: list[str] = []
"""The folder :func:`use_model_store` made this process's model store (empty: BentoML's)."""


def use_model_store(path: Path | str) -> None:
    """Make this process's BentoML model store the folder ``path`` (it must exist)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{STORE_ENV}={str(path)!r} is not a folder: point it to the models that "
            "`fitml bento export` wrote, or unset it to use the registry"
        )
    BentoMLContainer.model_store.set(ModelStore(str(folder)))
    _active_store[:] = [str(path)]


def reset_model_store() -> None:
    """Back to the model store under ``$BENTOML_HOME``."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.model_store.reset()
    _active_store.clear()


def _packaged_store() -> None:
    """Read models from ``FITML_MODEL_STORE`` when it is set and the source is ``store``.

    Called before every model lookup, so each process of the service (the API server that
    resolves the models, each worker that loads them) reads the packaged store.
    """
    path = os.environ.get(STORE_ENV)
    if path and model_source() == "store" and _active_store != [path]:
        use_model_store(path)


def bento_name(kind: str, alias: str) -> str:
    """The BentoML model name of the ``kind`` model holding ``alias``."""
    return f"fitml-{kind}-{alias}"


def _tag_env(kind: str, alias: str) -> str:
    return f"FITML_BENTO_TAG_{kind.upper()}_{alias.upper()}"


def settings_from_env() -> Settings:
    """The settings the service runs with (``FITML_PROFILE``, ``FITML_WORKDIR``)."""
    return load_settings(
        os.environ.get("FITML_PROFILE", "local"), os.environ.get("FITML_WORKDIR", "var")
    )


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow's download progress bar off (it floods logs and captured build output)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _registered_name(settings: Settings, kind: str) -> str:
    return settings.mlflow.fit_model_name if kind == "fit" else settings.mlflow.size_model_name


def _is_latest(tag: str, name: str) -> bool:
    """Whether the store holds ``tag`` and it is the newest model of ``name``."""
    try:
        return bool(bentoml.models.get(tag).tag == bentoml.models.get(f"{name}:latest").tag)
    except NotFound:
        return False


def stored_alias_tag(settings: Settings, kind: str, alias: str) -> str | None:
    """The stored tag of the version holding ``alias``, asked without MLflow's client.

    The registry is asked which version holds the alias (:mod:`serving.registry_alias`:
    milliseconds, where MLflow's client takes seconds to import); when the store already
    holds that version as its latest, that is the answer and MLflow is never imported.

    Returns:
        The BentoML tag, or None when the quick lookup cannot tell or the store lacks the
        version: then :func:`import_alias` asks (and imports) through MLflow.
    """
    from serving.registry_alias import UNKNOWN, alias_version

    uri = settings.mlflow.registry_uri or settings.mlflow.tracking_uri
    version = alias_version(uri, _registered_name(settings, kind), alias)
    if version is None or version == UNKNOWN:
        return None
    name = bento_name(kind, alias)
    tag = f"{name}:v{version}"
    return tag if _is_latest(tag, name) else None


def import_alias(settings: Settings, kind: str, alias: str) -> str | None:
    """Make the BentoML store hold the version of the ``kind`` model that holds ``alias``.

    Returns:
        The BentoML tag (``name:version``), or None when no version holds the alias.
    """
    import mlflow

    from training import registry

    registry.configure(settings)
    registered = (
        settings.mlflow.fit_model_name if kind == "fit" else settings.mlflow.size_model_name
    )
    version = registry.alias_version(registered, alias)
    if version is None:
        return None
    name = bento_name(kind, alias)
    tag = f"{name}:v{version}"
    try:
        stored = bentoml.models.get(tag)
        latest = bentoml.models.get(f"{name}:latest")
        if stored.tag == latest.tag:
            return tag
        bentoml.models.delete(tag)  # an older version came back: re-import it as latest
    except NotFound:
        pass
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        local = Path(
            mlflow.artifacts.download_artifacts(f"models:/{registered}@{alias}", dst_path=tmp)
        )
        found = sorted((local / "artifacts").rglob("model.json"))
        if not found:
            raise FileNotFoundError(f"{registered}@{alias} has no fitml model directory")
        source = found[0].parent
        registered_version = mlflow.MlflowClient().get_model_version(registered, version)
        created = registered_version.creation_timestamp
        with bentoml.models.create(
            tag,
            labels={"registered_name": registered, "alias": alias, "version": version},
            metadata={
                "registered_name": registered,
                "alias": alias,
                "version": version,
                # when this version was registered (Unix s): the champion's age on /metrics
                "registered_at": created / 1000 if created else None,
                "run_id": registered_version.run_id,
                "tags": dict(registered_version.tags or {}),
            },
        ) as model:
            shutil.copytree(source, model.path_of("model"), dirs_exist_ok=True)
            _precompile(Path(model.path_of("model")))
    return tag


def _precompile(directory: Path) -> None:
    """Compile the imported booster for this CPU now, so no worker pays for it at start."""
    from training.compiled import CompiledBooster, compiled_enabled

    if compiled_enabled() and (directory / "booster.txt").is_file():
        CompiledBooster(directory / "booster.txt")


@attrs.frozen
class RegistryModel(BentoModel):
    """A BentoML model reference to ``fitml-<kind>-<alias>``, synced from the registry."""

    kind: str = attrs.field(default="fit", kw_only=True)
    alias: str = attrs.field(default="champion", kw_only=True)

    @classmethod
    def of(cls, kind: str, alias: str) -> RegistryModel:
        """The reference to the ``kind`` model holding ``alias``."""
        return cls(f"{bento_name(kind, alias)}:latest", kind=kind, alias=alias)  # type: ignore[misc]

    def current_tag(self) -> str:
        """The tag to use now: as resolved for this deployment, else synced, else latest."""
        _packaged_store()
        env = _tag_env(self.kind, self.alias)
        if env in os.environ:
            return os.environ[env]
        tag = str(self.tag)
        if model_source() == "registry":
            settings = settings_from_env()
            synced = stored_alias_tag(settings, self.kind, self.alias) or import_alias(
                settings, self.kind, self.alias
            )
            if synced is None:
                raise NotFound(
                    f"no version of the {self.kind} model holds the alias {self.alias!r} "
                    "in the MLflow registry; train and promote one first"
                )
            tag = synced
        os.environ[env] = tag  # the workers, spawned later, inherit the resolved tag
        return tag

    def resolve(self, base_path: Any = None) -> Any:
        """The stored BentoML model (imported from the registry first when needed)."""
        return BentoModel(self.current_tag()).resolve(base_path)

    def to_info(self, alias: str | None = None) -> Any:
        """Model info for ``bentoml build`` (the synced version)."""
        return BentoModel(self.current_tag()).to_info(alias)

    def __str__(self) -> str:
        return str(self.tag)


def load_stored(model: Any) -> Any:
    """Load the fitml model (encoder + booster) of a stored BentoML model.

    The booster is compiled to native code (:mod:`training.compiled`) unless
    ``FITML_COMPILED=0``; the code was compiled and cached when the version was imported.

    Returns:
        A ``training.models.FitModel`` or ``SizeModel``, and its registered version.
    """
    from training.compiled import compiled_enabled
    from training.models import FitModel, SizeModel

    directory = Path(model.path_of("model"))
    kind = (directory / "model.json").read_text()
    loaded = FitModel.load(directory) if '"kind": "fit"' in kind else SizeModel.load(directory)
    if compiled_enabled():
        loaded.compile()  # the object code cached at import (or now, once per CPU type)
    return loaded, str(model.info.labels.get("version", model.tag.version))
