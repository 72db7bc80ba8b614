"""Which graph the kokoro engine runs on this machine: the shipped int8 one, or its float32 rewrite.

`int8` is the shipped graph; `float32` is the same weights dequantised at load by worker/engines/kokoro/dequantise.py
(float convolutions in onnxruntime's blocked NCHWc layout). Which one is faster depends on the CPU and the kernels
onnxruntime has for it (on the AVX2 development VM int8 was: docs/benchmarks/engine-variants.md). The setting
`VOICEFARM_KOKORO_GRAPH` names one, or `auto` (the default): at the first load on a machine the engine times both
on one short line (`time_graphs`, a few seconds) and keeps the faster (`decide`); the answer is stored in the farm's
cache dir under a key naming everything it depends on (`machine_key`: the model, onnxruntime, the CPU, the core
and thread counts), like the stock voices' calibration is stored under its key, and every later load on the machine
reads it. The float32 graph is built once too and stored beside it, keyed by the model's SHA-256.

Files in the cache dir (`cache_dir`: `VOICEFARM_KOKORO_CACHE_DIR`, else `~/.cache/voicefarm/kokoro/`, shared by
every farm on the machine, else `<data dir>/cache/kokoro/`): `float32-<model sha256>-v<version>.onnx` (about 330 MB) and
`graph-<machine key>.json` (the choice and the timings it was made on). Both are written to a temporary name and
renamed, so workers starting together never read half a file; each may time and build on its own, and the last
rename wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from worker.engines.kokoro import dequantise

log = logging.getLogger(__name__)

Graph = Literal["int8", "float32"]
GRAPHS: tuple[Graph, ...] = ("int8", "float32")
SETTINGS = ("auto", *GRAPHS)
# Bump when `decide` or `time_graphs` changes how a machine's choice is made (stored choices are then made again).
FORMAT = 1
# float32 is kept only when it is this much faster than int8: a tie keeps the smaller graph (300 MB less per worker).
MARGIN = 0.05
# The line `time_graphs` speaks: the calibration's English sentence as the engine's G2P spells it (fixed, so the
# timing needs no G2P and feeds the same tokens everywhere).
TIMING_PHONEMES = "plˈiz kˈɔl stˈɛlə ænd ˈæsk hɜɹ tə bɹˈɪŋ ðiz θˈɪŋz wɪð hɜɹ fɹʌmðə stˈɔɹ."
TIMING_ROUNDS = 3


@dataclass(frozen=True)
class Choice:
    """A machine's graph and the seconds each graph took for the timing line (best of the rounds)."""

    graph: Graph
    seconds: dict[str, float]
    key: str
    measured_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def cache_dir(configured: str, data_dir: Path) -> Path:
    """Where the engine keeps its float32 graph and this machine's choice: `configured`, else the user's cache dir
    (a property of the machine, so every farm on it shares one choice and one float32 file), else the data dir's
    cache when the home dir cannot be written (a container's read-only home, say)."""
    if configured:
        return Path(configured)
    try:
        home = Path.home() / ".cache" / "voicefarm" / "kokoro"
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except (OSError, RuntimeError):  # RuntimeError: no home dir at all
        pass
    return data_dir / "cache" / "kokoro"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the farm's other processes read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def float32_model(model_bytes: bytes, digest: str, directory: Path | None) -> str | bytes:
    """The float32 graph of the model whose SHA-256 is `digest`, for onnxruntime: the path of the file in
    `directory` (built and stored there on the first call), or the bytes when it cannot be stored. A session
    loaded from the file holds about 300 MB less than one loaded from the same bytes."""
    path = directory / f"float32-{digest}-v{dequantise.VERSION}.onnx" if directory is not None else None
    if path is not None and path.is_file():
        return str(path)
    started = time.perf_counter()
    built = dequantise.float32_graph(model_bytes)
    log.info("kokoro: built the float32 graph in %.1f s (%d MB)", time.perf_counter() - started, len(built) >> 20)
    if path is None:
        return built
    try:
        _write_atomic(path, built)
    except OSError as exc:  # a read-only or full disk: this process keeps its copy, the next builds again
        log.warning("kokoro: the float32 graph could not be cached at %s (%s)", path, exc)
        return built
    return str(path)


def cpu_identity() -> str:
    """The CPU as the kernels see it: its model name and feature flags (Linux), else what the platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "flags", "Features", "CPU implementer", "CPU part") and name not in fields:
            fields[name] = " ".join(sorted(value.split())) if name in ("flags", "Features") else value.strip()
    return json.dumps(fields, sort_keys=True) if fields else f"{platform.machine()} {platform.processor()}"


def machine_key(digest: str, threads: int) -> str:
    """What a machine's choice depends on, hashed: the model, onnxruntime, the CPU, cores and threads."""
    try:
        runtime = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        runtime = "?"
    identity = {
        "format": FORMAT,
        "dequantise": dequantise.VERSION,
        "model": digest,
        "onnxruntime": runtime,
        "cpu": cpu_identity(),
        "cores": os.cpu_count(),
        "threads": threads,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def stored_choice(directory: Path, key: str) -> Choice | None:
    """The choice stored for `key`, or None (never made, or unreadable: then it is made again)."""
    path = directory / f"graph-{key}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        choice = Choice(
            graph=raw["graph"], seconds=dict(raw["seconds"]), key=raw["key"], measured_at=raw["measured_at"]
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("kokoro: stored graph choice %s is unreadable (%s); timing again", path, exc)
        return None
    return choice if choice.graph in GRAPHS and choice.key == key else None


def store_choice(directory: Path, choice: Choice) -> None:
    try:
        _write_atomic(directory / f"graph-{choice.key}.json", choice.to_json().encode())
    except OSError as exc:
        log.warning("kokoro: the graph choice could not be stored in %s (%s)", directory, exc)


def time_graphs(run: dict[Graph, Callable[[], Any]], rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Seconds per call of each graph's `run`, best of `rounds`, after one untimed call each; the graphs take
    turns within a round, so load from other processes hits them alike."""
    for call in run.values():
        call()
    best: dict[str, float] = {name: float("inf") for name in run}
    for _ in range(rounds):
        for name, call in run.items():
            started = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def decide(seconds: dict[str, float], margin: float = MARGIN) -> Graph:
    """float32 when it beat int8 by more than `margin`, else int8."""
    if "float32" in seconds and seconds["float32"] < (1.0 - margin) * seconds["int8"]:
        return "float32"
    return "int8"
