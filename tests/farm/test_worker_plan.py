"""The per-GPU launcher: what environment and arguments each worker process receives (no GPU needed)."""

import pytest

from shared.config import Settings
from voicefarm.ops.workers import parse_gpus, plan_workers


def test_one_pinned_process_per_gpu() -> None:
    specs = plan_workers(Settings(engine="cosyvoice"), gpus=["0", "3"], cpu=0, host="node7", base_env={"PATH": "/x"})
    assert [s.name for s in specs] == ["cosyvoice-gpu0@node7", "cosyvoice-gpu3@node7"]
    for spec, gpu in zip(specs, ["0", "3"], strict=True):
        assert spec.env is not None
        assert spec.env["CUDA_VISIBLE_DEVICES"] == gpu
        assert spec.env["VOICEFARM_WORKER_NAME"] == spec.name
        assert spec.env["VOICEFARM_DEVICE"] == f"cuda:{gpu}"
        assert spec.env["PATH"] == "/x"
        argv = spec.argv
        assert argv[argv.index("--concurrency") + 1] == "1"
        assert argv[argv.index("--queues") + 1] == "engine.cosyvoice"
        assert argv[argv.index("--hostname") + 1] == spec.name


def test_cpu_workers_see_no_gpu() -> None:
    specs = plan_workers(Settings(), gpus=[], cpu=2, host="h", base_env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert [s.name for s in specs] == ["kokoro-cpu0@h", "kokoro-cpu1@h"]
    assert all(s.env is not None and s.env["CUDA_VISIBLE_DEVICES"] == "" for s in specs)
    assert all(s.env is not None and s.env["VOICEFARM_DEVICE"] == "cpu" for s in specs)


def test_mixed_fleet() -> None:
    specs = plan_workers(Settings(), gpus=["1"], cpu=1, host="h", base_env={})
    assert [s.name for s in specs] == ["kokoro-gpu1@h", "kokoro-cpu0@h"]


def test_parse_gpus() -> None:
    assert parse_gpus("all", ["0", "1"]) == ["0", "1"]
    assert parse_gpus("1, 2", []) == ["1", "2"]
    for bad in ("", "a", "0,0", "-1"):
        with pytest.raises(SystemExit):
            parse_gpus(bad, ["0"])
    with pytest.raises(SystemExit, match="no GPU"):
        parse_gpus("all", [])


def test_several_pinned_processes_per_gpu() -> None:
    specs = plan_workers(
        Settings(engine="cosyvoice"), gpus=["0", "2"], cpu=0, per_gpu=3, host="node7", base_env={"PATH": "/x"}
    )
    names = [s.name for s in specs]
    assert names == [f"cosyvoice-gpu{g}-{k}@node7" for g in ("0", "2") for k in range(3)]
    assert len(set(names)) == len(names)  # distinct Celery hostnames and engine cache slots
    for spec in specs:
        assert spec.env is not None
        gpu = spec.name.split("-gpu")[1].split("-")[0]
        assert spec.env["CUDA_VISIBLE_DEVICES"] == gpu and spec.env["VOICEFARM_DEVICE"] == f"cuda:{gpu}"
        assert spec.env["VOICEFARM_WORKER_NAME"] == spec.name
        assert spec.argv[spec.argv.index("--concurrency") + 1] == "1"
        assert spec.argv[spec.argv.index("--hostname") + 1] == spec.name
    # CPU workers are not multiplied, and one process per GPU keeps its old name.
    mixed = plan_workers(Settings(engine="cosyvoice"), gpus=["1"], cpu=1, per_gpu=2, host="h", base_env={})
    assert [s.name for s in mixed] == ["cosyvoice-gpu1-0@h", "cosyvoice-gpu1-1@h", "cosyvoice-cpu0@h"]
    assert [s.name for s in plan_workers(Settings(), gpus=["1"], cpu=0, per_gpu=1, host="h")] == ["kokoro-gpu1@h"]
    with pytest.raises(SystemExit, match="per-gpu"):
        plan_workers(Settings(), gpus=["0"], cpu=0, per_gpu=0, host="h")


def test_per_gpu_needs_gpus() -> None:
    from voicefarm.ops.workers import run_workers

    with pytest.raises(SystemExit, match="--per-gpu needs --gpus"):
        run_workers(Settings(), gpus=None, cpu=1, per_gpu=2)


def test_cli_passes_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import voicefarm.ops.workers
    from shared import identity
    from voicefarm.cli import main

    seen: dict[str, object] = {}
    monkeypatch.setattr(voicefarm.ops.workers, "run_workers", lambda settings, **kwargs: seen.update(kwargs) or 0)
    # Only the flags are under test: no claim on whatever broker the default settings name.
    monkeypatch.setattr(identity, "claim_at_start", lambda settings: None)
    assert main(["worker", "--gpus", "0,1", "--per-gpu", "4"]) == 0
    assert seen == {"gpus": "0,1", "cpu": 0, "per_gpu": 4}
