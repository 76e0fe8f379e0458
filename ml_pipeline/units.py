"""Turn what people type into metric numbers: heights, weights, girths, bra sizes, size labels.

Everything inside fitml is metric (cm, kg). These parsers accept the spellings shoppers and
retailers use and reject the impossible with an :class:`~ml_pipeline.errors.InvalidValueError`
that names the value and says how to write it. They never raise anything else, whatever the
input (a property-based test holds them to that).

Accepted spellings (case-insensitive, white space optional, ``,`` allowed as decimal mark):

* heights: ``5' 8"``, ``5'8``, ``5’8”``, ``5ft 6in``, ``5 feet 6 inches``, ``5ft``, ``68 in``,
  ``68"``, ``173cm``, ``1.73 m``, and bare numbers (see :func:`parse_height_cm`);
* weights: ``137lbs``, ``137 lb``, ``137 pounds``, ``62 kg``, ``62kgs``; bare numbers only with an
  explicit ``default_unit``;
* girths and other body lengths: ``32 in``, ``32"``, ``81.5cm``, ``0.815 m``, and bare numbers
  read by the plausible-range rule of :func:`parse_length_cm` or an explicit ``default_unit``;
* bra sizes: ``34d``, ``36DD``, ``34d+``, ``32ddd/f``, ``32 DD/E``; a cup alone (``dd/e``) with the
  band given separately (see :func:`parse_bra_size`).

Plausible ranges (adult shoppers) are module constants; a value outside its range is rejected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

from ml_pipeline import sizes
from ml_pipeline.errors import InvalidValueError

CM_PER_INCH: Final[float] = 2.54
CM_PER_FOOT: Final[float] = 30.48
KG_PER_LB: Final[float] = 0.45359237

HEIGHT_RANGE_CM: Final[tuple[float, float]] = (100.0, 250.0)
"""Plausible adult heights, inclusive."""
WEIGHT_RANGE_KG: Final[tuple[float, float]] = (30.0, 350.0)
"""Plausible adult weights, inclusive (a 3 kg or 500 kg shopper is a typo)."""
GIRTH_RANGE_CM: Final[tuple[float, float]] = (45.0, 230.0)
"""Plausible adult chest/bust, waist and hip girths, inclusive."""
INSEAM_RANGE_CM: Final[tuple[float, float]] = (45.0, 115.0)
"""Plausible adult inseams, inclusive."""
AGE_RANGE_YEARS: Final[tuple[int, int]] = (13, 100)
"""Plausible ages of adult shoppers, inclusive; other ages are treated as typos."""
BRA_BAND_RANGE_IN: Final[tuple[int, int]] = (26, 60)
"""Plausible bra band sizes in inches, inclusive."""

_MAX_TEXT: Final[int] = 64  # longer inputs are not a measurement anyone typed
_NUM: Final[str] = r"(\d+(?:\.\d*)?|\.\d+)"
_FEET_WORD: Final[str] = r"(?:'|ft\.?|feet|foot)"
_INCH_WORD: Final[str] = r"(?:\"|''|in\.?|inch|inches)"
_CM_WORD: Final[str] = r"(?:cm|cms|centimet(?:er|re)s?)"
_M_WORD: Final[str] = r"(?:m|meters?|metres?)"
_LB_WORD: Final[str] = r"(?:lbs?\.?|pounds?|#)"
_KG_WORD: Final[str] = r"(?:kgs?\.?|kilos?|kilograms?)"

_FEET_INCHES = re.compile(rf"{_NUM}\s*{_FEET_WORD}\s*(?:{_NUM}\s*{_INCH_WORD}?)?", re.ASCII)
_WITH_UNIT = re.compile(rf"{_NUM}\s*([a-z\"'#]+\.?)?", re.ASCII)
_BRA = re.compile(r"(\d{2})?\s*([a-z]+(?:\s*/\s*[a-z]+)?)\s*(\+)?", re.ASCII)

_QUOTES: Final[dict[int, str]] = str.maketrans(
    {
        "\u2019": "'",  # ’
        "\u2018": "'",  # ‘
        "\u2032": "'",  # ′
        "\u00b4": "'",  # ´
        "`": "'",
        "\u201d": '"',  # ”
        "\u201c": '"',  # “
        "\u2033": '"',  # ″
    }
)

LengthUnit = Literal["cm", "in", "m"]
WeightUnit = Literal["kg", "lb"]


def _text(value: object, field: str, example: str) -> str:
    """Normalise ``value`` to lower-case ASCII-quote text, or raise naming it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise InvalidValueError(field, value, "is missing", f"give a value like {example}")
    if isinstance(value, bool):
        raise InvalidValueError(field, value, "is not a measurement", f"write it like {example}")
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number) or abs(number) >= 1e9:
            raise InvalidValueError(field, value, "is not a plausible measurement", example)
        value = f"{number:.6f}".rstrip("0").rstrip(".")
    if not isinstance(value, str):
        raise InvalidValueError(field, value, "is not text or a number", f"write it like {example}")
    text = value.translate(_QUOTES).strip().lower()
    if len(text) > _MAX_TEXT:
        raise InvalidValueError(field, value, "is too long to be a measurement", example)
    # "81,5" -> "81.5" (decimal comma); other commas are not part of any spelling we accept.
    text = re.sub(r"(?<=\d),(?=\d)", ".", text)
    if re.match(r"-\s*[\d.]", text, re.ASCII):
        raise InvalidValueError(
            field, value, "is negative", f"give a positive value like {example}"
        )
    return text


def _number(token: str, field: str, value: object, example: str) -> float:
    try:
        number = float(token)
    except ValueError:  # pragma: no cover - the regexes only let numbers through
        raise InvalidValueError(
            field, value, "is not a number", f"write it like {example}"
        ) from None
    if not math.isfinite(number):
        raise InvalidValueError(field, value, "is not a finite number", f"write it like {example}")
    return number


def _check_range(
    cm_or_kg: float, lo: float, hi: float, field: str, value: object, unit: str, example: str
) -> float:
    if not lo <= cm_or_kg <= hi:
        raise InvalidValueError(
            field,
            value,
            f"is {cm_or_kg:.4g} {unit}, outside the plausible range {lo:g}..{hi:g} {unit}",
            f"check the number and its unit (e.g. {example})",
        )
    return cm_or_kg


def parse_height_cm(value: str | float | int) -> float:
    """Parse a person's height into centimetres.

    Bare numbers (no unit) are read by size: below 3 as metres (``1.73``), 3 to below 9 as
    feet (``5.5`` is 5.5 ft, not 5' 5"), 9 to below 100 as inches (``68``), 100 and above as
    centimetres (``173``). The result must lie in :data:`HEIGHT_RANGE_CM`.

    Args:
        value: What was typed, e.g. ``5' 8"``, ``5ft 6in``, ``68 in``, ``173cm``, ``1.73 m``.

    Returns:
        The height in centimetres.

    Raises:
        InvalidValueError: if the text is not a height or the height is impossible.
    """
    example = "5' 8\", 68 in or 173 cm"
    text = _text(value, "height", example)
    cm: float | None = None
    m = _FEET_INCHES.fullmatch(text)
    if m:
        feet = _number(m.group(1), "height", value, example)
        inches = _number(m.group(2), "height", value, example) if m.group(2) else 0.0
        if inches >= 12:
            raise InvalidValueError(
                "height", value, f"has {inches:g} inches after the feet", "inches must be below 12"
            )
        cm = feet * CM_PER_FOOT + inches * CM_PER_INCH
    else:
        m = _WITH_UNIT.fullmatch(text)
        if m:
            number = _number(m.group(1), "height", value, example)
            unit = (m.group(2) or "").rstrip(".")
            if not unit:
                if number < 3:
                    cm = number * 100
                elif number < 9:
                    cm = number * CM_PER_FOOT
                elif number < 100:
                    cm = number * CM_PER_INCH
                else:
                    cm = number
            elif re.fullmatch(_INCH_WORD, unit):
                cm = number * CM_PER_INCH
            elif re.fullmatch(_CM_WORD, unit):
                cm = number
            elif re.fullmatch(_M_WORD, unit):
                cm = number * 100
            elif re.fullmatch(_FEET_WORD, unit):  # pragma: no cover - caught by _FEET_INCHES
                cm = number * CM_PER_FOOT
    if cm is None:
        raise InvalidValueError("height", value, "is not a height", f"write it like {example}")
    return _check_range(cm, *HEIGHT_RANGE_CM, "height", value, "cm", example)


def parse_weight_kg(value: str | float | int, default_unit: WeightUnit | None = None) -> float:
    """Parse a person's weight into kilograms.

    Args:
        value: What was typed, e.g. ``137lbs``, ``137 lb``, ``62 kg``, ``62kg``.
        default_unit: The unit of a bare number (``"kg"`` or ``"lb"``). Without it a bare number
            is rejected: 70 could be either.

    Returns:
        The weight in kilograms, within :data:`WEIGHT_RANGE_KG`.

    Raises:
        InvalidValueError: if the text is not a weight, a bare number has no default unit, or
            the weight is impossible.
    """
    example = "137 lbs or 62 kg"
    text = _text(value, "weight", example)
    m = _WITH_UNIT.fullmatch(text)
    if not m:
        raise InvalidValueError("weight", value, "is not a weight", f"write it like {example}")
    number = _number(m.group(1), "weight", value, example)
    unit = m.group(2) or default_unit or ""
    if not unit:
        raise InvalidValueError(
            "weight", value, "has no unit", f"write it like {example} (or pass default_unit)"
        )
    if re.fullmatch(_LB_WORD, unit) or unit == "lb":
        kg = number * KG_PER_LB
    elif re.fullmatch(_KG_WORD, unit) or unit == "kg":
        kg = number
    else:
        raise InvalidValueError(
            "weight", value, f"has an unknown unit {unit!r}", f"write it like {example}"
        )
    return _check_range(kg, *WEIGHT_RANGE_KG, "weight", value, "kg", example)


def parse_length_cm(
    value: str | float | int,
    default_unit: LengthUnit | None = None,
    *,
    field: str = "length",
    plausible_cm: tuple[float, float] = GIRTH_RANGE_CM,
) -> float:
    """Parse a body girth or length (chest, waist, hips, inseam) into centimetres.

    A bare number takes ``default_unit`` when one is given. Without it the plausible range
    decides: the number is inches if only ``number * 2.54`` is plausible (``32`` -> 81.28 cm),
    centimetres if only ``number`` is (``100``), and it is rejected as ambiguous when both are
    (``70`` could be a 70 cm waist or 70 in hips: pass ``default_unit`` or write the unit).

    Args:
        value: What was typed, e.g. ``32 in``, ``32"``, ``81.5cm``, ``32``.
        default_unit: The unit of a bare number: ``"cm"``, ``"in"`` or ``"m"``; ``None`` applies
            the plausible-range rule above.
        field: The name used in error messages, e.g. ``"waist"``.
        plausible_cm: The inclusive range a real value lies in (default
            :data:`GIRTH_RANGE_CM`; use :data:`INSEAM_RANGE_CM` for inseams).

    Returns:
        The length in centimetres.

    Raises:
        InvalidValueError: if the text is not a length, is ambiguous, or is impossible.
    """
    example = "32 in or 81.5 cm"
    text = _text(value, field, example)
    m = _WITH_UNIT.fullmatch(text)
    if not m:
        raise InvalidValueError(field, value, "is not a length", f"write it like {example}")
    number = _number(m.group(1), field, value, example)
    unit = (m.group(2) or "").rstrip(".")
    lo, hi = plausible_cm
    if not unit:
        if default_unit is not None:
            unit = default_unit
        else:
            as_in, as_cm = lo <= number * CM_PER_INCH <= hi, lo <= number <= hi
            if as_in and as_cm:
                raise InvalidValueError(
                    field,
                    value,
                    "has no unit and could be inches or centimetres",
                    f"write the unit, e.g. {number:g} in or {number:g} cm",
                )
            unit = "in" if as_in else "cm"
    if re.fullmatch(_INCH_WORD, unit) or unit == "in":
        cm = number * CM_PER_INCH
    elif re.fullmatch(_CM_WORD, unit):
        cm = number
    elif re.fullmatch(_M_WORD, unit):
        cm = number * 100
    elif unit == "mm":
        cm = number / 10
    else:
        raise InvalidValueError(
            field, value, f"has an unknown unit {unit!r}", f"write it like {example}"
        )
    return _check_range(cm, lo, hi, field, value, "cm", example)


_CUP_ALIASES: Final[dict[str, float]] = {"aa": 0.0, "a": 1.0, "b": 2.0, "c": 3.0}


def _cup_part_step(part: str) -> float | None:
    """The step of one spelling of a cup (``d``, ``dd``, ``ddd``, ``e``, ``g``...), or None."""
    if part in _CUP_ALIASES:
        return _CUP_ALIASES[part]
    if re.fullmatch(r"d{1,4}", part):
        return 3.0 + len(part)  # D=4, DD=5, DDD=6, DDDD=7
    if len(part) == 1 and "e" <= part <= "n":
        return 5.0 + (ord(part) - ord("e"))  # E=5, F=6, G=7, H=8, I=9, J=10, ... N=14
    return None


def cup_step(cup: str) -> float:
    """Return a bra cup's step in inches over the band (AA=0, A=1, B=2, C=3, D=4, DD/E=5, ...).

    US cups: AA=0, A=1, B=2, C=3, D=4, DD=E=5, DDD=F=6, DDDD=G=7, then H=8, I=9, J=10 and so
    on, one inch per letter, up to N=14. A slashed cup (``dd/e``, ``ddd/f``) must name one step
    twice. A trailing ``+`` (``34d+``, "a bit more than D") adds half a step.

    Args:
        cup: The cup as typed, e.g. ``d``, ``DD/E``, ``ddd/f``, ``d+``.

    Returns:
        The step in inches (a multiple of 0.5).

    Raises:
        InvalidValueError: if the text is not a cup size.
    """
    example = "d, dd/e or ddd/f"
    text = _text(cup, "cup", example)
    plus = text.endswith("+")
    body = text.rstrip("+").strip()
    parts = [p.strip() for p in body.split("/")] if body else []
    steps = [_cup_part_step(p) for p in parts]
    if not parts or len(parts) > 2 or any(s is None for s in steps):
        raise InvalidValueError("cup", cup, "is not a bra cup size", f"write it like {example}")
    if len(set(steps)) != 1:
        raise InvalidValueError(
            "cup", cup, "names two different cup sizes", f"write one cup, like {example}"
        )
    step = steps[0]
    assert step is not None
    return step + (0.5 if plus else 0.0)


@dataclass(frozen=True, slots=True)
class BraSize:
    """A parsed bra size.

    Attributes:
        band_in: The band (underbust) size in inches, e.g. 34.
        cup: The cup as written, upper-cased without spaces, e.g. ``"DD/E"`` or ``"D+"``.
        cup_step_in: The cup's step over the band in inches (see :func:`cup_step`).
        bust_cm: The bust girth it implies: ``(band_in + cup_step_in) * 2.54``.
    """

    band_in: int
    cup: str
    cup_step_in: float
    bust_cm: float


def parse_bra_size(value: str, band_in: int | str | None = None) -> BraSize:
    """Parse a US bra size into band, cup and the bust girth it implies.

    The bust girth is band inches plus cup-step inches (see :func:`cup_step`: A=1, B=2, C=3,
    D=4, DD/E=5, DDD/F=6, G=7, H=8, ...; ``+`` adds half a step), converted to cm. For
    example ``34d`` -> (34 + 4) * 2.54 = 96.52 cm.

    Args:
        value: The bra size, e.g. ``34d``, ``36dd``, ``34d+``, ``32ddd/f``; or a cup alone
            (``dd/e``) when ``band_in`` is given.
        band_in: The band in inches when it is recorded apart from the cup (ModCloth's
            ``bra size`` field). Must agree with a band written in ``value``.

    Returns:
        The parsed :class:`BraSize`.

    Raises:
        InvalidValueError: if the text is not a bra size, has no band, or the band is
            outside :data:`BRA_BAND_RANGE_IN`.
    """
    example = "34d, 36dd or 32ddd/f"
    text = _text(value, "bra size", example)
    m = _BRA.fullmatch(text)
    if not m:
        raise InvalidValueError("bra size", value, "is not a bra size", f"write it like {example}")
    band: int | None = int(m.group(1)) if m.group(1) else None
    if band_in is not None:
        text_band = _text(band_in, "bra band", "34")
        if not re.fullmatch(r"\d{2}(?:\.0*)?", text_band, re.ASCII):
            raise InvalidValueError(
                "bra band", band_in, "is not a band size", "give whole inches, like 34"
            )
        given = int(float(text_band))
        if band is not None and band != given:
            raise InvalidValueError(
                "bra size", value, f"has band {band}, not the given band {given}", "fix one"
            )
        band = given
    if band is None:
        raise InvalidValueError(
            "bra size", value, "has no band size", f"write it like {example} or pass band_in"
        )
    lo, hi = BRA_BAND_RANGE_IN
    if not lo <= band <= hi:
        raise InvalidValueError(
            "bra size", value, f"has band {band}, outside {lo}..{hi} inches", "check the band"
        )
    cup_text = m.group(2) + (m.group(3) or "")
    try:
        step = cup_step(cup_text)
    except InvalidValueError:
        raise InvalidValueError(
            "bra size", value, f"has no valid cup ({cup_text!r})", f"write it like {example}"
        ) from None
    cup = re.sub(r"\s+", "", cup_text).upper()
    return BraSize(band, cup, step, (band + step) * CM_PER_INCH)


def to_size_index(system: str, label: str | int | float) -> int:
    """Return the ordinal index of a size label in a size system (see :mod:`ml_pipeline.sizes`).

    Numbers are accepted for numeric systems: ``12``, ``12.0`` and ``"12"`` are the same label.

    Args:
        system: A key of :data:`ml_pipeline.sizes.SIZE_SCALES`, e.g. ``"alpha"`` or ``"rtr"``.
        label: The size as written, e.g. ``"M"``, ``"8"``, ``12``.

    Returns:
        The index, 0 for the smallest size of the system.

    Raises:
        ml_pipeline.sizes.UnknownSizeError: (an :class:`InvalidValueError`) if the system or
            the label is unknown.
    """
    if isinstance(label, float) and math.isfinite(label) and label.is_integer():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    elif isinstance(label, str):
        text = label.strip()
        if re.fullmatch(r"\d+\.0*", text, re.ASCII):
            label = text.split(".")[0]
    return sizes.size_index(system, str(label))


def format_height_imperial(cm: float) -> str:
    """Format a height in cm as feet and whole inches, e.g. ``5' 8"`` (rounded to the inch).

    Args:
        cm: The height in centimetres.

    Returns:
        The height as shoppers in the US write it.
    """
    total = round(cm / CM_PER_INCH)
    return f"{total // 12}' {total % 12}\""


def format_length_in(cm: float, decimals: int = 1) -> str:
    """Format a length in cm as inches, e.g. ``32.0 in``.

    Args:
        cm: The length in centimetres.
        decimals: Digits after the decimal point.

    Returns:
        The length in inches with its unit.
    """
    return f"{cm / CM_PER_INCH:.{decimals}f} in"
