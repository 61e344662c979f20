"""NULL-safe, spelling-independent value comparison (SQL ``IS NOT DISTINCT FROM``)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.core.values import canonical_number, values_equal

finite_decimals = st.decimals(
    min_value=Decimal("-1e12"), max_value=Decimal("1e12"), allow_nan=False, places=4
)


def spellings(number: Decimal) -> list[Any]:
    """Every Python spelling of one number that a driver might hand us."""
    plain = format(number, "f")
    padded = plain + ("0" if "." in plain else ".0")
    found: list[Any] = [number, Decimal(plain), Decimal(padded), Decimal(padded + "00")]
    if number == number.to_integral_value():
        found.append(int(number))
    if Decimal(repr(float(number))) == number:
        found.append(float(number))
    return found


any_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(),
    st.dates(),
    st.binary(max_size=8),
)


def test_null_equals_null() -> None:
    """NULL against NULL is no difference."""
    assert values_equal(None, None)


@pytest.mark.parametrize("value", [0, 0.0, Decimal(0), "", False, "NULL", [], b""])
def test_null_against_a_value_is_a_difference_both_ways(value: Any) -> None:
    """NULL vs any value (even falsy ones) differs, in either direction."""
    assert not values_equal(None, value)
    assert not values_equal(value, None)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (500, 500.0),
        (500, Decimal("500.0")),
        (500.0, Decimal("500.0")),
        (500, Decimal("500.00")),
        (Decimal("500"), Decimal("500.000")),
        (0.1, Decimal("0.1")),
        (Decimal("0.10"), 0.1),
        (-0.0, 0),
        (Decimal("-0"), 0.0),
        (1e17, 10**17),
        (float("inf"), Decimal("Infinity")),
        (float("-inf"), Decimal("-Infinity")),
    ],
)
def test_spellings_of_one_number_are_equal(left: Any, right: Any) -> None:
    """int, float and Decimal spellings of the same number compare equal both ways."""
    assert values_equal(left, right)
    assert values_equal(right, left)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (500, 500.01),
        (Decimal("500.00"), Decimal("500.01")),
        (0.1 + 0.2, Decimal("0.3")),
        (2**53 + 1, float(2**53 + 1)),
        (float("inf"), float("-inf")),
        (1, -1),
    ],
)
def test_different_numbers_differ(left: Any, right: Any) -> None:
    """Numbers that are not the same value are a difference (no tolerance)."""
    assert not values_equal(left, right)
    assert not values_equal(right, left)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (float("nan"), float("nan")),
        (float("nan"), Decimal("NaN")),
        (Decimal("NaN"), Decimal("NaN")),
    ],
)
def test_nan_equals_nan(left: Any, right: Any) -> None:
    """NaN equals NaN, as PostgreSQL's numeric and float comparisons treat it."""
    assert values_equal(left, right)


@pytest.mark.parametrize("number", [0, 1.5, Decimal("1"), float("inf")])
def test_nan_differs_from_every_number(number: Any) -> None:
    """NaN is a difference against any ordinary number."""
    assert not values_equal(float("nan"), number)
    assert not values_equal(number, Decimal("NaN"))


@pytest.mark.parametrize(
    ("boolean", "number"),
    [(True, 1), (False, 0), (True, 1.0), (False, Decimal(0)), (True, Decimal("1.0"))],
)
def test_bool_is_not_a_number(boolean: bool, number: Any) -> None:
    """A boolean never equals 1 or 0, whatever Python's bool-is-int says."""
    assert not values_equal(boolean, number)
    assert not values_equal(number, boolean)


def test_bool_equals_itself_only() -> None:
    """True equals True, False equals False, and they differ from each other."""
    assert values_equal(True, True)
    assert values_equal(False, False)
    assert not values_equal(True, False)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("Red", "red"),
        ("red", "red "),
        (" red", "red"),
        ("500", 500),
        ("500.0", Decimal("500.0")),
        ("", None),
        ("é", "e\u0301"),
    ],
)
def test_text_compares_exactly(left: Any, right: Any) -> None:
    """Text is compared as is: case, spaces and normalisation matter; it is never cast."""
    assert not values_equal(left, right)
    assert not values_equal(right, left)


def test_other_types_use_their_equality() -> None:
    """Dates, timestamps and bytes compare by value."""
    assert values_equal(date(2024, 1, 2), date(2024, 1, 2))
    assert not values_equal(date(2024, 1, 2), date(2024, 1, 3))
    assert values_equal(datetime(2024, 1, 2, 3), datetime(2024, 1, 2, 3))
    assert values_equal(timedelta(seconds=1), timedelta(milliseconds=1000))
    assert values_equal(b"\x00", b"\x00")


def test_a_failing_equality_counts_as_a_difference() -> None:
    """An object whose __eq__ raises is a difference, not a crash."""

    class Exploding:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparison")

        __hash__ = object.__hash__

    assert not values_equal(Exploding(), 1)


@given(any_values)
def test_reflexive(value: Any) -> None:
    """Every value equals itself, NaN and NULL included."""
    assert values_equal(value, value)


@given(any_values, any_values)
def test_symmetric(left: Any, right: Any) -> None:
    """The answer never depends on which side a value is on."""
    assert values_equal(left, right) == values_equal(right, left)


@given(finite_decimals, st.data())
def test_all_spellings_of_a_number_agree(number: Decimal, data: st.DataObject) -> None:
    """Any two spellings (int, float, Decimal with any trailing zeros) of a number are equal."""
    options = spellings(number)
    left = data.draw(st.sampled_from(options))
    right = data.draw(st.sampled_from(options))
    assert values_equal(left, right)


@given(finite_decimals, finite_decimals, st.data())
def test_agrees_with_decimal_equality(first: Decimal, second: Decimal, data: st.DataObject) -> None:
    """Across spellings, two numbers are equal exactly when their Decimal values are."""
    left = data.draw(st.sampled_from(spellings(first)))
    right = data.draw(st.sampled_from(spellings(second)))
    assert values_equal(left, right) == (first == second)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_equals_its_shortest_decimal_spelling(number: float) -> None:
    """A double equals the Decimal of its shortest repr, as a cast through text gives."""
    assert values_equal(number, Decimal(repr(number)))
    assert canonical_number(number) == Decimal(repr(number))


def test_canonical_number_of_special_floats() -> None:
    """NaN and the infinities have Decimal canonical forms."""
    assert canonical_number(float("nan")).is_nan()
    assert canonical_number(math.inf) == Decimal("Infinity")
    assert canonical_number(-math.inf) == Decimal("-Infinity")
