"""English phonemes from the espeak-ng library that `espeakng-loader` ships (shared object plus data, offline).

espeak-ng is driven through ctypes (`espeak_TextToPhonemes` in IPA mode with a tie character between the letters
of one phoneme), then its IPA is rewritten into the American-English symbol set Kokoro v1.0 was trained on:
diphthongs and affricates are single symbols (A=eɪ, I=aɪ, W=aʊ, Y=ɔɪ, O=oʊ, ʤ, ʧ), r-coloured vowels are spelled
out (əɹ, ɜɹ), the flap is T, and length marks are dropped. espeak-ng is not thread-safe: calls are serialised.
"""

from __future__ import annotations

import ctypes
import re
import threading

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_TIE = "^"
# bit 1: IPA output; bit 7: put the character in bits 8-23 between the letters of a multi-letter phoneme
_PHONEME_MODE = 0x02 | 0x80 | (ord(_TIE) << 8)

# espeak-ng IPA (with ties) -> Kokoro American-English symbols, longest patterns first.
_TO_KOKORO: list[tuple[str, str]] = sorted(
    {
        "a^ɪ": "I",
        "a^ʊ": "W",
        "e^ɪ": "A",
        "o^ʊ": "O",
        "ə^ʊ": "O",
        "ɔ^ɪ": "Y",
        "d^ʒ": "ʤ",
        "t^ʃ": "ʧ",
        "ɜː": "ɜɹ",
        "ɚ": "əɹ",
        "ɐ": "ə",
        "ɒ": "ɑ",
        "r": "ɹ",
        "ɾ": "T",
        "ʔ": "t",
        "ɬ": "l",
        "x": "k",
        "ç": "k",
        "e": "A",
        "ː": "",
        "ʲ": "",
        "\u0303": "",
    }.items(),
    key=lambda item: -len(item[0]),
)
_SYLLABIC = re.compile(r"(\S)\u0329")
# Clause punctuation Kokoro has tokens for; espeak-ng drops it, so clauses are phonemised one at a time.
_CLAUSE = re.compile(r"([,;:!?…—“”\"()]+|\.+(?=\s|$))")


class EspeakEnglish:
    """`EspeakEnglish()(text)` -> Kokoro phoneme string for American English."""

    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None

    def __init__(self, voice: str = "en-us") -> None:
        self.voice = voice.encode("ascii")
        with self._lock:
            if EspeakEnglish._lib is None:
                EspeakEnglish._lib = self._initialise()

    @staticmethod
    def _initialise() -> ctypes.CDLL:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        data_path = espeakng_loader.get_data_path().encode("utf-8")
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0) <= 0:
            raise RuntimeError("espeak-ng failed to initialise from the espeakng-loader data")
        return lib

    def _ipa(self, text: str) -> str:
        lib = EspeakEnglish._lib
        assert lib is not None
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        pieces: list[str] = []
        with self._lock:
            if lib.espeak_SetVoiceByName(self.voice) != 0:
                raise RuntimeError(f"espeak-ng has no voice {self.voice.decode()!r}")
            while pointer.value:
                result = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEME_MODE)
                if result:
                    pieces.append(result.decode("utf-8").strip())
        return " ".join(piece for piece in pieces if piece)

    @staticmethod
    def to_kokoro(ipa: str) -> str:
        ipa = _SYLLABIC.sub(r"ᵊ\1", ipa)
        for old, new in _TO_KOKORO:
            ipa = ipa.replace(old, new)
        # espeak-ng writes a linking r after an r-coloured vowel ("water and" -> ...ɚɹ ænd): keep one ɹ.
        return ipa.replace(_TIE, "").replace("ɹɹ", "ɹ")

    def __call__(self, text: str) -> str:
        out: list[str] = []
        for piece in _CLAUSE.split(text):
            if not piece.strip():
                continue
            if _CLAUSE.fullmatch(piece.strip()):
                out.append(piece.strip())
            else:
                phonemes = self.to_kokoro(self._ipa(piece))
                if phonemes:
                    out.append(" " + phonemes)
        return "".join(out).strip()
