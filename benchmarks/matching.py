"""Voice matching of the kokoro engine against references that are not Kokoro voices.

    .venv/bin/python benchmarks/matching.py [--rtf-sentences 3]

References are spoken by espeak-ng (the library `espeakng-loader` ships, driven through ctypes with a synth
callback collecting its 22.05 kHz samples) in several voices, variants and pitches, in English, Mandarin and
Japanese, plus WORLD-modified espeak-ng renders (pitch and vocal-tract length moved) for more distinct speakers.
Each reference goes through the farm's own normalisation (`shared.audio.reference.normalise`), then:
- matched: `clone()` the reference, synthesize an evaluation sentence (not the reference's, not the calibration's)
  with the profile; its score is the speaker similarity the engine reports (GE2E cosine to the reference);
- best unmatched: the same sentence in every stock voice, plain; the best of their similarities to the reference.
Also prints the real-time factor of synthesis in a stock voice and through a cloned profile.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.audio.reference import inspect_upload, normalise
from worker.engines.kokoro import KokoroEngine
from worker.engines.kokoro.espeak import EspeakEnglish
from worker.engines.kokoro.matching import analyse, design
from worker.evaluators.similarity import SpeakerEncoder

RATE = 24_000
_ESPEAK_RATE = 1  # espeak_PARAMETER: espeakRATE, espeakPITCH, espeakRANGE
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_collected: list[np.ndarray] = []


@_SynthCallback
def _collect(wav: ctypes._Pointer[ctypes.c_short], count: int, events: int | None) -> int:
    if count > 0 and wav:
        _collected.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0  # go on


def espeak(text: str, voice: str, pitch: int = 50, pitch_range: int = 50, words_per_minute: int = 165) -> np.ndarray:
    """espeak-ng speech as float32 at 24 kHz. Shares the library (and its lock) with the kokoro English G2P."""
    import soxr

    EspeakEnglish()  # loads and initialises the library in synchronous mode, once per process
    lib = EspeakEnglish._lib
    assert lib is not None
    data = text.encode("utf-8")
    with EspeakEnglish._lock:
        lib.espeak_SetSynthCallback(_collect)
        if lib.espeak_SetVoiceByName(voice.encode("ascii")) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        settings = ((_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range), (_ESPEAK_RATE, words_per_minute))
        try:
            for parameter, value in settings:
                lib.espeak_SetParameter(parameter, value, 0)
            _collected.clear()
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
            lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            if lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
                raise RuntimeError(f"espeak-ng could not speak {text!r}")
            lib.espeak_Synchronize()
            rate = int(lib.espeak_ng_GetSampleRate())
            audio = np.concatenate(_collected) if _collected else np.zeros(0, dtype=np.int16)
        finally:
            for parameter, value in ((_ESPEAK_PITCH, 50), (_ESPEAK_RANGE, 50), (_ESPEAK_RATE, 175)):
                lib.espeak_SetParameter(parameter, value, 0)
    return np.asarray(soxr.resample(audio.astype(np.float32) / 32768.0, rate, RATE), dtype=np.float32)


def world_modified(audio: np.ndarray, pitch_ratio: float, warp: float) -> np.ndarray:
    """The clip with F0 multiplied by `pitch_ratio` and formants moved by `warp` (a different-sounding speaker)."""
    world = analyse(audio)
    mean, std = world.log_f0_stats()
    transform = design(world, world, pitch=0.0, warp=warp, envelope=0.0)
    shifted = type(transform)(
        source_log_f0=(mean, std),
        target_log_f0=(mean + float(np.log(pitch_ratio)), std),
        gain=transform.gain,
        pitch=1.0,
        warp=warp,
        envelope=0.0,
    )
    out = shifted.apply_world(world)[: audio.size]
    return np.asarray(out / max(float(np.abs(out).max()), 1e-6) * 0.8, dtype=np.float32)


REFERENCE_TEXT = {
    "en": "My grandfather used to tell me long stories about the sea and the ships he sailed. "
    "He said the winters were hard, but the summers made up for everything.",
    "zh": "我的爷爷以前常常给我讲大海和他开过的船的故事。他说冬天很难熬，但是夏天弥补了一切。",
    # espeak-ng reads Japanese kana only (kanji come out as code names)
    "ja": "そふは よく うみと ふねの ながい はなしを してくれました。ふゆは きびしかったけれど、"
    "なつが すべてを うめあわせて くれたそうです。",
}
EVALUATION_TEXT = {
    "en": "The weather is lovely today, so we are going to take a long walk in the park.",
    "zh": "今天天气很好，我们一起去公园散步吧。",
    "ja": "駅の近くに新しいパン屋ができたので、明日の朝に行ってみます。",
}
# name: (language, espeak-ng voice, pitch 0-100, pitch range 0-100, WORLD (F0 ratio, formant warp) or None)
REFERENCES: dict[str, tuple[str, str, int, int, tuple[float, float] | None]] = {
    "en-m3": ("en", "en+m3", 50, 50, None),
    "en-f2": ("en", "en+f2", 55, 60, None),
    "en-m7-low": ("en", "en+m7", 20, 40, None),
    "en-f4-high": ("en", "en+f4", 80, 70, None),
    "en-klatt": ("en", "en+klatt", 45, 50, None),
    "en-croak": ("en", "en+croak", 40, 30, None),
    "zh-f3": ("zh", "cmn+f3", 60, 60, None),
    "ja-m2": ("ja", "ja+m2", 45, 50, None),
    "en-m3-world-child": ("en", "en+m3", 50, 50, (1.6, 1.15)),
    "en-f2-world-deep": ("en", "en+f2", 55, 60, (0.75, 0.9)),
}


@dataclass
class Reference:
    name: str
    language: str
    audio: np.ndarray  # normalised like an upload, 24 kHz


def make_references(names: list[str] | None = None) -> list[Reference]:
    out = []
    for name in names or list(REFERENCES):
        language, voice, pitch, spread, world = REFERENCES[name]
        audio = espeak(REFERENCE_TEXT[language], voice, pitch, spread)
        if world is not None:
            audio = world_modified(audio, *world)
        buffer = io.BytesIO()
        sf.write(buffer, audio, RATE, format="WAV", subtype="PCM_16")
        clip = normalise(inspect_upload(buffer.getvalue()))
        out.append(Reference(name=name, language=language, audio=clip.audio))
    return out


@dataclass
class Row:
    name: str
    base_voice: str
    best_stock: str
    best_unmatched: float
    matched: float
    calibration: tuple[float, float]
    transform: str
    clone_s: float


def evaluate(engine: KokoroEngine, references: list[Reference], encoder: SpeakerEncoder) -> list[Row]:
    import json

    stock: dict[str, dict[str, np.ndarray]] = {}
    rows = []
    for ref in references:
        text = EVALUATION_TEXT[ref.language]
        if ref.language not in stock:
            stock[ref.language] = {
                v: encoder.embed(engine.synthesize(text, voice=v, language=ref.language).audio, RATE)
                for v in engine.capabilities.stock_voices
            }
        ref_embedding = encoder.embed(ref.audio, RATE)
        unmatched = {v: encoder.similarity(ref_embedding, e) for v, e in stock[ref.language].items()}
        started = time.perf_counter()
        profile = engine.clone(ref.audio, RATE, transcript=None)
        clone_s = time.perf_counter() - started
        result = engine.synthesize(text, voice=profile, language=ref.language)
        assert result.similarity is not None
        details = json.loads(profile.data)
        t = details["transform"]
        calibration = details["match"]["calibration_similarity"]
        best = max(unmatched, key=unmatched.__getitem__)
        rows.append(
            Row(
                name=ref.name,
                base_voice=details["base_voice"],
                best_stock=best,
                best_unmatched=unmatched[best],
                matched=result.similarity,
                calibration=(calibration["stock"], calibration["matched"]),
                transform=f"pitch {t['pitch']:.1f} warp {t['warp']:.2f} env {t['envelope']:.1f}",
                clone_s=clone_s,
            )
        )
    return rows


def print_table(rows: list[Row]) -> None:
    header = f"{'reference':<20} {'matched voice':<14} {'best stock':<14} {'unmatched':>9} {'matched':>8} {'gain':>7}"
    print(header + f"  {'calib stock->matched':<21} {'transform':<30} {'clone s':>7}")
    for r in rows:
        print(
            f"{r.name:<20} {r.base_voice:<14} {r.best_stock:<14} {r.best_unmatched:>9.3f} {r.matched:>8.3f} "
            f"{r.matched - r.best_unmatched:>+7.3f}  {r.calibration[0]:.3f} -> {r.calibration[1]:.3f}{'':<7} "
            f"{r.transform:<30} {r.clone_s:>7.1f}"
        )
    mean_u = statistics.fmean(r.best_unmatched for r in rows)
    mean_m = statistics.fmean(r.matched for r in rows)
    print(f"{'mean':<50} {mean_u:>9.3f} {mean_m:>8.3f} {mean_m - mean_u:>+7.3f}")


def measure_rtf(engine: KokoroEngine, profile_audio: np.ndarray, sentences: int) -> None:
    """Synthesis speed in the profile's base voice, plain (what kokoro did before matching) and through the
    profile (render + WORLD transform + similarity), interleaved sentence by sentence so load affects both alike."""
    import json

    texts = (
        [
            "Thank you for calling, how can I help you today?",
            "Your order has shipped and will arrive on Friday.",
            "Please hold while I transfer your call to the next available agent.",
            "We are open every day from nine in the morning until six in the evening.",
        ]
        * 2
    )[:sentences]
    profile = engine.clone(profile_audio, RATE, transcript=None)
    base = json.loads(profile.data)["base_voice"]
    totals = {f"stock {base}": [0.0, 0.0, 0.0], f"profile on {base}": [0.0, 0.0, 0.0]}
    for text in texts:
        for label, voice in zip(totals, (base, profile), strict=True):
            started, cpu_started = time.perf_counter(), time.process_time()
            out = engine.synthesize(text, voice=voice, language="en")
            totals[label][0] += time.perf_counter() - started
            totals[label][1] += time.process_time() - cpu_started
            totals[label][2] += out.audio.size / out.sample_rate
    for label, (wall, cpu, audio_s) in totals.items():
        print(
            f"RTF {label:<22} {wall / audio_s:.3f} wall, {cpu / audio_s:.3f} CPU-s per audio-s "
            f"({wall:.2f} s for {audio_s:.1f} s of audio)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtf-sentences", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="reference names to run (default: all)")
    args = parser.parse_args()
    engine = KokoroEngine()
    started = time.perf_counter()
    engine.load()
    print(f"engine load: {time.perf_counter() - started:.2f} s")
    references = make_references(args.only)
    encoder = SpeakerEncoder()
    started = time.perf_counter()
    engine._stock_voices()
    print(f"stock-voice calibration (renders + embeddings, once per process): {time.perf_counter() - started:.2f} s")
    rows = evaluate(engine, references, encoder)
    print_table(rows)
    if args.rtf_sentences:
        measure_rtf(engine, references[0].audio, args.rtf_sentences)


if __name__ == "__main__":
    main()
