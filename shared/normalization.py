"""Text normalisation before synthesis: written forms become the words an engine should say.

`normalize_for_speech(text, language, keep)` rewrites numbers, decimals, negative numbers, percentages, dates,
times, currencies, units, ordinals, years and phone-number-like digit strings as words of the line's language:

- en: num2words (cardinals, ordinals, years such as "twenty twenty-four", currency names);
- zh: cn2an (Chinese numerals; its `transform` reads years digit by digit and handles 第N, fractions and the
  rest), with the farm's rules first for what cn2an reads wrongly (times, phone numbers, signed numbers,
  currency symbols, units, 两 before a measure word);
- ja: num2words' Japanese numerals (kanji, which every Japanese G2P reads), units and currencies in katakana, and
  Latin words as katakana through e2k: acronyms are spelled with letter names (エーアイ), words are transliterated
  (ミーティング), because the Japanese G2P otherwise spells every word letter by letter.

Latin words in Chinese text are left as they are: the kokoro engine speaks Latin runs in zh text with its
English G2P (letter names for acronyms, words as words), and CosyVoice reads mixed text natively.
Substrings listed in `keep` (pronunciation-lexicon terms) pass through untouched.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache, partial
from typing import Any

import cn2an
from num2words import num2words

log = logging.getLogger(__name__)
Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

# A number as written: digits with optional thousands commas and a decimal part.
NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_FULLWIDTH = str.maketrans("０１２３４５６７８９％＄￡€－", "0123456789%$£€-")
# Keep-terms are swapped for private-use characters, which no rule matches and `\w` does not include.
_KEEP_BASE = 0xF0000
MONTHS = ("January February March April May June July August September October November December").split()


def normalize_for_speech(text: str, language: str, keep: Sequence[str] = ()) -> str:
    """The words to speak for `text`; languages without rules here (CosyVoice's ko, de, ...) pass unchanged."""
    rules = _RULES.get(language)
    if rules is None:
        return text
    text, kept = _protect(text, keep)
    text = text.translate(_FULLWIDTH)
    for pattern, spell in rules:
        text = pattern.sub(partial(_as_said, spell), text)
    if rules is _ZH_RULES:
        try:
            with warnings.catch_warnings():  # it warns of numbers over 16 digits, which it leaves as they are
                warnings.simplefilter("ignore", UserWarning)
                text = cn2an.transform(text, "an2cn")
        except Exception:  # cn2an refuses some shapes; the engine then reads the digits itself
            log.debug("cn2an could not transform %r", text)
    text = re.sub(r"[ \t]+", " ", text).strip()
    for i, original in enumerate(kept):
        text = text.replace(chr(_KEEP_BASE + i), original)
    return text


def _as_said(spell: Callable[[re.Match[str]], str], m: re.Match[str]) -> str:
    """A rule's words for a match, or the match as written where the rule cannot read it (May 45, 10^40)."""
    try:
        return spell(m)
    except (ValueError, ArithmeticError, KeyError, IndexError, TypeError):
        return m.group()


def _protect(text: str, keep: Sequence[str]) -> tuple[str, list[str]]:
    """Swap each kept term for a placeholder; Latin terms match as whole words in any case, as lexicon entries do
    (shared/lexicon.py `occurs`), others as written. Returns the text and the originals, by placeholder."""
    terms = sorted({term for term in keep if term}, key=len, reverse=True)
    if not terms:
        return text, []
    alternatives = "|".join(
        rf"(?<![A-Za-z0-9])(?i:{re.escape(t)})(?![A-Za-z0-9])" if re.search("[A-Za-z]", t) else re.escape(t)
        for t in terms
    )
    kept: list[str] = []

    def hold(m: re.Match[str]) -> str:
        kept.append(m.group())
        return chr(_KEEP_BASE + len(kept) - 1)

    return re.sub(alternatives, hold, text), kept


def _number(raw: str) -> Decimal:
    return Decimal(raw.replace(",", ""))


def _amount(raw: str) -> Decimal:
    """A sum of money as said: 3.50 is "three point five", trailing zeros of the cents unsaid."""
    raw = raw.replace(",", "")
    return Decimal(raw.rstrip("0").rstrip(".") if "." in raw else raw)


def _digits(raw: str, names: Sequence[str]) -> str:
    return "".join(names[int(d)] for d in raw if d.isdigit())


# ---------------------------------------------------------------- English


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
    value = _number(m["n"])
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
    value = _number(m["n"]) * (-1 if m["neg"] else 1)
    one, many = _EN_UNITS[m["unit"]]
    return f"{en_cardinal(value)} {one if value == 1 else many}"


def _en_decade(m: re.Match[str]) -> str:
    words = _en_year(int(m["y"]))
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _year_or_cardinal(raw: str) -> str:
    value = int(raw)
    return _en_year(value) if len(raw) == 4 and 1100 <= value <= 2099 else en_cardinal(value)


def _unit_pattern(units: Sequence[str]) -> str:
    return "|".join(re.escape(u) for u in sorted(units, key=len, reverse=True))


# ---------------------------------------------------------------- shared by all languages


def _phone(names: Sequence[str], group_join: str, plus: str, digit_join: str = "") -> Callable[[re.Match[str]], str]:
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

_EN_DIGITS = "zero one two three four five six seven eight nine".split()
_MONTH_NAMES = "|".join([*MONTHS, "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sept", "Sep", "Oct", "Nov", "Dec"])
_YEAR_CONTEXT = "in|since|by|from|until|till|of|year|during|before|after|around|circa"
_EN_RULES: list[Rule] = [
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
    (PHONE, _phone(_EN_DIGITS, ", ", "plus ", " ")),
    (
        re.compile(
            rf"(?P<sym>[$€£¥￥])\s?(?P<n>{NUM})(?P<scale>\s?(?:thousand|million|billion|trillion|bn|[kKmMbB])\b)?"
        ),
        _en_currency,
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?%"),
        lambda m: f"{'minus ' if m['neg'] else ''}{en_cardinal(_number(m['n']))} percent",
    ),
    (
        re.compile(
            rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?P<unit>{_unit_pattern(list(_EN_UNITS))})(?![A-Za-z0-9_/])"
        ),
        _en_unit,
    ),
    (re.compile(r"\b(?P<n>\d+)(?:st|nd|rd|th)\b"), lambda m: _en_ordinal(int(m["n"]))),
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
            else f"{en_cardinal(_number(m['a']))} to {en_cardinal(_number(m['b']))}"
        ),
    ),
    (re.compile(rf"(?<![A-Za-z0-9_.])[-−](?P<n>{NUM})"), lambda m: "minus " + en_cardinal(_number(m["n"]))),
    # "GPT4", "MP3": the number is a word of its own.
    (
        re.compile(NUM),
        lambda m: (" " if m.start() and m.string[m.start() - 1].isalpha() else "") + en_cardinal(_number(m.group())),
    ),
    (re.compile(r"\s&\s"), lambda m: " and "),
]

# ---------------------------------------------------------------- Chinese


def zh_cardinal(value: Decimal | str) -> str:
    text = str(value)
    sign = "负" if text.startswith("-") else ""
    whole, _, fraction = text.lstrip("-").partition(".")
    words = str(cn2an.an2cn(whole))
    if fraction:
        words += "点" + _digits(fraction, _ZH_DIGITS)
    return sign + words


_ZH_DIGITS = "零一二三四五六七八九"
# Phone numbers say 1 as 幺 so it is not heard as 七.
_ZH_PHONE_DIGITS = "零幺二三四五六七八九"
_ZH_CURRENCY = {"$": "美元", "€": "欧元", "£": "英镑", "¥": "元", "￥": "元"}
_ZH_UNITS = {
    "km/h": "公里每小时",
    "km": "公里",
    "cm": "厘米",
    "mm": "毫米",
    "m": "米",
    "kg": "公斤",
    "mg": "毫克",
    "g": "克",
    "ml": "毫升",
    "mL": "毫升",
    "L": "升",
    "GB": "GB",
    "MB": "MB",
    "TB": "TB",
    "GHz": "吉赫兹",
    "MHz": "兆赫兹",
    "Hz": "赫兹",
    "kW": "千瓦",
    "kWh": "千瓦时",
    "W": "瓦",
    "ms": "毫秒",
    "min": "分钟",
    "h": "小时",
    "°": "度",
}
# 2 before a measure word is 两 (两个, 两公斤), not 二.
_ZH_MEASURES = "个只本位条张件次天年点种块辆台套杯瓶双对份层项部篇首句遍周岁小时分钟秒公斤公里米克升倍"


def _zh_time(m: re.Match[str]) -> str:
    hour, minute = int(m["h"]), int(m["min"])
    if hour > 24 or minute > 59:
        return m.group()
    spoken = ("两" if hour == 2 else zh_cardinal(str(hour))) + "点"
    if minute:
        spoken += ("零" if minute < 10 else "") + zh_cardinal(str(minute)) + "分"
    if m["s"]:
        spoken += zh_cardinal(str(int(m["s"]))) + "秒"
    return spoken


def _zh_date(m: re.Match[str]) -> str:
    month, day = int(m["m"]), int(m["d"])
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        return m.group()
    return f"{_digits(m['y'], _ZH_DIGITS)}年{zh_cardinal(str(month))}月{zh_cardinal(str(day))}日"


def _zh_plain(raw: str) -> str:
    return zh_cardinal(str(_number(raw)) if "." in raw else raw.replace(",", ""))


_ZH_RULES: list[Rule] = [
    # "GPT-4": a hyphen between a word and a number is no minus sign (cn2an.transform would read 负).
    (re.compile(r"(?<=[A-Za-z])-(?=\d)"), lambda m: " "),
    (re.compile(ISO_DATE.pattern + "日?"), _zh_date),
    (TIME, _zh_time),
    (PHONE, _phone(_ZH_PHONE_DIGITS, "，", "加")),
    (
        re.compile(rf"(?P<sym>[$€£¥￥])\s?(?P<n>{NUM})(?P<scale>[万亿])?"),
        lambda m: zh_cardinal(_amount(m["n"])) + (m["scale"] or "") + _ZH_CURRENCY[m["sym"]],
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?%"),
        lambda m: f"{'负' if m['neg'] else ''}百分之{_zh_plain(m['n'])}",
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?:℃|°C)"),
        lambda m: f"{'零下' if m['neg'] else ''}{_zh_plain(m['n'])}摄氏度",
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?°F"),
        lambda m: f"华氏{'零下' if m['neg'] else ''}{_zh_plain(m['n'])}度",
    ),
    (
        re.compile(
            rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?P<unit>{_unit_pattern(list(_ZH_UNITS))})(?![A-Za-z/])"
        ),
        lambda m: f"{'负' if m['neg'] else ''}{'两' if m['n'] == '2' else _zh_plain(m['n'])}{_ZH_UNITS[m['unit']]}",
    ),
    (re.compile(rf"(?<![\d.第])2(?=[{_ZH_MEASURES}])"), lambda m: "两"),
    (re.compile(r"(?<![A-Za-z0-9_.])(?P<n>\d+\.\d+)(?=[元块])"), lambda m: zh_cardinal(_amount(m["n"]))),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<a>{NUM})\s?[-~～—–]\s?(?P<b>{NUM})(?![A-Za-z0-9_.])"),
        lambda m: f"{_zh_plain(m['a'])}到{_zh_plain(m['b'])}",
    ),
    (re.compile(rf"(?<![A-Za-z0-9_.])[-−](?P<n>{NUM})"), lambda m: "负" + _zh_plain(m["n"])),
    # Thousands commas would read as a pause ("一,二百三十四"); cn2an.transform reads the rest.
    (re.compile(r"\d{1,3}(?:,\d{3})+"), lambda m: m.group().replace(",", "")),
]

# ---------------------------------------------------------------- Japanese


def ja_cardinal(value: Decimal | str) -> str:
    text = str(value)
    sign = "マイナス" if text.startswith("-") else ""
    whole, _, fraction = text.lstrip("-").replace(",", "").partition(".")
    words = str(num2words(int(whole), lang="ja"))
    if fraction:
        words += "点" + _digits(fraction, _JA_DIGITS)
    return sign + words


_JA_DIGITS = ["ゼロ", *"一二三四五六七八九"]
_JA_CURRENCY = {"$": "ドル", "€": "ユーロ", "£": "ポンド", "¥": "円", "￥": "円"}
_JA_UNITS = {
    "km/h": "キロメートル毎時",
    "km": "キロメートル",
    "cm": "センチメートル",
    "mm": "ミリメートル",
    "m": "メートル",
    "kg": "キログラム",
    "mg": "ミリグラム",
    "g": "グラム",
    "ml": "ミリリットル",
    "mL": "ミリリットル",
    "L": "リットル",
    "°C": "度",
    "℃": "度",
    "°F": "華氏度",
    "°": "度",
    "GB": "ギガバイト",
    "MB": "メガバイト",
    "KB": "キロバイト",
    "TB": "テラバイト",
    "GHz": "ギガヘルツ",
    "MHz": "メガヘルツ",
    "Hz": "ヘルツ",
    "kW": "キロワット",
    "kWh": "キロワット時",
    "W": "ワット",
    "ms": "ミリ秒",
    "min": "分",
    "h": "時間",
}


def _ja_time(m: re.Match[str]) -> str:
    hour, minute = int(m["h"]), int(m["min"])
    if hour > 24 or minute > 59:
        return m.group()
    spoken = ja_cardinal(str(hour)) + "時"
    if minute:
        spoken += ja_cardinal(str(minute)) + "分"
    if m["s"]:
        spoken += ja_cardinal(str(int(m["s"]))) + "秒"
    return spoken


def _ja_date(m: re.Match[str]) -> str:
    month, day = int(m["m"]), int(m["d"])
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        return m.group()
    return f"{ja_cardinal(m['y'])}年{ja_cardinal(str(month))}月{ja_cardinal(str(day))}日"


class _Katakana:
    """English words to katakana with e2k's models (loaded on first use; inference is guarded by a lock)."""

    def __init__(self) -> None:
        from e2k import C2K, NGram

        self._c2k: Any = C2K()
        self._ngram: Any = NGram()
        self._lock = threading.Lock()

    def __call__(self, word: str) -> str:
        with self._lock:
            # Acronyms (all capitals, or what no English word looks like) get letter names: AI -> エーアイ.
            if word.isupper() or len(word) == 1 or not self._ngram(word.lower()):
                return str(self._ngram.as_is(word.lower()))
            return str(self._c2k(word.lower()))


@lru_cache(maxsize=1)
def _katakana() -> _Katakana:
    return _Katakana()


def _ja_latin(m: re.Match[str]) -> str:
    # CamelCase and acronym-word blends are read part by part: ChatGPT -> チャット + ジーピーティー.
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[A-Z]", m.group())
    return "".join(_katakana()(part) for part in parts)


_JA_RULES: list[Rule] = [
    (ISO_DATE, _ja_date),
    (TIME, _ja_time),
    (PHONE, _phone(_JA_DIGITS, "の", "プラス")),
    (
        re.compile(rf"(?P<sym>[$€£¥￥])\s?(?P<n>{NUM})(?P<scale>[万億])?"),
        lambda m: ja_cardinal(_amount(m["n"])) + (m["scale"] or "") + _JA_CURRENCY[m["sym"]],
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?%"),
        lambda m: f"{'マイナス' if m['neg'] else ''}{ja_cardinal(_number(m['n']))}パーセント",
    ),
    (
        re.compile(
            rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?P<unit>{_unit_pattern(list(_JA_UNITS))})(?![A-Za-z/])"
        ),
        lambda m: f"{'マイナス' if m['neg'] else ''}{ja_cardinal(_number(m['n']))}{_JA_UNITS[m['unit']]}",
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<a>{NUM})\s?[-~～〜—–]\s?(?P<b>{NUM})(?![A-Za-z0-9_.])"),
        lambda m: f"{ja_cardinal(_number(m['a']))}から{ja_cardinal(_number(m['b']))}",
    ),
    (re.compile(rf"(?<![A-Za-z0-9_.])[-−](?P<n>{NUM})"), lambda m: "マイナス" + ja_cardinal(_number(m["n"]))),
    (re.compile(NUM), lambda m: ja_cardinal(_number(m.group()))),
    (re.compile(r"[A-Za-z]+(?:'[a-z]+)?"), _ja_latin),
]

_RULES = {"en": _EN_RULES, "zh": _ZH_RULES, "yue": _ZH_RULES, "ja": _JA_RULES}
