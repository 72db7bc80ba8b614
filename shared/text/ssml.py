"""SSML input (`text_format: "ssml"`): the W3C SSML 1.1 subset that Azure, Amazon Polly and Google Cloud TTS share,
mapped onto what the farm already does.

`parse_ssml(document, default_language, default_voice)` reads a document into an `SsmlDocument`: the plain text
that is spoken (the job's stored `text`, which subtitles and word timings follow), a list of pieces and warnings.
A piece is either `Speech` (text with its language, voice, speed factor, gain and one-off lexicon entries) or a
`Break` (silence of a length); `Mark`s point at a character of a piece (or at a break, or the end).

- `speak`, `p`, `s`: a `p` or `s` ends a sentence (a full stop is added when its text has none);
- `break`: `time` ("500ms", "1.5s", at most MAX_BREAK_S) or `strength` (BREAK_STRENGTHS) replaces the farm's pause
  between segments with silence of that length; `<break/>` alone is `medium`;
- `say-as interpret-as`: cardinal, ordinal, characters (spell-out, verbatim), digits, date (`format` mdy, dmy,
  ymd, md, dm, ym, my, y, m, d, or Google's yyyymmdd style), time, telephone, currency: written out as words of
  the piece's language (en, zh, ja) with the farm's normaliser (shared/text/normalization/);
- `sub alias`: the alias is spoken (and is what the plain text holds);
- `phoneme alphabet ph`: ipa, x-sampa (converted to IPA), arpabet (en), pinyin / x-amazon-pinyin (zh), kana /
  yomigana / x-amazon-yomigana (ja): a one-off lexicon entry for the term, within its piece (shared/text/lexicon.py);
- `prosody rate` (RATES, "80%", "+20%", "-10%", "1.5"; nested rates multiply) is the piece's speed factor (the
  worker clamps job speed x factor to the engine's range) and `volume` (VOLUMES_DB, "+6dB", "-3dB") its gain;
- `lang xml:lang` (and xml:lang on speak, p, s, voice): the piece's language ("en-US" -> en, "cmn-CN" -> zh);
- `voice name`: the piece's voice (a stock voice or a cloned voice id), so one job can hold a dialogue;
- `mark name`: reported as `result.marks` [{name, time_s}] on the output's timeline.

Anything else (`audio`, `emphasis`, `prosody pitch`, vendor extensions such as `amazon:effect`) is spoken as its
text, with a warning naming it. XML that is not well-formed, a DTD (so no entity-expansion bomb) or a root other
than `speak` is refused with `SsmlError` (400, code `invalid_ssml`, line and column in the message). Parsing goes
through defusedxml's SAX reader.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler

from shared.errors import BadRequest
from shared.text import lexicon
from shared.text.language import detect_language

TEXT_FORMATS = ("text", "ssml")
MAX_BREAK_S = 10.0
MAX_SILENCE_S = 300.0  # all breaks of a document together
MAX_PIECES = 500
MAX_DEPTH = 64
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
_MARK = "\ue000"  # a mark's place in a piece's text while it is built
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_SENTENCE_END = ".!?。！？…"
# Elements that only carry data for other systems: skipped with everything in them, silently.
_SKIPPED = {"desc", "meta", "metadata"}


class SsmlError(BadRequest):
    """The document cannot be read as SSML: not well-formed XML, a DTD, or a root that is not <speak>."""

    code = "invalid_ssml"


@dataclass(frozen=True)
class Speech:
    """Text spoken with one language, voice, speed factor and gain; `voice` None is the job's voice."""

    text: str
    language: str
    voice: str | None = None
    rate: float = 1.0
    gain_db: float = 0.0
    silent: bool = False
    lexicon: tuple[lexicon.Entry, ...] = ()


@dataclass(frozen=True)
class Break:
    seconds: float


@dataclass(frozen=True)
class Mark:
    """A mark before character `offset` of piece `piece` (a Break's start when offset is 0; the end of the
    document when `piece` is the number of pieces)."""

    name: str
    piece: int
    offset: int = 0


@dataclass
class SsmlDocument:
    text: str  # the plain text that is spoken: subtitles, word timings and the job's stored `text` follow it
    language: str  # the document's language: speak's xml:lang, else the default, else detected from its text
    pieces: list[Speech | Break]
    marks: list[Mark] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def voices(self) -> list[str]:
        """The voices `<voice name>` names, in order of first use."""
        return list(dict.fromkeys(p.voice for p in self.pieces if isinstance(p, Speech) and p.voice))

    def languages(self) -> list[str]:
        return list(dict.fromkeys(p.language for p in self.pieces if isinstance(p, Speech)))

    def sole_voice(self) -> str | None:
        """The voice every piece names, when they all name the same one (Azure wraps a whole text in <voice>)."""
        named = {p.voice for p in self.pieces if isinstance(p, Speech)}
        return next(iter(named)) if len(named) == 1 else None


def looks_like_ssml(text: str) -> bool:
    """Whether a text is an SSML document: it starts with <speak (after an optional XML declaration)."""
    return re.match(r"\s*(?:<\?xml[^>]*\?>\s*)?<speak[\s>/]", text) is not None


# -- XML -------------------------------------------------------------------------------------------------------
@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    line: int
    column: int
    children: list[_Node | str] = field(default_factory=list)

    def text(self, *, unmarked: bool = False) -> str:
        """Its text; `unmarked`: leaving out what elements with their own xml:lang hold."""
        return "".join(
            c if isinstance(c, str) else c.text(unmarked=unmarked)
            for c in self.children
            if not _skipped(c) and not (unmarked and isinstance(c, _Node) and "xml:lang" in c.attrs)
        )

    def where(self) -> str:
        return f"line {self.line}, column {self.column}"


def _skipped(child: _Node | str) -> bool:
    return isinstance(child, _Node) and child.tag in _SKIPPED


class _TreeBuilder(ContentHandler):
    def __init__(self) -> None:
        super().__init__()
        self.root: _Node | None = None
        self.stack: list[_Node] = []
        self.locator: Any = None

    def setDocumentLocator(self, locator: Any) -> None:  # noqa: N802 (SAX's name)
        self.locator = locator

    def position(self) -> tuple[int, int]:
        if self.locator is None:
            return 0, 0
        return int(self.locator.getLineNumber() or 0), int(self.locator.getColumnNumber() or 0) + 1

    def startElement(self, name: str, attrs: Any) -> None:  # noqa: N802
        line, column = self.position()
        if len(self.stack) >= MAX_DEPTH:
            raise SsmlError(f"SSML nests elements more than {MAX_DEPTH} deep (line {line}, column {column})")
        node = _Node(name, dict(attrs.items()), line, column)
        if self.stack:
            self.stack[-1].children.append(node)
        else:
            self.root = node
        self.stack.append(node)

    def endElement(self, name: str) -> None:  # noqa: N802
        self.stack.pop()

    def characters(self, content: str) -> None:
        children = self.stack[-1].children if self.stack else None
        if children is None:
            return
        if children and isinstance(children[-1], str):
            children[-1] += content
        else:
            children.append(content)


def _read_xml(document: str) -> _Node:
    from defusedxml import DefusedXmlException
    from defusedxml.sax import parseString

    builder = _TreeBuilder()
    try:
        parseString(document.encode("utf-8"), builder, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except SAXParseException as exc:
        line, column = int(exc.getLineNumber() or 0), int(exc.getColumnNumber() or 0) + 1
        raise SsmlError(
            f"SSML is not well-formed XML: {exc.getMessage()} at line {line}, column {column}",
            details={"line": line, "column": column},
        ) from None
    except DefusedXmlException as exc:
        line, column = builder.position()
        what = {"DTDForbidden": "a DTD (<!DOCTYPE>)", "EntitiesForbidden": "an entity declaration"}.get(
            type(exc).__name__, "an external reference"
        )
        raise SsmlError(
            f"SSML may not contain {what} (line {line}, column {column})", details={"line": line, "column": column}
        ) from None
    except ValueError as exc:  # an encoding the XML declaration names but the text is not in
        raise SsmlError(f"SSML could not be read: {exc}") from None
    root = builder.root
    if root is None:
        raise SsmlError("SSML has no root element")
    if _local(root.tag) != "speak":
        raise SsmlError(
            f"the root element of SSML must be <speak>, not <{root.tag}> ({root.where()})",
            details={"line": root.line, "column": root.column},
        )
    return root


def _local(tag: str) -> str:
    """A W3C element's name; vendor extensions (amazon:effect, mstts:express-as) keep their prefix."""
    prefix, _, name = tag.rpartition(":")
    return name if prefix in ("", "ssml") else tag


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
    return " ".join(spelled) if language == "en" else "".join(c if _CJK.match(c) else f" {c} " for c in spelled)


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


# -- the walk --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _State:
    language: str
    voice: str | None
    rate: float = 1.0
    gain_db: float = 0.0
    silent: bool = False


def _speakable(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def _opening(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch)[0] == "P"


def _is_cjk(ch: str) -> bool:
    return bool(_CJK.match(ch))


def _join(left: str, right: str) -> str:
    if not left or not right:
        return left + right
    return left + right if _is_cjk(left[-1]) and _is_cjk(right[0]) else f"{left} {right}"


def _tidy(raw: str) -> tuple[str, list[int]]:
    """Whitespace runs as one space (none between CJK characters), trimmed; and where each mark placeholder was:
    the offset of the next spoken character."""
    out: list[str] = []
    marks: list[int] = []
    waiting = 0  # marks waiting for the next character
    space = False
    for ch in raw:
        if ch == _MARK:
            waiting += 1
        elif ch.isspace():
            space = True
        else:
            if space and out and not (_is_cjk(out[-1]) and _is_cjk(ch)):
                out.append(" ")
            space = False
            marks.extend([len(out)] * waiting)
            waiting = 0
            out.append(ch)
    marks.extend([len(out)] * waiting)
    return "".join(out), marks


class _Builder:
    """Collects text into pieces: a piece ends at a break, or when the next speakable text needs another
    language, voice, rate, gain or a different pronunciation of the same term."""

    def __init__(self) -> None:
        self.pieces: list[Speech | Break] = []
        self.marks: list[Mark] = []
        self.warnings: list[str] = []
        self._raw = ""
        self._names: list[str] = []
        self._state: _State | None = None
        self._entries: dict[str, lexicon.Entry] = {}
        self._carried: list[str] = []  # marks that point at whatever item comes next

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def speak(self, text: str, state: _State, entry: lexicon.Entry | None = None) -> None:
        if not text:
            return
        if _speakable(text):
            held = self._state is not None and _speakable(self._raw)
            conflict = entry is not None and self._entries.get(entry.term, entry) != entry
            if held and (self._state != state or conflict):
                # Punctuation that opens the new text ends the words before it ("</prosody>, and then").
                lead = next((i for i, ch in enumerate(text) if not _opening(ch)), len(text))
                if any(unicodedata.category(ch)[0] == "P" for ch in text[:lead]):
                    self._raw += text[:lead]
                    text = text[lead:]
                self.close()
            if self._state is None or not _speakable(self._raw):
                self._state = state
        elif self._state is None:
            self._state = state
        if entry is not None:
            self._entries[entry.term] = entry
        self._raw += text

    def mark(self, name: str) -> None:
        self._raw += _MARK
        self._names.append(name)

    def end_sentence(self) -> None:
        """A p or s boundary: the text so far ends a sentence."""
        body = self._raw.rstrip(" \t\r\n" + _MARK)
        if not _speakable(body) or self._state is None:
            return
        if body[-1] not in _SENTENCE_END:
            stop = "。" if self._state.language in ("zh", "ja", "yue") else "."
            self._raw = body + stop + self._raw[len(body) :]
        self._raw += " "

    def add_break(self, seconds: float) -> None:
        self.close()
        if len(self.pieces) >= MAX_PIECES:
            raise SsmlError(f"SSML makes more than {MAX_PIECES} pieces (text runs and breaks); split the document")
        spent = sum(p.seconds for p in self.pieces if isinstance(p, Break))
        if spent + seconds > MAX_SILENCE_S:
            self.warn(f"SSML breaks add up to more than {MAX_SILENCE_S:g} s: the rest were cut")
            seconds = max(0.0, MAX_SILENCE_S - spent)
        self._place_carried()
        self.pieces.append(Break(seconds))

    def close(self) -> None:
        text, offsets = _tidy(self._raw)
        names, state, entries = self._names, self._state, tuple(self._entries.values())
        self._raw, self._names, self._state, self._entries = "", [], None, {}
        if state is None:
            self._carried.extend(names)
            return
        if not _speakable(text):
            # Punctuation alone follows the words before it; marks in it point at what comes next.
            last = self.pieces[-1] if self.pieces else None
            if isinstance(last, Speech) and text:
                self.pieces[-1] = replace(last, text=last.text + text)
            self._carried.extend(names)
            return
        self._place_carried()
        index = len(self.pieces)
        if index >= MAX_PIECES:
            raise SsmlError(f"SSML makes more than {MAX_PIECES} pieces (text runs and breaks); split the document")
        self.pieces.append(Speech(text, state.language, state.voice, state.rate, state.gain_db, state.silent, entries))
        for name, offset in zip(names, offsets, strict=True):
            if offset < len(text):
                self.marks.append(Mark(name, index, offset))
            else:
                self._carried.append(name)

    def _place_carried(self) -> None:
        self.marks.extend(Mark(name, len(self.pieces), 0) for name in self._carried)
        self._carried = []

    def finish(self) -> None:
        self.close()
        self._place_carried()


class _Walker:
    def __init__(self, builder: _Builder) -> None:
        self.out = builder

    def warn_unsupported(self, node: _Node, what: str | None = None) -> None:
        self.out.warn(f"SSML <{what or node.tag}> is not supported: its text was spoken as written")

    def children(self, node: _Node, state: _State) -> None:
        for child in node.children:
            if isinstance(child, str):
                self.out.speak(child, state)
            else:
                self.walk(child, state)

    def walk(self, node: _Node, state: _State) -> None:
        tag = _local(node.tag)
        state = self.language_of(node, state)
        if tag in _SKIPPED:
            return
        if tag in ("speak", "w", "token"):
            if node.attrs.get("role"):
                self.out.warn(f"SSML <{tag} role> is not supported: ignored")
            self.children(node, state)
        elif tag in ("p", "s", "paragraph", "sentence"):
            self.out.end_sentence()
            self.children(node, state)
            self.out.end_sentence()
        elif tag == "break":
            seconds = break_seconds(node.attrs.get("time"), node.attrs.get("strength"))
            if seconds is None:
                self.out.warn(
                    f"SSML <break> at {node.where()}: time={node.attrs.get('time')!r} "
                    f"strength={node.attrs.get('strength')!r} is not a length; a medium break was made"
                )
                seconds = BREAK_STRENGTHS["medium"]
            if seconds > MAX_BREAK_S:
                self.out.warn(f"SSML <break> of {seconds:g} s was cut to {MAX_BREAK_S:g} s")
                seconds = MAX_BREAK_S
            self.out.add_break(seconds)
        elif tag == "say-as":
            self._say_as(node, state)
        elif tag == "sub":
            alias = node.attrs.get("alias")
            if alias is None:
                self.out.warn("SSML <sub> without an alias: its text was spoken as written")
                self.children(node, state)
            else:
                self.out.speak(alias, state)
        elif tag == "phoneme":
            self._phoneme(node, state)
        elif tag == "prosody":
            self.children(node, self._prosody(node, state))
        elif tag == "voice":
            name = (node.attrs.get("name") or "").strip()
            if name and len(name) <= 64:
                state = replace(state, voice=name)
            else:
                self.out.warn("SSML <voice> is chosen by name only (a stock voice or a cloned voice id): ignored")
            self.children(node, state)
        elif tag == "lang":
            self.children(node, state)
        elif tag == "mark":
            mark = node.attrs.get("name")
            if mark:
                self.out.mark(mark)
            else:
                self.out.warn(f"SSML <mark> at {node.where()} has no name: ignored")
        elif tag == "audio":
            self.out.warn("SSML <audio> is not played: its fallback text (if any) was spoken")
            self.children(node, state)
        elif tag == "lexicon":
            self.out.warn("SSML <lexicon> is not fetched: use the job's `lexicon` or /v1/lexicon")
        else:
            self.warn_unsupported(node)
            self.children(node, state)

    def language_of(self, node: _Node, state: _State) -> _State:
        value = node.attrs.get("xml:lang")
        if value is None:
            return state
        code = language_code(value)
        if code is None:
            self.out.warn(f"SSML xml:lang={value!r} at {node.where()} is not a language tag: ignored")
            return state
        return replace(state, language=code)

    def _say_as(self, node: _Node, state: _State) -> None:
        text = node.text()
        kind = node.attrs.get("interpret-as", "")
        try:
            said = say_as(text, kind, node.attrs.get("format"), state.language)
        except KeyError:
            self.out.warn(f"SSML <say-as interpret-as={kind!r}> is not supported: its text was spoken as written")
            said = text
        except (ValueError, ArithmeticError) as exc:
            self.out.warn(f"SSML <say-as interpret-as={kind!r}> could not read {text.strip()!r} ({exc}): spoken as is")
            said = text
        self.out.speak(said, state)

    def _phoneme(self, node: _Node, state: _State) -> None:
        term = " ".join(node.text().split())
        alphabet = (node.attrs.get("alphabet") or "ipa").strip().lower()
        ph = node.attrs.get("ph", "")
        if alphabet not in ALPHABETS:
            self.out.warn(f"SSML <phoneme alphabet={alphabet!r}> is not supported: its text was spoken as written")
            self.out.speak(term, state)
            return
        language, kind = ALPHABETS[alphabet]
        try:
            pronunciation = xsampa_to_ipa(ph) if alphabet == "x-sampa" else ph
            entry = lexicon.normalise(term, language, pronunciation, kind)
        except ValueError as exc:
            self.out.warn(f"SSML <phoneme> for {term!r} was not applied ({exc}): spoken as written")
            self.out.speak(term, state)
            return
        entry = lexicon.Entry(entry.term, entry.language, entry.pronunciation, entry.alphabet, source="job")
        self.out.speak(term, state, entry)

    def _prosody(self, node: _Node, state: _State) -> _State:
        for name in ("pitch", "contour", "range", "duration"):
            if name in node.attrs:
                self.out.warn(f"SSML <prosody {name}> is not supported: ignored")
        rate = node.attrs.get("rate")
        if rate is not None:
            factor = rate_factor(rate)
            if factor is None:
                self.out.warn(f"SSML <prosody rate={rate!r}> is not a rate: ignored")
            else:
                state = replace(state, rate=round(state.rate * factor, 4))
        volume = node.attrs.get("volume")
        if volume is not None:
            key = volume.strip().lower()
            if key == "silent":
                state = replace(state, silent=True)
            elif key in VOLUMES_DB:
                state = replace(state, gain_db=VOLUMES_DB[key], silent=False)
            elif (db := volume_db(volume)) is not None:
                low, high = GAIN_RANGE_DB
                gain = state.gain_db + db
                if not low <= gain <= high:
                    self.out.warn(f"SSML <prosody volume={volume!r}> was held within {low:g}..{high:g} dB")
                state = replace(state, gain_db=min(max(gain, low), high))
            else:
                self.out.warn(f"SSML <prosody volume={volume!r}> is not a volume: ignored")
        return state


def parse_ssml(document: str, default_language: str | None = None, default_voice: str | None = None) -> SsmlDocument:
    """Read an SSML document; SsmlError (400 invalid_ssml) when it cannot be read or holds nothing to speak.
    `default_language` (else detection from the text) and `default_voice` (None: the job's own voice) apply
    wherever the markup names none; xml:lang on <speak> names the document's language over `default_language`."""
    root = _read_xml(document)
    builder = _Builder()
    walker = _Walker(builder)
    base = _State(default_language or detect_language(root.text(unmarked=True) or root.text()), default_voice)
    walker.walk(root, base)
    builder.finish()
    text = ""
    for piece in builder.pieces:
        if isinstance(piece, Speech):
            text = _join(text, piece.text)
    if not _speakable(text):
        raise SsmlError("SSML has no text to speak")
    language = walker.language_of(root, base).language
    return SsmlDocument(text, language, builder.pieces, builder.marks, builder.warnings)
