"""Japanese: num2words' kanji numerals, units and currencies in katakana, Latin words as katakana through e2k."""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from functools import lru_cache
from typing import Any

from num2words import num2words

from shared.text.normalization.common import (
    FRACTION,
    ISO_DATE,
    NUM,
    PHONE,
    TIME,
    Rule,
    amount,
    digits,
    number,
    phone,
    unit_pattern,
)


def ja_cardinal(value: Decimal | str) -> str:
    text = str(value)
    sign = "マイナス" if text.startswith("-") else ""
    whole, _, fraction = text.lstrip("-").replace(",", "").partition(".")
    words = str(num2words(int(whole), lang="ja"))
    if fraction:
        words += "点" + digits(fraction, _JA_DIGITS)
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
    return "".join(_word_katakana(part) for part in parts)


@lru_cache(maxsize=4096)
def _word_katakana(word: str) -> str:
    # A script repeats its names and brands; each costs the model 10-30 ms once.
    return _katakana()(word)


RULES: list[Rule] = [
    (ISO_DATE, _ja_date),
    (TIME, _ja_time),
    (re.compile(FRACTION), lambda m: f"{ja_cardinal(m['bottom'])}分の{ja_cardinal(m['top'])}"),
    (PHONE, phone(_JA_DIGITS, "の", "プラス")),
    (
        re.compile(rf"(?P<sym>[$€£¥￥])\s?(?P<n>{NUM})(?P<scale>[万億])?"),
        lambda m: ja_cardinal(amount(m["n"])) + (m["scale"] or "") + _JA_CURRENCY[m["sym"]],
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?%"),
        lambda m: f"{'マイナス' if m['neg'] else ''}{ja_cardinal(number(m['n']))}パーセント",
    ),
    (
        re.compile(
            rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?P<unit>{unit_pattern(list(_JA_UNITS))})(?![A-Za-z/])"
        ),
        lambda m: f"{'マイナス' if m['neg'] else ''}{ja_cardinal(number(m['n']))}{_JA_UNITS[m['unit']]}",
    ),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<a>{NUM})\s?[-~～〜—–]\s?(?P<b>{NUM})(?![A-Za-z0-9_.])"),
        lambda m: f"{ja_cardinal(number(m['a']))}から{ja_cardinal(number(m['b']))}",
    ),
    (re.compile(rf"(?<![A-Za-z0-9_.])[-−](?P<n>{NUM})"), lambda m: "マイナス" + ja_cardinal(number(m["n"]))),
    (re.compile(NUM), lambda m: ja_cardinal(number(m.group()))),
    (re.compile(r"[A-Za-z]+(?:'[a-z]+)?"), _ja_latin),
]
