"""Word timings from Kokoro's own durations: what they cost, and how far they are from two references.

Cost: each utterance is run through the plain graph and through the graph with the duration output, interleaved,
and the medians compared (the audio must be bit-identical); the word mapping (per-word phonemes, difflib) is timed
per line; the graph surgery is timed once (it happens when a worker loads the model).

Error: the lines of benchmarks/post_production.py, each sentence synthesized alone and joined with known pauses.
(1) Known boundaries: the first word of each sentence must start at the sentence's onset and the last end at its
end (as in docs/benchmarks/post-production.md for the forced alignment). (2) Forced alignment: every word's start and
end against the Whisper alignment of the same audio (worker/alignment.py) — itself off by about 0.1 s, so this bounds
the disagreement, not the error.

    .venv/bin/python benchmarks/word_timings.py --lines 2
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from post_production import LINES, VOICES  # noqa: E402

from shared import mastering  # noqa: E402
from shared.audio.codecs import join_segments  # noqa: E402
from worker.alignment import joined_words, script_words, word_timings  # noqa: E402
from worker.engines.kokoro.durations import expose_durations, word_clock  # noqa: E402
from worker.engines.kokoro.engine import KokoroEngine  # noqa: E402
from worker.engines.kokoro.model import read_model_bytes  # noqa: E402
from worker.evaluators.asr import Transcriber  # noqa: E402

RATE = 24000


def stats(values: list[float]) -> tuple[float, float, int]:
    ordered = sorted(values)
    return statistics.mean(ordered), ordered[int(0.9 * (len(ordered) - 1))], len(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each utterance per graph for the cost")
    args = parser.parse_args()
    import onnxruntime as ort

    engine = KokoroEngine(threads=2)
    engine.load()
    model = engine.model
    raw = read_model_bytes()
    started = time.perf_counter()
    exposed, durations_output = expose_durations(raw)
    assert durations_output is not None
    surgery_ms = (time.perf_counter() - started) * 1000
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    # Both graphs built here from the same bytes, so the comparison is the extra output alone (the engine's own
    # session may carry other rewrites).
    plain = ort.InferenceSession(raw, sess_options=options, providers=["CPUExecutionProvider"])
    timed = ort.InferenceSession(exposed, sess_options=options, providers=["CPUExecutionProvider"])
    transcriber = Transcriber(Path(tempfile.mkdtemp(prefix="vf-bench-")))
    transcriber.words(np.zeros(RATE, dtype=np.float32), RATE, "en")  # load Whisper outside the timings

    plain_ms: list[float] = []
    timed_ms: list[float] = []
    mapping_ms: list[float] = []
    identical = True
    boundary: dict[str, list[float]] = {}
    versus_alignment: dict[str, list[float]] = {}
    for language, lines in LINES.items():
        voice = VOICES[language]
        for sentences in lines[: args.lines]:
            for sentence in sentences:
                phonemes = engine._phonemizer(sentence, language)
                tokens, _ = model.tokenize(phonemes)
                style = model.voices[voice][len(tokens) - 1].reshape(1, 256)
                feed = {
                    "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                    "style": style,
                    "speed": np.array([1.0], dtype=np.float32),
                }
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    (reference,) = plain.run(["audio"], feed)
                    t1 = time.perf_counter()
                    audio, _frames = timed.run(["audio", durations_output], feed)
                    t2 = time.perf_counter()
                    plain_ms.append((t1 - t0) * 1000)
                    timed_ms.append((t2 - t1) * 1000)
                    identical &= (
                        hashlib.sha256(reference.tobytes()).digest() == hashlib.sha256(audio.tobytes()).digest()
                    )
                t0 = time.perf_counter()
                word_clock(
                    sentence,
                    phonemes,
                    functools.partial(engine._phonemizer, language=language),
                    engine._phonemizer.pieces(sentence, language),
                )
                mapping_ms.append((time.perf_counter() - t0) * 1000)
            outs = [engine.synthesize(s, voice=voice, language=language) for s in sentences]
            audio, starts = join_segments([o.audio for o in outs], RATE, 0.25)
            script = ("" if language != "en" else " ").join(sentences)
            words = joined_words(script, [o.words for o in outs], starts, lambda t: round(t, 3))
            if words is None:
                print(f"no engine words for {script!r}")
                continue
            cursor = 0
            for sentence, out, start in zip(sentences, outs, starts, strict=True):
                n = len(script_words(sentence))
                first, last = words[cursor], words[cursor + n - 1]
                cursor += n
                kept, lead = mastering.trim_silence(out.audio, RATE, 0.0)
                boundary.setdefault(language, []).append(abs(first["start_s"] - (start + lead)) * 1000)
                boundary[language].append(abs(last["end_s"] - (start + lead + len(kept) / RATE)) * 1000)
            aligned = word_timings(transcriber, audio, RATE, script, language)
            for ours, theirs in zip(words, aligned, strict=True):
                versus_alignment.setdefault(language, []).append(abs(ours["start_s"] - theirs["start_s"]) * 1000)
                versus_alignment[language].append(abs(ours["end_s"] - theirs["end_s"]) * 1000)

    plain_median, timed_median = statistics.median(plain_ms), statistics.median(timed_ms)
    print(f"graph surgery at load        {surgery_ms:8.0f} ms (once per worker)")
    print(f"model run, plain graph       {plain_median:8.1f} ms median over {len(plain_ms)} runs")
    print(
        f"model run, with durations    {timed_median:8.1f} ms median ({(timed_median / plain_median - 1) * 100:+.1f} %)"
    )
    print(f"audio bit-identical          {identical}")
    print(f"word mapping per sentence    {statistics.median(mapping_ms):8.1f} ms median, {max(mapping_ms):.1f} max")
    print(f"\n{'engine word times':<24}{'mean ms':>10}{'p90 ms':>10}{'n':>6}")
    for language, values in boundary.items():
        mean, p90, n = stats(values)
        print(f"{language + ' vs known bounds':<24}{mean:>10.0f}{p90:>10.0f}{n:>6}")
    for language, values in versus_alignment.items():
        mean, p90, n = stats(values)
        print(f"{language + ' vs alignment':<24}{mean:>10.0f}{p90:>10.0f}{n:>6}")


if __name__ == "__main__":
    main()
