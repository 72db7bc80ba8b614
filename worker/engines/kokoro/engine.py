"""The `kokoro` engine: Kokoro-82M int8 ONNX on CPU behind the `Engine` protocol.

Weights, voices and G2P dictionaries all come from installed Python packages; nothing touches the network.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from worker.engines.base import Capabilities, Mode, Synthesis, VoiceProfile
from worker.engines.kokoro import matching
from worker.engines.kokoro.g2p import LANGUAGES, Phonemizer
from worker.engines.kokoro.instruct import HONOURED, parse_instruction
from worker.engines.kokoro.model import MAX_TOKENS, SAMPLE_RATE, KokoroModel

ENGINE_NAME = "kokoro"
STOCK_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# All five packs are Japanese speakers. Defaults by Whisper round trip over 5 sentences per language and voice:
# en: jf_alpha, jf_tebukuro and jm_kumo tie (WER 0.02, only "nine" heard as "9"); ja: all 0.09-0.12 CER, mostly
# kana/kanji spelling, so jf_alpha (upstream's best-graded Japanese voice); zh: jm_kumo reads Mandarin clearly
# best (CER 0.05 vs 0.13-0.17 for the female voices).
DEFAULT_VOICES = {"ja": "jf_alpha", "zh": "jm_kumo", "en": "jf_alpha"}
MAX_SEGMENT_CHARS = 200
MIN_SPEED, MAX_SPEED = 0.5, 2.0
MODES = ("clone", "cross_lingual", "instruct")

_CALIBRATION = ("ja", "今日はとてもいい天気ですね。一緒に公園を散歩しましょう。")
_CHUNK_GAP_S = 0.12
_SENTENCE_END = re.compile(r"(?<=[.!?;:,…—])\s+")


def _split_phonemes(phonemes: str, tokens_of: dict[str, int]) -> list[str]:
    """Pack phonemes into pieces of at most MAX_TOKENS tokens, cutting at punctuation, then at spaces."""
    pieces: list[str] = []
    for clause in _SENTENCE_END.split(phonemes):
        words = clause.split(" ")
        for word in words:
            while len(word) > MAX_TOKENS:  # pathological: one "word" longer than the model's context
                pieces.append(word[:MAX_TOKENS])
                word = word[MAX_TOKENS:]
            pieces.append(word)
        pieces.append("\n")  # clause boundary marker
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if piece == "\n":
            continue
        candidate = f"{current} {piece}".strip() if current else piece
        if sum(c in tokens_of for c in candidate) > MAX_TOKENS and current:
            chunks.append(current)
            current = piece
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def _trim(audio: np.ndarray, threshold: float = 0.005, pad_s: float = 0.05) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    pad = int(pad_s * SAMPLE_RATE)
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


class KokoroEngine:
    """Embedded default engine. `load()` once per process; `synthesize` and `clone` may run from several threads."""

    capabilities = Capabilities(
        name=ENGINE_NAME,
        languages=LANGUAGES,
        modes=MODES,
        sample_rate=SAMPLE_RATE,
        max_segment_chars=MAX_SEGMENT_CHARS,
        stock_voices=STOCK_VOICES,
        default_voices=dict(DEFAULT_VOICES),
        instructions=HONOURED,
    )

    def __init__(self, threads: int | None = None, warm_languages: tuple[str, ...] = LANGUAGES) -> None:
        self._threads = threads
        self._warm_languages = warm_languages
        self._lock = threading.Lock()
        self._model: KokoroModel | None = None
        self._phonemizer = Phonemizer()
        self._voice_features: dict[str, matching.VoiceFeatures] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            model = KokoroModel(self._threads)
            missing = set(STOCK_VOICES) - set(model.voices)
            if missing:
                raise RuntimeError(f"kokoro voice packs are missing: {', '.join(sorted(missing))}")
            self._phonemizer.warm(self._warm_languages)
            self._model = model

    @property
    def model(self) -> KokoroModel:
        self.load()
        assert self._model is not None
        return self._model

    # -- voices ----------------------------------------------------------------------------------------------
    def _resolve_voice(self, voice: str | VoiceProfile) -> tuple[str, list[str]]:
        if isinstance(voice, VoiceProfile):
            if voice.engine != ENGINE_NAME:
                raise ValueError(f"voice profile was built by engine {voice.engine!r}, not {ENGINE_NAME!r}")
            base = matching.profile_base_voice(voice.data)
            if base not in STOCK_VOICES:
                raise ValueError(f"kokoro profile names an unknown stock voice {base!r}")
            note = (
                f"The kokoro engine cannot clone voices: this voice is spoken by the stock voice {base!r}, "
                "the one nearest to the reference in pitch and timbre."
            )
            return base, [note]
        if voice not in STOCK_VOICES:
            raise ValueError(f"unknown kokoro voice {voice!r}; stock voices: {', '.join(STOCK_VOICES)}")
        return voice, []

    def _stock_features(self) -> dict[str, matching.VoiceFeatures]:
        """Pitch and timbre of every stock voice reading the calibration sentence (computed once)."""
        if self._voice_features is None:
            language, sentence = _CALIBRATION
            features = {}
            for name in STOCK_VOICES:
                audio, _ = self._render(sentence, language, name, 1.0)
                features[name] = matching.voice_features(audio, SAMPLE_RATE)
            self._voice_features = features
        return self._voice_features

    def clone(self, reference_audio: np.ndarray, sample_rate: int, transcript: str | None) -> VoiceProfile:
        """Match the reference to the nearest stock voice (pitch + average spectrum); see `matching`."""
        audio = np.asarray(reference_audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError("reference audio must be non-empty mono samples")
        if sample_rate < 8000:
            raise ValueError(f"reference sample rate {sample_rate} Hz is too low")
        reference = matching.voice_features(audio, sample_rate)
        match = matching.nearest_voice(reference, self._stock_features())
        return VoiceProfile(engine=ENGINE_NAME, data=match.to_bytes())

    # -- synthesis -------------------------------------------------------------------------------------------
    def _render(self, text: str, language: str, voice: str, speed: float) -> tuple[np.ndarray, list[str]]:
        model = self.model
        phonemes = self._phonemizer(text, language)
        warnings: list[str] = []
        _, unknown = model.tokenize(phonemes)
        if unknown:
            warnings.append(f"Some sounds have no kokoro phoneme and were skipped: {unknown!r}.")
        parts: list[np.ndarray] = []
        gap = np.zeros(int(_CHUNK_GAP_S * SAMPLE_RATE), dtype=np.float32)
        for chunk in _split_phonemes(phonemes, model.vocab):
            tokens, _ = model.tokenize(chunk)
            if tokens:
                if parts:
                    parts.append(gap)
                parts.append(_trim(model.infer(tokens, voice, speed)))
        if not parts:
            raise ValueError(f"nothing to speak in {text!r} (no pronounceable {language} text)")
        audio = np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)
        return audio, warnings

    def synthesize(
        self,
        text: str,
        *,
        voice: str | VoiceProfile,
        mode: Mode = "clone",
        instruct: str | None = None,
        language: str = "en",
        speed: float = 1.0,
        seed: int | None = None,  # Kokoro is deterministic; there is nothing to seed
    ) -> Synthesis:
        if language not in LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; kokoro speaks {', '.join(LANGUAGES)}")
        if mode not in MODES:
            raise ValueError(f"unsupported mode {mode!r}; kokoro modes: {', '.join(MODES)}")
        if not text or not text.strip():
            raise ValueError("text is empty")
        if len(text) > MAX_SEGMENT_CHARS:
            raise ValueError(f"segment has {len(text)} characters; kokoro takes at most {MAX_SEGMENT_CHARS}")
        if not (isinstance(speed, int | float) and np.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        base_voice, warnings = self._resolve_voice(voice)
        instruction = parse_instruction(instruct)
        warnings.extend(instruction.warnings)
        effective = float(speed) * instruction.speed_factor
        if not MIN_SPEED <= effective <= MAX_SPEED:
            clamped = min(max(effective, MIN_SPEED), MAX_SPEED)
            warnings.append(
                f"Speaking speed {effective:.2f} is outside what kokoro supports ({MIN_SPEED}-{MAX_SPEED}); "
                f"used {clamped:.2f}."
            )
            effective = clamped
        audio, render_warnings = self._render(text, language, base_voice, effective)
        warnings.extend(render_warnings)
        return Synthesis(audio=audio, sample_rate=SAMPLE_RATE, warnings=warnings)
