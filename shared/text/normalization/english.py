"""English: num2words for cardinals, ordinals and years; currency and unit names."""

from __future__ import annotations

import re
from decimal import Decimal

from num2words import num2words

from shared.text.normalization.common import FRACTION, ISO_DATE, NUM, PHONE, TIME, Rule, number, phone, unit_pattern

MONTHS = ("January February March April May June July August September October November December").split()


def en_cardinal(value: Decimal | int) -> str:
    value = Decimal(value)
    sign = "minus " if value < 0 else ""
    whole, _, fraction = str(abs(value)).partition(".")
    words = num2words(int(whole), lang="en").replace(",", "")
    if fraction:  # "three point five zero": digits one by one, as English reads decimals
        words += " point " + " ".join(num2words(int(d), lang="en") for d in fraction)
    return sign + words


def _en_year(year: int) -> str:
    return str(num2words(year, lang="en", to="year")).replace(",", "")


def _en_ordinal(value: int) -> str:
    return str(num2words(value, lang="en", to="ordinal")).replace(",", "")


def _en_date(month: int, day: int, year: str | None) -> str:
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        raise ValueError("not a date")
    spoken = f"{MONTHS[month - 1]} {_en_ordinal(day)}"
    return f"{spoken}, {_en_year(int(year))}" if year else spoken


def _en_iso_date(m: re.Match[str]) -> str:
    try:
        return _en_date(int(m["m"]), int(m["d"]), m["y"])
    except ValueError:
        return m.group()


def _en_named_date(m: re.Match[str]) -> str:
    month = next(i for i, name in enumerate(MONTHS) if name.lower().startswith(m["month"][:3].lower())) + 1
    return _en_date(month, int(m["d"]), m["y"])


def _en_time(m: re.Match[str]) -> str:
    hour, minute = int(m["h"]), int(m["min"])
    if hour > 24 or minute > 59:
        return m.group()
    if minute == 0:
        spoken = en_cardinal(hour) + ("" if m["ampm"] else " o'clock")
    elif minute < 10:
        spoken = f"{en_cardinal(hour)} oh {en_cardinal(minute)}"
    else:
        spoken = f"{en_cardinal(hour)} {en_cardinal(minute)}"
    if m["s"]:
        spoken += f" and {en_cardinal(int(m['s']))} seconds"
    if m["ampm"]:
        spoken += " AM" if m["ampm"].lower() == "a" else " PM"
    return spoken


_EN_CURRENCY = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "￥": "JPY"}
_EN_CURRENCY_NAMES = {
    "USD": (("dollar", "dollars"), ("cent", "cents")),
    "EUR": (("euro", "euros"), ("cent", "cents")),
    "GBP": (("pound", "pounds"), ("penny", "pence")),
}
_EN_SCALE = {"k": "thousand", "m": "million", "bn": "billion", "b": "billion"}


def _en_currency(m: re.Match[str]) -> str:
    code = _EN_CURRENCY[m["sym"]]
    value = number(m["n"])
    scale = m["scale"].strip().lower() if m["scale"] else ""
    scale = _EN_SCALE.get(scale, scale)
    if code == "JPY":
        return f"{en_cardinal(value)}{' ' + scale if scale else ''} yen"
    (unit, units), (sub, subs) = _EN_CURRENCY_NAMES[code]
    if scale:  # "$1.2 million": "one point two million dollars"
        return f"{en_cardinal(value)} {scale} {units}"
    whole, cents = int(value), int((value - int(value)) * 100)
    spoken = f"{en_cardinal(whole)} {unit if whole == 1 else units}"
    if cents:
        spoken += f" {en_cardinal(cents)} {sub if cents == 1 else subs}"
    return spoken


_EN_UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "m": ("meter", "meters"),
    "kg": ("kilogram", "kilograms"),
    "mg": ("milligram", "milligrams"),
    "g": ("gram", "grams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "ml": ("milliliter", "milliliters"),
    "mL": ("milliliter", "milliliters"),
    "L": ("liter", "liters"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "℃": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "°": ("degree", "degrees"),
    "GB": ("gigabyte", "gigabytes"),
    "MB": ("megabyte", "megabytes"),
    "KB": ("kilobyte", "kilobytes"),
    "TB": ("terabyte", "terabytes"),
    "GHz": ("gigahertz", "gigahertz"),
    "MHz": ("megahertz", "megahertz"),
    "Hz": ("hertz", "hertz"),
    "kW": ("kilowatt", "kilowatts"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "W": ("watt", "watts"),
    "V": ("volt", "volts"),
    "ms": ("millisecond", "milliseconds"),
    "min": ("minute", "minutes"),
    "h": ("hour", "hours"),
}


def _en_unit(m: re.Match[str]) -> str:
    value = number(m["n"]) * (-1 if m["neg"] else 1)
    one, many = _EN_UNITS[m["unit"]]
    return f"{en_cardinal(value)} {one if value == 1 else many}"


def _en_decade(m: re.Match[str]) -> str:
    return _plural(_en_year(int(m["y"])))


def _en_standalone(m: re.Match[str]) -> str:
    words = en_cardinal(number(m["n"]))
    before = " " if m.start() and m.string[m.start() - 1].isalpha() else ""
    if m["plural"]:  # "the 90s", "MP3s": the number word in the plural
        return before + _plural(words)
    return before + words + (" " if m.string[m.end() : m.end() + 1].isalpha() else "")


def _en_fraction(m: re.Match[str]) -> str:
    top, bottom = int(m["top"]), int(m["bottom"])
    if not 2 <= bottom <= 100:
        return f"{en_cardinal(top)} over {en_cardinal(bottom)}"
    one = {2: "half", 4: "quarter"}.get(bottom) or _en_ordinal(bottom)
    if top == 1:
        return f"one {one}"
    return f"{en_cardinal(top)} {'halves' if bottom == 2 else one + 's'}"


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _year_or_cardinal(raw: str) -> str:
    value = int(raw)
    return _en_year(value) if len(raw) == 4 and 1100 <= value <= 2099 else en_cardinal(value)


_EN_DIGITS = "zero one two three four five six seven eight nine".split()
_MONTH_NAMES = "|".join([*MONTHS, "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sept", "Sep", "Oct", "Nov", "Dec"])
_YEAR_CONTEXT = "in|since|by|from|until|till|of|year|during|before|after|around|circa"
RULES: list[Rule] = [
    (ISO_DATE, _en_iso_date),
    (
        re.compile(r"(?<![\d/])(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})(?![\d/])"),  # US order
        _en_iso_date,
    ),
    (
        re.compile(
            rf"\b(?P<month>{_MONTH_NAMES})\.?\s+(?P<d>\d{{1,2}})"
            r"(?:st|nd|rd|th)?\b(?:,?\s+(?P<y>\d{4})\b)?"
        ),
        _en_named_date,
    ),
    (
        re.compile(TIME.pattern + r"(?:\s*(?P<ampm>[AaPp])\.?[Mm]\b\.?)?"),
        _en_time,
    ),
    (
        re.compile(r"\b(?P<h>\d{1,2})\s*(?P<ampm>[AaPp])\.?[Mm]\b\.?"),
        lambda m: f"{en_cardinal(int(m['h']))} {'AM' if m['ampm'].lower() == 'a' else 'PM'}",
    ),
    (PHONE, phone(_EN_DIGITS, ", ", "plus ", " ")),
    (
        re.compile(
            rf"(?P<sym>[$€£¥￥])\s?(?P<n>{NUM})(?P<scale>\s?(?:thousand|million|billion|trillion|bn|[kKmMbB])\b)?"
        ),
        _en_currency,
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?%"),
        lambda m: f"{'minus ' if m['neg'] else ''}{en_cardinal(number(m['n']))} percent",
    ),
    (
        re.compile(
            rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?P<unit>{unit_pattern(list(_EN_UNITS))})(?![A-Za-z0-9_/])"
        ),
        _en_unit,
    ),
    (re.compile(r"\b(?P<n>\d+)(?:st|nd|rd|th)\b"), lambda m: _en_ordinal(int(m["n"]))),
    (re.compile(r"(?<![\d/])24/7(?![\d/])"), lambda m: "twenty-four seven"),
    (re.compile(FRACTION), _en_fraction),
    (re.compile(r"#(?P<n>\d+)\b"), lambda m: "number " + en_cardinal(int(m["n"]))),
    (re.compile(r"\b(?P<y>1[1-9]\d0|20\d0)'?s\b"), _en_decade),
    (
        re.compile(rf"\b(?P<w>{_YEAR_CONTEXT}|{_MONTH_NAMES})\s+(?P<y>\d{{4}})\b", re.I),
        lambda m: f"{m['w']} {_en_year(int(m['y']))}",
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<a>{NUM})\s?[-–~]\s?(?P<b>{NUM})(?![A-Za-z0-9_.])"),
        lambda m: (
            f"{_year_or_cardinal(m['a'])} to {_year_or_cardinal(m['b'])}"
            if len(m["a"]) == len(m["b"]) == 4
            else f"{en_cardinal(number(m['a']))} to {en_cardinal(number(m['b']))}"
        ),
    ),
    (re.compile(rf"(?<![A-Za-z0-9_.])[-−](?P<n>{NUM})"), lambda m: "minus " + en_cardinal(number(m["n"]))),
    # "GPT4", "MP3", "4K": the number is a word of its own.
    (re.compile(rf"(?P<n>{NUM})(?P<plural>s(?![A-Za-z]))?"), _en_standalone),
    (re.compile(r"\s&\s"), lambda m: " and "),
]
