"""GPU smoke run of the `cosyvoice` engine: first load, real-time factor and GPU memory, through the farm's worker code.

Started by benchmarks/gpu_smoke.sh with the upstream environment's python and this checkout on PYTHONPATH:

    python benchmarks/gpu_smoke.py --model-dir DIR --prompt WAV [--quality] [--out REPORT.json]

The engine is built the way a worker builds it (worker.engines.create_engine with engine_options from the
settings), on the GPU that CUDA_VISIBLE_DEVICES leaves visible. With a random model (build_model.py) it speaks the
upstream test's cases: the figures are the farm's and upstream's overhead, not a real model's speed. With --quality
(real Fun-CosyVoice3-0.5B-2512 or CosyVoice2-0.5B weights) it clones upstream's prompt voice, speaks a few lines and
checks them: ASR error (the farm's Whisper base) and speaker similarity to the prompt (the farm's GE2E encoder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

TRANSCRIPT = "希望你以后能够做的比我还好呦。"  # upstream's asset/zero_shot_prompt.wav
QUALITY_LINES = [
    ("zh", "收到好友从远方寄来的生日礼物，那份意外的惊喜让我心中充满了甜蜜的快乐。"),
    ("zh", "今天天气很好，我们一起去公园散步吧。"),
    ("en", "Please remember to back up your files before installing the update."),
    ("en", "Our store opens at nine in the morning and closes at six in the evening."),
]
SMOKE_LINES = [("zh", "你好。"), ("en", "Hi there."), ("zh", "今天天气很好。")]


def _edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def error_rate(reference: str, heard: str, language: str) -> float:
    """Character error rate for Chinese, word error rate otherwise; punctuation and case ignored."""

    def units(text: str) -> list[str]:
        kept = "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text)
        return list(kept.replace(" ", "")) if language == "zh" else kept.split()

    ref = units(reference)
    return _edit_distance(ref, units(heard)) / max(1, len(ref))


def _gpu_memory() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {
        "device": torch.cuda.get_device_name(0),
        "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }  # type: ignore[dict-item]


def run(model_dir: Path, data_dir: Path, prompt: Path, quality: bool) -> dict[str, Any]:
    import torch

    from shared.config import CosyVoiceSettings, Settings
    from worker.engines import create_engine, engine_options

    settings = Settings(
        engine="cosyvoice", cosyvoice=CosyVoiceSettings(model_dir=model_dir), data_dir=data_dir, worker_name="gpu-smoke"
    )
    engine: Any = create_engine("cosyvoice", **engine_options("cosyvoice", settings))
    started = time.perf_counter()
    engine.load()
    report: dict[str, Any] = {"cuda": torch.cuda.is_available(), "first_load_s": time.perf_counter() - started}
    report["after_load"] = _gpu_memory()
    audio, rate = sf.read(prompt, dtype="float32", always_2d=False)
    profile = engine.clone(audio, rate, TRANSCRIPT)
    lines = QUALITY_LINES if quality else SMOKE_LINES
    engine.synthesize(lines[0][1], voice=profile, language=lines[0][0], seed=1)  # warm-up, not timed
    rows = []
    for mode in ("clone", "cross_lingual", "instruct"):
        for language, text in lines:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            instruct = "请用四川话表达。" if mode == "instruct" else None
            out = engine.synthesize(text, voice=profile, mode=mode, instruct=instruct, language=language, seed=1)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            seconds = out.audio.size / out.sample_rate
            rows.append({"mode": mode, "language": language, "text": text, "audio_s": seconds,
                         "wall_s": elapsed, "rtf": elapsed / max(seconds, 1e-9), "audio": out.audio})  # fmt: skip
    report["peak"] = _gpu_memory()
    if quality:
        from worker.evaluators.asr import Transcriber
        from worker.evaluators.similarity import SpeakerEncoder

        asr, encoder = Transcriber(data_dir / "asr-cache"), SpeakerEncoder()
        reference = encoder.embed(audio, rate)
        for row in rows:
            if row["mode"] == "instruct":
                continue  # a dialect instruction changes the words Whisper hears
            heard, _ = asr.transcribe(row["audio"], 24000, row["language"])
            row["heard"], row["error_rate"] = heard, error_rate(row["text"], heard, row["language"])
            row["similarity"] = encoder.similarity(reference, encoder.embed(row["audio"], 24000))
    for row in rows:
        del row["audio"]
    report["segments"] = rows
    total_audio, total_wall = sum(r["audio_s"] for r in rows), sum(r["wall_s"] for r in rows)
    report["rtf"] = total_wall / max(total_audio, 1e-9)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("var/gpu-smoke/data"))
    parser.add_argument("--prompt", type=Path, required=True)
    parser.add_argument("--quality", action="store_true", help="real weights: ASR error and speaker similarity")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run(args.model_dir, args.data_dir, args.prompt, args.quality)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"cuda={report['cuda']} first load {report['first_load_s']:.1f} s, overall RTF {report['rtf']:.3f}")
    print(f"GPU memory after load: {report['after_load']}; peak: {report['peak']}")
    for row in report["segments"]:
        quality = f" err={row['error_rate']:.2f} sim={row['similarity']:.2f}" if "error_rate" in row else ""
        print(f"  {row['mode']:<13} {row['language']} {row['audio_s']:5.2f} s audio, RTF {row['rtf']:.3f}{quality}")
    if args.quality:
        checked = [r for r in report["segments"] if "error_rate" in r]
        mean_err = float(np.mean([r["error_rate"] for r in checked]))
        mean_sim = float(np.mean([r["similarity"] for r in checked]))
        print(f"quality: mean error rate {mean_err:.3f}, mean speaker similarity {mean_sim:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
