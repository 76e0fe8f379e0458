"""What a long ``fitml`` run shows on the terminal: stage headers and one progress line per model.

The stages (:mod:`ml_pipeline.pipeline`) and the tuner (:mod:`training.tuning`) only emit
records on the ``fitml`` logger, with a ``fitml`` dict in ``extra`` saying what happened; they
print nothing themselves, so library callers and tests stay quiet. The CLI installs
:class:`ConsoleHandler` (:func:`configure_console`), which renders them:

* a stage header when a stage starts and its time when it ends::

      [3/8] features ...
      [3/8] features done in 6.2 s

* one line per tuned model, rewritten in place on a terminal after every trial (on a pipe or
  in a log file only its final state is written)::

      tuning fit model: trial 4/6, best multi_logloss 0.3012, 41 s, budget left 79 s

It also quiets what users cannot act on: Optuna's per-trial INFO lines and the deprecation
notices of libraries (:func:`quiet_libraries`), and keeps what libraries print straight to the
terminal (Feast's "Materializing ..." lines and progress bars, MLflow's registration notices)
out of the stage lines (:func:`library_output`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import IO, Any, Final, TextIO

LOGGER: Final = "fitml.console"
"""The logger every stage reports progress on (a child of ``fitml``: the services' own loggers,
``fitml.session`` and ``fitml.prediction``, keep going to the process's JSON log)."""
LIBRARY_LOGGER: Final = "fitml.library"
"""Where :func:`library_output` sends what a library printed (at DEBUG)."""


def emit(event: str, message: str, **fields: Any) -> None:
    """Report one progress event on :data:`LOGGER` (rendered only when a CLI listens).

    Args:
        event: ``stage_start``, ``stage_end``, ``trial``, ``tuning_end`` or ``note``.
        message: the plain-text line (what a plain log handler shows).
        fields: the event's values (stage name and index, trial number, best value, ...).
    """
    logging.getLogger(LOGGER).info(message, extra={"fitml": {"event": event, **fields}})


def trial_line(fields: dict[str, Any]) -> str:
    """The progress line of one model's tuning after a trial."""
    text = f"tuning {fields['model']}: trial {fields['trial']}/{fields['n_trials']}"
    if fields.get("best") is not None:
        text += f", best {fields['metric']} {fields['best']:.4f}"
    else:
        text += ", no trial completed yet"
    text += f", {fields['elapsed_s']:.0f} s"
    left = fields.get("budget_left_s")
    if left is not None:
        text += f", budget left {max(0.0, left):.0f} s"
    return text


class ConsoleHandler(logging.Handler):
    """Renders ``fitml`` progress records: stage headers, one rewritten line per model."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream if stream is not None else sys.stderr
        self._open_line = ""

    def _is_tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _end_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = ""

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record: progress lines in place on a terminal, whole lines otherwise."""
        try:
            fields: dict[str, Any] = getattr(record, "fitml", {}) or {}
            event = fields.get("event")
            if event == "trial":
                line = trial_line(fields)
                if self._is_tty():
                    pad = max(0, len(self._open_line) - len(line))
                    self._write("\r" + line + " " * pad)
                    self._open_line = line
                else:
                    self._open_line = line  # written once, when the model's tuning ends
                return
            if event == "tuning_end":
                if self._open_line and not self._is_tty():
                    self._write(self._open_line)
                self._end_line()
                if fields.get("note"):
                    self._write(f"  {fields['note']}\n")
                return
            self._end_line()
            self._write(record.getMessage() + "\n")
        except Exception:  # a broken terminal must not end the run
            self.handleError(record)


_QUIET_CATEGORIES: Final = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _show_unless_deprecation(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if issubclass(category, _QUIET_CATEGORIES):
        return
    _ORIGINAL_SHOWWARNING(message, category, filename, lineno, file, line)


_ORIGINAL_SHOWWARNING = warnings.showwarning


def quiet_libraries() -> None:
    """Silence what fitml's users cannot act on: libraries' deprecation and INFO chatter.

    Deprecation notices are dropped where they are shown, not only filtered: some libraries
    reset the warning filters inside their own calls (``simplefilter("always")``).
    """
    for category in _QUIET_CATEGORIES:
        warnings.simplefilter("ignore", category)
    warnings.showwarning = _show_unless_deprecation
    # MLflow sets up its own loggers when imported, at this level (INFO by default)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name, level in (
        ("optuna", logging.WARNING),
        ("mlflow", logging.ERROR),
        ("alembic", logging.WARNING),
        ("feast", logging.WARNING),
        ("evidently", logging.WARNING),
        ("bentoml", logging.WARNING),
    ):
        logging.getLogger(name).setLevel(level)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # pragma: no cover - optuna is a dependency
        pass


@contextlib.contextmanager
def library_output(what: str) -> Iterator[None]:
    """Keep what a library prints on stdout and stderr off the terminal while ``what`` runs.

    Feast's ``materialize`` prints "Materializing N feature views ..." and a progress bar per
    view, and MLflow's ``log_model`` prints download bars and registration notices, between
    fitml's stage lines. Here they go to the :data:`LIBRARY_LOGGER` log at DEBUG instead; if
    ``what`` fails, they are written to stderr before the error goes on, so nothing that
    explains a failure is lost. The console's own lines are unaffected
    (:class:`ConsoleHandler` keeps the stream it was given).

    Args:
        what: what runs, for the log and the failure message (``"Feast materialize"``).
    """
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        printed = buffer.getvalue()
        if printed.strip():
            sys.stderr.write(f"{what} printed before it failed:\n{printed.rstrip()}\n")
        raise
    printed = buffer.getvalue()
    if printed.strip():
        logging.getLogger(LIBRARY_LOGGER).debug("%s printed:\n%s", what, printed.rstrip())


def configure_console(stream: IO[str] | None = None) -> ConsoleHandler:
    """Show ``fitml`` progress on ``stream`` (stderr) and quiet the libraries; idempotent."""
    quiet_libraries()
    logger = logging.getLogger(LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    handler = ConsoleHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler
