"""What every language's rules share: the shape of a written number, phone numbers, ISO dates and clock times."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal

Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

# A number as written: digits with optional thousands commas and a decimal part.
NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"


def number(raw: str) -> Decimal:
    return Decimal(raw.replace(",", ""))


def amount(raw: str) -> Decimal:
    """A sum of money as said: 3.50 is "three point five", trailing zeros of the cents unsaid."""
    raw = raw.replace(",", "")
    return Decimal(raw.rstrip("0").rstrip(".") if "." in raw else raw)


def digits(raw: str, names: Sequence[str]) -> str:
    return "".join(names[int(d)] for d in raw if d.isdigit())


def unit_pattern(units: Sequence[str]) -> str:
    return "|".join(re.escape(u) for u in sorted(units, key=len, reverse=True))


def phone(names: Sequence[str], group_join: str, plus: str, digit_join: str = "") -> Callable[[re.Match[str]], str]:
    """Phone-number-like digit strings are read digit by digit, group by group."""

    def spell(m: re.Match[str]) -> str:
        raw = m.group()
        groups = re.findall(r"\d+", raw)
        # "1990-2000", "3-5": two short groups or two years are a range, not a number to dial.
        lengths = [len(g) for g in groups]
        if len(groups) == 2 and not raw.startswith(("+", "(")) and (sum(lengths) < 7 or lengths == [4, 4]):
            return raw
        spoken = group_join.join(digit_join.join(names[int(d)] for d in g) for g in groups)
        return plus + spoken if raw.startswith("+") else spoken

    return spell


# Digit groups joined by hyphens (with an optional +country and (area) code), groups after a +country code
# joined by spaces, or one run of 8 or more digits.
PHONE = re.compile(
    r"(?<![A-Za-z0-9_.,+-])(?:\+\d{1,3}[ -]?)?(?:\(\d{1,4}\)[ -]?)?\d{2,4}(?:-\d{2,8}){1,3}(?![A-Za-z0-9_.,-])"
    r"|(?<![A-Za-z0-9_.,+-])\+\d{1,3}(?: \d{2,4}){2,4}(?![A-Za-z0-9_.,-])"
    r"|(?<![A-Za-z0-9_.,+-])\+?\d{8,}(?![A-Za-z0-9_.,%])"
)
ISO_DATE = re.compile(r"(?<![\d.-])(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?![\d.])")
TIME = re.compile(r"(?<![\d:])(?P<h>\d{1,2}):(?P<min>\d{2})(?::(?P<s>\d{2}))?(?![\d:])")
# "3/4": a fraction, where no date took the slash first.
FRACTION = r"(?<![\d/.])(?P<top>\d{1,3})/(?P<bottom>\d{1,3})(?![\d/.])"
