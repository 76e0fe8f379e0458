"""Size systems and their ordinal scales.

Every size a garment can have belongs to one *size system*; within a system sizes are put on
one ordinal scale (``size_index``), so that "one size up" means the same thing for every
product of that system. Products may offer a contiguous subset of their system's scale.
"""

from __future__ import annotations

from typing import Final

SIZE_SCALES: Final[dict[str, tuple[str, ...]]] = {
    "alpha": ("XXS", "XS", "S", "M", "L", "XL", "XXL"),
    "numeric": ("00", "0", "2", "4", "6", "8", "10", "12", "14", "16", "18", "20", "22", "24"),
    "waist": tuple(str(w) for w in range(24, 41)),
}
"""The ordered labels of each size system, smallest first."""

_INDEX: Final[dict[str, dict[str, int]]] = {
    system: {label: i for i, label in enumerate(labels)} for system, labels in SIZE_SCALES.items()
}


class UnknownSizeError(ValueError):
    """A size label or size system that fitml does not know."""


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
            f"unknown size system {system!r}; use one of {', '.join(SIZE_SCALES)}"
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
            f"unknown size {label!r} for size system {system!r}; "
            f"expected one of {', '.join(SIZE_SCALES[system])}"
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
            f"size index {index} is outside size system {system!r} (0..{len(labels) - 1})"
        )
    return labels[index]
