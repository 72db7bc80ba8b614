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

import re
from collections.abc import Callable, Sequence
from functools import partial

from shared.text.normalization import chinese, english, japanese
from shared.text.normalization.common import Rule

_FULLWIDTH = str.maketrans("０１２３４５６７８９％＄￡€－", "0123456789%$£€-")
# Keep-terms are swapped for private-use characters, which no rule matches and `\w` does not include.
_KEEP_BASE = 0xF0000
# Each language's rules, applied in order, and what runs after them.
_LANGUAGES: dict[str, tuple[list[Rule], Callable[[str], str] | None]] = {
    "en": (english.RULES, None),
    "zh": (chinese.RULES, chinese.finish),
    "yue": (chinese.RULES, chinese.finish),
    "ja": (japanese.RULES, None),
}


def normalize_for_speech(text: str, language: str, keep: Sequence[str] = ()) -> str:
    """The words to speak for `text`; languages without rules here (CosyVoice's ko, de, ...) pass unchanged."""
    if language not in _LANGUAGES:
        return text
    rules, finish = _LANGUAGES[language]
    text, kept = _protect(text, keep)
    text = text.translate(_FULLWIDTH)
    for pattern, spell in rules:
        text = pattern.sub(partial(_as_said, spell), text)
    if finish is not None:
        text = finish(text)
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
    (shared/text/lexicon.py `occurs`), others as written. Returns the text and the originals, by placeholder."""
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
