"""The consent check's figures: speaker similarity of same-speaker and different-speaker pairs, and what Whisper
hears of a read statement, on speech of other synthesizers (docs/benchmarks/consent.md).

    .venv/bin/python benchmarks/consent_thresholds.py [--flite]

Each speaker says a reference clip (the text a voice is cloned from) and a consent statement with its farm-chosen
words (shared/provenance/consent.py). Speakers: the kokoro engine's five stock voices speaking English (four of them
female Japanese voices, close to one another), four espeak-ng voices (the library and data of the `espeakng-loader`
wheel, as benchmarks/make_eval_set.py drives it) and, with --flite, Debian's flite voices. A same-speaker pair is
a speaker's reference against its own statement; a different-speaker pair is a reference against another speaker's
statement. Both clips go through the clone job's normalisation (shared/audio/reference.py) and the GE2E encoder
(worker/evaluators/similarity.py), as worker/cloning.py checks them.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_eval_set import Espeak  # noqa: E402
from shared.audio.reference import Clip, normalise  # noqa: E402
from shared.provenance import consent  # noqa: E402

REFERENCE = "Every morning I walk to the station, buy a paper, and read the weather report while the train is late."
ESPEAK = (("en-us+m3", 40, 165), ("en-gb-x-rp+f3", 62, 160), ("en-us+m6", 30, 150), ("en-us+f4", 72, 170))
KOKORO = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
FLITE = ("kal", "slt", "awb", "rms")

Speak = Callable[[str], tuple[np.ndarray, int]]


def speakers(use_flite: bool) -> dict[str, Speak]:
    from worker.engines import create_engine

    kokoro = create_engine("kokoro")
    kokoro.load()
    espeak = Espeak()
    found: dict[str, Speak] = {}
    for voice in KOKORO:
        found[f"kokoro:{voice}"] = lambda text, v=voice: (
            kokoro.synthesize(text, voice=v, language="en").audio,
            kokoro.capabilities.sample_rate,
        )
    for voice, pitch, rate in ESPEAK:
        found[f"espeak:{voice}"] = lambda text, v=voice, p=pitch, r=rate: (
            espeak.speak(text, v, p, r).astype(np.float32) / 32768.0,
            espeak.rate,
        )
    flite = shutil.which("flite") if use_flite else None
    if use_flite and flite is None:
        raise SystemExit("--flite: flite is not installed (apt-get install flite)")
    for voice in FLITE if flite else ():
        found[f"flite:{voice}"] = lambda text, v=voice: flite_speak(str(flite), v, text)
    return found


def flite_speak(flite: str, voice: str, text: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        subprocess.run([flite, "-voice", voice, "-t", text, "-o", str(out)], check=True)
        audio, rate = sf.read(io.BytesIO(out.read_bytes()), dtype="float32")
    return audio, int(rate)


def clip(audio: np.ndarray, rate: int) -> Clip:
    return normalise(Clip(np.asarray(audio, dtype=np.float32).reshape(-1), rate, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flite", action="store_true", help="add Debian's flite voices")
    args = parser.parse_args()

    from shared.config import load_settings
    from worker.cloning import missing_words
    from worker.evaluators.asr import Transcriber
    from worker.evaluators.similarity import shared_encoder
    from worker.qa.checks import error_rate

    started = time.perf_counter()
    words = consent.choose_words("en")
    statement = consent.statement_text("en", words)
    # Another statement's words, which a recording of this one must not pass for.
    other_words = consent.choose_words("en")
    other = consent.statement_text("en", other_words)
    print(f"statement: {statement}")
    voices = speakers(args.flite)
    encoder = shared_encoder()
    transcriber = Transcriber(Path(load_settings().data_dir) / "cache")
    refs: dict[str, np.ndarray] = {}
    stmts: dict[str, np.ndarray] = {}
    print(f"\n{'speaker':<24} {'ref s':>6} {'stmt s':>6} {'WER':>5} {'missed':<16} heard")
    for name, speak in voices.items():
        ref = clip(*speak(REFERENCE))
        said = clip(*speak(statement))
        refs[name] = encoder.embed(ref.audio, ref.sample_rate)
        stmts[name] = encoder.embed(said.audio, said.sample_rate)
        heard, _ = transcriber.transcribe(said.audio, said.sample_rate, "en")
        wer = error_rate(statement, heard, "en")
        missed = ",".join(missing_words(words, heard, "en")) or "-"
        print(f"{name:<24} {ref.duration_s:6.1f} {said.duration_s:6.1f} {wer:5.2f} {missed:<16} {heard}")
        wrong, not_heard = error_rate(other, heard, "en"), missing_words(other_words, heard, "en")
        print(f"{'':<24} against another statement: WER {wrong:.2f}, missed {','.join(not_heard) or '-'}")

    names = list(voices)
    same = {n: encoder.similarity(refs[n], stmts[n]) for n in names}
    different = {(a, b): encoder.similarity(refs[a], stmts[b]) for a in names for b in names if a != b}
    print("\nsame speaker (reference vs its own statement):")
    for name, value in sorted(same.items(), key=lambda item: item[1]):
        print(f"  {name:<24} {value:.3f}")
    print("\ndifferent speakers, the ten closest (reference vs another's statement):")
    for (a, b), value in sorted(different.items(), key=lambda item: -item[1])[:10]:
        print(f"  {a:<24} {b:<24} {value:.3f}")
    low_same, high_diff = min(same.values()), max(different.values())
    diffs = np.array(list(different.values()))
    print(
        f"\nsame: n={len(same)} min {low_same:.3f} mean {np.mean(list(same.values())):.3f}; "
        f"different: n={len(diffs)} max {high_diff:.3f} mean {diffs.mean():.3f} "
        f"p99 {np.percentile(diffs, 99):.3f}"
    )
    print(f"midpoint between the lowest same and the highest different: {(low_same + high_diff) / 2:.3f}")
    print(f"took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
