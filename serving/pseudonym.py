"""Keyed, rotatable pseudonyms of shopper ids: what logs hold instead of a user id.

``pseudonym(user_id) = "<key id>.<first 32 hex digits of HMAC-SHA256(secret, user_id)>"``.
Without the secret, the pseudonym cannot be reversed by enumerating ids (an unsalted hash can);
with the key id in it, old records stay matchable after a rotation.

Keys come from ``FITML_PSEUDONYM_KEY`` (one ``<key id>:<secret>``) or
``FITML_PSEUDONYM_KEY_FILE`` (one ``<key id>:<secret>`` per line, re-read when it changes);
the last key is the one new pseudonyms use, the earlier ones still match (``forget-user``,
the drift join) until the records made with them are gone. Rotate by appending a line.
Secrets are at least 32 characters. The ``local`` profile, given neither, makes a random key
once under ``<workdir>/secrets/pseudonym.key`` (mode 0600); ``prod`` refuses to start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from ml_pipeline.errors import ConfigError
from ml_pipeline.settings import Settings
from serving.secrets import SecretFile

MIN_SECRET_CHARS = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


def parse_keys(lines: tuple[str, ...] | list[str], where: str) -> dict[str, bytes]:
    """``<key id>:<secret>`` lines as an ordered mapping (the last one is active).

    Raises:
        ConfigError: a malformed line (named by its number, never echoing the secret).
    """
    keys: dict[str, bytes] = {}
    for n, line in enumerate(lines, 1):
        kid, sep, secret = line.partition(":")
        if not sep or not _KEY_ID.match(kid) or len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"{where} line {n}: write '<key id>:<secret>' with a key id of letters, digits, "
                f"'_' or '-' (at most 16) and a secret of at least {MIN_SECRET_CHARS} characters"
            )
        keys.pop(kid, None)
        keys[kid] = secret.encode()
    if not keys:
        raise ConfigError(f"{where} holds no pseudonym key; add a '<key id>:<secret>' line")
    return keys


class Pseudonymizer:
    """Keyed pseudonyms under the active key; matching under every known key.

    Args:
        keys: key id -> secret, in order; the last is active.
        source: the key file, re-read when it changes (its keys replace ``keys``).
    """

    def __init__(self, keys: Mapping[str, bytes], source: SecretFile | None = None) -> None:
        self._source = source
        self._lines: tuple[str, ...] = ()
        self._set(dict(keys))

    def _set(self, keys: dict[str, bytes]) -> None:
        self._keys = keys
        self.active = next(reversed(keys))

    def _refresh(self) -> None:
        if self._source is not None:
            lines = self._source.current()
            if lines != self._lines:
                self._lines = lines
                self._set(parse_keys(lines, str(self._source.path)))

    @classmethod
    def ephemeral(cls) -> Pseudonymizer:
        """A random key for this process only (tests, tools that never join pseudonyms)."""
        return cls({"tmp": secrets.token_hex(32).encode()})

    def _digest(self, kid: str, value: str) -> str:
        return hmac.new(self._keys[kid], value.encode(), hashlib.sha256).hexdigest()[:32]

    def __call__(self, user_id: str | None) -> str | None:
        """The pseudonym of ``user_id`` under the active key (None for no id)."""
        if not user_id:
            return None
        self._refresh()
        return f"{self.active}.{self._digest(self.active, user_id)}"

    def all_of(self, user_id: str) -> set[str]:
        """The pseudonyms of ``user_id`` under every known key (to find old records)."""
        self._refresh()
        return {f"{kid}.{self._digest(kid, user_id)}" for kid in self._keys}

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The known key ids, the active one last."""
        self._refresh()
        return tuple(self._keys)


def digest_of(pseudonym: str) -> str:
    """The hex digest part of a pseudonym (for sticky, uniformly spread draws)."""
    return pseudonym.rsplit(".", 1)[-1]


def load_pseudonymizer(settings: Settings, env: Mapping[str, str] | None = None) -> Pseudonymizer:
    """The pseudonym keys of a deployment (see the module docstring for where they come from).

    Raises:
        ConfigError: a malformed key, or no key at all under the ``prod`` profile.
    """
    env = os.environ if env is None else env
    inline = env.get("FITML_PSEUDONYM_KEY", "").strip()
    path = env.get("FITML_PSEUDONYM_KEY_FILE")
    if path:
        source = SecretFile(path, overlap_s=0.0, what="FITML_PSEUDONYM_KEY_FILE")
        return Pseudonymizer(parse_keys(source.current(), path), source)
    if inline:
        return Pseudonymizer(parse_keys([inline], "FITML_PSEUDONYM_KEY"))
    if settings.profile == "prod":
        raise ConfigError(
            "no pseudonym key: set FITML_PSEUDONYM_KEY_FILE (lines '<key id>:<secret>', secret "
            f"of at least {MIN_SECRET_CHARS} characters) or FITML_PSEUDONYM_KEY, the same on "
            "every replica of both services"
        )
    local = settings.workdir / "secrets" / "pseudonym.key"
    if not local.is_file():
        _write_private(local, f"k1:{secrets.token_hex(32)}\n")
    source = SecretFile(local, overlap_s=0.0, what=str(local))
    return Pseudonymizer(parse_keys(source.current(), str(local)), source)


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, whole or not at all (first writer wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
