"""Kokoro voice matchers judged on held-out speech of speakers they were not tuned on.

    .venv/bin/python benchmarks/matcher_heldout.py [--set first|second|all] [--only NAME ...]
                                                   [--matchers world,blend,blend+world]

Speakers come in two sets, each speaker with a clip to fit and a held-out clip of different text.
The first set (what the matcher was developed against):
- espeak-ng: eight speakers of the evaluation set (benchmarks/make_eval_set.py; its `clone.wav` is fitted, its
  `heldout.wav` only scored), English, Mandarin and Japanese;
- kokoro-world: Kokoro stock voices moved by the WORLD vocoder (F0 ratio and formant warp), so they are not the
  stock voices themselves; the fitting clip and the held-out clip read the eval set's two English texts.
The second set (never looked at while the matcher was built): recorded speakers behind Debian's synthesizers,
flite's awb, rms and slt voices and festival's kal and ked diphone voices (packages flite, festival,
festvox-kallpc16k, festvox-kdlpc16k), reading the same two English texts. Debian ships no Mandarin or Japanese
voice for either, so the second set is English only.
For each speaker an evaluation sentence (neither clip's text, nor the calibration's) is spoken by every stock
voice and through each matcher's clone of the fitting clip; each output's GE2E cosine to the held-out clip is
reported. "best stock" is the best stock voice chosen by looking at the held-out clip (an oracle: no matcher can
do better without matching); "nearest" is the stock voice nearest to the fitting clip, untransformed. Clone time
per matcher is wall time on this machine.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.make_eval_set import CLIPS, build
from benchmarks.matching import EVALUATION_TEXT, world_modified
from shared.audio.reference import inspect_upload, normalise
from worker.engines.kokoro import KokoroEngine
from worker.evaluators.similarity import SpeakerEncoder

RATE = 24_000
ESPEAK_SPEAKERS = ("en_m3", "en_f3", "en_m6", "en_f4", "zh_f2", "zh_m1", "ja_m1", "ja_f2")
# name: (stock voice, F0 ratio, formant warp)
KOKORO_WORLD = {
    "kw_kumo_high": ("jm_kumo", 1.35, 1.08),
    "kw_alpha_deep": ("jf_alpha", 0.72, 0.9),
    "kw_nezumi_low": ("jf_nezumi", 0.85, 0.94),
    "kw_tebukuro_bright": ("jf_tebukuro", 1.15, 1.1),
}
# name: (program, voice): the recorded speaker behind each Debian voice
DEBIAN_SPEAKERS = {
    "flite_awb": ("flite", "awb"),
    "flite_rms": ("flite", "rms"),
    "flite_slt": ("flite", "slt"),
    "festival_kal": ("festival", "kal_diphone"),
    "festival_ked": ("festival", "ked_diphone"),
}
DEBIAN_PACKAGES = "flite festival festvox-kallpc16k festvox-kdlpc16k"


@dataclass
class Speaker:
    name: str
    source: str
    language: str
    fitting: np.ndarray  # normalised like an upload, 24 kHz
    heldout: np.ndarray


@dataclass
class Row:
    speaker: Speaker
    best_stock: tuple[str, float]
    nearest: tuple[str, float]
    matched: dict[str, float] = field(default_factory=dict)
    clone_s: dict[str, float] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)


def _as_upload(audio: np.ndarray, rate: int) -> np.ndarray:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return normalise(inspect_upload(buffer.getvalue())).audio


def espeak_speakers(names: list[str]) -> list[Speaker]:
    folder = Path(tempfile.mkdtemp(prefix="matcher-heldout-"))
    build(folder, speakers=4, lines=1)
    out = []
    for name in names:
        clips = [sf.read(folder / "speakers" / name / f"{clip}.wav", dtype="float32") for clip in ("clone", "heldout")]
        fitting, heldout = (_as_upload(audio, rate) for audio, rate in clips)
        out.append(Speaker(name, "espeak-ng", name.split("_")[0], fitting, heldout))
    return out


def kokoro_world_speakers(engine: KokoroEngine, names: list[str]) -> list[Speaker]:
    out = []
    for name in names:
        voice, ratio, warp = KOKORO_WORLD[name]
        clips = [engine.synthesize(text, voice=voice, language="en").audio for text in CLIPS["en"]]
        fitting, heldout = (_as_upload(world_modified(audio, ratio, warp), RATE) for audio in clips)
        out.append(Speaker(name, "kokoro-world", "en", fitting, heldout))
    return out


def _debian_clip(program: str, voice: str, text: str, path: Path) -> tuple[np.ndarray, int]:
    if program == "flite":
        command = ["flite", "-voice", voice, "-t", text, "-o", str(path)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    else:
        subprocess.run(
            ["text2wave", "-eval", f"(voice_{voice})", "-o", str(path)],
            input=text.encode(),
            check=True,
            capture_output=True,
            timeout=120,
        )
    audio, rate = sf.read(path, dtype="float32")
    return audio, rate


def debian_speakers(names: list[str]) -> list[Speaker]:
    if names and not (shutil.which("flite") and shutil.which("text2wave")):
        sys.exit(f"the second set needs Debian's synthesizers: apt-get install {DEBIAN_PACKAGES}")
    folder = Path(tempfile.mkdtemp(prefix="matcher-heldout-debian-"))
    out = []
    for name in names:
        program, voice = DEBIAN_SPEAKERS[name]
        clips = [_debian_clip(program, voice, text, folder / f"{name}-{i}.wav") for i, text in enumerate(CLIPS["en"])]
        fitting, heldout = (_as_upload(audio, rate) for audio, rate in clips)
        out.append(Speaker(name, program, "en", fitting, heldout))
    return out


def evaluate(engine: KokoroEngine, speakers: list[Speaker], matchers: list[str], encoder: SpeakerEncoder) -> list[Row]:
    import json

    stock: dict[str, dict[str, np.ndarray]] = {}
    fitting_stock = {name: v.embedding for name, v in engine._stock_voices().items()}
    rows = []
    for speaker in speakers:
        text = EVALUATION_TEXT[speaker.language]
        if speaker.language not in stock:
            stock[speaker.language] = {
                v: encoder.embed(engine.synthesize(text, voice=v, language=speaker.language).audio, RATE)
                for v in engine.capabilities.stock_voices
            }
        held = encoder.embed(speaker.heldout, RATE)
        fit = encoder.embed(speaker.fitting, RATE)
        on_held = {v: encoder.similarity(held, e) for v, e in stock[speaker.language].items()}
        best = max(on_held, key=on_held.__getitem__)
        nearest = max(fitting_stock, key=lambda v: encoder.similarity(fit, fitting_stock[v]))
        row = Row(speaker, (best, on_held[best]), (nearest, on_held[nearest]))
        for matcher in matchers:
            engine.matcher = matcher
            started = time.perf_counter()
            profile = engine.clone(speaker.fitting, RATE, transcript=None)
            row.clone_s[matcher] = time.perf_counter() - started
            out = engine.synthesize(text, voice=profile, language=speaker.language).audio
            row.matched[matcher] = encoder.similarity(encoder.embed(out, RATE), held)
            details = json.loads(profile.data)
            blend = details.get("blend") or {details["base_voice"]: 1.0}
            t = details["transform"]
            world = f" p{t['pitch']:.1f} w{t['warp']:.2f} e{t['envelope']:.1f}" if t else ""
            row.detail[matcher] = " ".join(f"{n[3:6]}{w:+.2f}" for n, w in blend.items()) + world
        rows.append(row)
        print_rows([row], matchers, header=not rows[:-1])
    return rows


def print_rows(rows: list[Row], matchers: list[str], header: bool = True) -> None:
    if header:
        cols = "".join(f" {m:>12}" for m in matchers)
        print(f"{'speaker':<20} {'source':<13} {'best stock':<20} {'nearest':<20}{cols}  clone s / match", flush=True)
    for r in rows:
        cols = "".join(f" {r.matched[m]:>6.3f}{r.matched[m] - r.best_stock[1]:>+6.3f}" for m in matchers)
        print(
            f"{r.speaker.name:<20} {r.speaker.source:<13} {r.best_stock[0]:<13}{r.best_stock[1]:>7.3f} "
            f"{r.nearest[0]:<13}{r.nearest[1]:>7.3f}{cols}  "
            + " | ".join(f"{r.clone_s[m]:.0f}s {r.detail[m]}" for m in matchers),
            flush=True,
        )


def print_means(rows: list[Row], matchers: list[str]) -> None:
    best = statistics.fmean(r.best_stock[1] for r in rows)
    nearest = statistics.fmean(r.nearest[1] for r in rows)
    print(f"\nmean over {len(rows)} speakers: best stock {best:.3f}, nearest stock {nearest:.3f}")
    for m in matchers:
        mean = statistics.fmean(r.matched[m] for r in rows)
        worse = [r.speaker.name for r in rows if r.matched[m] < r.best_stock[1]]
        clone = statistics.fmean(r.clone_s[m] for r in rows)
        print(
            f"  {m:<12} {mean:.3f} ({mean - best:+.3f} vs best stock); below best stock for {len(worse)}: "
            f"{', '.join(worse) or '-'}; clone {clone:.1f} s mean"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("first", "second", "all"), default="all", help="which speakers (see above)")
    parser.add_argument("--only", nargs="*", help="speaker names (default: all of the set)")
    parser.add_argument("--matchers", default="world,blend,blend+world")
    args = parser.parse_args()
    matchers = args.matchers.split(",")
    first, second = [*ESPEAK_SPEAKERS, *KOKORO_WORLD], list(DEBIAN_SPEAKERS)
    names = args.only or {"first": first, "second": second, "all": first + second}[args.set]
    engine = KokoroEngine()
    engine.load()
    speakers = espeak_speakers([n for n in names if n in ESPEAK_SPEAKERS])
    speakers += kokoro_world_speakers(engine, [n for n in names if n in KOKORO_WORLD])
    speakers += debian_speakers([n for n in names if n in DEBIAN_SPEAKERS])
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = evaluate(engine, speakers, matchers, SpeakerEncoder())
    for label, members in (("first set", first), ("second set", second)):
        chosen = [r for r in rows if r.speaker.name in members]
        if chosen and len(chosen) < len(rows):
            print(f"\n{label}:", end="")
            print_means(chosen, matchers)
    print_means(rows, matchers)


if __name__ == "__main__":
    main()
