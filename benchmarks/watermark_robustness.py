"""The watermark in every take (shared/provenance/watermark.py): robustness, false positives, quality, cost and the
farm's throughput with it on and off. Figures: docs/benchmarks/watermark.md.

    .venv/bin/python benchmarks/watermark_robustness.py [--parts robustness,foreign,quality,cost,farm]
        [--lines 24] [--farm-lines 24] [--json FILE]

- robustness: the farm's kokoro engine says --lines lines (en, zh, ja; its five stock voices), each marked as a
  worker marks it (after mastering to -16 LUFS); then each transformation below is applied and the detector run on
  what comes out: detection rate, and the lowest score. The same unmarked lines under the same transformations
  give the false positives there.
- foreign: speech the farm never made, clean: espeak-ng (the espeakng-loader wheel's library and voices; English,
  Mandarin, Japanese kana, voice variants and pitches), Debian's flite (its six voices) and festival (its default
  voice), at least 200 clips; how many the detector calls marked, and the highest score. piper is not here: its
  voices are downloaded from a model hub, which the farm never does.
- quality: the same lines with and without the mark: Whisper's error (tests/support/asr.py; WER for English, CER
  for Mandarin and Japanese) and the speaker encoder's similarity of each to another line of the same voice
  (worker/evaluators/similarity.py), the mark's level under the speech (SNR), and what it does to the mastered
  loudness and true peak.
- cost: embedding and detecting, seconds per audio second (medians of 5), one BLAS thread as in a worker.
- farm: two worker processes side by side (2 cores; one intra-op thread each, as `voicefarm worker` sets them) on
  real PostgreSQL, Redis and SeaweedFS (tests/support/faultfarm.py's services), each running --farm-lines jobs
  through the worker's own path (`run_synthesis`: claim, synthesize, master, mark, encode, label, upload, finish),
  the mark on and off in turn (on, off, off, on, ...) after one untimed line; lines per minute of the two with the
  mark on and with it off. The API and the broker's dispatch are left out: they cost the same either way.

Transformations (PyAV's FFmpeg encoders; soxr; pyloudnorm through the farm's own mastering; FFmpeg's atempo):
mp3 at 64 and 128 kbps, AAC at 96 kbps, Opus at 32 kbps, resampling to 16 kHz, gain +6 dB (clipped at full scale)
and -6 dB, loudness normalisation to -23 LUFS (EBU R 128), a 10 % time stretch (atempo 1.1, pitch kept), the first
second trimmed off, and the speech mixed at 10 dB SNR with white noise, with babble (three other unmarked lines) and
with music (synthetic: chords of harmonic tones on a beat).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.provenance import watermark  # noqa: E402

RATE = 24000
Attack = Callable[[np.ndarray, int], tuple[np.ndarray, int]]

LINES = {
    "en": [
        "The museum is on the right, just past the bakery on the corner.",
        "Please remember to back up your files before installing the update.",
        "Our store opens at nine in the morning and closes at six in the evening.",
        "Thank you for calling; all of our agents are busy right now.",
        "She painted the kitchen a bright shade of yellow last weekend.",
        "The train to the airport leaves every twenty minutes from platform four.",
        "Mix the flour and the butter, then add two eggs and a pinch of salt.",
        "We will review your application and reply within three working days.",
    ],
    "zh": [
        "博物馆就在面包店旁边，走过去就能看到。",
        "请在安装更新之前备份您的文件。",
        "我们的商店早上九点开门，晚上六点关门。",
        "今天天气很好，我们打算去公园散步。",
        "去机场的火车每二十分钟从四号站台出发。",
        "她上个周末把厨房刷成了明亮的黄色。",
        "请把面粉和黄油混合，然后加入两个鸡蛋。",
        "我们会在三个工作日内审核您的申请。",
    ],
    "ja": [
        "博物館はパン屋の角を曲がって右側にあります。",
        "更新をインストールする前にファイルをバックアップしてください。",
        "お店は朝九時に開いて夕方六時に閉まります。",
        "今日はいい天気なので公園を散歩します。",
        "空港行きの電車は四番線から二十分ごとに出発します。",
        "彼女は先週末、台所を明るい黄色に塗りました。",
        "小麦粉とバターを混ぜて、卵を二つ加えてください。",
        "三営業日以内に審査の結果をお知らせします。",
    ],
}
VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")


# -- transformations ------------------------------------------------------------------------------------------------
def _codec(audio: np.ndarray, rate: int, muxer: str, codec: str, bit_rate: int, codec_rate: int) -> np.ndarray:
    """Encode with FFmpeg's encoder through PyAV at `bit_rate`, decode back to float mono at `rate`."""
    import av

    pcm = np.clip(soxr.resample(audio, rate, codec_rate), -1, 1).astype(np.float32)
    sink = io.BytesIO()
    with av.open(sink, mode="w", format=muxer) as out:
        stream = out.add_stream(codec, rate=codec_rate, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="flt", layout="mono")
        frame.sample_rate = codec_rate
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    decoded, got = _decode(sink.getvalue())
    return soxr.resample(decoded, got, rate).astype(np.float32)


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    from shared.provenance.verify import decode

    return decode(data, max_seconds=600)


def _filter(audio: np.ndarray, rate: int, graph: str) -> np.ndarray:
    """FFmpeg's audio filter `graph` through PyAV."""
    import av

    filters = av.filter.Graph()
    src = filters.add_abuffer(format="flt", sample_rate=rate, layout="mono")
    chain = filters.add(*graph.split("=", 1)) if "=" in graph else filters.add(graph)
    sink = filters.add("abuffersink")
    src.link_to(chain)
    chain.link_to(sink)
    filters.configure()
    frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    filters.push(frame)
    filters.push(None)
    parts = []
    while True:
        try:
            parts.append(filters.pull().to_ndarray().reshape(-1))
        except (av.error.BlockingIOError, av.error.EOFError):
            break
    return np.concatenate(parts).astype(np.float32)


def _mix(audio: np.ndarray, other: np.ndarray, snr_db: float) -> np.ndarray:
    other = np.resize(other, len(audio))
    gain = np.sqrt(np.mean(audio**2) / max(np.mean(other**2), 1e-12) / 10 ** (snr_db / 10))
    return (audio + gain * other).astype(np.float32)


def synthetic_music(seconds: float, rate: int, seed: int = 3) -> np.ndarray:
    """Chords of harmonic tones (root, third, fifth; five harmonics each) changing every beat at 120 bpm, with a
    decaying noise hit on each beat: music-like energy across the speech band, made here."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = np.zeros_like(t)
    beat = 0.5
    for start in np.arange(0, seconds, beat):
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        span = (t >= start) & (t < start + beat)
        local = t[span] - start
        envelope = np.exp(-local * 3)
        for ratio in (1, 5 / 4, 3 / 2):
            for harmonic in range(1, 6):
                out[span] += envelope * np.sin(2 * np.pi * root * ratio * harmonic * local) / harmonic
        out[span] += rng.standard_normal(span.sum()) * np.exp(-local * 30) * 0.5
    return (out / np.abs(out).max() * 0.5).astype(np.float32)


def _loudness(audio: np.ndarray, rate: int) -> np.ndarray:
    from shared.audio import mastering

    return mastering.normalise_loudness(audio, rate, -23.0, -1.0)


def attacks(babble: np.ndarray | None = None) -> dict[str, Attack]:
    """Each transformation: (audio, rate) -> (audio, rate)."""
    noise = np.random.default_rng(5).standard_normal(RATE * 30).astype(np.float32)
    music = synthetic_music(30, RATE)
    table: dict[str, Attack] = {
        "none": lambda a, r: (a, r),
        "mp3 64 kbps": lambda a, r: (_codec(a, r, "mp3", "libmp3lame", 64_000, r), r),
        "mp3 128 kbps": lambda a, r: (_codec(a, r, "mp3", "libmp3lame", 128_000, r), r),
        "aac 96 kbps": lambda a, r: (_codec(a, r, "adts", "aac", 96_000, r), r),
        "opus 32 kbps": lambda a, r: (_codec(a, r, "ogg", "libopus", 32_000, 48000), r),
        "resample 16 kHz": lambda a, r: (soxr.resample(a, r, 16000).astype(np.float32), 16000),
        "gain +6 dB": lambda a, r: (np.clip(a * 2.0, -1, 1).astype(np.float32), r),
        "gain -6 dB": lambda a, r: ((a * 0.5).astype(np.float32), r),
        "loudness -23 LUFS": lambda a, r: (_loudness(a, r), r),
        "stretch 10 %": lambda a, r: (_filter(a, r, "atempo=1.1"), r),
        "trim 1 s": lambda a, r: (a[r:], r),
        "white noise 10 dB SNR": lambda a, r: (_mix(a, soxr.resample(noise, RATE, r), 10), r),
        "music 10 dB SNR": lambda a, r: (_mix(a, soxr.resample(music, RATE, r), 10), r),
    }
    if babble is not None:
        table["babble 10 dB SNR"] = lambda a, r: (_mix(a, soxr.resample(babble, RATE, r), 10), r)
    return table


# -- speech ---------------------------------------------------------------------------------------------------------
def farm_lines(count: int) -> list[dict[str, Any]]:
    """`count` lines spoken by the kokoro engine, mastered as a job asks (-16 LUFS): unmarked and marked."""
    from shared.audio import mastering
    from worker.engines.kokoro.engine import KokoroEngine

    engine = KokoroEngine()
    engine.load()
    out = []
    languages = list(LINES)
    for i in range(count):
        language = languages[i % 3]
        text = LINES[language][(i // 3) % len(LINES[language])]
        voice = VOICES[i % len(VOICES)]
        audio = engine.synthesize(text, voice=voice, language=language).audio
        mastered = mastering.master(audio, RATE, mastering.Options.from_dict({"loudness": -16.0})).audio
        out.append(
            {
                "text": text,
                "language": language,
                "voice": voice,
                "clean": mastered,
                "marked": watermark.embed(mastered, RATE),
            }
        )
    return out


def _espeak_clips() -> Iterator[tuple[str, np.ndarray, int]]:
    from benchmarks.make_eval_set import SPEAKERS, Espeak

    espeak = Espeak()
    kana = [
        "はくぶつかんは ぱんやの かどを まがって みぎがわに あります。",
        "きょうは いい てんきなので こうえんを さんぽします。",
        "くうこうゆきの でんしゃは にじゅっぷんごとに でます。",
        "おみせは あさ くじに あいて ゆうがた ろくじに しまります。",
    ]
    texts = {"en": LINES["en"], "zh": LINES["zh"], "ja": kana}
    variants = {
        "en": ["en-us", "en-gb-x-rp", "en-us+m1", "en-us+f2", "en+m4", "en-us+f5"],
        "zh": ["cmn", "cmn+m3", "cmn+f4"],
        "ja": [],
    }
    for speaker in SPEAKERS:
        variants[speaker.language].append(speaker.voice)
    for language, voices in variants.items():
        for k, voice in enumerate(voices):
            for j, text in enumerate(texts[language]):
                pitch = 30 + (7 * (k + j)) % 45
                speed = 140 + (11 * (k + 2 * j)) % 50
                samples = espeak.speak(text, voice, pitch, speed).astype(np.float32) / 32768.0
                yield f"espeak-ng {language}", samples, espeak.rate


def _command_clips(kind: str) -> Iterator[tuple[str, np.ndarray, int]]:
    from tests.support.needs import debian_tool

    folder = Path(tempfile.mkdtemp(prefix=f"wm-{kind}-"))
    if kind == "flite":
        flite = debian_tool("flite", "flite")
        for voice in ("kal", "kal16", "awb", "rms", "slt", "awb_time"):
            for j, text in enumerate(LINES["en"]):
                path = folder / f"{voice}-{j}.wav"
                subprocess.run([flite, "-voice", voice, "-t", text, "-o", str(path)], check=True)
                audio, rate = sf.read(path, dtype="float32")
                yield f"flite {voice}", audio, rate
    else:
        text2wave = debian_tool("text2wave", "festival")
        for j, text in enumerate(LINES["en"] * 2):
            source = folder / f"{j}.txt"
            source.write_text(text if j < len(LINES["en"]) else text.upper())
            path = folder / f"{j}.wav"
            subprocess.run([text2wave, str(source), "-o", str(path)], check=True, capture_output=True)
            audio, rate = sf.read(path, dtype="float32")
            yield "festival", audio, rate
    shutil.rmtree(folder, ignore_errors=True)


def foreign_clips() -> Iterator[tuple[str, np.ndarray, int]]:
    yield from _espeak_clips()
    yield from _command_clips("flite")
    yield from _command_clips("festival")


# -- parts ----------------------------------------------------------------------------------------------------------
def part_robustness(lines: list[dict[str, Any]]) -> dict[str, Any]:
    babble = np.concatenate([line["clean"] for line in lines[:3]])
    rows = {}
    for name, attack in attacks(babble).items():
        marked = [watermark.score(*attack(line["marked"], RATE)) for line in lines]
        clean = [watermark.score(*attack(line["clean"], RATE)) for line in lines]
        rows[name] = {
            "detected": sum(s > watermark.THRESHOLD for s in marked),
            "of": len(marked),
            "min_marked_score": round(min(marked), 4),
            "median_marked_score": round(statistics.median(marked), 4),
            "false_positives": sum(s > watermark.THRESHOLD for s in clean),
            "max_unmarked_score": round(max(clean), 4),
        }
        r = rows[name]
        print(
            f"  {name:<22} detected {r['detected']:>3}/{r['of']}  min {r['min_marked_score']:.3f}  "
            f"median {r['median_marked_score']:.3f} | unmarked: {r['false_positives']} false, "
            f"max {r['max_unmarked_score']:.3f}",
            flush=True,
        )
    return rows


def part_foreign() -> dict[str, Any]:
    by_source: dict[str, list[float]] = {}
    for source, audio, rate in foreign_clips():
        by_source.setdefault(source, []).append(watermark.score(audio, rate))
    rows = {}
    for source, scores in by_source.items():
        rows[source] = {
            "clips": len(scores),
            "false_positives": sum(s > watermark.THRESHOLD for s in scores),
            "max_score": round(max(scores), 4),
        }
        print(f"  {source:<18} {len(scores):>3} clips, {rows[source]['false_positives']} marked, max {max(scores):.4f}")
    total = sum(r["clips"] for r in rows.values())
    false = sum(r["false_positives"] for r in rows.values())
    print(f"  all: {false} of {total} foreign clips called marked", flush=True)
    return {"sources": rows, "clips": total, "false_positives": false}


def part_quality(lines: list[dict[str, Any]]) -> dict[str, Any]:
    from tests.support import asr
    from worker.evaluators.similarity import SpeakerEncoder

    encoder = SpeakerEncoder()
    references: dict[str, np.ndarray] = {}
    errors: dict[str, dict[str, list[float]]] = {}
    similarity: dict[str, list[float]] = {"clean": [], "marked": []}
    snrs = []
    for i, line in enumerate(lines):
        voice = line["voice"]
        if voice not in references:  # another line of the same voice (the next of the same voice, unmarked)
            other = next(x for x in lines[i + 1 :] + lines[:i] if x["voice"] == voice)
            references[voice] = encoder.embed(other["clean"], RATE)
        noise = line["marked"] - line["clean"]
        snrs.append(10 * np.log10(np.sum(line["clean"] ** 2) / max(np.sum(noise**2), 1e-20)))
        for kind in ("clean", "marked"):
            heard = asr.transcribe(line[kind], RATE, line["language"])
            errors.setdefault(line["language"], {"clean": [], "marked": []})[kind].append(
                asr.error_rate(line["text"], heard, line["language"])
            )
            similarity[kind].append(encoder.similarity(references[voice], encoder.embed(line[kind], RATE)))
    out: dict[str, Any] = {"snr_db_median": round(float(np.median(snrs)), 1), "snr_db_min": round(float(min(snrs)), 1)}
    for language, kinds in errors.items():
        out[f"error_{language}"] = {k: round(float(np.mean(v)), 4) for k, v in kinds.items()}
    out["similarity"] = {k: round(float(np.mean(v)), 4) for k, v in similarity.items()}
    # What the mark does to the mastered level: integrated loudness and true peak, marked less unmarked.
    from shared.audio import mastering

    levels = [(mastering.measure(x["clean"], RATE), mastering.measure(x["marked"], RATE)) for x in lines]
    out["loudness_change_lu_max"] = round(max(abs(m["integrated_lufs"] - c["integrated_lufs"]) for c, m in levels), 2)
    out["true_peak_change_db_max"] = round(max(m["true_peak_dbtp"] - c["true_peak_dbtp"] for c, m in levels), 2)
    out["true_peak_marked_dbtp_max"] = round(max(m["true_peak_dbtp"] for _c, m in levels), 2)
    out["similarity_marked_vs_clean_min"] = round(
        min(encoder.similarity(encoder.embed(x["clean"], RATE), encoder.embed(x["marked"], RATE)) for x in lines), 4
    )
    print(f"  {json.dumps(out, default=float)}", flush=True)
    return out


def part_cost(lines: list[dict[str, Any]]) -> dict[str, Any]:
    audio = np.concatenate([line["clean"] for line in lines[:4]])
    seconds = len(audio) / RATE
    watermark.embed(audio[:RATE], RATE)  # weights loaded, BLAS controller made
    embed, detect = [], []
    for _ in range(5):
        started = time.perf_counter()
        marked = watermark.embed(audio, RATE)
        embed.append((time.perf_counter() - started) / seconds)
        started = time.perf_counter()
        watermark.score(marked, RATE)
        detect.append((time.perf_counter() - started) / seconds)
    out = {
        "audio_s": round(seconds, 2),
        "embed_s_per_audio_s": round(statistics.median(embed), 4),
        "detect_s_per_audio_s": round(statistics.median(detect), 4),
    }
    print(f"  {json.dumps(out, default=float)}", flush=True)
    return out


def _worker_loop(env: dict[str, str], name: str, tenant_id: str, count: int, out: Any) -> None:
    """One worker process's share of the farm part: the worker's own path for each line (claim, synthesize, master,
    mark or not, encode, label, upload, finish), mark on and off in the order on, off, off, on, ..."""
    os.environ.update(env)
    import dataclasses

    from shared.config import Settings
    from shared.db import transaction
    from shared.jobs import state as jobs
    from worker.context import WorkerContext
    from worker.synthesis import run_synthesis

    settings = Settings(worker_name=name)
    marking = WorkerContext.build(settings)
    plain = dataclasses.replace(marking, settings=settings.model_copy(update={"watermark": False}))

    def line(i: int, on: bool) -> float:
        language = list(LINES)[i % 3]
        fields = {"engine": "kokoro", "voice": VOICES[i % len(VOICES)], "mode": "clone", "language": language}
        with transaction(marking.sessions) as session:
            job, _ = jobs.create_job(
                session, tenant_id=tenant_id, idempotency_key=None, text=LINES[language][(i // 3) % 8],
                format="wav", seed=hash((name, i)) % 2**31, **fields,
            )  # fmt: skip
            job_id = job.id
        started = time.perf_counter()
        assert run_synthesis(marking if on else plain, job_id) == "succeeded"
        return time.perf_counter() - started

    line(0, True)  # untimed: loads what the first line loads (voices, the mark's weights, G2P)
    times: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(count):
        on = i % 4 in (0, 3)
        times["on" if on else "off"].append(line(i + 1, on))
    out.put(times)


def part_farm(count: int) -> dict[str, Any]:
    """Two worker processes (one per core, one intra-op thread each) on real PostgreSQL, Redis and SeaweedFS
    (tests/support/faultfarm.py's services), each running `count` lines through the worker's own path, mark on and
    off alternating in every process: lines per minute of the two with the mark on and off."""
    import multiprocessing

    from tests.support.faultfarm import FaultFarm

    farm = FaultFarm(Path(tempfile.mkdtemp(prefix="vf-wm-bench-")))
    try:
        farm.start_services()
        env = {k: v for k, v in farm.env().items() if k.startswith(("VOICEFARM_", "AWS_")) or k.endswith("_URL")}
        env["VOICEFARM_ENGINE_THREADS"] = "1"
        spawn = multiprocessing.get_context("spawn")
        queue = spawn.Queue()
        procs = [
            spawn.Process(target=_worker_loop, args=(env, f"bench-{k}", farm.tenant_id, count, queue)) for k in range(2)
        ]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=3600) for _ in procs]
        for proc in procs:
            proc.join(60)
    finally:
        farm.stop_all()
    out: dict[str, Any] = {"lines_per_process": count}
    for mode in ("on", "off"):
        seconds = [t for r in results for t in r[mode]]
        # Two processes side by side: each finishes a line every mean seconds.
        out[mode] = {
            "lines": len(seconds),
            "mean_s": round(statistics.mean(seconds), 2),
            "lines_per_minute": round(2 * 60 / statistics.mean(seconds), 1),
        }
    out["ratio"] = round(out["on"]["lines_per_minute"] / out["off"]["lines_per_minute"], 3)
    print(f"  {json.dumps(out, default=float)}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="robustness,foreign,quality,cost,farm")
    parser.add_argument("--lines", type=int, default=24, help="farm lines for robustness, quality and cost")
    parser.add_argument("--farm-lines", type=int, default=24, help="lines per phase of the farm part")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    parts = args.parts.split(",")
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    figures: dict[str, Any] = {}
    lines = farm_lines(args.lines) if {"robustness", "quality", "cost"} & set(parts) else []
    for part in parts:
        print(f"{part}:", flush=True)
        if part == "robustness":
            figures[part] = part_robustness(lines)
        elif part == "foreign":
            figures[part] = part_foreign()
        elif part == "quality":
            figures[part] = part_quality(lines)
        elif part == "cost":
            figures[part] = part_cost(lines)
        elif part == "farm":
            figures[part] = part_farm(args.farm_lines)
        else:
            parser.error(f"unknown part {part!r}")
    print(f"load at the end {os.getloadavg()[0]:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
