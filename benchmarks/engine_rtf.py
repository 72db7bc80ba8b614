"""Real-time factor of the kokoro engine per language: compute seconds per second of audio (below 1 is faster
than real time).

    .venv/bin/python benchmarks/engine_rtf.py [--threads N] [--repeat 1]

Runs in-process (no services, no queue): loads the engine once, speaks one untimed warm-up sentence per language,
then speaks three sentences per language in that language's default stock voice and prints audio seconds, wall
seconds and RTF per language. Takes well under two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time

from worker.engines import create_engine

SENTENCES = {
    "en": [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Please remember to back up your files before installing the update.",
        "Our store opens at nine in the morning and closes at six in the evening.",
    ],
    "zh": [
        "今天天气很好，我们一起去公园散步吧。",
        "请在下午三点之前把报告发给我。",
        "这家餐厅的菜很好吃，价格也不贵。",
    ],
    "ja": [
        "今日はとてもいい天気ですね。",
        "駅までの道を教えていただけますか。",
        "この本は先週図書館で借りたものです。",
    ],
}
WARM_UP = {"en": "Hello there.", "zh": "你好。", "ja": "こんにちは。"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads; 0: every core")
    parser.add_argument("--repeat", type=int, default=1, help="speak each sentence this many times")
    args = parser.parse_args()

    engine = create_engine("kokoro", threads=args.threads or None)
    caps = engine.capabilities
    started = time.perf_counter()
    engine.load()
    print(f"engine: {caps.name}, {caps.sample_rate} Hz, threads={args.threads or 'all'}, cpus={os.cpu_count()}")
    print(f"engine load: {time.perf_counter() - started:.2f} s")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"{'language':<9}{'voice':<10}{'sentences':>10}{'audio s':>10}{'wall s':>10}{'RTF':>8}")
    total_audio = total_wall = 0.0
    for language, sentences in SENTENCES.items():
        voice = caps.default_voices[language]
        engine.synthesize(WARM_UP[language], voice=voice, language=language)
        audio_s = wall_s = 0.0
        for _ in range(args.repeat):
            for text in sentences:
                t0 = time.perf_counter()
                out = engine.synthesize(text, voice=voice, language=language)
                wall_s += time.perf_counter() - t0
                audio_s += len(out.audio) / out.sample_rate
        total_audio, total_wall = total_audio + audio_s, total_wall + wall_s
        count = len(sentences) * args.repeat
        print(f"{language:<9}{voice:<10}{count:>10}{audio_s:>10.2f}{wall_s:>10.2f}{wall_s / audio_s:>8.3f}")
    print(f"{'all':<19}{'':>10}{total_audio:>10.2f}{total_wall:>10.2f}{total_wall / total_audio:>8.3f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
