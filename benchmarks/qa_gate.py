"""The QA gate's cost per job, in-process: what each of its checks takes beside the synthesis of the same line.

Per line: kokoro synthesis, WAV encoding (what the worker stores), then the gate as the QA worker runs it
(worker/qa/checks.py): decode, the signal checks, the Whisper base transcription with the error rate, and the speaker
similarity to a reference clip. Models are loaded before timing (a QA worker keeps them resident).

    .venv/bin/python benchmarks/qa_gate.py            # 4 lines per language
    .venv/bin/python benchmarks/qa_gate.py --lines 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from shared import qa
from shared.audio.codecs import encode
from worker.engines import create_engine
from worker.evaluators.asr import Transcriber
from worker.evaluators.similarity import SpeakerEncoder, shared_encoder
from worker.qa import checks

RATE = 24_000
LINES = {
    "en": [
        "The weather is lovely today, so we are going for a long walk in the park.",
        "Every job is kept in the database, and a worker that dies loses nothing.",
        "Please read the next line slowly; it names three cities and a river.",
        "The train leaves at noon, so bring a coat, because it may rain.",
    ],
    "zh": [
        "今天天气很好，我们去公园散步吧，然后回家做饭。",
        "每个任务都保存在数据库里，工人出错也不会丢失。",
        "请慢慢读下一句，这里有三个城市和一条河。",
        "火车中午出发，带上外套，因为可能会下雨。",
    ],
    "ja": [
        "今日は天気がいいので、公園を散歩してから夕食を作ります。",
        "すべての仕事はデータベースに保存されるので、何も失われません。",
        "次の文をゆっくり読んでください。三つの町と川が出てきます。",
        "電車は正午に出発します。雨が降るかもしれないので、上着を持ってきてください。",
    ],
}


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=4, help="lines per language (up to 4)")
    args = parser.parse_args()
    engine = create_engine("kokoro")
    engine.load()
    transcriber = Transcriber(Path(tempfile.mkdtemp(prefix="qa-bench-")))
    encoder = shared_encoder()
    reference = engine.synthesize(LINES["en"][0], voice="jf_alpha", language="en").audio
    # Warm both models: a QA worker loads them once.
    transcriber.transcribe(reference, RATE, "en")
    encoder.embed(reference, RATE)
    limits = qa.thresholds(None, None)
    times: dict[str, list[float]] = {}
    passed = 0
    audio_s = 0.0
    for lang, texts in LINES.items():
        for text in texts[: args.lines]:
            started = time.perf_counter()
            audio = engine.synthesize(text, voice="jf_alpha", language=lang).audio
            times.setdefault("synthesis", []).append(_ms(started))
            audio_s += len(audio) / RATE
            stored = encode(audio, RATE, "wav")
            gate = time.perf_counter()
            started = time.perf_counter()
            decoded, rate = checks.decode(stored.data, "wav", RATE)
            times.setdefault("decode", []).append(_ms(started))
            started = time.perf_counter()
            checks.evaluate(decoded, rate, text=text, language=lang, speed=1.0, limits=limits, transcriber=None)
            times.setdefault("signal checks", []).append(_ms(started))
            started = time.perf_counter()
            heard, _ = transcriber.transcribe(decoded, rate, lang)
            checks.error_rate(text, heard, lang)
            times.setdefault(f"asr + error rate ({lang})", []).append(_ms(started))
            started = time.perf_counter()
            SpeakerEncoder.similarity(encoder.embed(decoded, rate), encoder.embed(reference, RATE))
            times.setdefault("similarity", []).append(_ms(started))
            times.setdefault("whole gate", []).append(_ms(gate))
            report = checks.evaluate(
                decoded,
                rate,
                text=text,
                language=lang,
                speed=1.0,
                limits=limits,
                transcriber=transcriber,
                encoder=encoder,
                reference=(reference, RATE),
            )
            passed += report.passed
    lines = sum(len(t[: args.lines]) for t in LINES.values())
    print(f"{'step':<26}{'median ms':>10}{'max ms':>10}  ({lines} lines, {audio_s:.1f} s of audio)")
    for step, values in times.items():
        print(f"{step:<26}{statistics.median(values):>10.1f}{max(values):>10.1f}")
    gate, synth = sum(times["whole gate"]), sum(times["synthesis"])
    print(f"\ngate / synthesis: {gate / synth:.2f}   gate per audio second: {gate / audio_s:.0f} ms")
    print(f"takes passing the gate with default thresholds: {passed}/{lines}")


if __name__ == "__main__":
    main()
