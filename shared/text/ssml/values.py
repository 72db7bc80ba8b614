"""SSML attribute values read as the farm's: languages, break lengths, rates, volumes, phoneme alphabets."""

from __future__ import annotations

import re

TEXT_FORMATS = ("text", "ssml")
MAX_BREAK_S = 10.0
MAX_SILENCE_S = 300.0  # all breaks of a document together
# W3C break strengths as silence, in seconds.
BREAK_STRENGTHS = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.4, "strong": 0.75, "x-strong": 1.2}
# prosody rate keywords as speed factors.
RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
# prosody volume keywords as gain in dB; silent mutes the piece (its words still take their time).
VOLUMES_DB = {"x-soft": -12.0, "soft": -6.0, "medium": 0.0, "default": 0.0, "loud": 4.0, "x-loud": 8.0}
GAIN_RANGE_DB = (-40.0, 12.0)
# phoneme alphabets -> (lexicon language, lexicon alphabet); x-sampa is converted to IPA first.
ALPHABETS = {
    "ipa": ("en", "ipa"),
    "x-sampa": ("en", "ipa"),
    "arpabet": ("en", "arpabet"),
    "x-arpabet": ("en", "arpabet"),
    "pinyin": ("zh", "pinyin"),
    "x-amazon-pinyin": ("zh", "pinyin"),
    "kana": ("ja", "kana"),
    "yomigana": ("ja", "kana"),
    "x-amazon-yomigana": ("ja", "kana"),
}
CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


# -- attribute values ------------------------------------------------------------------------------------------
def language_code(value: str) -> str | None:
    """The farm's language code for an xml:lang value: en-US -> en, cmn-CN -> zh; None when it is no tag."""
    primary = value.strip().lower().replace("_", "-").split("-")[0]
    if not re.fullmatch(r"[a-z]{2,3}", primary):
        return None
    return {"cmn": "zh"}.get(primary, primary)


def break_seconds(time: str | None, strength: str | None) -> float | None:
    """A break's length: `time` wins over `strength`; None when neither can be read."""
    if time is not None:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*", time.lower())
        if m is None:
            return None
        return float(m[1]) / (1000.0 if m[2] == "ms" else 1.0)
    return BREAK_STRENGTHS.get((strength or "medium").strip().lower())


def rate_factor(value: str) -> float | None:
    """A prosody rate as a factor of the enclosing rate: a keyword, "80%", "+20%", "-10%" or "1.5"."""
    value = value.strip().lower()
    if value in RATES:
        return RATES[value]
    m = re.fullmatch(r"([+-])?(\d+(?:\.\d+)?)\s*(%)?", value)
    if m is None:
        return None
    number = float(m[2])
    if m[3]:
        factor = 1 + (number / 100 if m[1] == "+" else -number / 100) if m[1] else number / 100
    else:
        factor = 1 + (number if m[1] == "+" else -number) if m[1] else number
    return factor if factor > 0 else None


def volume_db(value: str) -> float | None:
    """A prosody volume as gain in dB relative to the enclosing volume: "+6dB", "-3dB" (keywords are handled apart);
    None when it cannot be read."""
    m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)\s*db", value.strip().lower())
    return float(m[1]) if m else None


# X-SAMPA -> IPA: the symbols of the IPA chart's pulmonic consonants, vowels, suprasegmentals and common diacritics.
_XSAMPA = {
    "i": "i", "y": "y", "1": "ɨ", "}": "ʉ", "M": "ɯ", "u": "u", "I": "ɪ", "Y": "ʏ", "U": "ʊ", "e": "e", "2": "ø",
    "@\\": "ɘ", "8": "ɵ", "7": "ɤ", "o": "o", "@": "ə", "E": "ɛ", "9": "œ", "3": "ɜ", "3\\": "ɞ", "V": "ʌ",
    "O": "ɔ", "{": "æ", "6": "ɐ", "a": "a", "&": "ɶ", "A": "ɑ", "Q": "ɒ", "@`": "ɚ", "3`": "ɝ", "I\\": "ᵻ",
    "U\\": "ᵿ", "p": "p", "b": "b", "t": "t", "d": "d", "t`": "ʈ", "d`": "ɖ", "c": "c", "J\\": "ɟ", "k": "k",
    "g": "ɡ", "q": "q", "G\\": "ɢ", "?": "ʔ", "m": "m", "F": "ɱ", "n": "n", "n`": "ɳ", "J": "ɲ", "N": "ŋ",
    "N\\": "ɴ", "B\\": "ʙ", "r": "r", "R\\": "ʀ", "4": "ɾ", "r`": "ɽ", "p\\": "ɸ", "B": "β", "f": "f", "v": "v",
    "T": "θ", "D": "ð", "s": "s", "z": "z", "S": "ʃ", "Z": "ʒ", "s`": "ʂ", "z`": "ʐ", "C": "ç", "j\\": "ʝ",
    "x": "x", "G": "ɣ", "X": "χ", "R": "ʁ", "X\\": "ħ", "?\\": "ʕ", "h": "h", "h\\": "ɦ", "K": "ɬ", "K\\": "ɮ",
    "P": "ʋ", "v\\": "ʋ", "r\\": "ɹ", "r\\`": "ɻ", "j": "j", "M\\": "ɰ", "l": "l", "l`": "ɭ", "L": "ʎ",
    "L\\": "ʟ", "w": "w", "W": "ʍ", "H": "ɥ", "5": "ɫ", "s\\": "ɕ", "z\\": "ʑ", "x\\": "ɧ", "l\\": "ɺ",
    '"': "ˈ", "%": "ˌ", ":": "ː", ":\\": "ˑ", ".": ".", "-": "", " ": " ", "_h": "ʰ", "=": "\u0329",
    "_=": "\u0329", "~": "\u0303", "_~": "\u0303", "`": "˞", "_0": "\u0325", "_j": "ʲ", "_w": "ʷ", "_G": "ˠ",
}  # fmt: skip
_XSAMPA_TOKENS = sorted(_XSAMPA, key=len, reverse=True)


def xsampa_to_ipa(text: str) -> str:
    """IPA for an X-SAMPA transcription; ValueError naming a symbol it does not know."""
    out, i = [], 0
    text = text.strip().strip("/[]")
    while i < len(text):
        token = next((t for t in _XSAMPA_TOKENS if text.startswith(t, i)), None)
        if token is None:
            raise ValueError(f"{text[i]!r} is not an X-SAMPA symbol")
        out.append(_XSAMPA[token])
        i += len(token)
    return "".join(out)
