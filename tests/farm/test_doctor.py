"""`voicefarm doctor`: one line per finding, a fix for each problem (with real upstream: test_cosyvoice_upstream)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

import voicefarm.ops.doctor as doctor
import voicefarm.ops.workers
from shared.config import CosyVoiceSettings, Settings
from tests.worker.test_cosyvoice_engine import make_model_dir, upstream  # noqa: F401  (fixture)
from voicefarm.cli import main


def lines(found: list[doctor.Finding]) -> str:
    return "\n".join(f.line() for f in found)


def cosyvoice(tmp_path: Path, model_dir: Path) -> Settings:
    return Settings(engine="cosyvoice", cosyvoice=CosyVoiceSettings(model_dir=model_dir), data_dir=tmp_path / "var")


def test_missing_model_and_upstream_each_say_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cosyvoice", None)  # not importable, whatever the environment holds
    monkeypatch.setattr(voicefarm.ops.workers, "detect_gpus", lambda: [])
    assert doctor.run_doctor(cosyvoice(tmp_path, tmp_path / "models" / "nothing")) == 1
    out = capsys.readouterr().out
    assert "ok    engine: cosyvoice" in out
    assert "FAIL  model dir:" in out and "VOICEFARM_COSYVOICE_MODEL_DIR" in out
    assert "FAIL  upstream CosyVoice" in out and "infra/cosyvoice/install.sh" in out
    assert "warn  GPUs: nvidia-smi lists none" in out
    for line in out.splitlines():
        if line.startswith(("FAIL", "warn")):
            following = out.splitlines()[out.splitlines().index(line) + 1]
            assert following.strip().startswith("fix: "), line


def test_model_dir_generation_and_writability(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, 3)
    found, version = doctor.check_model_dir(model_dir)
    assert version == 3 and "CosyVoice3 (cosyvoice3.yaml)" in lines(found)
    assert any(f.status == "warn" and f.topic == "model dir writable" and "chmod -R a-w" in f.fix for f in found)
    for path in [model_dir, *model_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:  # read-only by its mode bits: detected even when the tests run as root, whom the bits do not stop
        found, _ = doctor.check_model_dir(model_dir)
        assert "ok    model dir writable: no" in lines(found)
    finally:
        for path in [model_dir, *model_dir.rglob("*")]:
            path.chmod(0o755)
    (model_dir / "flow.pt").unlink()
    found, _ = doctor.check_model_dir(model_dir)
    assert "FAIL  model files: missing flow.pt" in lines(found)
    v2 = make_model_dir(tmp_path / "two", 2)
    assert doctor.check_model_dir(v2)[1] == 2
    (v2 / "cosyvoice.yaml").write_text("# CosyVoice 1\n")
    found, version = doctor.check_model_dir(v2)
    assert version is None and "CosyVoice 1" in lines(found)


def test_gpus_seen_by_each_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(voicefarm.ops.workers, "detect_gpus", lambda: ["0", "1"])
    smi = [{"index": "0", "name": "NVIDIA H200", "total_mib": "143771", "used_mib": "0"}]
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda: smi)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    found = lines(doctor.check_gpus(Settings(engine="cosyvoice"), per_gpu=2))
    assert "0: NVIDIA H200, 0/143771 MiB used" in found and "sees 2 device(s)" in found
    for gpu in ("0", "1"):
        for k in (0, 1):
            assert f"cosyvoice-gpu{gpu}-{k}@" in found and f"CUDA_VISIBLE_DEVICES={gpu}" in found
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    found = lines(doctor.check_gpus(Settings(engine="cosyvoice"), per_gpu=1))
    assert "FAIL  CUDA: nvidia-smi lists 2 GPU(s) but torch" in found and "--gpu" in found


def test_first_load_is_measured(upstream: ModuleType, tmp_path: Path) -> None:  # noqa: F811
    settings = cosyvoice(tmp_path, make_model_dir(tmp_path, 3))
    assert doctor.check_first_load(settings, measure=False).detail.startswith("not measured")
    measured = doctor.check_first_load(settings, measure=True)
    assert measured.status == "ok" and measured.detail.endswith(" s")
    assert (tmp_path / "var" / "engine-cache" / "cosyvoice" / "doctor").is_dir()  # loaded through the private view


def test_onnxruntime_twice_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_version", lambda dist: "1.0")
    found = doctor.check_imports()
    assert any(f.status == "FAIL" and f.topic == "onnxruntime" and "onnxruntime-gpu" in f.fix for f in found)


def test_cli_doctor(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VOICEFARM_ENGINE", "kokoro")
    assert main(["doctor", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0] == {"status": "ok", "topic": "engine", "detail": "kokoro", "fix": ""}
    monkeypatch.setenv("VOICEFARM_ENGINE", "nope")
    assert main(["doctor"]) == 1
    assert "FAIL  engine: unknown engine 'nope'" in capsys.readouterr().out
