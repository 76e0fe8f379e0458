"""fitml's error hierarchy: every error says what was wrong, with which value, and what to do.

Catch :class:`FitmlError` to handle anything fitml raises on purpose. The subclasses also
derive from the matching built-in exception (``ValueError``, ``KeyError``) so callers that
only know the standard library still catch them.
"""

from __future__ import annotations

from typing import Any


class FitmlError(Exception):
    """Base class of every error fitml raises on purpose."""


class InvalidValueError(FitmlError, ValueError):
    """A value that fitml cannot accept (unparseable, impossible, or not an allowed value).

    Attributes:
        field: The name of the field (column, argument, setting) that held the value.
        value: The offending value, as given.
        problem: What was wrong with it.
        hint: What to do instead (may be empty).
    """

    def __init__(self, field: str, value: Any, problem: str, hint: str = "") -> None:
        """Build the error.

        Args:
            field: The name of the field that held the value, e.g. ``"height"``.
            value: The offending value, as given.
            problem: What was wrong with it, e.g. ``"is not a height"``.
            hint: What to do instead, e.g. ``"write it like 173 cm"``.
        """
        self.field = field
        self.value = value
        self.problem = problem
        self.hint = hint
        message = f"{field} {value!r} {problem}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.value, self.problem, self.hint))


class ConfigError(FitmlError):
    """A setting, profile or configuration file that is missing or invalid."""


class IngestError(FitmlError):
    """An input file that cannot be ingested at all (unreadable, or a required column missing).

    The message names the file and the column; nothing has been written.
    """


class FeatureStoreUnavailable(FitmlError):
    """The feature store cannot be read (a server down, or a work directory without one)."""


class NotFoundError(FitmlError, KeyError):
    """Something looked up by name or id (a product, a model, a file) does not exist."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument; show the message as written.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class RejectRateExceededError(FitmlError):
    """Ingestion quarantined a larger share of rows than the caller allowed.

    Raised after everything (accepted and quarantined rows, summary) has been written, so the
    quarantine can be inspected.

    Attributes:
        rate: The observed share of input rows that were quarantined.
        limit: The largest share the caller allowed.
        summary_json: The run's summary as JSON (``IngestSummary.to_json()``), if known, so a
            caller can still write it.
    """

    def __init__(
        self, rate: float, limit: float, detail: str = "", summary_json: str | None = None
    ) -> None:
        """Build the error.

        Args:
            rate: The observed share of input rows that were quarantined.
            limit: The largest share the caller allowed.
            detail: Extra context, e.g. the most common reasons.
            summary_json: The run's summary as JSON, if known.
        """
        self.summary_json = summary_json
        self.rate = rate
        self.limit = limit
        self.detail = detail
        message = (
            f"reject rate {rate:.2%} exceeds the allowed {limit:.2%}; inspect the quarantine "
            "files and fix the source data, or raise --max-reject-rate"
        )
        if detail:
            message += f" ({detail})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.rate, self.limit, self.detail, self.summary_json))
