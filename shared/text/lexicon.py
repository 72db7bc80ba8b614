"""The pronunciation lexicon: how to say a word or phrase, per tenant (`/v1/lexicon`) or per job (`lexicon`).

An entry is a term, its language and a pronunciation in an alphabet fit for that language:
- zh: `pinyin`, tone numbers or tone marks, one syllable per character ("zēng guó fān" or "zeng1 guo2 fan1");
  stored as tone numbers;
- en: `ipa` (English phonemes: /ˈkɪnwɑ/) or `arpabet` (CMU phones with stress digits: "K IY1 N W AA0", the set
  CosyVoice3 takes inline); both are checked against the English phoneme table below;
- ja: `kana` (hiragana or katakana), read by the engine's Japanese G2P.

At submit, a job's stored options get a snapshot (`options["lexicon"]`) of its own entries plus the tenant's
entries that occur in its text: the dedup key covers `options`, so changing an entry changes the key of every
job whose text it touches, and the worker needs no query of its own. Engines apply the snapshot per segment
(`find` cuts a text at the terms).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import ahocorasick
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import admission, pages
from shared.errors import BadRequest, Conflict, NotFound
from shared.models import LexiconEntry, utcnow
from shared.text.language import detect_language

ALPHABETS: dict[str, tuple[str, ...]] = {"zh": ("pinyin",), "en": ("ipa", "arpabet"), "ja": ("kana",)}
MAX_TERM_CHARS = 64
MAX_PRONUNCIATION_CHARS = 256
MAX_JOB_ENTRIES = 100
MAX_TENANT_ENTRIES = 10_000
_SEPARATORS = re.compile(r"[\s'’\-,.]+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_TONE_MARKS = "āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜńňǹḿ"

# English phonemes: ARPAbet (CMU) and the IPA written for each, both ways. IPA variants that map onto one phone
# (r/ɹ, ɡ/g, ligatures, British vowels) are read; `ARPABET_IPA` writes the General American form.
ARPABET_IPA = {
    "AA": "ɑ", "AE": "æ", "AH": "ʌ", "AO": "ɔ", "AW": "aʊ", "AY": "aɪ", "B": "b", "CH": "tʃ", "D": "d", "DH": "ð",
    "EH": "ɛ", "ER": "ɝ", "EY": "eɪ", "F": "f", "G": "ɡ", "HH": "h", "IH": "ɪ", "IY": "i", "JH": "dʒ", "K": "k",
    "L": "l", "M": "m", "N": "n", "NG": "ŋ", "OW": "oʊ", "OY": "ɔɪ", "P": "p", "R": "ɹ", "S": "s", "SH": "ʃ",
    "T": "t", "TH": "θ", "UH": "ʊ", "UW": "u", "V": "v", "W": "w", "Y": "j", "Z": "z", "ZH": "ʒ",
}  # fmt: skip
VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})
_IPA_READ = {ipa: phone for phone, ipa in ARPABET_IPA.items()} | {
    "ɝː": "ER", "ɜː": "ER", "ɜɹ": "ER", "ɜr": "ER", "ɚ": "ER0", "ə": "AH0", "ɐ": "AH0", "ɒ": "AA", "a": "AA",
    "ɑː": "AA", "iː": "IY", "uː": "UW", "ɔː": "AO", "ᵻ": "IH0", "e": "EY", "o": "OW", "əʊ": "OW", "ɛɪ": "EY",
    "t͡ʃ": "CH", "ʧ": "CH", "d͡ʒ": "JH", "ʤ": "JH", "g": "G", "r": "R", "ɾ": "T", "ʔ": "T", "ɫ": "L", "x": "K",
    "ʍ": "W",
}  # fmt: skip
_IPA_TOKENS = sorted(_IPA_READ, key=len, reverse=True)
# Marks that carry nothing for the English phone set: length, aspiration, syllable breaks, ties.
_IPA_IGNORED = set("ːˑʰ.‿\u0361\u035c\u0329 ")


@dataclass(frozen=True)
class Entry:
    """One lexicon entry as engines use it; `source` says whether the job or the tenant's lexicon gave it."""

    term: str
    language: str
    pronunciation: str
    alphabet: str
    source: str = "tenant"

    def to_dict(self) -> dict[str, str]:
        # What dataclasses.asdict gives for these string fields, without its deep copies (one per snapshot entry).
        return {
            "term": self.term,
            "language": self.language,
            "pronunciation": self.pronunciation,
            "alphabet": self.alphabet,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(**{k: str(data[k]) for k in ("term", "language", "pronunciation", "alphabet") if k in data},
                   source=str(data.get("source", "tenant")))  # fmt: skip


# -- validation --------------------------------------------------------------------------------------------------
def clean_term(term: str) -> str:
    """NFC, trimmed, inner whitespace as single spaces; refuses what cannot be a spoken term."""
    term = re.sub(r"\s+", " ", unicodedata.normalize("NFC", term)).strip()
    if not term:
        raise ValueError("term is empty")
    if len(term) > MAX_TERM_CHARS:
        raise ValueError(f"term is {len(term)} characters; the limit is {MAX_TERM_CHARS}")
    if not any(unicodedata.category(ch)[0] in "LN" for ch in term):
        raise ValueError("term has no letters or digits")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Cf") for ch in term):
        raise ValueError("term contains a control character")
    return term


def default_language(term: str, alphabet: str | None, pronunciation: str = "") -> str:
    """An entry's language when it names none: its alphabet's, ja for a kana reading, else its term's script."""
    for language, names in ALPHABETS.items():
        if alphabet in names:
            return language
    return "ja" if pronunciation.strip() and is_kana(pronunciation.strip()) else detect_language(term)


@lru_cache(maxsize=1)
def pinyin_syllables() -> frozenset[str]:
    """Every toneless syllable some Chinese character is read with, from pypinyin's character dictionary."""
    from pypinyin.contrib.tone_convert import to_normal
    from pypinyin.pinyin_dict import pinyin_dict

    return frozenset(to_normal(p) for value in pinyin_dict.values() for p in value.split(","))


def normalise_pinyin(pronunciation: str, term: str) -> str:
    """Tone-number pinyin ("zeng1 guo2 fan1") from tone numbers or marks; neutral tone is 5."""
    from pypinyin.contrib.tone_convert import to_normal, to_tone3

    text = unicodedata.normalize("NFC", pronunciation).lower().replace("u:", "ü")
    # Tone numbers may run together ("zeng1guo2"): a digit ends a syllable.
    raw = [s for part in _SEPARATORS.split(text) for s in re.findall(r"[^\d]+\d|[^\d]+$", part) if s]
    if not raw:
        raise ValueError("pinyin is empty")
    out = []
    for syllable in raw:
        numbered = re.fullmatch(r"([a-zü]+)([0-5])", syllable)
        if numbered:
            tone3 = numbered.group(1).replace("ü", "v") + ("5" if numbered.group(2) == "0" else numbered.group(2))
        elif re.fullmatch(r"[a-zü]+", syllable):
            raise ValueError(f"pinyin syllable {syllable!r} has no tone: write a tone number 1-5 or a mark")
        elif re.fullmatch(rf"[a-zü{_TONE_MARKS}]+", syllable):
            tone3 = to_tone3(syllable, neutral_tone_with_five=True)
        else:
            raise ValueError(f"{syllable!r} is not a pinyin syllable (letters, then a tone number 1-5 or a mark)")
        if to_normal(tone3) not in pinyin_syllables():
            raise ValueError(f"{syllable!r} is not a Mandarin syllable")
        out.append(tone3)
    han = _HAN.findall(term)
    if han and len(han) == len(term.replace(" ", "")) and len(han) != len(out):
        raise ValueError(f"term has {len(han)} characters but the pinyin has {len(out)} syllables")
    return " ".join(out)


def ipa_to_arpabet(ipa: str) -> list[str]:
    """ARPAbet phones with stress digits from English IPA; a stress mark stresses the next vowel."""
    text = unicodedata.normalize("NFC", ipa).strip().strip("/[]")
    phones: list[str] = []
    stress = "0"
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "ˈˌ'":
            stress = "2" if ch == "ˌ" else "1"
            i += 1
            continue
        if ch in _IPA_IGNORED:
            i += 1
            continue
        token = next((t for t in _IPA_TOKENS if text.startswith(t, i)), None)
        if token is None:
            raise ValueError(f"{ch!r} (U+{ord(ch):04X}) is not an English IPA phoneme")
        phone = _IPA_READ[token]
        if phone in VOWELS:
            phone += stress
            stress = "0"
        phones.append(phone)
        i += len(token)
        # Syllabic consonants (l̩, n̩) carry a reduced vowel.
        if i < len(text) and text[i] == "\u0329":
            phones.insert(len(phones) - 1, "AH0")
    if not phones:
        raise ValueError("IPA is empty")
    return phones


def parse_arpabet(pronunciation: str) -> list[str]:
    phones = pronunciation.upper().replace(",", " ").split()
    if not phones:
        raise ValueError("ARPAbet is empty")
    for phone in phones:
        match = re.fullmatch(r"([A-Z]+)([0-2]?)", phone)
        base, digit = match.groups() if match else (phone, "")
        if base not in ARPABET_IPA:
            raise ValueError(f"{phone!r} is not an ARPAbet phone (CMU set: {', '.join(sorted(ARPABET_IPA))})")
        if digit and base not in VOWELS:
            raise ValueError(f"{phone!r}: only vowels carry a stress digit")
    return [p if p[-1].isdigit() or p not in VOWELS else p + "0" for p in phones]


def arpabet(entry: Entry) -> list[str]:
    """The entry's English pronunciation as ARPAbet phones."""
    return ipa_to_arpabet(entry.pronunciation) if entry.alphabet == "ipa" else parse_arpabet(entry.pronunciation)


def is_kana(text: str) -> bool:
    return all(
        ch in "ー・ 　" or "HIRAGANA" in unicodedata.name(ch, "") or "KATAKANA" in unicodedata.name(ch, "")
        for ch in text
    )


class InvalidEntry(ValueError):
    """What is wrong with an entry, with the API error code that says so."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _checked_term(term: str) -> str:
    try:
        return clean_term(term)
    except ValueError as exc:
        raise InvalidEntry(str(exc), "term_too_long" if len(term) > MAX_TERM_CHARS else "invalid_term") from None


def normalise(term: str, language: str | None, pronunciation: str, alphabet: str | None) -> Entry:
    """A checked entry in its stored form, or InvalidEntry saying what is wrong with it."""
    term = _checked_term(term)
    language = language or default_language(term, alphabet, pronunciation)
    if language not in ALPHABETS:
        raise InvalidEntry(f"language must be one of {', '.join(ALPHABETS)}", "unsupported_language")
    alphabet = alphabet or ALPHABETS[language][0]
    if alphabet not in ALPHABETS[language]:
        raise InvalidEntry(
            f"alphabet {alphabet!r} is not for {language}; use {' or '.join(ALPHABETS[language])}",
            "unsupported_alphabet",
        )
    pronunciation = unicodedata.normalize("NFC", pronunciation).strip()
    if len(pronunciation) > MAX_PRONUNCIATION_CHARS:
        raise InvalidEntry(
            f"pronunciation is {len(pronunciation)} characters; the limit is {MAX_PRONUNCIATION_CHARS}",
            "pronunciation_too_long",
        )
    try:
        if not pronunciation:
            raise ValueError("pronunciation is empty")
        if alphabet == "pinyin":
            pronunciation = normalise_pinyin(pronunciation, term)
        elif alphabet == "ipa":
            ipa_to_arpabet(pronunciation)
            pronunciation = pronunciation.strip("/[] ")
        elif alphabet == "arpabet":
            pronunciation = " ".join(parse_arpabet(pronunciation))
        elif not is_kana(pronunciation):
            raise ValueError("kana must be hiragana or katakana only")
    except ValueError as exc:
        raise InvalidEntry(str(exc), f"invalid_{alphabet}") from None
    return Entry(term, language, pronunciation, alphabet)


def parse_cell(cell: str) -> list[dict[str, str]]:
    """A job's `lexicon` written in one CSV cell: JSON, or `term=pronunciation` pairs split by `;` or newlines
    (`单=shan4; Zorblat=ˈlʌndən`), each entry's language and alphabet then taken from its term and reading."""
    cell = cell.strip()
    if cell.startswith("["):
        try:
            value = json.loads(cell)
        except ValueError as exc:
            raise ValueError(f"lexicon is not valid JSON: {exc}") from None
        if not isinstance(value, list):
            raise ValueError("lexicon must be a list")
        return value
    items = []
    for pair in filter(None, (p.strip() for p in re.split(r"[;\n]", cell))):
        term, equals, pronunciation = pair.partition("=")
        if not equals:
            raise ValueError(f"lexicon pair {pair!r} has no '=': write term=pronunciation")
        items.append({"term": term.strip(), "pronunciation": pronunciation.strip()})
    return items


# -- matching ----------------------------------------------------------------------------------------------------
def _latin(term: str) -> bool:
    return bool(_LATIN.search(term))


def occurs(term: str, text: str) -> bool:
    """Whether a term is in a text: Latin terms as whole words, case-insensitively; others as they are written."""
    if not _latin(term):
        return term in text
    if term.casefold() not in text.casefold():
        return False
    return _occurs_pattern(term).search(text) is not None


@lru_cache(maxsize=65536)
def _occurs_pattern(term: str) -> re.Pattern[str]:
    # The whole pattern case-insensitive: the word boundaries too (they then also take K, ſ, ı and İ for letters).
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(term)}(?![A-Za-z0-9])", re.IGNORECASE)


@lru_cache(maxsize=65536)
def _find_pattern(term: str) -> re.Pattern[str]:
    # Only the term case-insensitive: the boundaries are ASCII letters and digits.
    return re.compile(rf"(?<![A-Za-z0-9])(?i:{re.escape(term)})(?![A-Za-z0-9])")


class _Fold(dict[int, str]):
    """Code point -> the one character standing for its case class as Python's `re.IGNORECASE` matches: its simple
    lower case (`_sre.unicode_tolower`), and the smallest of the extra cases `re` treats alike (i and ı, s and ſ,
    k and K, ...). One character for one, so a folded text keeps every offset; filled as characters come."""

    def __missing__(self, point: int) -> str:
        lower = _tolower(point)
        folded = chr(min((lower, *_EXTRA_CASES.get(lower, ()))))
        self[point] = folded
        return folded


try:
    from _sre import unicode_tolower as _tolower  # what `re` itself compares with
except ImportError:  # pragma: no cover - not CPython

    def _tolower(point: int) -> int:
        lower = chr(point).lower()
        return ord(lower) if len(lower) == 1 else point


try:
    from re._casefix import _EXTRA_CASES
except ImportError:  # pragma: no cover - another Python
    _EXTRA_CASES = {}
_FOLD = _Fold()


def fold(text: str) -> str:
    """`text` with each character replaced by its case class's (`_Fold`): as long as `text`, and two strings
    `re.IGNORECASE` matches fold alike."""
    return text.translate(_FOLD)


class Matcher:
    """Entries' terms in one Aho–Corasick automaton (pyahocorasick), built once, then one pass per text.

    The automaton holds each term case-folded (`fold`), so one pass over a folded text finds every place where
    some term may match; each such place is then checked with the exact rule (`occurs` for a snapshot, `find`'s
    for engines): a Latin term with its whole-word, case-insensitive pattern at that offset, any other term
    character for character. So the matches are exactly those of the per-term regular expressions, found in
    O(text + places) instead of O(terms x text)."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = list(entries)
        self.terms = sorted({e.term for e in self.entries}, key=len, reverse=True)
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        by_key: dict[str, list[str]] = {}
        for term in self.terms:
            by_key.setdefault(fold(term), []).append(term)
        for key, terms in by_key.items():
            self._automaton.add_word(key, (len(key), tuple(terms)))
        if by_key:
            self._automaton.make_automaton()

    def _places(self, text: str) -> Iterator[tuple[int, str]]:
        """(start, term) wherever a term's folded form is in the folded text, in no particular order."""
        if not self.terms or not text:
            return
        for end, (length, terms) in self._automaton.iter(fold(text)):
            start = end - length + 1
            for term in terms:
                yield start, term

    def occurring(self, text: str) -> set[str]:
        """The terms that occur in `text` by `occurs`' rule."""
        found: set[str] = set()
        folded_text: str | None = None
        for start, term in self._places(text):
            if term in found:
                continue
            if not _latin(term):
                if text.startswith(term, start):
                    found.add(term)
                continue
            end = start + len(term)
            if _plain(term, text, start, end):
                # ASCII throughout: the folded match is a case-insensitive one, and its casefold is in the text's.
                if _word_edges(text, start, end):
                    found.add(term)
                continue
            if folded_text is None:
                folded_text = text.casefold()
            if term.casefold() in folded_text and _occurs_pattern(term).match(text, start):
                found.add(term)
        return found

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where terms match by `find`'s rule: leftmost first, the longest valid term at each place, never
        overlapping (what one alternation of every term, longest first, finds with `re.finditer`)."""
        longest: dict[int, int] = {}
        for start, term in self._places(text):
            size = len(term)
            if size <= longest.get(start, 0):
                continue
            if not _latin(term):
                valid = text.startswith(term, start)
            elif _plain(term, text, start, start + size):
                valid = _word_edges(text, start, start + size)
            else:
                valid = _find_pattern(term).match(text, start) is not None
            if valid:
                longest[start] = size
        spans, position = [], 0
        for start in sorted(longest):
            if start >= position:
                spans.append((start, start + longest[start]))
                position = start + longest[start]
        return spans


_ASCII_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _plain(term: str, text: str, start: int, end: int) -> bool:
    """Whether a Latin term's place and the characters either side are all ASCII: there the rules need no
    expression (ASCII letters match case-insensitively exactly when their folds do, and an ASCII neighbour is a
    letter or digit exactly when it is in [A-Za-z0-9], with or without IGNORECASE). Elsewhere the term's own
    pattern decides: K, ſ, ı and İ count as letters to the case-insensitive boundaries of `occurs`."""
    return term.isascii() and text[max(0, start - 1) : end + 1].isascii()


def _word_edges(text: str, start: int, end: int) -> bool:
    return (start == 0 or text[start - 1] not in _ASCII_WORD) and (end >= len(text) or text[end] not in _ASCII_WORD)


@lru_cache(maxsize=256)
def _matcher(entries: tuple[Entry, ...]) -> Matcher:
    return Matcher(entries)


def find(text: str, entries: Sequence[Entry]) -> list[tuple[int, int, Entry]]:
    """Where entries' terms occur in a text, leftmost first, the longest term at each place, never overlapping.
    A job's own entry beats the tenant's for the same term; for Latin terms an exact-case entry beats others."""
    if not entries:
        return []
    by_term: dict[str, Entry] = {}
    for entry in sorted(entries, key=lambda e: e.source != "job"):
        by_term.setdefault(entry.term, entry)
        by_term.setdefault(entry.term.casefold(), entry)
    matcher = _matcher(tuple(entries))
    spans = []
    for start, end in matcher.spans(text):
        found = text[start:end]
        named = by_term.get(found) or by_term.get(found.casefold())
        if named is None:  # matched through a case pair casefold() does not share (ı for i): the term's own entry
            named = next(by_term[t] for t in matcher.terms if len(t) == end - start and fold(t) == fold(found))
        spans.append((start, end, named))
    return spans


def job_entries(options: dict[str, Any] | None) -> list[Entry]:
    """The lexicon snapshot stored in a job's options."""
    return [Entry.from_dict(item) for item in (options or {}).get("lexicon") or ()]


# -- the tenant's entries ----------------------------------------------------------------------------------------
def list_entries(
    session: Session, tenant_id: str, *, language: str | None, limit: int, cursor: str | None
) -> tuple[list[LexiconEntry], str | None]:
    """A page of the tenant's entries by language, then term; and the cursor of the next page, if any."""
    query = select(LexiconEntry).where(LexiconEntry.tenant_id == tenant_id)
    if language:
        query = query.where(LexiconEntry.language == language)
    if cursor:
        key = pages.decode_cursor(cursor, 2, "lexicon entry")
        query = query.where(pages.after((LexiconEntry.language, LexiconEntry.term), key))
    rows = list(session.scalars(query.order_by(LexiconEntry.language, LexiconEntry.term).limit(limit + 1)))
    last = rows[limit - 1] if len(rows) > limit else None
    return rows[:limit], pages.encode_cursor([last.language, last.term]) if last is not None else None


def get_entry(session: Session, tenant_id: str, language: str, term: str) -> LexiconEntry:
    row = session.scalar(
        select(LexiconEntry).where(
            LexiconEntry.tenant_id == tenant_id, LexiconEntry.language == language, LexiconEntry.term == term
        )
    )
    if row is None:
        raise NotFound(f"no lexicon entry for {term!r} in {language}", code="lexicon_entry_not_found")
    return row


def put_entry(session: Session, tenant_id: str, entry: Entry) -> tuple[LexiconEntry, bool]:
    """Create or replace the tenant's entry for (language, term); whether it was created. A new entry is counted
    against MAX_TENANT_ENTRIES under the tenant's lexicon lock (shared/admission.py), held to the commit, so
    concurrent puts never overshoot the cap."""
    try:
        row = get_entry(session, tenant_id, entry.language, entry.term)
    except NotFound:
        admission.lock_tenant(session, tenant_id, admission.LEXICON)
        count = session.scalar(select(func.count()).where(LexiconEntry.tenant_id == tenant_id)) or 0
        if count >= MAX_TENANT_ENTRIES:
            raise Conflict(
                f"the lexicon holds {count} entries; the limit is {MAX_TENANT_ENTRIES}", code="lexicon_full"
            ) from None
        row = LexiconEntry(tenant_id=tenant_id, language=entry.language, term=entry.term,
                           pronunciation=entry.pronunciation, alphabet=entry.alphabet)  # fmt: skip
        try:
            with session.begin_nested():  # a concurrent put of the same term may have created it meanwhile
                session.add(row)
            return row, True
        except IntegrityError:
            row = get_entry(session, tenant_id, entry.language, entry.term)
    row.pronunciation, row.alphabet, row.updated_at = entry.pronunciation, entry.alphabet, utcnow()
    session.flush()
    return row, False


def delete_entry(session: Session, tenant_id: str, language: str, term: str) -> None:
    session.delete(get_entry(session, tenant_id, language, term))


def entry_view(row: LexiconEntry) -> dict[str, Any]:
    return {
        "term": row.term,
        "language": row.language,
        "pronunciation": row.pronunciation,
        "alphabet": row.alphabet,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def check_entry(term: str, language: str, pronunciation: str = "", alphabet: str | None = None) -> Entry:
    """An entry from a request, or 400 with the code of what is wrong. With no pronunciation only the term and
    language are checked (a lookup or a delete)."""
    if language not in ALPHABETS:
        raise BadRequest(f"language must be one of {', '.join(ALPHABETS)}", code="unsupported_language")
    try:
        if not pronunciation:
            return Entry(_checked_term(term), language, "", alphabet or ALPHABETS[language][0])
        return normalise(term, language, pronunciation, alphabet)
    except InvalidEntry as exc:
        raise BadRequest(str(exc), code=exc.code) from None


# -- snapshots at submit -----------------------------------------------------------------------------------------
def tenant_entries(session: Session, tenant_id: str, languages: Iterable[str]) -> list[Entry]:
    """The tenant's entries of these languages (one query; at most MAX_TENANT_ENTRIES)."""
    return [
        Entry(r.term, r.language, r.pronunciation, r.alphabet)
        for r in session.execute(
            select(LexiconEntry.term, LexiconEntry.language, LexiconEntry.pronunciation, LexiconEntry.alphabet).where(
                LexiconEntry.tenant_id == tenant_id, LexiconEntry.language.in_(sorted(set(languages)))
            )
        )
    ]


def attach(session: Session, tenant_id: str, rows: Iterable[dict[str, Any]]) -> None:
    """Put the lexicon a job speaks with into each row's `options`: its own entries (`lexicon` of the request)
    and the tenant's entries of its language, or English ones, that occur in its text. Idempotent: a re-render
    takes a fresh snapshot of the tenant's entries. One query reads the tenant's entries; then one automaton
    (`Matcher`) is built for the whole call and each text is matched in one pass, with no database work: the
    cost is the entries once plus the texts, not entries x lines. Callers attach before they take the tenant's
    admission lock or write anything (shared/batches/service.py)."""
    rows = list(rows)
    languages = {str(row["language"]) for row in rows} | {"en"}
    tenant = tenant_entries(session, tenant_id, languages)
    attach_entries(tenant, rows)


def attach_entries(tenant: Sequence[Entry], rows: Iterable[dict[str, Any]]) -> None:
    """`attach` once the tenant's entries are read: pure computation over the rows."""
    matcher = Matcher(tenant)
    by_term: dict[str, list[Entry]] = {}
    for entry in tenant:
        by_term.setdefault(entry.term, []).append(entry)
    for row in rows:
        options = dict(row.get("options") or {})
        own = [e for e in job_entries(options) if e.source == "job"]
        text = str(row["text"])
        language = str(row["language"])
        mine = {(e.language, e.term) for e in own}
        found = [
            e
            for term in matcher.occurring(text)
            for e in by_term[term]
            if e.language in (language, "en") and (e.language, e.term) not in mine
        ]
        snapshot = sorted(own + found, key=lambda e: (e.source, e.language, e.term))
        if snapshot:
            options["lexicon"] = [e.to_dict() for e in snapshot]
        else:
            options.pop("lexicon", None)
        row["options"] = options or None
