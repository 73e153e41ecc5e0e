"""Kubernetes resource quantities ("100m", "1.5Gi", "1e3") as exact fractions.

The grammar is the one of k8s.io/apimachinery's resource.Quantity:

    quantity        ::= [sign] number suffix
    number          ::= digits | digits "." [digits] | "." digits
    suffix          ::= binarySI | decimalSI | decimalExponent
    binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI       ::= n | u | m | "" | k | M | G | T | P | E
    decimalExponent ::= ("e" | "E") [sign] digits

Like Kubernetes, non-zero values are rounded away from zero to a multiple of
1e-9 (so "0.1n" asks for something rather than nothing). Unlike Kubernetes,
which silently caps, values beyond 2^63-1 are refused: a manifest asking for
more than nine exabytes is a mistake worth reporting.
"""

from __future__ import annotations

from fractions import Fraction

MAX_MAGNITUDE = 2**63 - 1

_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES = dict(
    zip(("n", "u", "m", "", "k", "M", "G", "T", "P", "E"), range(-9, 19, 3), strict=True)
)
_DIGITS = frozenset("0123456789")
_NANO = 10**9
_MAX_DIGITS = 4000  # below CPython's int() limit; no real manifest comes close


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity, or the quantity is out of range."""


def parse_quantity(text: str | int | float) -> Fraction:
    """Return the exact value of a quantity; raise QuantityError if it is not one."""
    if isinstance(text, bool):  # bool is an int, but `true` is no quantity
        raise QuantityError(f'"{text}" is not a quantity')
    if isinstance(text, int):
        text = str(text)
    elif isinstance(text, float):
        text = repr(text)  # shortest text that round-trips: "1e-05", "0.1", "inf"
    split = _split(text)
    scale = None if split is None else _suffix_scale(split[3])
    if split is None or scale is None:
        raise QuantityError(f'"{text}" is not a quantity')
    negative, integer, fraction, _ = split
    fraction = fraction.rstrip("0")
    digits = (integer + fraction).lstrip("0")
    if not digits:
        return Fraction(0)
    base, exponent = scale
    if base == 10:
        nanos = _decimal_nanos(text, digits, exponent - len(fraction))
    elif len(digits) > _MAX_DIGITS:
        raise QuantityError(f'"{text[:40]}..." has too many digits')
    else:
        nanos = _ceil(Fraction((int(digits) << exponent) * _NANO, 10 ** len(fraction)))
    if nanos > MAX_MAGNITUDE * _NANO:
        raise QuantityError(f'"{text}" is too large (more than 2^63-1)')
    return Fraction(-nanos if negative else nanos, _NANO)


def to_bytes(quantity: Fraction) -> int:
    """Whole bytes, rounding a fraction of a byte up."""
    if quantity < 0:
        raise QuantityError("a size in bytes must not be negative")
    return _ceil(quantity)


def to_millicores(quantity: Fraction) -> int:
    """Thousandths of a CPU, rounding up as Kubernetes does ("0.0001" is 1m)."""
    return _ceil(quantity * 1000)


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


def _split(text: str) -> tuple[bool, str, str, str] | None:
    """Cut text into (negative, integer digits, fraction digits, suffix), or None.

    The number needs a digit, as the documented grammar says. Kubernetes' parser
    is laxer ("+", "." and "Mi" read as zero), but "memory: Mi" is a typo,
    not a request for nothing.
    """
    pos, end = 0, len(text)
    negative = text[:1] == "-"
    if text[:1] in ("+", "-"):
        pos = 1
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    integer = text[start:pos]
    fraction = ""
    if pos < end and text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        fraction = text[start:pos]
    if not integer and not fraction:
        return None
    return negative, integer, fraction, text[pos:]


def _suffix_scale(suffix: str) -> tuple[int, int] | None:
    """(base, exponent) for a suffix: 1Ki is 1 * 2**10, 1k is 1 * 10**3."""
    if suffix in _BINARY_SUFFIXES:
        return 2, 10 * _BINARY_SUFFIXES[suffix]
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix]
    if len(suffix) < 2 or suffix[0] not in "eE":
        return None
    digits = suffix[1:]
    sign = "-" if digits[0] == "-" else ""
    if digits[0] in "+-":
        digits = digits[1:]
    if not digits or not all(c in _DIGITS for c in digits):
        return None
    digits = digits.lstrip("0") or "0"
    if len(digits) > 18:
        # Kubernetes parses the exponent as an int64; longer ones do not parse.
        return None
    return 10, int(sign + digits)


def _decimal_nanos(text: str, digits: str, power: int) -> int:
    """ceil(digits * 10**power * 1e9) without building numbers of huge length."""
    if len(digits) + power >= 20:  # at least 10**19, beyond 2**63-1
        raise QuantityError(f'"{text}" is too large (more than 2^63-1)')
    shift = power + 9
    if shift >= 0:
        return int(digits + "0" * shift)
    cut = -shift
    head = digits[:-cut] if cut < len(digits) else ""
    tail = digits[-cut:]
    return int(head or "0") + (1 if tail.strip("0") else 0)
