"""The `kokoro` engine: Kokoro-82M int8 ONNX on CPU behind the `Engine` protocol.

Weights, voices and G2P dictionaries all come from installed Python packages; nothing touches the network.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.config import Settings
from shared.engines.kokoro import DEFAULT_VOICES, MAX_SEGMENT_CHARS, MAX_SPEED, MIN_SPEED, MODES, STOCK_VOICES
from shared.engines.kokoro import NAME as ENGINE_NAME
from shared.text.lexicon import Entry as LexiconEntry
from worker.engines.base import Capabilities, Mode, Synthesis, VoiceProfile, check_segment
from worker.engines.kokoro import calibration, matching, variants
from worker.engines.kokoro.durations import word_clock
from worker.engines.kokoro.g2p import LANGUAGES, Phonemizer
from worker.engines.kokoro.instruct import HONOURED, parse_instruction
from worker.engines.kokoro.model import MAX_TOKENS, SAMPLE_RATE, KokoroModel
from worker.evaluators.similarity import SpeakerEncoder, shared_encoder

# What every stock voice reads to be matched against references: its speaker embedding, mean spectral envelope
# and pitch come from these renders, and clone() tunes the WORLD transform on them.
_CALIBRATION = (
    ("ja", "今日はとてもいい天気ですね。一緒に公園を散歩しましょう。"),
    ("en", "Please call Stella and ask her to bring these things with her from the store."),
)
_CHUNK_GAP_S = 0.12
# What a blend of voice packs reads while clone() searches the style-vector space (one render per blend tried).
_PROBE = _CALIBRATION[1]
# "world": nearest stock voice + WORLD transform; "blend": style-vector search only; "blend+world": both.
MATCHERS = ("world", "blend", "blend+world")
_KEPT_BLENDS = 64
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


def _trim_bounds(audio: np.ndarray, threshold: float = 0.005, pad_s: float = 0.05) -> tuple[int, int]:
    """The part of `audio` kept: the loud part and a pad each side (all of it when nothing is loud)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return 0, len(audio)
    pad = int(pad_s * SAMPLE_RATE)
    return max(0, int(loud[0]) - pad), min(len(audio), int(loud[-1]) + pad)


@dataclass
class _StockVoice:
    """A stock voice reading the calibration sentences; its WORLD analysis is made when a clone first needs it."""

    audio: np.ndarray
    embedding: np.ndarray
    world: matching.World | None = None


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

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        threads: int | None = None,
        warm_languages: tuple[str, ...] = LANGUAGES,
        graph: str | None = None,
    ) -> None:
        """Intra-op threads: `threads`, else `settings.kokoro.threads`, else (0 or no settings) every core.
        The graph (worker/engines/kokoro/variants.py): `graph`, else `settings.kokoro.graph`, else the shipped int8;
        the float32 graph and the machine's choice are cached in `variants.cache_dir`."""
        self._threads = threads or (settings.kokoro.threads if settings is not None else 0) or None
        self._graph = graph or (settings.kokoro.graph if settings is not None else "int8")
        self._cache = variants.cache_dir(settings.kokoro.cache_dir, settings.data_dir) if settings is not None else None
        self._warm_languages = warm_languages
        self._lock = threading.Lock()
        self._model: KokoroModel | None = None
        self._phonemizer = Phonemizer()
        self._stock: dict[str, _StockVoice] | None = None
        self._stock_lock = threading.Lock()
        self._encoder: SpeakerEncoder = shared_encoder()
        # Where the calibration is shared between workers (the worker sets the farm's S3); None: this process only.
        self.calibration_store: calibration.CalibrationStore | None = None
        self.calibrations_rendered = 0  # how often this engine rendered the calibration itself
        self.matcher = "world"  # how clone() matches a reference; one of MATCHERS

    # -- lifecycle -------------------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            model = KokoroModel(self._threads, self._graph, self._cache)
            missing = set(STOCK_VOICES) - set(model.voices)
            if missing:
                raise RuntimeError(f"kokoro voice packs are missing: {', '.join(sorted(missing))}")
            self._phonemizer.warm(self._warm_languages)
            self._encoder.load()
            self._model = model

    @property
    def model(self) -> KokoroModel:
        self.load()
        assert self._model is not None
        return self._model

    # -- voices ----------------------------------------------------------------------------------------------
    def _resolve_voice(self, voice: str | VoiceProfile) -> tuple[str, matching.Profile | None, list[str]]:
        if isinstance(voice, VoiceProfile):
            if voice.engine != ENGINE_NAME:
                raise ValueError(f"voice profile was built by engine {voice.engine!r}, not {ENGINE_NAME!r}")
            profile = matching.parse_profile(voice.data)
            if profile.base_voice not in STOCK_VOICES or not set(profile.blend or ()) <= set(STOCK_VOICES):
                raise ValueError(f"kokoro profile names an unknown stock voice {profile.base_voice!r}")
            moved = (
                ", with its pitch and spectral envelope moved toward the reference"
                if profile.transform is not None and not profile.transform.identity
                else ""
            )
            note = (
                f"The kokoro engine cannot clone voices: this voice is spoken by the stock voice "
                f"{profile.base_voice!r}, the one nearest to the reference by speaker embedding{moved}. "
                "On held-out speech this matching gained +0.11 similarity over the best stock voice for espeak-ng "
                "speakers and none for recorded speakers (flite, festival); see docs/benchmarks/matcher-heldout.md."
            )
            return profile.base_voice, profile, [note]
        if voice not in STOCK_VOICES:
            raise ValueError(f"unknown kokoro voice {voice!r}; stock voices: {', '.join(STOCK_VOICES)}")
        return voice, None, []

    def _stock_voices(self) -> dict[str, _StockVoice]:
        """Every stock voice reading the calibration sentences, with its speaker embedding: from the store when
        a worker stored it already for this model version, else rendered here once and stored."""
        with self._stock_lock:
            if self._stock is None:
                key = calibration.calibration_key(_CALIBRATION, STOCK_VOICES, self.model.graph)
                stored = self.calibration_store.get(key) if self.calibration_store is not None else None
                loaded = calibration.load(stored, STOCK_VOICES) if stored is not None else None
                if loaded is None:
                    loaded = self._calibrate()
                    self.calibrations_rendered += 1
                    if self.calibration_store is not None:
                        self.calibration_store.put(key, calibration.dump(loaded))
                self._stock = {name: _StockVoice(audio=a, embedding=e) for name, (a, e) in loaded.items()}
            return self._stock

    def _calibrate(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Render and embed the calibration of every stock voice: (audio, embedding) per voice."""
        stock = {}
        gap = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
        for name in STOCK_VOICES:
            renders = [self._render(sentence, language, name, 1.0)[0] for language, sentence in _CALIBRATION]
            audio = np.concatenate([renders[0], *(x for r in renders[1:] for x in (gap, r))])
            stock[name] = (audio, self._encoder.embed(audio, SAMPLE_RATE))
        return stock

    def clone(
        self,
        reference_audio: np.ndarray,
        sample_rate: int,
        transcript: str | None,
        held_out: np.ndarray | None = None,
    ) -> VoiceProfile:
        """Nearest stock voice by speaker embedding plus a WORLD transform toward the reference; see `matching`."""
        audio = np.asarray(reference_audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError("reference audio must be non-empty mono samples")
        if sample_rate < 8000:
            raise ValueError(f"reference sample rate {sample_rate} Hz is too low")
        # Fitted to the whole reference when a second clip is given to score outputs against; else to the first
        # part of a long enough reference, the rest held out to score outputs honestly.
        held: np.ndarray | None
        if held_out is not None:
            fitting, held, held_source = audio, np.asarray(held_out, dtype=np.float32), "second_clip"
            if held.ndim != 1 or held.size == 0:
                raise ValueError("the second clip must be non-empty mono samples")
        else:
            (fitting, held), held_source = matching.split_reference(audio, sample_rate), "held_out"
        reference = matching.analyse(fitting, sample_rate)
        matching.check_voiced(reference)
        self.load()
        embedding = self._encoder.embed(fitting, sample_rate)
        held_embedding = self._encoder.embed(held, sample_rate) if held is not None else None
        stock = self._stock_voices()
        base, similarities = matching.nearest_voice(embedding, {n: v.embedding for n, v in stock.items()})
        voice = stock[base]

        def score(candidate: np.ndarray) -> float:
            return self._encoder.similarity(self._encoder.embed(candidate, SAMPLE_RATE), embedding)

        blend: dict[str, float] | None = None
        if self.matcher == "world":
            if voice.world is None:
                voice.world = matching.analyse(voice.audio)
            transform, matched, plain = matching.tune(reference, voice.world, voice.audio, score)
        elif self.matcher in ("blend", "blend+world"):
            probes: dict[str, np.ndarray] = {}

            def probe_score(weights: dict[str, float]) -> float:
                key = matching.blend_key(weights)
                probes[key] = self._render(_PROBE[1], _PROBE[0], self._voice_name(weights), 1.0)[0]
                return score(probes[key])

            weights, matched, plain, _ = matching.search_blend(base, STOCK_VOICES, probe_score)
            blend = weights if set(weights) != {base} else None
            base = max(weights, key=weights.__getitem__)
            transform = None
            if self.matcher == "blend+world":
                probe = probes[matching.blend_key(weights)]
                transform, matched, _ = matching.tune(reference, matching.analyse(probe), probe, score)
        else:
            raise ValueError(f"unknown kokoro matcher {self.matcher!r}; one of {', '.join(MATCHERS)}")
        match = matching.VoiceMatch(
            base_voice=base,
            similarities=similarities,
            embedding=tuple(float(v) for v in embedding),
            transform=transform,
            calibration_scores=(plain, matched),
            held_out=tuple(float(v) for v in held_embedding) if held_embedding is not None else None,
            held_out_source=held_source,
            blend=blend,
            method="ge2e-nearest+world" if self.matcher == "world" else f"ge2e-nearest+{self.matcher}-search",
        )
        return VoiceProfile(engine=ENGINE_NAME, data=match.to_bytes())

    def _voice_name(self, weights: dict[str, float] | None, base: str = "") -> str:
        """The model's name for a blend of stock packs, its pack made and registered on first use."""
        if not weights:
            return base
        if set(weights) == {next(iter(weights))} and next(iter(weights)) in STOCK_VOICES:
            return next(iter(weights))
        name = matching.blend_key(weights)
        voices = self.model.voices
        if name not in voices:
            blends = [key for key in voices if key.startswith("blend:")]
            for old in blends[: max(0, len(blends) - _KEPT_BLENDS + 1)]:  # 0.5 MB a pack: keep the newest only
                voices.pop(old, None)
            voices[name] = matching.blend_pack({n: voices[n] for n in weights}, weights)
        return name

    # -- synthesis -------------------------------------------------------------------------------------------
    def _render(
        self, text: str, language: str, voice: str, speed: float, lexicon: Sequence[LexiconEntry] = ()
    ) -> tuple[np.ndarray, list[str], list[dict[str, Any]] | None]:
        """Audio, warnings, and each script word's times from the model's own durations (None: not known)."""
        model = self.model
        phonemes = self._phonemizer(text, language, lexicon)  # lexicon terms said as their entries say
        pieces = self._phonemizer.pieces(text, language)
        clock = word_clock(text, phonemes, lambda word: self._phonemizer(word, language, lexicon), pieces)
        warnings: list[str] = []
        _, unknown = model.tokenize(phonemes)
        if unknown:
            warnings.append(f"Some sounds have no kokoro phoneme and were skipped: {unknown!r}.")
        parts: list[np.ndarray] = []
        gap = np.zeros(int(_CHUNK_GAP_S * SAMPLE_RATE), dtype=np.float32)
        offset = 0
        for chunk in _split_phonemes(phonemes, model.vocab):
            tokens, _ = model.tokenize(chunk)
            owners = clock.token_owners(chunk, model.vocab) if clock is not None else []
            if tokens:
                if parts:
                    parts.append(gap)
                    offset += len(gap)
                raw, durations = model.infer_timed(tokens, voice, speed)
                begin, end = _trim_bounds(raw)
                parts.append(raw[begin:end])
                if clock is not None:
                    if durations is None:
                        clock = None
                    else:
                        clock.add(owners, durations, offset, (begin, end))
                offset += end - begin
        if not parts:
            raise ValueError(f"nothing to speak in {text!r} (no pronounceable {language} text)")
        audio = np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)
        words = clock.timings(SAMPLE_RATE, len(audio)) if clock is not None else None
        return audio, warnings, words

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
        lexicon: Sequence[LexiconEntry] = (),
    ) -> Synthesis:
        check_segment(self.capabilities, text, mode, language, speed)
        base_voice, profile, warnings = self._resolve_voice(voice)
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
        spoken = self._voice_name(profile.blend, base_voice) if profile is not None else base_voice
        audio, render_warnings, words = self._render(text, language, spoken, effective, lexicon)
        warnings.extend(render_warnings)
        similarity, basis = None, None
        if profile is not None:
            if profile.transform is not None:
                audio = profile.transform.apply(audio)
            target, basis = profile.similarity_target()
            if target is not None:
                try:
                    output = self._encoder.embed(audio, SAMPLE_RATE)
                except ValueError:  # nothing audible to measure
                    output = None
                if output is not None:
                    similarity = self._encoder.similarity(output, target)
        return Synthesis(
            audio=audio,
            sample_rate=SAMPLE_RATE,
            warnings=warnings,
            similarity=similarity,
            words=words,
            similarity_basis=basis if similarity is not None else None,
        )
