"""The kokoro engine's onnxruntime session before and after tuning, on the same English lines, in one run.

    .venv/bin/python benchmarks/kokoro_rtf.py [--threads 2] [--rounds 3] [--lines 6] [--variants]

Loads the shipped int8 graph twice: "before" with the session options the engine used until now (intra-op
threads = --threads, one inter-op thread), "after" with `model.session_options` as worker/engines/kokoro/model.py
uses them now. --variants adds the `ConvInteger` -> float `Conv` rewrite of worker/engines/kokoro/graph.py with
either options. Both speak every line once
untimed (warm-up), then the lines alternate between the sessions for --rounds rounds, so machine load hits both
alike. Prints the RTF (wall / audio) of each, the load average at start and end, and whether the audio is
identical (sha256 of every line's samples, max abs difference). The session's run is 99.8 % of the engine's
synthesis time on English (docs/benchmarks/kokoro-profile.md), so these RTFs are the engine's within a fraction of a
percent.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.engines.kokoro.g2p import Phonemizer  # noqa: E402
from worker.engines.kokoro.graph import float_convolutions  # noqa: E402
from worker.engines.kokoro.model import (  # noqa: E402
    SAMPLE_RATE,
    read_model_bytes,
    read_vocab,
    read_voice_packs,
    session_options,
)

LINES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to back up your files before installing the update.",
    "Our store opens at nine in the morning and closes at six in the evening.",
    "Hello there.",
    "The weather is lovely today, so we are going to take a long walk in the park and have lunch by the lake.",
    "Thank you for calling. All of our agents are busy right now, but your call is important to us.",
]
VOICE = "jf_alpha"


def _session(model: bytes, options: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _before_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


@dataclass(frozen=True)
class Timed:
    config: str
    audio_s: float
    wall_s: float
    identical: bool  # the same samples as "before", bit for bit
    max_diff: float
    digest: str

    @property
    def rtf(self) -> float:
        return self.wall_s / self.audio_s


def compare(threads: int, rounds: int, n_lines: int = len(LINES), variants: bool = False) -> list[Timed]:
    """Every config speaks the first `n_lines` lines once untimed, then `rounds` times alternating line by line."""
    raw = read_model_bytes()
    configs: dict[str, Any] = {
        "before": _session(raw, _before_options(threads)),
        "after": _session(raw, session_options(threads)),
    }
    if variants:
        rewritten = float_convolutions(raw)
        configs["float conv, before options"] = _session(rewritten, _before_options(threads))
        configs["float conv, after options"] = _session(rewritten, session_options(threads))
    vocab, packs, phonemize = read_vocab(), read_voice_packs(), Phonemizer()
    feeds = []
    for line in LINES[:n_lines]:
        tokens = [vocab[c] for c in phonemize(line, "en") if c in vocab]
        feeds.append(
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": packs[VOICE][len(tokens) - 1].reshape(1, 256),
                "speed": np.array([1.0], dtype=np.float32),
            }
        )
    audio: dict[str, list[np.ndarray]] = {name: [] for name in configs}
    for name, session in configs.items():  # warm-up on every length, untimed
        audio[name] = [np.asarray(session.run(["audio"], feed)[0]).reshape(-1) for feed in feeds]
    wall = dict.fromkeys(configs, 0.0)
    for _ in range(rounds):
        for feed in feeds:
            for name, session in configs.items():
                t0 = time.perf_counter()
                session.run(["audio"], feed)
                wall[name] += time.perf_counter() - t0
    audio_s = rounds * sum(len(a) for a in audio["before"]) / SAMPLE_RATE
    timed = []
    for name in configs:
        pairs = list(zip(audio[name], audio["before"], strict=True))
        timed.append(
            Timed(
                config=name,
                audio_s=audio_s,
                wall_s=wall[name],
                identical=all(np.array_equal(a, b) for a, b in pairs),
                max_diff=max(float(np.max(np.abs(a - b))) for a, b in pairs),
                digest=hashlib.sha256(b"".join(a.tobytes() for a in audio[name])).hexdigest()[:16],
            )
        )
    return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=len(LINES), help="speak only the first N lines")
    parser.add_argument("--variants", action="store_true", help="also time the float Conv rewrite")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    timed = compare(args.threads, args.rounds, args.lines, args.variants)
    print(f"{args.lines} English lines x {args.rounds} rounds, voice {VOICE}, intra-op threads {args.threads}")
    print(f"{'config':28s} {'audio s':>8s} {'wall s':>8s} {'RTF':>7s}  audio vs before")
    for t in timed:
        print(
            f"{t.config:28s} {t.audio_s:8.2f} {t.wall_s:8.2f} {t.rtf:7.3f}  "
            f"{'identical' if t.identical else 'DIFFERS'} (max abs diff {t.max_diff:.3g}, sha256 {t.digest})"
        )
    by = {t.config: t for t in timed}
    print(f"speed-up after/before: {by['before'].wall_s / by['after'].wall_s:.2f}x")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
