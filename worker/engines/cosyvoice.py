"""The `cosyvoice` engine: upstream CosyVoice2 / Fun-CosyVoice3 (FunAudioLLM) behind the `Engine` protocol.

Upstream is installed beside the farm (docs/operations/cosyvoice-gpu.md) and imported only in `load()`: the API process
reads `capabilities` without torch or upstream.
* Read-only models: upstream's first load may write TensorRT plans and a `vllm/` export into the directory it loads
  from, so a worker never hands it `models/` but a private view: symlinks to the model files under
  `<data dir>/engine-cache/cosyvoice/<worker>/models/`, where such artefacts land (kept across restarts of
  a worker slot, rebuilt when the model files change, flock-ed so two live processes never share one).
* Profiles are JSON: the reference (float32 PCM at up to 24 kHz, the rate of upstream's prompt features), its
  transcript and a speaker id hashed from both. Each process writes the clip once as the wav path upstream takes as
  `prompt_wav` and registers the speaker once with `add_zero_shot_spk`, which caches its features.
* That cache serves clone and cross-lingual mode: upstream's frontends start from a copy of the cached entry (since
  2025-12-29; before, cross-lingual and instruct2 edited it in place, upstream issues #1357, #1358). Instruct mode
  passes the prompt wav without a speaker id: instruct2 given a cached speaker keeps the cached prompt text, the
  transcript, and never sees the instruction (#1400, still so at ace7c47f).
* Instructions reach the model verbatim; `INSTRUCTIONS` lists the phrasings upstream trained on. They never touch
  `speed` (a "slow" instruction is the model's to follow).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from shared.audio.codecs import resample
from shared.config import CosyVoiceSettings, Settings
from shared.engines.cosyvoice import (  # the catalogue is data in shared/
    INSTRUCTIONS,
    LANGUAGES,
    MAX_SEGMENT_CHARS,
    MAX_SPEED,
    MIN_SPEED,
    MODES,
    SAMPLE_RATE,
)
from shared.engines.cosyvoice import NAME as ENGINE_NAME
from shared.text.lexicon import Entry as LexiconEntry
from shared.text.lexicon import arpabet
from shared.text.lexicon import find as find_terms
from worker.engines.base import Capabilities, Mode, Synthesis, VoiceProfile, check_segment

DEFAULT_MODEL_DIR = str(CosyVoiceSettings().model_dir)
SYSTEM_PROMPT, END_OF_PROMPT = "You are a helpful assistant.", "<|endofprompt|>"
PROFILE_FORMAT = "voicefarm.cosyvoice.profile/1"
MAX_REFERENCE_S = 30.0  # upstream's speech tokenizer refuses longer prompts
INSTALL_HINT = (
    "upstream CosyVoice is not importable. Run cosyvoice workers in the environment infra/cosyvoice/install.sh "
    "builds: clone FunAudioLLM/CosyVoice at ace7c47f with its third_party/Matcha-TTS submodule, then "
    "`infra/cosyvoice/install.sh --gpu VENV CLONE`, which puts both on the import path (as PYTHONPATH would); "
    "`voicefarm doctor` says what is missing (docs/operations/cosyvoice-gpu.md)"
)
_WRAPPING = re.compile(r"^\s*you are a helpful assistant\.?\s*|<\|endofprompt\|>", re.IGNORECASE)


def model_version(model_dir: Path) -> int | None:
    """The generation upstream's AutoModel picks: the first of cosyvoice.yaml (1, which the farm does not drive),
    cosyvoice2.yaml and cosyvoice3.yaml in the directory; None when none is there."""
    found = (
        v
        for v, name in ((1, "cosyvoice.yaml"), (2, "cosyvoice2.yaml"), (3, "cosyvoice3.yaml"))
        if (model_dir / name).is_file()
    )
    return next(found, None)


def zero_shot_prompt(transcript: str, version: int) -> str:
    return f"{SYSTEM_PROMPT}{END_OF_PROMPT}{transcript}" if version >= 3 else transcript


def instruct_prompt(instruction: str, version: int) -> str:
    core = _WRAPPING.sub("", instruction).strip()  # clients may paste upstream's wrapped form
    return f"{SYSTEM_PROMPT} {core}{END_OF_PROMPT}" if version >= 3 else f"{core}{END_OF_PROMPT}"


def cross_lingual_text(text: str, version: int) -> str:
    # Cross-lingual drops the prompt text from the LLM input, so CosyVoice3's system prompt goes on the text.
    return f"{SYSTEM_PROMPT}{END_OF_PROMPT}{text}" if version >= 3 else text


def pinyin_tokens(pinyin: str) -> str:
    """CosyVoice3's inline pinyin: per syllable its initial and its final with the tone mark, each bracketed, as
    upstream's tokenizer lists them and its example writes 给 (jǐ): `[j][ǐ]`. ü before e is written v (`[vè]`)."""
    from pypinyin.contrib.tone_convert import to_finals_tone, to_initials

    tokens = []
    for syllable in pinyin.split():
        initial = to_initials(syllable, strict=False)
        final = to_finals_tone(syllable, strict=False)
        if re.match(r"ü[eēéěè]", final):
            final = "v" + final[1:]
        tokens.append(f"[{initial}]" * bool(initial) + f"[{final}]")
    return "".join(tokens)


def katakana(kana: str) -> str:
    # Upstream reads Japanese only as katakana (its example.py).
    return "".join(chr(ord(ch) + 0x60) if "\u3041" <= ch <= "\u3096" else ch for ch in kana)


def inline_pronunciations(text: str, spans: Sequence[tuple[int, int, LexiconEntry]]) -> str:
    """The text with each lexicon term replaced by CosyVoice3's inline pronunciation of it: pinyin tokens for
    Mandarin, CMU phone tokens with stress (`[K][IH1][N]`) for English, katakana for Japanese."""
    out, position = [], 0
    for start, end, entry in spans:
        out.append(text[position:start])
        if entry.alphabet == "pinyin":
            out.append(pinyin_tokens(entry.pronunciation))
        elif entry.alphabet in ("ipa", "arpabet"):
            out.append("".join(f"[{phone}]" for phone in arpabet(entry)))
        else:
            out.append(katakana(entry.pronunciation))
        position = end
    out.append(text[position:])
    return "".join(out)


@dataclass(frozen=True)
class Profile:
    spk_id: str
    transcript: str
    sample_rate: int
    audio: np.ndarray


def encode_profile(audio: np.ndarray, sample_rate: int, transcript: str) -> bytes:
    pcm = np.ascontiguousarray(audio, dtype="<f4").tobytes()
    digest = hashlib.sha256(pcm + f"\0{sample_rate}\0{transcript}".encode()).hexdigest()
    doc = {"format": PROFILE_FORMAT, "spk_id": f"vf-{digest[:24]}", "transcript": transcript,
           "sample_rate": sample_rate, "pcm_f32le": base64.b64encode(pcm).decode("ascii")}  # fmt: skip
    return json.dumps(doc, ensure_ascii=False).encode()


def decode_profile(data: bytes) -> Profile:
    try:
        doc = json.loads(data)
        if doc.get("format") != PROFILE_FORMAT or not re.fullmatch(r"vf-[0-9a-f]{24}", str(doc.get("spk_id"))):
            raise ValueError(f"unknown format {doc.get('format')!r} or speaker id {doc.get('spk_id')!r}")
        audio = np.frombuffer(base64.b64decode(doc["pcm_f32le"]), dtype="<f4").astype(np.float32)
        return Profile(str(doc["spk_id"]), str(doc["transcript"]), int(doc["sample_rate"]), audio)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a cosyvoice voice profile: {exc}") from None


def private_model_view(model_dir: Path, root: Path) -> Path:
    """A writable directory of symlinks to `model_dir`'s entries, named after their names, sizes and times."""
    entries = sorted(model_dir.iterdir())
    stamp = hashlib.sha256()
    for entry in entries:
        stamp.update(f"{entry.name}\0{entry.stat().st_size}\0{entry.stat().st_mtime_ns}\n".encode())
    view = root / f"{model_dir.name}-{stamp.hexdigest()[:12]}"
    for old in root.glob(f"{model_dir.name}-*") if root.is_dir() else ():
        if old != view:  # a view of older model files holds stale TensorRT plans
            shutil.rmtree(old, ignore_errors=True)
    view.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if not (view / entry.name).exists() and not (view / entry.name).is_symlink():
            (view / entry.name).symlink_to(entry.resolve())
    return view


def _collect(chunks: Iterable[dict[str, Any]]) -> np.ndarray:
    """Join `{'tts_speech': tensor[1, T]}` chunks: torch tensors, numpy arrays or anything with .cpu().numpy()."""
    parts = []
    for chunk in chunks:
        speech = chunk["tts_speech"]
        for step in ("detach", "cpu", "numpy"):
            if not isinstance(speech, np.ndarray) and hasattr(speech, step):
                speech = getattr(speech, step)()
        array = np.asarray(speech, dtype=np.float32)
        parts.append(array.mean(axis=0) if array.ndim == 2 else array.reshape(-1))
    if sum(part.size for part in parts) == 0:
        raise RuntimeError("upstream CosyVoice produced no audio")
    return np.concatenate(parts)


class CosyVoiceEngine:
    """Production engine: one model per process, calls serialised (upstream runs batch size 1)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        worker_name: str | None = None,
        load_trt: bool | None = None,
        load_vllm: bool | None = None,
        fp16: bool | None = None,
        max_cached_speakers: int = 256,
    ) -> None:
        """The model dir and flags come from `settings.cosyvoice`, the engine cache's place and slot from the data
        dir and the worker's name; a keyword given overrides its setting. Without settings: their defaults."""
        group = settings.cosyvoice if settings is not None else CosyVoiceSettings()
        self.model_dir = Path(model_dir or group.model_dir)
        self.data_dir = Path(data_dir or (settings.data_dir if settings is not None else "var"))
        self.worker_name = worker_name or (settings.worker_name if settings is not None else "") or f"pid{os.getpid()}"
        self.load_trt = group.load_trt if load_trt is None else bool(load_trt)
        self.load_vllm = group.load_vllm if load_vllm is None else bool(load_vllm)
        self.fp16 = group.fp16 if fp16 is None else bool(fp16)
        self.max_cached_speakers = max(1, max_cached_speakers)
        # The API host may hold no model: assume the default generation.
        self.version = version if (version := model_version(self.model_dir)) in LANGUAGES else 3
        self.capabilities = Capabilities(
            name=ENGINE_NAME, languages=LANGUAGES[self.version], modes=MODES, sample_rate=SAMPLE_RATE,
            max_segment_chars=MAX_SEGMENT_CHARS, stock_voices=(), default_voices={},
            instructions=tuple(item["text"] for item in INSTRUCTIONS),
        )  # fmt: skip
        self._lock = threading.RLock()
        self._model: Any = None
        self._prompt_dir = Path()
        self._lock_fd: int | None = None
        self._speakers: OrderedDict[str, bool] = OrderedDict()  # LRU: spk_id -> registered with add_zero_shot_spk

    @property
    def model_name(self) -> str:
        return self.model_dir.name

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            try:
                from cosyvoice.cli.cosyvoice import AutoModel
            except ImportError as exc:
                raise RuntimeError(f"{INSTALL_HINT}; the import failed with: {exc}") from exc
            source = self.model_dir.resolve()
            version = model_version(source)
            if version is None:
                raise RuntimeError(
                    f"no CosyVoice model in {source} (cosyvoice3.yaml or cosyvoice2.yaml): put Fun-CosyVoice3-0.5B "
                    "or CosyVoice2-0.5B there or point VOICEFARM_COSYVOICE_MODEL_DIR at it"
                )
            if version not in LANGUAGES:
                raise RuntimeError(
                    f"{source} holds a CosyVoice 1 model (cosyvoice.yaml), which the farm does not drive: use "
                    "Fun-CosyVoice3-0.5B-2512 or CosyVoice2-0.5B"
                )
            work = self._claim_work_dir()
            view = private_model_view(source, work / "models")
            self._prompt_dir = work / "prompts"
            shutil.rmtree(self._prompt_dir, ignore_errors=True)  # left by an earlier process in this slot
            self._prompt_dir.mkdir(parents=True)
            if self.load_vllm:  # upstream's vLLM example registers its LLM class first
                from cosyvoice.vllm.cosyvoice2 import CosyVoice2ForCausalLM
                from vllm import ModelRegistry

                ModelRegistry.register_model("CosyVoice2ForCausalLM", CosyVoice2ForCausalLM)
            model = AutoModel(model_dir=str(view), load_trt=self.load_trt, load_vllm=self.load_vllm, fp16=self.fp16)
            self.version, self._model = version, model

    def _claim_work_dir(self) -> Path:
        """This worker slot's cache dir, flock-ed for the life of the process; a second live holder gets its own."""
        base = self.data_dir.resolve() / "engine-cache" / ENGINE_NAME
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", self.worker_name).strip("._") or "worker"
        for work in (base / tag, base / f"{tag}-pid{os.getpid()}"):
            work.mkdir(parents=True, exist_ok=True)
            fd = os.open(work / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._lock_fd = fd
            return work
        raise RuntimeError(f"cannot lock a cosyvoice cache directory under {base}")

    # -- voices ----------------------------------------------------------------------------------------------
    def clone(
        self,
        reference_audio: np.ndarray,
        sample_rate: int,
        transcript: str | None,
        held_out: np.ndarray | None = None,  # cosyvoice measures no similarity: nothing to score against it
    ) -> VoiceProfile:
        audio = np.asarray(reference_audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError("reference audio must be non-empty mono samples")
        if sample_rate < 16000:
            raise ValueError(f"reference sample rate {sample_rate} Hz is too low; cosyvoice needs at least 16 kHz")
        if audio.size / sample_rate > MAX_REFERENCE_S:
            raise ValueError(f"reference is {audio.size / sample_rate:.1f} s; cosyvoice takes at most 30 s")
        rate = min(sample_rate, SAMPLE_RATE)
        data = encode_profile(resample(audio, sample_rate, rate), rate, (transcript or "").strip())
        profile = decode_profile(data)
        self.load()
        with self._lock:  # extract and cache the prompt features now: a bad clip fails the clone, not a later job
            prompt = self._prompt(profile)
            if profile.transcript:
                self._register(profile, prompt)
        return VoiceProfile(engine=ENGINE_NAME, data=data)

    def _prompt(self, profile: Profile) -> Any:
        """The reference as upstream's `prompt_wav`: a wav path, written once per process (and LRU-bounded)."""
        if profile.spk_id in self._speakers:
            self._speakers.move_to_end(profile.spk_id)
        else:
            self._speakers[profile.spk_id] = False
            while len(self._speakers) > self.max_cached_speakers:
                self._forget(*self._speakers.popitem(last=False))
        path = self._prompt_dir / f"{profile.spk_id}.wav"
        if not path.exists():
            sf.write(path.with_suffix(".partial.wav"), profile.audio, profile.sample_rate, subtype="PCM_16")
            os.replace(path.with_suffix(".partial.wav"), path)
        return str(path)

    def _register(self, profile: Profile, prompt: Any) -> None:
        if not self._speakers.get(profile.spk_id):
            self._model.add_zero_shot_spk(zero_shot_prompt(profile.transcript, self.version), prompt, profile.spk_id)
            self._speakers[profile.spk_id] = True

    def _forget(self, spk_id: str, registered: bool) -> None:
        (self._prompt_dir / f"{spk_id}.wav").unlink(missing_ok=True)
        cache = getattr(getattr(self._model, "frontend", None), "spk2info", None)
        if registered and isinstance(cache, dict):
            cache.pop(spk_id, None)  # upstream would keep every speaker's features in memory

    # -- synthesis -------------------------------------------------------------------------------------------
    def _pronounce(self, text: str, lexicon: Sequence[LexiconEntry], warnings: list[str]) -> str:
        spans = find_terms(text, lexicon)
        if not spans:
            return text
        if self.version < 3:
            terms = ", ".join(sorted({e.term for _, _, e in spans}))
            warnings.append(
                f"CosyVoice2 takes no inline pronunciations: the lexicon entries for {terms} were not applied."
            )
            return text
        return inline_pronunciations(text, spans)

    def synthesize(
        self,
        text: str,
        *,
        voice: str | VoiceProfile,
        mode: Mode = "clone",
        instruct: str | None = None,
        language: str = "en",
        speed: float = 1.0,
        seed: int | None = None,
        lexicon: Sequence[LexiconEntry] = (),
    ) -> Synthesis:
        if not isinstance(voice, VoiceProfile):
            raise ValueError(
                f"the cosyvoice engine has no stock voices (got {voice!r}): clone a voice from a 3-30 s sample "
                "first and synthesize with its profile"
            )
        if voice.engine != ENGINE_NAME:
            raise ValueError(f"voice profile was built by engine {voice.engine!r}, not {ENGINE_NAME!r}")
        profile = decode_profile(voice.data)
        check_segment(self.capabilities, text, mode, language, speed)
        warnings: list[str] = []
        if not MIN_SPEED <= speed <= MAX_SPEED:
            clamped = min(max(float(speed), MIN_SPEED), MAX_SPEED)
            warnings.append(f"Speaking speed {speed:.2f} is outside {MIN_SPEED}-{MAX_SPEED}; used {clamped:.2f}.")
            speed = clamped
        instruction = (instruct or "").strip()
        if mode == "instruct" and not _WRAPPING.sub("", instruction).strip():
            raise ValueError("mode 'instruct' needs an instruction, e.g. '请用四川话表达。' or 'speak sadly'")
        if mode != "instruct" and instruction:
            warnings.append(f"The instruction {instruction!r} was ignored: instructions apply in mode 'instruct'.")
        if mode == "clone" and not profile.transcript:
            mode = "cross_lingual"
            warnings.append("The voice has no transcript of its reference, so it was spoken in cross-lingual mode.")

        self.load()
        text = self._pronounce(text, lexicon, warnings)
        options = {"stream": False, "speed": float(speed)}
        with self._lock:
            if seed is not None:
                from cosyvoice.utils.common import set_all_random_seed  # random, numpy, torch and CUDA

                set_all_random_seed(seed % 2**32)  # numpy takes 32 bits
            model, prompt, version = self._model, self._prompt(profile), self.version
            if mode == "clone":
                self._register(profile, prompt)
                prompt_text, spk_id = zero_shot_prompt(profile.transcript, version), profile.spk_id
                chunks = model.inference_zero_shot(text, prompt_text, prompt, zero_shot_spk_id=spk_id, **options)
            elif mode == "cross_lingual":
                spk_id = profile.spk_id if profile.transcript else ""  # only voices with a transcript are cached
                if spk_id:
                    self._register(profile, prompt)
                xl_text = cross_lingual_text(text, version)
                chunks = model.inference_cross_lingual(xl_text, prompt, zero_shot_spk_id=spk_id, **options)
            else:
                chunks = model.inference_instruct2(text, instruct_prompt(instruction, version), prompt, **options)
            audio = _collect(chunks)
            rate = int(getattr(model, "sample_rate", SAMPLE_RATE))
        if rate != SAMPLE_RATE:
            audio = resample(audio, rate, SAMPLE_RATE)
        return Synthesis(audio=np.clip(audio, -1.0, 1.0).astype(np.float32), sample_rate=SAMPLE_RATE, warnings=warnings)
