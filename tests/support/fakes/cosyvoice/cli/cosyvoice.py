"""FAKE of upstream CosyVoice's `cosyvoice.cli.cosyvoice`, for tests only. It is NOT the model and makes tones.

Real upstream runs in tests/worker/test_cosyvoice_upstream.py (CPU, random models). This fake stays for what cannot run
on a CPU there, upstream's CUDA-only first load (TensorRT plans, vLLM exports written into the model dir), and for fast
checks of what the adapter sends, in the farm's own test venv. It mirrors upstream at ace7c47f (2026-03-16):
  AutoModel(model_dir=..., load_trt=False, load_vllm=False, fp16=False) -> CosyVoice2 or CosyVoice3, dispatched
    in upstream's order: cosyvoice.yaml (CosyVoice 1, which the fake does not model), then cosyvoice2.yaml,
    then cosyvoice3.yaml; a model_dir that does not exist is an error here (upstream would try to download it).
  .sample_rate, .frontend.spk2info (the speaker cache)
  .add_zero_shot_spk(prompt_text, prompt_wav, zero_shot_spk_id) -> True
  .inference_zero_shot(tts_text, prompt_text, prompt_wav, zero_shot_spk_id='', stream=False, speed=1.0, ...)
  .inference_cross_lingual(tts_text, prompt_wav, zero_shot_spk_id='', stream=False, speed=1.0, ...)
  .inference_instruct2(tts_text, instruct_text, prompt_wav, zero_shot_spk_id='', stream=False, speed=1.0, ...)
and the behaviour the adapter has to live with:
- as on a CUDA machine, load_trt=True writes a TensorRT plan into model_dir when none is there, and load_vllm=True
  a `vllm/` export (upstream drops both flags without CUDA): tests use these files to prove the adapter never
  points it at the shared `models/`.
- prompt_wav is an audio file path (at least 16 kHz, at most 30 s), read on use.
- with a zero_shot_spk_id the frontends start from a copy of the cached entry (upstream copies it since
  2025-12-29, so cross-lingual and instruct2 no longer edit the cache); instruct2 then keeps the cached prompt
  text, the transcript, instead of instruct_text.
- CosyVoice3's LLM refuses an input without `<|endofprompt|>` in the text or the prompt text.
- text is cleaned and split as upstream's frontend does without ttsfrd or wetext (Chinese: spaces between non-ASCII
  characters, brackets and newlines dropped, "." as "。"; numbers in English text are not spelled out here): at
  sentence ends, merged while a piece is
  under 60 units and would stay within 80, a short tail joined to the previous piece; units are characters for
  text with Chinese in it and tokens otherwise (here a stand-in: one per 4 UTF-8 bytes, near Qwen2's rate for
  English). Text with `<|`/`|>` tags is one piece. Each piece is one chunk.
- the generators yield {'tts_speech': FakeTensor[1, T]}: a tone whose pitch depends on the speaker's audio and
  whose length on the piece and the speed.
Every model is appended to INSTANCES; `calls` records (method, args, kwargs) of every call and `spoken` records
(piece, prompt text the LLM would see) per chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

INSTANCES: list[CosyVoice2] = []
_CHINESE = re.compile(r"[\u4e00-\u9fff]")
_ZH_ENDS, _EN_ENDS = "。？！；：、.?!;", ".?!;:"
_ONLY_PUNCTUATION = re.compile(r"^[\W_]*$")


def split_text(text: str) -> list[str]:
    """Upstream's `text_normalize(text, split=True)` with no ttsfrd/wetext, as the docstring above describes."""
    if "<|" in text and "|>" in text or not text:
        return [text]
    text = text.strip()
    zh = bool(_CHINESE.search(text))
    if zh:
        text = text.replace("\n", "")
        text = re.sub(r"(?<![!-~]) | (?![!-~])", "", text)  # a space survives only between two ASCII characters
        text = text.replace("²", "平方").replace("³", "立方").replace(".", "。").replace(" - ", "，")
        for bracket in ("（", "）", "【", "】", "`"):
            text = text.replace(bracket, "")
        text = text.replace("——", " ")
        text = re.sub(r"[，,、]+$", "。", text)
    ends = _ZH_ENDS if zh else _EN_ENDS

    def units(piece: str) -> int:
        return len(piece) if zh else -(-len(piece.encode()) // 4)

    if text[-1] not in ends:
        text += "。" if zh else "."
    sentences, start = [], 0
    for i, char in enumerate(text):
        if char in ends:
            end = i + 2 if i + 1 < len(text) and text[i + 1] in '"”' else i + 1
            if text[start:i]:
                sentences.append(text[start:end])
            start = end
    pieces, current = [], ""
    for sentence in sentences:
        if units(current + sentence) > 80 and units(current) > 60:
            pieces.append(current)
            current = ""
        current += sentence
    if current:
        if units(current) < 20 and pieces:
            pieces[-1] += current
        else:
            pieces.append(current)
    return [piece for piece in pieces if not _ONLY_PUNCTUATION.fullmatch(piece)]


class FakeTensor:
    """Stands in for a torch tensor (torch is not installed in the test environment)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = np.asarray(array, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self._array


class _FakeFrontend:
    def __init__(self) -> None:
        self.spk2info: dict[str, dict[str, Any]] = {}


def _voice_of(prompt_wav: Any) -> str:
    if not isinstance(prompt_wav, str) or not prompt_wav:
        raise TypeError(f"fake CosyVoice: prompt_wav must be an audio file path, got {prompt_wav!r}")
    audio, rate = sf.read(prompt_wav, dtype="float32")
    assert rate >= 16000, f"fake CosyVoice: {prompt_wav} is {rate} Hz, below 16 kHz"
    assert len(audio) / rate <= 30, "fake CosyVoice: prompt audio longer than 30 s"
    return hashlib.sha256(audio.tobytes()).hexdigest()[:16]


class CosyVoice2:
    yaml = "cosyvoice2.yaml"

    def __init__(self, model_dir, load_jit=False, load_trt=False, load_vllm=False, fp16=False, trt_concurrent=1):
        self._start(model_dir, load_trt=load_trt, load_vllm=load_vllm, fp16=fp16)

    def _start(self, model_dir: str, **options: Any) -> None:
        if not os.path.exists(os.path.join(model_dir, self.yaml)):
            raise ValueError(f"{model_dir}/{self.yaml} not found!")
        self.model_dir = model_dir
        self.sample_rate = 24000
        self.frontend = _FakeFrontend()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [("__init__", (model_dir,), options)]
        self.spoken: list[tuple[str, str]] = []
        if options["load_trt"]:
            plan = Path(model_dir) / f"flow.decoder.estimator.{'fp16' if options['fp16'] else 'fp32'}.mygpu.plan"
            if not plan.exists():
                plan.write_bytes(b"fake TensorRT plan")
        if options["load_vllm"] and not (Path(model_dir) / "vllm").exists():
            (Path(model_dir) / "vllm").mkdir()
            (Path(model_dir) / "vllm" / "config.json").write_text("{}")
        INSTANCES.append(self)

    def calls_to(self, method: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for name, args, kwargs in self.calls if name == method]

    def list_available_spks(self) -> list[str]:
        return list(self.frontend.spk2info)

    def add_zero_shot_spk(self, prompt_text, prompt_wav, zero_shot_spk_id):
        self.calls.append(("add_zero_shot_spk", (prompt_text, prompt_wav, zero_shot_spk_id), {}))
        assert zero_shot_spk_id != "", "do not use empty zero_shot_spk_id"
        self.frontend.spk2info[zero_shot_spk_id] = self._features(prompt_text, prompt_wav, "")
        return True

    def inference_zero_shot(
        self, tts_text, prompt_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0, text_frontend=True
    ):
        options = {"zero_shot_spk_id": zero_shot_spk_id, "stream": stream, "speed": speed}
        self.calls.append(("inference_zero_shot", (tts_text, prompt_text, prompt_wav), options))
        return self._tts(tts_text, speed, lambda: self._features(prompt_text, prompt_wav, zero_shot_spk_id))

    def inference_cross_lingual(
        self, tts_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0, text_frontend=True
    ):
        options = {"zero_shot_spk_id": zero_shot_spk_id, "stream": stream, "speed": speed}
        self.calls.append(("inference_cross_lingual", (tts_text, prompt_wav), options))

        def features() -> dict[str, Any]:
            found = self._features("", prompt_wav, zero_shot_spk_id)
            del found["prompt_text"], found["llm_prompt_speech_token"]  # from the copy, as upstream's frontend does
            return found

        return self._tts(tts_text, speed, features)

    def inference_instruct2(
        self, tts_text, instruct_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0, text_frontend=True
    ):
        options = {"zero_shot_spk_id": zero_shot_spk_id, "stream": stream, "speed": speed}
        self.calls.append(("inference_instruct2", (tts_text, instruct_text, prompt_wav), options))

        def features() -> dict[str, Any]:
            found = self._features(instruct_text, prompt_wav, zero_shot_spk_id)
            del found["llm_prompt_speech_token"]  # from the copy; a cached entry keeps its own prompt text
            return found

        return self._tts(tts_text, speed, features)

    def _features(self, prompt_text: str, prompt_wav: Any, spk_id: str) -> dict[str, Any]:
        if spk_id:
            return {**self.frontend.spk2info[spk_id]}  # a copy, as upstream's frontend_zero_shot makes
        voice = _voice_of(prompt_wav)
        return {"prompt_text": prompt_text, "llm_prompt_speech_token": voice, "flow_embedding": voice}

    def _tts(self, text: str, speed: float, features: Callable[[], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sentence in split_text(text):
            found = features()
            if isinstance(self, CosyVoice3):
                seen = f"{found.get('prompt_text', '')}{sentence}"
                assert "<|endofprompt|>" in seen, "<|endofprompt|> not detected in CosyVoice3 text or prompt_text"
            self.spoken.append((sentence, found.get("prompt_text", "")))
            pitch = 110 + int(found["flow_embedding"], 16) % 200
            t = np.arange(int(max(0.1, 0.06 * len(sentence) / speed) * self.sample_rate)) / self.sample_rate
            yield {"tts_speech": FakeTensor((0.3 * np.sin(2 * np.pi * pitch * t))[None, :])}


class CosyVoice3(CosyVoice2):
    yaml = "cosyvoice3.yaml"

    def __init__(self, model_dir, load_trt=False, load_vllm=False, fp16=False, trt_concurrent=1):
        self._start(model_dir, load_trt=load_trt, load_vllm=load_vllm, fp16=fp16)


def AutoModel(**kwargs):
    model_dir = kwargs["model_dir"]
    if not os.path.exists(model_dir):
        raise RuntimeError(f"fake AutoModel: {model_dir} does not exist (upstream would try to download it)")
    if os.path.exists(os.path.join(model_dir, "cosyvoice.yaml")):
        raise NotImplementedError("fake AutoModel: CosyVoice 1 (cosyvoice.yaml) is not modelled")
    for cls in (CosyVoice2, CosyVoice3):  # upstream's order: the first yaml found wins
        if os.path.exists(os.path.join(model_dir, cls.yaml)):
            return cls(**kwargs)
    raise TypeError("No valid model type found!")
