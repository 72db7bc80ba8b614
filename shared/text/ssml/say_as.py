"""`say-as`: cardinal, ordinal, characters, digits, date, time, telephone and currency as words of the line's
language, through the farm's normaliser (shared/text/normalization/)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from shared.text.ssml.values import CJK

# -- say-as ----------------------------------------------------------------------------------------------------
_DIGIT_NAMES = {
    "en": "zero one two three four five six seven eight nine".split(),
    "ja": ["ゼロ", *"一二三四五六七八九"],
    "zh": list("零一二三四五六七八九"),
}
_PHONE_JOIN = {"en": ", ", "ja": "の", "zh": "，"}
_PLUS = {"en": "plus ", "ja": "プラス", "zh": "加"}
_CURRENCY_CODES = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CNY": "¥", "RMB": "¥"}


def _number(text: str) -> Decimal:
    raw = text.strip().replace(",", "").replace(" ", "")
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None


def _cardinal(value: Decimal | int, language: str) -> str:
    from shared.text.normalization import chinese, english, japanese

    value = Decimal(value)
    if language == "en":
        return english.en_cardinal(value)
    if language == "ja":
        return japanese.ja_cardinal(value)
    return chinese.zh_cardinal(value)


def _ordinal(text: str, language: str) -> str:
    from num2words import num2words

    raw = re.sub(r"(?i)(st|nd|rd|th|\.)$", "", text.strip())
    value = int(_number(raw))
    if language == "en":
        return str(num2words(value, lang="en", to="ordinal")).replace(",", "")
    return "第" + _cardinal(value, language)


def _characters(text: str, language: str) -> str:
    names = _DIGIT_NAMES[language]
    spelled = [names[int(ch)] if ch.isdigit() and ch.isascii() else ch.upper() for ch in text if not ch.isspace()]
    if language == "ja":  # the Japanese normaliser gives Latin letters their katakana names (エー, ビー)
        from shared.text.normalization import normalize_for_speech

        return "".join(normalize_for_speech(ch, "ja") if ch.isascii() else ch for ch in spelled)
    return " ".join(spelled) if language == "en" else "".join(c if CJK.match(c) else f" {c} " for c in spelled)


def _digits(text: str, language: str) -> str:
    names = _DIGIT_NAMES[language]
    found = [names[int(ch)] for ch in text if ch.isascii() and ch.isdigit()]
    if not found:
        raise ValueError("no digits")
    return (" " if language == "en" else "").join(found)


def _telephone(text: str, language: str) -> str:
    groups = re.findall(r"\d+", text)
    if not groups:
        raise ValueError("no digits")
    names = _DIGIT_NAMES[language]
    if language == "zh":
        names = ["零", "幺", *names[2:]]  # 1 is 幺 in numbers to dial, so it is not heard as 七
    spoken = _PHONE_JOIN[language].join(
        (" " if language == "en" else "").join(names[int(d)] for d in group) for group in groups
    )
    return _PLUS[language] + spoken if text.strip().startswith("+") else spoken


def _date_order(fmt: str | None, parts: list[str], language: str) -> str:
    """The order of a date's parts: from `format` (mdy, yyyy-mm-dd, ...), else guessed from their shape."""
    order = "".join(dict.fromkeys(ch for ch in (fmt or "").lower() if ch in "ymd"))
    if order:
        return order
    year_first = bool(parts) and len(parts[0]) == 4 and parts[0].isdigit()
    if len(parts) == 3:
        return "ymd" if year_first else "mdy" if language == "en" else "dmy"
    if len(parts) == 2:
        return "ym" if year_first else "md"
    return "y" if year_first else "d"


def _date(text: str, fmt: str | None, language: str) -> str:
    from num2words import num2words

    from shared.text.normalization import english

    raw = text.strip()
    parts = [p for p in re.split(r"[\s/.,-]+", raw) if p]
    widths = re.findall(r"y+|m+|d+", (fmt or "").lower())
    if len(parts) == 1 and parts[0].isdigit() and len(widths) > 1 and sum(map(len, widths)) == len(parts[0]):
        digits, parts = parts[0], []
        for width in widths:  # "20261225" with format yyyymmdd
            parts.append(digits[: len(width)])
            digits = digits[len(width) :]
    order = _date_order(fmt, parts, language)
    if len(order) != len(parts):
        raise ValueError(f"{raw!r} does not have the parts of format {order}")
    found: dict[str, int] = {}
    for kind, part in zip(order, parts, strict=True):
        if kind == "m" and not part.isdigit():
            months = [m.lower() for m in english.MONTHS]
            match = [i for i, name in enumerate(months) if name.startswith(part.lower()[:3])]
            if not match:
                raise ValueError(f"{part!r} is not a month")
            found["m"] = match[0] + 1
        else:
            found[kind] = int(part)
    if not 1 <= found.get("m", 1) <= 12 or not 1 <= found.get("d", 1) <= 31:
        raise ValueError(f"{raw!r} is not a date")
    year, month, day = found.get("y"), found.get("m"), found.get("d")
    if language == "en":
        words = []
        if month:
            words.append(english.MONTHS[month - 1])
        if day:
            words.append(str(num2words(day, lang="en", to="ordinal")))
        if year is not None:
            said = str(num2words(year, lang="en", to="year")).replace(",", "")
            words.append(("," if month and day else "") + " " + said if words else said)
        return " ".join(words).replace(" ,", ",").replace("  ", " ").strip()
    spoken = ""
    if year is not None:
        spoken += _cardinal(year, "ja") if language == "ja" else "".join(_DIGIT_NAMES["zh"][int(d)] for d in str(year))
        spoken += "年"
    if month:
        spoken += _cardinal(month, language) + "月"
    if day:
        spoken += _cardinal(day, language) + "日"
    return spoken


def _normalised(text: str, language: str) -> str:
    """What the farm's normaliser says for `text`; ValueError when it reads nothing in it."""
    from shared.text.normalization import normalize_for_speech

    said = normalize_for_speech(text, language)
    if said == " ".join(text.split()):
        raise ValueError("nothing to read")
    return said


def _currency(text: str, language: str) -> str:
    raw = " ".join(text.split())
    m = re.fullmatch(r"(?i)([A-Z]{3})\s*([\d.,]+)|([\d.,]+)\s*([A-Z]{3})", raw)
    if m:
        code, amount = (m[1], m[2]) if m[1] else (m[4], m[3])
        code = code.upper()
        if code not in _CURRENCY_CODES:
            raise ValueError(f"unknown currency {code}")
        if code in ("CNY", "RMB") and language == "en":
            return f"{_cardinal(_number(amount), 'en')} yuan"
        raw = _CURRENCY_CODES[code] + amount
    return _normalised(raw, language)


SAY_AS = ("cardinal", "number", "ordinal", "characters", "spell-out", "verbatim", "digits", "date", "time",
          "telephone", "currency")  # fmt: skip


def say_as(text: str, interpret_as: str, fmt: str | None, language: str) -> str:
    """The words for a say-as element's text; ValueError when it cannot be read as asked."""
    kind = interpret_as.strip().lower()
    if language not in _DIGIT_NAMES:
        raise ValueError(f"say-as is read in en, zh and ja only, not {language}")
    if kind in ("cardinal", "number"):
        return _cardinal(_number(text), language)
    if kind == "ordinal":
        return _ordinal(text, language)
    if kind in ("characters", "spell-out", "verbatim"):
        return _characters(text, language)
    if kind == "digits":
        return _digits(text, language)
    if kind == "date":
        return _date(text, fmt, language)
    if kind == "time":
        return _normalised(text, language)
    if kind == "telephone":
        return _telephone(text, language)
    if kind == "currency":
        return _currency(text, language)
    raise KeyError(kind)
