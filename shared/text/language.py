"""Language detection for the three languages the farm speaks, by script.

Kana means Japanese; Han characters without kana mean Mandarin; anything else is treated as English.
This is exact for the supported languages and needs no model.
"""

from __future__ import annotations

import re

_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    if _KANA.search(text):
        return "ja"
    han = len(_HAN.findall(text))
    if han and han >= len(_LATIN.findall(text)) / 4:
        return "zh"
    return "en"
