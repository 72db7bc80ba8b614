"""Chinese: cn2an for numerals, with rules first for what it reads wrongly (times, phone numbers, signs, money,
units, 两 before a measure word); `finish` hands the rest to cn2an's `transform`."""

from __future__ import annotations

import logging
import re
import warnings
from decimal import Decimal

import cn2an

from shared.text.normalization.common import (
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

log = logging.getLogger(__name__)


def zh_cardinal(value: Decimal | str) -> str:
    text = str(value)
    sign = "负" if text.startswith("-") else ""
    whole, _, fraction = text.lstrip("-").partition(".")
    words = str(cn2an.an2cn(whole))
    if fraction:
        words += "点" + digits(fraction, _ZH_DIGITS)
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
    return f"{digits(m['y'], _ZH_DIGITS)}年{zh_cardinal(str(month))}月{zh_cardinal(str(day))}日"


def _zh_plain(raw: str) -> str:
    return zh_cardinal(str(number(raw)) if "." in raw else raw.replace(",", ""))


RULES: list[Rule] = [
    # "GPT-4": a hyphen between a word and a number is no minus sign (cn2an.transform would read 负).
    (re.compile(r"(?<=[A-Za-z])-(?=\d)"), lambda m: " "),
    (re.compile(ISO_DATE.pattern + "日?"), _zh_date),
    (TIME, _zh_time),
    (PHONE, phone(_ZH_PHONE_DIGITS, "，", "加")),
    (
        re.compile(rf"(?P<sym>[$€£¥￥])\s?(?P<n>{NUM})(?P<scale>[万亿])?"),
        lambda m: zh_cardinal(amount(m["n"])) + (m["scale"] or "") + _ZH_CURRENCY[m["sym"]],
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
            rf"(?<![A-Za-z0-9_.])(?P<neg>[-−])?(?P<n>{NUM})\s?(?P<unit>{unit_pattern(list(_ZH_UNITS))})(?![A-Za-z/])"
        ),
        lambda m: f"{'负' if m['neg'] else ''}{'两' if m['n'] == '2' else _zh_plain(m['n'])}{_ZH_UNITS[m['unit']]}",
    ),
    (re.compile(rf"(?<![\d.第])2(?=[{_ZH_MEASURES}])"), lambda m: "两"),
    (re.compile(r"(?<![A-Za-z0-9_.])(?P<n>\d+\.\d+)(?=[元块])"), lambda m: zh_cardinal(amount(m["n"]))),
    (
        re.compile(rf"(?<![A-Za-z0-9_.])(?P<a>{NUM})\s?[-~～—–]\s?(?P<b>{NUM})(?![A-Za-z0-9_.])"),
        lambda m: f"{_zh_plain(m['a'])}到{_zh_plain(m['b'])}",
    ),
    (re.compile(rf"(?<![A-Za-z0-9_.])[-−](?P<n>{NUM})"), lambda m: "负" + _zh_plain(m["n"])),
    # Thousands commas would read as a pause ("一,二百三十四"); cn2an.transform reads the rest.
    (re.compile(r"\d{1,3}(?:,\d{3})+"), lambda m: m.group().replace(",", "")),
]


def finish(text: str) -> str:
    """cn2an reads what the rules left: years digit by digit, 第N, fractions, plain numbers."""
    try:
        with warnings.catch_warnings():  # it warns of numbers over 16 digits, which it leaves as they are
            warnings.simplefilter("ignore", UserWarning)
            return str(cn2an.transform(text, "an2cn"))
    except Exception:  # cn2an refuses some shapes; the engine then reads the digits itself
        log.debug("cn2an could not transform %r", text)
        return text
