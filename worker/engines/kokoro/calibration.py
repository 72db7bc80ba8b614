"""The stock voices' calibration renders, stored once per model version and loaded by every fresh worker.

A clone matches the reference against every stock voice reading the calibration sentences (`engine._CALIBRATION`):
rendering and embedding them costs tens of seconds on a CPU, once per worker process. The result depends only on
the weights, the sentences, the speaker encoder, G2P and onnxruntime, so it is stored under a key naming them
(`calibration/kokoro/<sha256>.npz` in the farm's S3 bucket). Two workers that miss at once both compute it and
write the same bytes (the renders are deterministic; tests/worker/test_calibration.py checks it), so no lock is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

from shared.errors import VoicefarmError
from shared.storage import Storage

log = logging.getLogger(__name__)
# Bump when what a calibration holds, or how it is computed, changes.
FORMAT = 1
PREFIX = "calibration/kokoro/"


class CalibrationStore(Protocol):
    """Where calibrations live: `get` answers None for a key never stored."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class S3CalibrationStore:
    """The farm's bucket (shared.storage.Storage): workers on every node see the same objects."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def get(self, key: str) -> bytes | None:
        try:
            if not self.storage.exists(key):
                return None
            return self.storage.get(key)
        except VoicefarmError as exc:  # storage down: this clone renders its own, as before the cache
            log.warning("kokoro calibration %s could not be read (%s); rendering it", key, exc)
            return None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.storage.put(key, data)
        except VoicefarmError as exc:
            log.warning("kokoro calibration %s could not be stored (%s)", key, exc)


def calibration_key(sentences: tuple[tuple[str, str], ...], voices: tuple[str, ...], graph: str = "int8") -> str:
    """The object key: a hash of the model version and the graph it runs (int8 or float32), the packages and farm
    code that shape the renders and their embeddings (so a changed G2P, model session or encoder never reads an old
    calibration), the sentences and the voices."""
    from shared.jobs.dedup import model_version

    identity = {
        "format": FORMAT,
        "model": model_version("kokoro", ""),
        "graph": graph,
        "packages": {name: _version(name) for name in _PACKAGES},
        "code": CODE_HASH,
        "sentences": sentences,
        "voices": voices,
    }
    raw = json.dumps(identity, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return f"{PREFIX}{hashlib.sha256(raw).hexdigest()}.npz"


_PACKAGES = ("onnxruntime", "numpy", "resemblyzer", "misaki", "pyopenjtalk-plus", "espeakng-loader")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _code_hash() -> str:
    """Every file of this engine package (G2P, lexicons, the model session) and the speaker encoder, as they were
    when this process imported the engine (files edited later on disk do not change the code it runs)."""
    here = Path(__file__).resolve().parent
    files = sorted(p for p in here.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files.append(here.parents[1] / "evaluators" / "similarity.py")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(here.parents[2]).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


CODE_HASH = _code_hash()


def dump(stock: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Each voice's calibration audio and embedding, dtypes kept, as one uncompressed npz (no pickles)."""
    arrays = {}
    for name, (audio, embedding) in stock.items():
        arrays[f"{name}.audio"] = np.asarray(audio)
        arrays[f"{name}.embedding"] = np.asarray(embedding)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def load(data: bytes, voices: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The stored calibration, or None when it is unreadable or lacks a voice (then it is computed again)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: (npz[f"{name}.audio"], npz[f"{name}.embedding"]) for name in voices}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("stored kokoro calibration is unreadable (%s); computing it again", exc)
        return None
