"""Size systems and their ordinal scales.

Every size a garment can have belongs to one *size system*; within a system sizes are put on
one ordinal scale (``size_index``), so that "one size up" means the same thing for every
product of that system. Products may offer a contiguous subset of their system's scale.
"""

from __future__ import annotations

from typing import Any, Final

from ml_pipeline.errors import InvalidValueError

SIZE_SCALES: Final[dict[str, tuple[str, ...]]] = {
    "alpha": ("XXS", "XS", "S", "M", "L", "XL", "XXL"),
    "numeric": ("00", "0", "2", "4", "6", "8", "10", "12", "14", "16", "18", "20", "22", "24"),
    "waist": tuple(str(w) for w in range(24, 41)),
    # RentTheRunway's own numeric size index (the ``size`` field of its reviews): 0..58 in the
    # published data set, with a few unused values in between. Ordinal, not a US dress size.
    "rtr": tuple(str(s) for s in range(0, 59)),
    # ModCloth's own numeric size index (the ``size`` field of its reviews): 0..38.
    "modcloth": tuple(str(s) for s in range(0, 39)),
}
"""The ordered labels of each size system, smallest first."""

_INDEX: Final[dict[str, dict[str, int]]] = {
    system: {label: i for i, label in enumerate(labels)} for system, labels in SIZE_SCALES.items()
}


class UnknownSizeError(InvalidValueError):
    """A size label, size index or size system that fitml does not know.

    Built like :class:`~ml_pipeline.errors.InvalidValueError` (``field, value, problem, hint``);
    a single message argument is also accepted for backward compatibility.
    """

    def __init__(self, field: str, value: Any = None, problem: str = "", hint: str = "") -> None:
        """Build the error (see :class:`~ml_pipeline.errors.InvalidValueError`)."""
        if not problem:  # old form: UnknownSizeError("message")
            super().__init__("size", value, field, hint)
            self.args = (field,)
        else:
            super().__init__(field, value, problem, hint)


def _labels_text(labels: tuple[str, ...]) -> str:
    """Labels for a message: all of them, or ``first..last`` for a long scale."""
    return ", ".join(labels) if len(labels) <= 20 else f"{labels[0]}..{labels[-1]}"


def size_systems() -> tuple[str, ...]:
    """Return the names of the known size systems."""
    return tuple(SIZE_SCALES)


def size_scale(system: str) -> tuple[str, ...]:
    """Return the ordered labels of ``system``.

    Raises:
        UnknownSizeError: if ``system`` is not a known size system.
    """
    try:
        return SIZE_SCALES[system]
    except KeyError:
        raise UnknownSizeError(
            "size_system",
            system,
            "is not a known size system",
            f"use one of {', '.join(SIZE_SCALES)}",
        ) from None


def size_index(system: str, label: str) -> int:
    """Return the ordinal index of size ``label`` in ``system`` (0 is the smallest).

    Labels are matched case-insensitively after stripping white space.

    Raises:
        UnknownSizeError: if the system or the label is unknown.
    """
    scale = _INDEX.get(system)
    if scale is None:
        size_scale(system)  # raises with the message naming the system
    key = str(label).strip().upper()
    assert scale is not None
    if key not in scale:
        raise UnknownSizeError(
            "size",
            label,
            f"is not a size of size system {system!r}",
            f"use one of {_labels_text(SIZE_SCALES[system])}",
        )
    return scale[key]


def size_label(system: str, index: int) -> str:
    """Return the label at ordinal ``index`` of ``system``.

    Raises:
        UnknownSizeError: if the system is unknown or ``index`` is outside its scale.
    """
    labels = size_scale(system)
    if not 0 <= index < len(labels):
        raise UnknownSizeError(
            "size_index",
            index,
            f"is outside size system {system!r}",
            f"use an index in 0..{len(labels) - 1}",
        )
    return labels[index]
