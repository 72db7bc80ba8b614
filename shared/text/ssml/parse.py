"""Reading an SSML document into pieces: the XML, then the walk (see the package docstring for the subset)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler

from shared.errors import BadRequest
from shared.text import lexicon
from shared.text.language import detect_language
from shared.text.ssml.say_as import say_as
from shared.text.ssml.values import (
    ALPHABETS,
    BREAK_STRENGTHS,
    CJK,
    GAIN_RANGE_DB,
    MAX_BREAK_S,
    MAX_SILENCE_S,
    VOLUMES_DB,
    break_seconds,
    language_code,
    rate_factor,
    volume_db,
    xsampa_to_ipa,
)

_MARK = "\ue000"  # a mark's place in a piece's text while it is built
_SENTENCE_END = ".!?。！？…"
# Elements that only carry data for other systems: skipped with everything in them, silently.
_SKIPPED = {"desc", "meta", "metadata"}
MAX_DEPTH = 64
MAX_PIECES = 500


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
    return bool(CJK.match(ch))


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
