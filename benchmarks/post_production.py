"""Post-production per job: what each step costs, and how far the word timings are from a known reference.

The reference: a line of several sentences is synthesized one sentence at a time and joined with known pauses,
so where each sentence starts and ends in the joined audio is known to the sample. The forced alignment
(worker/alignment.py) must put the first word of each sentence at its start and the last word at its end; the
error is |aligned - known|. Steps timed per line: synthesis, loudness (-16 LUFS), trim, fit to a slot 10 % shorter,
encoding to each format, alignment.

    .venv/bin/python benchmarks/post_production.py            # 4 lines per language
    .venv/bin/python benchmarks/post_production.py --lines 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from shared.audio import mastering
from shared.audio.codecs import FORMATS, encode, join_segments
from worker.alignment import script_words, word_timings
from worker.engines import create_engine
from worker.evaluators.asr import Transcriber

RATE = 24000
LINES = {
    "en": [
        ["The weather is lovely today.", "We are going for a long walk in the park.", "Then we will cook dinner."],
        ["Every job is kept in the database.", "A worker that dies loses nothing.", "Another one takes over."],
        ["Please read the next line slowly.", "It names three cities and a river.", "Thank you very much."],
        ["The train leaves at noon.", "Bring a coat, because it may rain.", "We will be back tomorrow."],
    ],
    "zh": [
        ["今天天气很好。", "我们去公园散步吧。", "然后回家做饭。"],
        ["每个任务都保存在数据库里。", "工人出错也不会丢失。", "另一个会接着做。"],
        ["请慢慢读下一句。", "这里有三个城市和一条河。", "非常感谢。"],
        ["火车中午出发。", "带上外套，可能会下雨。", "我们明天回来。"],
    ],
    "ja": [
        ["今日はいい天気ですね。", "公園を散歩しましょう。", "それから晩ご飯を作ります。"],
        ["仕事はすべて記録されます。", "失敗しても消えません。", "ほかの人が続けます。"],
        ["次の文をゆっくり読んでください。", "町が三つと川が一つあります。", "ありがとうございます。"],
        ["電車は昼に出ます。", "雨が降るかもしれません。", "明日帰ります。"],
    ],
}
VOICES = {"en": "jf_alpha", "zh": "jm_kumo", "ja": "jf_alpha"}


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=4)
    args = parser.parse_args()
    engine = create_engine("kokoro")
    engine.load()
    transcriber = Transcriber(Path(tempfile.mkdtemp(prefix="vf-bench-")))
    transcriber.words(np.zeros(RATE, dtype=np.float32), RATE, "en")  # load Whisper outside the timings
    costs: dict[str, list[float]] = {}
    errors: dict[str, list[float]] = {}
    for language, lines in LINES.items():
        for sentences in lines[: args.lines]:
            audios, ms = timed(
                lambda s=sentences, lang=language: [
                    engine.synthesize(x, voice=VOICES[lang], language=lang).audio for x in s
                ]
            )
            costs.setdefault("synthesis", []).append(ms)
            audio, starts = join_segments(audios, RATE, 0.25)
            sep = " " if language == "en" else ""
            script = sep.join(sentences)
            _, ms = timed(mastering.normalise_loudness, audio, RATE, -16.0, -1.0)
            costs.setdefault("loudness -16 LUFS", []).append(ms)
            _, ms = timed(mastering.trim_silence, audio, RATE, 0.1)
            costs.setdefault("trim", []).append(ms)
            _, ms = timed(mastering.stretch, audio, RATE, 1.1)
            costs.setdefault("stretch x1.1", []).append(ms)
            for fmt in FORMATS:
                rate = 48000 if fmt == "opus" else None
                _, ms = timed(encode, audio, RATE, fmt, rate)
                costs.setdefault(f"encode {fmt}", []).append(ms)
            words, ms = timed(word_timings, transcriber, audio, RATE, script, language)
            costs.setdefault(f"alignment ({language})", []).append(ms)
            # Reference: each sentence's known start and end in the joined audio.
            cursor = 0
            for sentence, seg, start in zip(sentences, audios, starts, strict=True):
                n = len(script_words(sentence))
                first, last = words[cursor], words[cursor + n - 1]
                cursor += n
                speech = mastering.trim_silence(seg, RATE, 0.0)[1]  # the engine's own lead-in before the voice
                onset = start + speech
                errors.setdefault(language, []).append(abs(first["start_s"] - onset) * 1000)
                end = start + len(mastering.trim_silence(seg, RATE, 0.0)[0]) / RATE + speech
                errors.setdefault(language, []).append(abs(last["end_s"] - end) * 1000)
    print(f"{'step':<24}{'median ms':>10}{'max ms':>10}  (per line of ~3 sentences)")
    for step, values in costs.items():
        print(f"{step:<24}{statistics.median(values):>10.1f}{max(values):>10.1f}")
    print(f"\n{'word timing error':<24}{'mean ms':>10}{'p90 ms':>10}{'n':>6}  (sentence onsets and ends vs known)")
    for language, values in errors.items():
        values.sort()
        p90 = values[int(0.9 * (len(values) - 1))]
        print(f"{language:<24}{statistics.mean(values):>10.0f}{p90:>10.0f}{len(values):>6}")


if __name__ == "__main__":
    main()
