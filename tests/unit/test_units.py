"""Unit standardisation: spellings, impossible values, round trips, monotonicity, robustness."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_pipeline import units
from ml_pipeline.errors import FitmlError, InvalidValueError
from ml_pipeline.sizes import UnknownSizeError


@pytest.mark.parametrize(
    ("text", "cm"),
    [
        ("5' 8\"", 172.72),
        ("5'8", 172.72),
        ("5’8”", 172.72),
        ("5ft 6in", 167.64),
        ("5 feet 6 inches", 167.64),
        ("5ft", 152.4),
        ("68 in", 172.72),
        ('68"', 172.72),
        ("173cm", 173.0),
        ("1.73 m", 173.0),
        ("173", 173.0),  # bare >= 100: cm
        ("1.73", 173.0),  # bare < 3: metres
        ("68", 172.72),  # bare 9..100: inches
        ("5.5", 167.64),  # bare 3..9: feet
        (173, 173.0),
    ],
)
def test_heights(text: str | int, cm: float) -> None:
    assert units.parse_height_cm(text) == pytest.approx(cm)


@pytest.mark.parametrize("text", ["40 m", "5'12", "abc", "", "-5ft", "4000", "0.5m"])
def test_impossible_or_unreadable_heights_name_the_value(text: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        units.parse_height_cm(text)
    assert repr(text) in str(info.value)
    assert info.value.field == "height"


@pytest.mark.parametrize(
    ("text", "kg"),
    [("137lbs", 62.142), ("137 lb", 62.142), ("62 kg", 62.0), ("62kg", 62.0), ("62 KGS", 62.0)],
)
def test_weights(text: str, kg: float) -> None:
    assert units.parse_weight_kg(text) == pytest.approx(kg, abs=1e-3)


@pytest.mark.parametrize("text", ["-3kg", "3 kg", "900 lbs", "70", "70 stone"])
def test_bad_weights(text: str) -> None:
    with pytest.raises(InvalidValueError, match="weight"):
        units.parse_weight_kg(text)


def test_bare_weight_with_default_unit() -> None:
    assert units.parse_weight_kg("70", default_unit="kg") == 70.0
    assert units.parse_weight_kg(150, default_unit="lb") == pytest.approx(68.04, abs=0.01)


@pytest.mark.parametrize(
    ("text", "default", "cm"),
    [
        ("32 in", None, 81.28),
        ('32"', None, 81.28),
        ("81.5cm", None, 81.5),
        ("81,5 cm", None, 81.5),
        ("32", None, 81.28),  # only inches is plausible
        ("100", None, 100.0),  # only cm is plausible
        ("60.0", "in", 152.4),
        ("70", "cm", 70.0),
    ],
)
def test_lengths(text: str, default: units.LengthUnit | None, cm: float) -> None:
    assert units.parse_length_cm(text, default) == pytest.approx(cm)


def test_ambiguous_bare_girth_asks_for_a_unit() -> None:
    with pytest.raises(InvalidValueError, match="could be inches or centimetres"):
        units.parse_length_cm("70", field="waist")


@pytest.mark.parametrize(
    ("text", "band", "cup", "step"),
    [
        ("34d", 34, "D", 4.0),
        ("36dd", 36, "DD", 5.0),
        ("34d+", 34, "D+", 4.5),
        ("32ddd/f", 32, "DDD/F", 6.0),
        ("34aa", 34, "AA", 0.0),
        ("34e", 34, "E", 5.0),
        ("32 DD/E", 32, "DD/E", 5.0),
        ("30g", 30, "G", 7.0),
        ("34h", 34, "H", 8.0),
    ],
)
def test_bra_sizes(text: str, band: int, cup: str, step: float) -> None:
    bra = units.parse_bra_size(text)
    assert (bra.band_in, bra.cup, bra.cup_step_in) == (band, cup, step)
    assert bra.bust_cm == pytest.approx((band + step) * 2.54)


def test_cup_alone_needs_a_band() -> None:
    assert units.parse_bra_size("dd/e", band_in="34").bust_cm == pytest.approx(39 * 2.54)
    assert units.parse_bra_size("dddd/g", band_in=36).cup_step_in == 7.0
    with pytest.raises(InvalidValueError, match="no band"):
        units.parse_bra_size("dd/e")
    with pytest.raises(InvalidValueError, match="band"):
        units.parse_bra_size("34d", band_in=36)


@pytest.mark.parametrize("text", ["34dd/f", "34x", "12d", "d34", "34"])
def test_bad_bra_sizes(text: str) -> None:
    with pytest.raises(InvalidValueError):
        units.parse_bra_size(text)


def test_to_size_index() -> None:
    assert units.to_size_index("alpha", " m ") == 3
    assert units.to_size_index("numeric", "00") == 0
    assert units.to_size_index("rtr", 12) == 12
    assert units.to_size_index("rtr", "12.0") == 12
    with pytest.raises(UnknownSizeError) as info:
        units.to_size_index("alpha", "Q")
    assert isinstance(info.value, InvalidValueError) and isinstance(info.value, FitmlError)
    assert info.value.value == "Q"


# --- properties -----------------------------------------------------------------------------


@given(st.floats(min_value=101, max_value=249))
def test_height_round_trip_through_imperial_text(cm: float) -> None:
    text = units.format_height_imperial(cm)
    assert units.parse_height_cm(text) == pytest.approx(cm, abs=1.27 + 1e-9)


@given(st.floats(min_value=46, max_value=229))
def test_girth_round_trip_through_inches_text(cm: float) -> None:
    text = units.format_length_in(cm, decimals=2)
    assert units.parse_length_cm(text) == pytest.approx(cm, abs=0.0127 + 1e-9)


@given(st.integers(40, 97), st.integers(1, 57))
def test_more_inches_more_cm(inches: int, more: int) -> None:
    low = units.parse_height_cm(f"{inches} in")
    high = units.parse_height_cm(f"{min(inches + more, 98)} in")
    assert high > low


CUPS = ["aa", "a", "b", "c", "d", "dd/e", "ddd/f", "g", "h", "i", "j"]


@given(st.integers(28, 48), st.integers(0, len(CUPS) - 2), st.booleans())
def test_bigger_cup_bigger_bust(band: int, i: int, plus: bool) -> None:
    small = units.parse_bra_size(f"{band}{CUPS[i]}{'+' if plus else ''}")
    big = units.parse_bra_size(f"{band}{CUPS[i + 1]}")
    assert big.bust_cm > small.bust_cm
    assert units.parse_bra_size(f"{band + 2}{CUPS[i]}").bust_cm > small.bust_cm - 2.54 * 0.5


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), st.floats(allow_nan=True), st.integers(), st.none()))
def test_never_crashes_on_any_input(value: Any) -> None:
    for parse in (
        units.parse_height_cm,
        units.parse_weight_kg,
        units.parse_length_cm,
        units.parse_bra_size,
        units.cup_step,
    ):
        try:
            out = parse(value)
        except InvalidValueError:
            continue
        if isinstance(out, units.BraSize):
            out = out.bust_cm
        assert isinstance(out, float) and math.isfinite(out)


@given(st.from_regex(r"\d{1,3}(\.\d{1,2})? ?(cm|in|m|ft|kg|lbs|\"|')", fullmatch=True))
def test_never_crashes_on_measurement_like_text(text: str) -> None:
    for parse in (units.parse_height_cm, units.parse_weight_kg, units.parse_length_cm):
        with contextlib.suppress(InvalidValueError):
            assert math.isfinite(parse(text))
