from __future__ import annotations

from fractions import Fraction

import pytest

from podunit.quantity import QuantityError, parse_quantity, to_bytes, to_millicores


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", Fraction(0)),
        ("1", Fraction(1)),
        ("100m", Fraction(1, 10)),
        ("1.5", Fraction(3, 2)),
        ("+1.5", Fraction(3, 2)),
        ("-1.5", Fraction(-3, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("007", Fraction(7)),
        ("1Ki", Fraction(1024)),
        ("1Mi", Fraction(2**20)),
        ("1Gi", Fraction(2**30)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("0.5Gi", Fraction(2**29)),
        ("1.5Ki", Fraction(1536)),
        ("1n", Fraction(1, 10**9)),
        ("1u", Fraction(1, 10**6)),
        ("250m", Fraction(1, 4)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e+3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("12e-1", Fraction(6, 5)),
        ("1.5e3", Fraction(1500)),
        ("9223372036854775807", Fraction(2**63 - 1)),
        # Kubernetes rounds away from zero to whole nanounits.
        ("0.1n", Fraction(1, 10**9)),
        ("1e-30", Fraction(1, 10**9)),
        ("1.0000000001", Fraction(1_000_000_001, 10**9)),
        ("-0.1n", Fraction(-1, 10**9)),
        # YAML numbers reach here as Python numbers.
        (64, Fraction(64)),
        (0.5, Fraction(1, 2)),
        (1e-05, Fraction(1, 100_000)),
    ],
)
def test_parse_quantity(text: str | int | float, expected: Fraction) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "64Mx",
        "1mi",
        "1KI",
        "1K",  # decimal kilo is a lower-case k
        "Mi",  # a suffix without a number
        "+",
        ".",
        "e3",
        "1e",
        "1ee3",
        "1e+-3",
        "1e3.5",
        "1Ki3",
        "1.5.5",
        " 1",
        "1 ",
        "1,5",
        "0x10",
        "1_000",
        "--1",
        "１",  # a full-width digit
        "1e99999999999999999999",
    ],
)
def test_invalid_quantities(text: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert str(info.value) == f'"{text}" is not a quantity'


@pytest.mark.parametrize("value", [True, float("inf"), float("nan")])
def test_non_numbers_are_not_quantities(value: float) -> None:
    with pytest.raises(QuantityError, match="is not a quantity"):
        parse_quantity(value)


@pytest.mark.parametrize("text", ["8Ei", "1e19", "9223372036854775808", "-1e19", "1e999999"])
def test_too_large(text: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert str(info.value) == f'"{text}" is too large (more than 2^63-1)'


def test_quantity_error_is_a_value_error() -> None:
    assert issubclass(QuantityError, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1Gi", 2**30), ("64Mi", 64 * 2**20), ("1.5", 2), ("0.5", 1), ("1k", 1000), ("0", 0)],
)
def test_to_bytes_rounds_up(text: str, expected: int) -> None:
    assert to_bytes(parse_quantity(text)) == expected


def test_to_bytes_refuses_negative() -> None:
    with pytest.raises(QuantityError, match="must not be negative"):
        to_bytes(parse_quantity("-1"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100m", 100),
        ("1", 1000),
        ("0.5", 500),
        ("1.5", 1500),
        ("0.0001", 1),
        ("1n", 1),
        ("2k", 2_000_000),
    ],
)
def test_to_millicores_rounds_up(text: str, expected: int) -> None:
    assert to_millicores(parse_quantity(text)) == expected
