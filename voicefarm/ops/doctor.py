"""`voicefarm doctor`: what a worker on this machine would meet, one line per finding, with the fix for each problem.

For the `cosyvoice` engine it reports the model dir and its generation, whether upstream CosyVoice and each of its
dependencies import (and audio decodes, which needs torchcodec and FFmpeg), the GPUs each worker process would see
with `--gpus all --per-gpu N`, whether the model dir is writable (it should not be), and the first-load cost: from
the model's size, or measured with `--load`. The exit status is 1 when a line says FAIL.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import os
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from shared.config import Settings

Status = Literal["ok", "warn", "FAIL"]
INSTALL = "build the worker environment with infra/cosyvoice/install.sh (docs/operations/cosyvoice-gpu.md)"
# Upstream's inference imports, with the distribution that provides each (checked one by one for a clear line).
UPSTREAM_MODULES = (
    ("torch", "torch"), ("torchaudio", "torchaudio"), ("torchcodec", "torchcodec"), ("onnxruntime", None),
    ("transformers", "transformers"), ("hyperpyyaml", "HyperPyYAML"), ("whisper", "openai-whisper"),
    ("diffusers", "diffusers"), ("conformer", "conformer"), ("x_transformers", "x-transformers"),
    ("lightning", "lightning"), ("hydra", "hydra-core"), ("omegaconf", "omegaconf"), ("inflect", "inflect"),
    ("modelscope", "modelscope"), ("librosa", "librosa"), ("matplotlib", "matplotlib"), ("pyarrow", "pyarrow"),
    ("pyworld", "pyworld-prebuilt"), ("tiktoken", "tiktoken"), ("einops", "einops"),
)  # fmt: skip
GENERATIONS = {2: "CosyVoice2", 3: "CosyVoice3"}


@dataclass(frozen=True)
class Finding:
    status: Status
    topic: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.topic}: {self.detail}" + (f"\n      fix: {self.fix}" if self.fix else "")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def check_imports() -> list[Finding]:
    found: list[Finding] = []
    for module, dist in UPSTREAM_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an import of a compiled package can fail in many ways; each is a finding
            found.append(Finding("FAIL", f"import {module}", f"{type(exc).__name__}: {exc}", INSTALL))
        else:
            found.append(Finding("ok", f"import {module}", _version(dist) if dist else "importable"))
    both = [d for d in ("onnxruntime", "onnxruntime-gpu") if _version(d) != "?"]
    if len(both) == 2:
        fix = ("pip uninstall -y onnxruntime onnxruntime-gpu, then pip install --no-deps onnxruntime-gpu==1.26.0 "
               "(what infra/cosyvoice/install.sh --gpu does)")  # fmt: skip
        found.append(Finding("FAIL", "onnxruntime", "both onnxruntime and onnxruntime-gpu are installed; they write "
                             "the same module", fix))  # fmt: skip
    try:
        from cosyvoice.cli.cosyvoice import AutoModel  # noqa: F401
    except Exception as exc:
        found.append(Finding("FAIL", "upstream CosyVoice", f"cosyvoice.cli.cosyvoice.AutoModel: {exc}",
                             "put a CosyVoice checkout (ace7c47f) and its third_party/Matcha-TTS on the import "
                             f"path: {INSTALL}"))  # fmt: skip
    else:
        import cosyvoice

        found.append(Finding("ok", "upstream CosyVoice", f"AutoModel from {Path(cosyvoice.__file__).parent.parent}"))
    found.append(_check_audio_decoding())
    return found


def _check_audio_decoding() -> Finding:
    """Upstream reads every prompt with torchaudio.load, which torchaudio >= 2.9 hands to torchcodec and FFmpeg."""
    try:
        import numpy as np
        import soundfile as sf
        import torchaudio
    except ImportError as exc:
        return Finding("FAIL", "audio decoding", f"cannot try: {exc}", INSTALL)
    try:
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            sf.write(tmp.name, np.zeros(1600, dtype=np.float32), 16000)
            audio, rate = torchaudio.load(tmp.name, backend="soundfile")
        return Finding("ok", "audio decoding", f"torchaudio.load read a wav ({rate} Hz, {audio.shape[-1]} samples)")
    except Exception as exc:
        return Finding("FAIL", "audio decoding", f"torchaudio.load failed: {str(exc).splitlines()[0][:200]}",
                       "install FFmpeg's shared libraries (Debian 12: apt-get install libavcodec59 libavformat59 "
                       "libavutil57 libswresample4 libswscale6 libavfilter8 libavdevice59) and torchcodec")  # fmt: skip


def _mode_writable(path: Path) -> bool:
    """Writable for someone: a write bit, on a file system mounted read-write (root ignores the bits, so
    os.access alone would call every directory writable when the doctor runs as root)."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return False
    return bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_model_dir(model_dir: Path) -> tuple[list[Finding], int | None]:
    from worker.engines.cosyvoice import model_version

    if not model_dir.is_dir():
        fix = (
            "download Fun-CosyVoice3-0.5B-2512 (or CosyVoice2-0.5B) there, or point "
            "VOICEFARM_COSYVOICE_MODEL_DIR at it (docs/operations/cosyvoice-gpu.md, section 2)"
        )
        return [Finding("FAIL", "model dir", f"{model_dir} does not exist", fix)], None
    version = model_version(model_dir)
    if version not in GENERATIONS:
        what = "a CosyVoice 1 model (cosyvoice.yaml)" if version == 1 else "no cosyvoice3.yaml or cosyvoice2.yaml"
        return [Finding("FAIL", "model dir", f"{model_dir} holds {what}",
                        "use Fun-CosyVoice3-0.5B-2512 or CosyVoice2-0.5B")], None  # fmt: skip
    assert version is not None
    expected = [f"cosyvoice{version}.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx",
                f"speech_tokenizer_v{version}.onnx", "CosyVoice-BlankEN"]  # fmt: skip
    missing = [name for name in expected if not (model_dir / name).exists()]
    found = [Finding("ok", "model dir", f"{model_dir.resolve()}: {GENERATIONS[version]} (cosyvoice{version}.yaml)")]
    if missing:
        found.append(Finding("FAIL", "model files", f"missing {', '.join(missing)}",
                             "download the whole model repository again"))  # fmt: skip
    writable = [p for p in (model_dir, *model_dir.iterdir()) if _mode_writable(p)]
    if writable:
        found.append(Finding("warn", "model dir writable", f"{len(writable)} entries of {model_dir} are writable: "
                             "upstream's first load writes TensorRT plans and vLLM exports into the dir it loads, "
                             "and workers sharing one dir race on them (the farm hands upstream a private view, "
                             "but any other tool would write here)",
                             f"chmod -R a-w {model_dir} or mount it read-only"))  # fmt: skip
    else:
        found.append(Finding("ok", "model dir writable", "no: read-only, as it should be"))
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    found.append(Finding("ok", "model size", f"{size / 2**30:.2f} GiB read on each worker's first load"))
    return found, version


def _nvidia_smi() -> list[dict[str, str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]
    return [dict(zip(("index", "name", "total_mib", "used_mib"), row, strict=False)) for row in rows]


def check_gpus(settings: Settings, per_gpu: int) -> list[Finding]:
    from voicefarm.ops.workers import detect_gpus, plan_workers

    gpus = detect_gpus()
    if not gpus:
        return [Finding("warn", "GPUs", "nvidia-smi lists none: cosyvoice workers would run on the CPU (slow)",
                        "install the NVIDIA driver, or run `voicefarm worker --cpu N`")]  # fmt: skip
    found = [Finding("ok", "GPUs", ", ".join(f"{g['index']}: {g['name']}, {g['used_mib']}/{g['total_mib']} MiB used"
                                               for g in _nvidia_smi()) or ", ".join(gpus))]  # fmt: skip
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception as exc:  # torch missing or broken: the import lines say which
        count, why = 0, f"torch: {type(exc).__name__}"
    else:
        why = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"
    if count:
        found.append(Finding("ok", "CUDA", f"{why} sees {count} device(s)"))
    else:
        found.append(Finding("FAIL", "CUDA", f"nvidia-smi lists {len(gpus)} GPU(s) but {why} sees none",
                             f"a CPU-only torch or a driver older than CUDA 12.8 needs: {INSTALL} --gpu"))  # fmt: skip
    for spec in plan_workers(settings, gpus=gpus, cpu=0, per_gpu=per_gpu, base_env={}):
        assert spec.env is not None
        found.append(
            Finding("ok", "worker", f"{spec.name} sees CUDA_VISIBLE_DEVICES={spec.env['CUDA_VISIBLE_DEVICES']}")
        )
    return found


def check_first_load(settings: Settings, measure: bool) -> Finding:
    if not measure:
        return Finding("ok", "first load", "not measured (`voicefarm doctor --load` times one load here)")
    from worker.engines.cosyvoice import CosyVoiceEngine

    engine = CosyVoiceEngine(settings, worker_name="doctor")
    started = time.perf_counter()
    try:
        engine.load()
    except Exception as exc:
        return Finding("FAIL", "first load", f"{type(exc).__name__}: {exc}", INSTALL)
    elapsed = time.perf_counter() - started
    memory = ""
    import torch

    if torch.cuda.is_available():
        memory = f", {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB of GPU memory allocated by torch"
    return Finding("ok", "first load", f"{elapsed:.1f} s{memory}")


def diagnose(settings: Settings, *, per_gpu: int = 1, load: bool = False) -> list[Finding]:
    from worker.engines import engine_names

    if settings.engine not in engine_names():
        return [Finding("FAIL", "engine", f"unknown engine {settings.engine!r}",
                        f"set VOICEFARM_ENGINE to one of {', '.join(engine_names())}")]  # fmt: skip
    found = [Finding("ok", "engine", settings.engine)]
    if settings.engine != "cosyvoice":
        return [*found, Finding("ok", "engine checks", f"{settings.engine} has none beyond the farm's install")]
    model, version = check_model_dir(settings.cosyvoice.model_dir)
    found += model
    found += check_imports()
    found += check_gpus(settings, per_gpu)
    data = settings.data_dir
    if data.exists() and not os.access(data, os.W_OK):
        found.append(Finding("FAIL", "data dir", f"{data} is not writable: workers keep their engine cache there",
                             "make VOICEFARM_DATA_DIR writable for the worker user"))  # fmt: skip
    ready = version is not None and not any(f.status == "FAIL" for f in found)
    found.append(check_first_load(settings, load and ready) if ready or not load else
                 Finding("FAIL", "first load", "not attempted: fix the lines above first"))  # fmt: skip
    return found


def run_doctor(settings: Settings, *, per_gpu: int = 1, load: bool = False, as_json: bool = False) -> int:
    found = diagnose(settings, per_gpu=per_gpu, load=load)
    if as_json:
        print(json.dumps([asdict(f) for f in found], indent=2))
    else:
        print("\n".join(f.line() for f in found))
    return 1 if any(f.status == "FAIL" for f in found) else 0
