"""The `cosyvoice` adapter against a FAKE of upstream CosyVoice (tests/support/fakes/cosyvoice): no torch, no GPU, no
weights.

What upstream itself does with the adapter's calls (prompt formats, methods, speaker cache, output, seeds, speed) is
tested against real upstream in tests/worker/test_cosyvoice_upstream.py. The fake stays for what the CPU cannot show, a
CUDA machine's first load writing TensorRT plans and vLLM exports into the directory it is given, and for the adapter's
own logic around upstream (profiles, request errors, speaker registration and its bound, views, options).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from shared.config import CosyVoiceSettings, Settings
from worker.engines import create_engine, engine_options
from worker.engines.base import Engine, VoiceProfile
from worker.engines.cosyvoice import INSTRUCTIONS, CosyVoiceEngine, decode_profile

FAKES = Path(__file__).parents[1] / "support" / "fakes"
V3_PREFIX = "You are a helpful assistant.<|endofprompt|>"
TRANSCRIPT = "希望你以后能够做的比我还好呦。"
TEXT = "收到好友从远方寄来的生日礼物。那份意外的惊喜让我心中充满了甜蜜的快乐。"


def _forget_upstream() -> None:
    for name in [n for n in sys.modules if n == "cosyvoice" or n.startswith("cosyvoice.")]:
        del sys.modules[name]


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The fake upstream on sys.path, fresh for each test."""
    _forget_upstream()
    monkeypatch.syspath_prepend(str(FAKES))
    import cosyvoice.cli.cosyvoice as fake

    assert "FAKE" in (fake.__doc__ or "")
    yield fake
    _forget_upstream()


def make_model_dir(root: Path, version: int = 3) -> Path:
    model_dir = root / "models" / ("Fun-CosyVoice3-0.5B" if version == 3 else "CosyVoice2-0.5B")
    (model_dir / "CosyVoice-BlankEN").mkdir(parents=True)
    (model_dir / "CosyVoice-BlankEN" / "config.json").write_text("{}")
    (model_dir / f"cosyvoice{version}.yaml").write_text("# fake hyperparameters\n")
    for name in ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", f"speech_tokenizer_v{version}.onnx"):
        (model_dir / name).write_bytes(b"fake weights")
    return model_dir


def make_engine(root: Path, version: int = 3, **options: Any) -> CosyVoiceEngine:
    model_dir = root / "models" / ("Fun-CosyVoice3-0.5B" if version == 3 else "CosyVoice2-0.5B")
    if not model_dir.exists():
        make_model_dir(root, version)
    options.setdefault("worker_name", "cosyvoice-gpu0@test")
    return CosyVoiceEngine(model_dir=model_dir, data_dir=root / "var", **options)


def reference(seconds: float = 3.0, rate: int = 24000, pitch: float = 180.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.1 * np.sin(2 * np.pi * 2.5 * pitch * t)).astype(np.float32)


def model_of(engine: CosyVoiceEngine) -> Any:
    engine.load()
    return engine._model


def test_capabilities_need_neither_upstream_nor_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_upstream()
    settings = Settings(cosyvoice=CosyVoiceSettings(model_dir=Path("/nonexistent/Fun-CosyVoice3-0.5B")))
    engine = create_engine("cosyvoice", **engine_options("cosyvoice", settings))
    caps = engine.capabilities
    assert isinstance(engine, CosyVoiceEngine) and isinstance(engine, Engine)
    assert caps.name == "cosyvoice" and caps.sample_rate == 24000 and caps.max_segment_chars == 200
    assert caps.modes == ("clone", "cross_lingual", "instruct")
    assert {"zh", "en", "ja"} <= set(caps.languages)
    assert caps.stock_voices == () and caps.default_voices == {}
    assert "请用四川话表达。" in caps.instructions and len(caps.instructions) == len(INSTRUCTIONS)
    assert "cosyvoice" not in sys.modules
    # Other tests of the session may have imported torch already: whether the adapter does is asked afresh.
    probe = (
        "import sys; from worker.engines import create_engine; "
        "create_engine('cosyvoice', model_dir='/nonexistent/Fun-CosyVoice3-0.5B').capabilities; "
        "print('torch' in sys.modules, 'cosyvoice' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["False", "False"], found.stdout + found.stderr


def test_instruction_catalogue() -> None:
    assert all(set(item) == {"id", "label", "text", "kind"} for item in INSTRUCTIONS)
    dialects = [item for item in INSTRUCTIONS if item["kind"] == "dialect"]
    assert len(dialects) == 17
    assert {"Cantonese dialect", "Sichuan dialect", "Minnan dialect", "Shaanxi dialect"} <= {
        d["label"] for d in dialects
    }
    assert {item["kind"] for item in INSTRUCTIONS} == {"dialect", "emotion", "speed", "volume", "style"}
    assert {"loud", "soft", "slow", "fast", "happy", "sad", "angry", "cartoon-pig", "robot"} <= {
        i["id"] for i in INSTRUCTIONS
    }
    assert len({item["id"] for item in INSTRUCTIONS}) == len(INSTRUCTIONS)


def test_options_from_settings_then_keywords(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEFARM_COSYVOICE_MODEL_DIR", str(tmp_path / "env-model"))
    monkeypatch.setenv("VOICEFARM_COSYVOICE_LOAD_TRT", "1")
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path / "data"))
    engine = CosyVoiceEngine(Settings(worker_name="cosyvoice-gpu1@test"))  # the environment reaches it as settings
    assert engine.model_dir == tmp_path / "env-model" and engine.load_trt and engine.data_dir == tmp_path / "data"
    assert engine.worker_name == "cosyvoice-gpu1@test" and not engine.fp16
    engine = CosyVoiceEngine(Settings(), model_dir=tmp_path / "kw-model", load_trt=False)
    assert engine.model_dir == tmp_path / "kw-model" and not engine.load_trt
    # The engine never reads the environment itself: without settings it has their defaults.
    engine = CosyVoiceEngine()
    assert engine.model_dir == Path("models/Fun-CosyVoice3-0.5B") and not engine.load_trt
    assert engine.data_dir == Path("var") and engine.worker_name.startswith("pid")
    monkeypatch.setenv("VOICEFARM_COSYVOICE_FP16", "maybe")
    with pytest.raises(ValueError, match="cosyvoice.fp16"):
        Settings()


def test_pasted_upstream_wrapping_is_not_doubled(upstream: ModuleType, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 3)
    profile = engine.clone(reference(), 24000, TRANSCRIPT)
    wrapped = "You are a helpful assistant. 请用广东话表达。<|endofprompt|>"
    engine.synthesize(TEXT, voice=profile, mode="instruct", instruct=wrapped, language="zh")
    assert model_of(engine).calls_to("inference_instruct2")[0][0][1] == wrapped


def test_speaker_registered_once_per_process(upstream: ModuleType, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 3)
    profile = engine.clone(reference(), 24000, TRANSCRIPT)
    for _ in range(3):
        engine.synthesize(TEXT, voice=profile, language="zh")
    first = model_of(engine)
    spk_id = decode_profile(profile.data).spk_id
    assert [args[2] for args, _ in first.calls_to("add_zero_shot_spk")] == [spk_id]
    assert spk_id in first.frontend.spk2info

    # A fresh process (another worker) sees the stored profile first: it registers the speaker itself, once.
    other = make_engine(tmp_path, 3, worker_name="cosyvoice-gpu1@test")
    for _ in range(2):
        other.synthesize(TEXT, voice=VoiceProfile(engine="cosyvoice", data=profile.data), language="zh")
    second = model_of(other)
    assert second is not first
    assert [args[2] for args, _ in second.calls_to("add_zero_shot_spk")] == [spk_id]


def test_model_dir_is_never_written(upstream: ModuleType, tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, 3)
    for path in [model_dir, *model_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)

    def listing() -> dict[str, tuple[int, int, int]]:
        return {
            str(p.relative_to(model_dir)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in model_dir.rglob("*")
        }

    before = listing()
    try:
        engine = make_engine(tmp_path, 3, load_trt=True)
        profile = engine.clone(reference(), 24000, TRANSCRIPT)
        engine.synthesize(TEXT, voice=profile, language="zh")
        model = model_of(engine)
        assert listing() == before  # the fake writes a TensorRT plan into whatever dir it is given
        given = Path(model.calls[0][1][0])
        assert given != model_dir and given.is_relative_to(tmp_path / "var" / "engine-cache" / "cosyvoice")
        assert (given / "flow.decoder.estimator.fp32.mygpu.plan").is_file()
        for name in before:
            if "/" not in name:
                assert (given / name).is_symlink() and (given / name).resolve() == (model_dir / name).resolve()
        # Another worker gets its own view; a restart of the same slot reuses the artefacts in its view.
        other = make_engine(tmp_path, 3, worker_name="cosyvoice-gpu1@test", load_trt=True)
        assert Path(model_of(other).calls[0][1][0]) != given
        assert listing() == before
    finally:
        for path in [model_dir, *model_dir.rglob("*")]:
            path.chmod(stat.S_IRWXU)


def test_same_worker_name_in_two_live_processes_gets_two_dirs(upstream: ModuleType, tmp_path: Path) -> None:
    first, second = make_engine(tmp_path, 3), make_engine(tmp_path, 3)
    assert Path(model_of(first).calls[0][1][0]) != Path(model_of(second).calls[0][1][0])


def test_profile_format(upstream: ModuleType, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 3)
    profile = engine.clone(reference(rate=48000), 48000, f"  {TRANSCRIPT} ")
    doc = json.loads(profile.data)
    assert profile.engine == "cosyvoice"
    assert set(doc) == {"format", "spk_id", "transcript", "sample_rate", "pcm_f32le"}
    decoded = decode_profile(profile.data)
    assert decoded.sample_rate == 24000 and decoded.transcript == TRANSCRIPT
    assert decoded.audio.dtype == np.float32 and abs(decoded.audio.size - 3 * 24000) < 10
    assert engine.clone(reference(rate=48000), 48000, TRANSCRIPT).data == profile.data  # deterministic
    assert decode_profile(engine.clone(reference(pitch=220), 24000, TRANSCRIPT).data).spk_id != decoded.spk_id
    with pytest.raises(ValueError, match="not a cosyvoice voice profile"):
        decode_profile(b"kokoro bytes")


def test_transcriptless_voice_falls_back_to_cross_lingual(upstream: ModuleType, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 3)
    profile = engine.clone(reference(), 24000, None)
    out = engine.synthesize(TEXT, voice=profile, mode="clone", language="zh")
    model = model_of(engine)
    assert model.calls_to("add_zero_shot_spk") == [] and len(model.calls_to("inference_cross_lingual")) == 1
    assert "cross-lingual" in out.warnings[0]


def test_speaker_cache_is_bounded(upstream: ModuleType, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 3, max_cached_speakers=1)
    first = engine.clone(reference(pitch=150), 24000, TRANSCRIPT)
    second = engine.clone(reference(pitch=250), 24000, TRANSCRIPT)
    model = model_of(engine)
    assert list(model.frontend.spk2info) == [decode_profile(second.data).spk_id]
    assert [p.name for p in engine._prompt_dir.iterdir()] == [f"{decode_profile(second.data).spk_id}.wav"]
    engine.synthesize(TEXT, voice=first, language="zh")  # evicted voices come back on demand
    assert len(model.calls_to("add_zero_shot_spk")) == 3


def test_request_errors(upstream: ModuleType, tmp_path: Path) -> None:
    engine = make_engine(tmp_path, 3)
    with pytest.raises(ValueError, match="no stock voices"):
        engine.synthesize(TEXT, voice="中文女", language="zh")
    assert engine._model is None  # rejected before loading anything
    profile = engine.clone(reference(), 24000, TRANSCRIPT)
    with pytest.raises(ValueError, match="built by engine 'kokoro'"):
        engine.synthesize(TEXT, voice=VoiceProfile(engine="kokoro", data=profile.data), language="zh")
    with pytest.raises(ValueError, match="needs an instruction"):
        engine.synthesize(TEXT, voice=profile, mode="instruct", instruct="  ", language="zh")
    with pytest.raises(ValueError, match="at most 200"):
        engine.synthesize("字" * 201, voice=profile, language="zh")
    with pytest.raises(ValueError, match="unsupported language"):
        engine.synthesize(TEXT, voice=profile, language="xx")
    with pytest.raises(ValueError, match="at least 16 kHz"):
        engine.clone(reference(rate=8000), 8000, TRANSCRIPT)
    with pytest.raises(ValueError, match="at most 30 s"):
        engine.clone(reference(seconds=31), 24000, TRANSCRIPT)
    out = engine.synthesize(TEXT, voice=profile, language="zh", instruct="speak sadly", speed=3.0)
    assert any("ignored" in w for w in out.warnings) and any("used 2.00" in w for w in out.warnings)


def test_missing_upstream_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _forget_upstream()
    monkeypatch.setitem(sys.modules, "cosyvoice", None)  # not importable, whatever the environment holds
    engine = make_engine(tmp_path, 3)
    with pytest.raises(RuntimeError, match="FunAudioLLM/CosyVoice") as excinfo:
        engine.load()
    assert "infra/cosyvoice/install.sh" in str(excinfo.value) and "Matcha-TTS" in str(excinfo.value)


def test_missing_model_dir_is_a_clear_error(upstream: ModuleType, tmp_path: Path) -> None:
    engine = CosyVoiceEngine(model_dir=tmp_path / "models" / "nothing", data_dir=tmp_path / "var")
    with pytest.raises(RuntimeError, match="VOICEFARM_COSYVOICE_MODEL_DIR"):
        engine.load()
    assert not (tmp_path / "var").exists() and upstream.INSTANCES == []


def test_yaml_dispatch_follows_upstream_order(upstream: ModuleType, tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, 3)
    (model_dir / "cosyvoice2.yaml").write_text("# a second yaml\n")
    engine = make_engine(tmp_path, 3)
    assert type(model_of(engine)).__name__ == "CosyVoice2" and engine.version == 2  # AutoModel tries 2 before 3
    (model_dir / "cosyvoice.yaml").write_text("# CosyVoice 1\n")
    with pytest.raises(RuntimeError, match="CosyVoice 1"):
        make_engine(tmp_path, 3, worker_name="other").load()
