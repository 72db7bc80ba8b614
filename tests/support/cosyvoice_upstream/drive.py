"""Drive the farm's `cosyvoice` adapter over real upstream CosyVoice and report what came out, as JSON.

Runs with the python of the upstream environment and the farm's checkout on PYTHONPATH (tests/
test_cosyvoice_upstream.py and benchmarks/gpu_smoke.sh start it):

    python tests/support/cosyvoice_upstream/drive.py --model-dir DIR --data-dir DIR --prompt WAV --out REPORT.json

For each mode (clone, cross_lingual, instruct) at two speeds with one seed, then the same seed again and another
seed, it records the adapter's output (rate, dtype, shape, finiteness, peak, duration, a hash of the samples) and
what upstream itself yielded (chunk types, shapes, dtypes), plus the load and synthesis times and, on CUDA, the
peak GPU memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

TRANSCRIPT = "希望你以后能够做的比我还好呦。"  # what upstream's asset/zero_shot_prompt.wav says
CASES: list[dict[str, Any]] = [
    # Short lines: a random CosyVoice2 rarely samples a stop token, so it speaks up to upstream's cap of 20 speech
    # tokens per text token (the random tokenizer gives one per UTF-8 byte: "Hi." is 3, "好。" is 6).
    {"mode": "clone", "text": "Hi.", "language": "en"},
    {"mode": "cross_lingual", "text": "Hi.", "language": "en"},
    {"mode": "instruct", "text": "好。", "language": "zh", "instruct": "请用四川话表达。"},
]
SPEEDS = (1.0, 1.5)
# Texts upstream's frontend splits: the report carries its pieces so the test can hold the fake to them.
SPLIT_SAMPLES = [
    "收到好友从远方寄来的生日礼物。那份意外的惊喜让我心中充满了甜蜜的快乐。",
    "".join(f"第{i}句话说得有一点长，但是还不到八十个字。" for i in range(6)),
    "你好！今天（周一）的会议在三楼。好的",
    "我们 明天 见，OK go。面积是5m²——不大",
    "在他讲述那个荒诞故事的过程中，他突然[laughter]停下来，因为他自己也被逗笑了[laughter]。",
    "You are a helpful assistant.<|endofprompt|>Hi there. Two. Three.",
]
SEED = 1234


def _record_upstream(model: Any, calls: list[dict[str, Any]]) -> None:
    """Wrap the model's generators to note what upstream yields, before the adapter converts it."""
    for name in ("inference_zero_shot", "inference_cross_lingual", "inference_instruct2"):
        original = getattr(model, name)

        def wrapped(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            texts = [arg for arg in args if isinstance(arg, str)]
            calls.append({"method": _name, "call": True, "args": texts[:-1], "kwargs": kwargs})  # last: prompt_wav
            for chunk in _original(*args, **kwargs):
                speech = chunk["tts_speech"]
                calls.append({
                    "method": _name, "type": f"{type(speech).__module__}.{type(speech).__name__}",
                    "shape": list(speech.shape), "dtype": str(speech.dtype), "keys": sorted(chunk),
                })  # fmt: skip
                yield chunk

        setattr(model, name, wrapped)


def _summary(audio: np.ndarray, rate: int) -> dict[str, Any]:
    return {
        "sample_rate": rate, "dtype": str(audio.dtype), "shape": list(audio.shape),
        "finite": bool(np.isfinite(audio).all()), "peak": float(np.max(np.abs(audio))) if audio.size else 0.0,
        "duration_s": audio.size / rate, "sha256": hashlib.sha256(audio.tobytes()).hexdigest(),
    }  # fmt: skip


def run(model_dir: Path, data_dir: Path, prompt: Path, device_note: str = "cpu") -> dict[str, Any]:
    from worker.engines.cosyvoice import CosyVoiceEngine

    report: dict[str, Any] = {"device": device_note, "cases": []}
    engine = CosyVoiceEngine(model_dir=model_dir, data_dir=data_dir, worker_name=f"upstream-{model_dir.name}")
    started = time.perf_counter()
    engine.load()
    report["load_s"] = time.perf_counter() - started
    model = engine._model
    report["upstream_class"] = type(model).__name__
    report["upstream_sample_rate"] = int(model.sample_rate)
    report["text_frontend"] = getattr(model.frontend, "text_frontend", None)
    upstream_calls: list[dict[str, Any]] = []
    _record_upstream(model, upstream_calls)

    audio, rate = sf.read(prompt, dtype="float32", always_2d=False)
    started = time.perf_counter()
    profile = engine.clone(audio, rate, TRANSCRIPT)
    report["clone_s"] = time.perf_counter() - started

    def synth(case: dict[str, Any], speed: float, seed: int) -> dict[str, Any]:
        begin = len(upstream_calls)
        started = time.perf_counter()
        out = engine.synthesize(
            case["text"], voice=profile, mode=case["mode"], instruct=case.get("instruct"),
            language=case["language"], speed=speed, seed=seed,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        # How many text tokens upstream's own frontend makes of the text: the LLM's length bounds follow them.
        pieces = model.frontend.text_normalize(case["text"], split=True, text_frontend=True)
        tokens = [
            len(model.frontend.tokenizer.encode(p, allowed_special=model.frontend.allowed_special)) for p in pieces
        ]
        return {
            **case, "speed": speed, "seed": seed, "elapsed_s": elapsed, "warnings": out.warnings,
            "text_tokens": tokens, **_summary(out.audio, out.sample_rate),
            "upstream": [c for c in upstream_calls[begin:] if not c.get("call")],
            "sent": [c for c in upstream_calls[begin:] if c.get("call")],
        }  # fmt: skip

    for case in CASES:
        for speed in SPEEDS:
            report["cases"].append(synth(case, speed, SEED))
    report["repeat"] = synth(CASES[0], SPEEDS[0], SEED)
    report["other_seed"] = synth(CASES[0], SPEEDS[0], SEED + 1)
    # The speaker cache after every mode has run: upstream's frontends must have left the entry whole.
    spk_id = json.loads(profile.data)["spk_id"]
    report["spk_id"] = spk_id
    report["cached_speaker_keys"] = sorted(model.frontend.spk2info.get(spk_id, {}))
    report["splits"] = {
        text: model.frontend.text_normalize(text, split=True, text_frontend=True) for text in SPLIT_SAMPLES
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--prompt", type=Path, required=True, help="a reference clip: upstream's asset/zero_shot_prompt.wav"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report = run(args.model_dir, args.data_dir, args.prompt)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
