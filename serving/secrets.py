"""Secrets from files, re-read without a restart, with an overlap window for rotation.

A :class:`SecretFile` holds the non-comment lines of a file (API keys, service tokens,
pseudonym keys). It checks the file's modification time at most every ``check_s`` seconds and
re-reads it when it changed; a line removed from the file stays accepted for ``overlap_s``
seconds more, so a rotation (add the new secret, move clients over, remove the old one) never
refuses a client that still holds the old one. A file that cannot be read keeps the last good
contents (and logs a warning).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ml_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_OVERLAP_S = 3600.0
"""How long a secret removed from its file is still accepted (``FITML_SECRET_OVERLAP_S``)."""


def read_lines(path: Path) -> list[str]:
    """The file's lines without comments (``#`` to the end of a line) and blank lines."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


class SecretFile:
    """The lines of a secret file, reloaded when it changes, with an overlap for rotation.

    Args:
        path: the file.
        overlap_s: seconds a removed line is still accepted.
        check_s: seconds between two looks at the file's modification time.
        clock: monotonic seconds (tests move it).

    Raises:
        ConfigError: the file cannot be read at start.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        overlap_s: float = DEFAULT_OVERLAP_S,
        check_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        what: str = "secret file",
    ) -> None:
        self.path = Path(path)
        self.overlap_s = overlap_s
        self.check_s = check_s
        self.what = what
        self._clock = clock
        try:
            self._stamp = self._stat()
            self._lines = tuple(dict.fromkeys(read_lines(self.path)))
        except OSError as exc:
            raise ConfigError(f"{what} {str(self.path)!r} cannot be read ({exc})") from exc
        self._retired: dict[str, float] = {}
        self._checked = clock()

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the file if it changed (looked at most every ``check_s``); True if it did."""
        now = self._clock()
        if not force and now - self._checked < self.check_s:
            return False
        self._checked = now
        try:
            stamp = self._stat()
            if stamp == self._stamp and not force:
                return False
            lines = tuple(dict.fromkeys(read_lines(self.path)))
        except OSError as exc:
            log.warning(
                "secret file unreadable; keeping its last contents",
                extra={"what": self.what, "error": type(exc).__name__},
            )
            return False
        self._stamp = stamp
        for old in self._lines:
            if old not in lines:
                self._retired[old] = now + self.overlap_s
        for line in lines:
            self._retired.pop(line, None)
        changed = lines != self._lines
        self._lines = lines
        if changed:
            log.info("secret file reloaded", extra={"what": self.what, "entries": len(lines)})
        return changed

    def current(self) -> tuple[str, ...]:
        """The lines in the file now."""
        self.refresh()
        return self._lines

    def accepted(self) -> tuple[str, ...]:
        """The lines in the file, and removed ones still within the overlap window."""
        self.refresh()
        now = self._clock()
        for line, until in list(self._retired.items()):
            if until <= now:
                del self._retired[line]
        return self._lines + tuple(self._retired)


def secret_source(
    env: Mapping[str, str], name: str, *, what: str, overlap_s: float | None = None
) -> tuple[tuple[str, ...], SecretFile | None]:
    """Secrets from ``<name>`` (comma-separated) and ``<name>_FILE`` (one per line, reloaded).

    Returns:
        The values given inline, and the reloading file (or None).

    Raises:
        ConfigError: the file cannot be read, or the overlap is not a number.
    """
    inline = tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())
    path = env.get(f"{name}_FILE")
    if overlap_s is None:
        raw = env.get("FITML_SECRET_OVERLAP_S") or str(DEFAULT_OVERLAP_S)
        try:
            overlap_s = float(raw)
        except ValueError:
            raise ConfigError(
                f"FITML_SECRET_OVERLAP_S {raw!r} is not a number of seconds; set it like 3600"
            ) from None
    source = SecretFile(path, overlap_s=overlap_s, what=f"{name}_FILE") if path else None
    return inline, source
