"""The `cosyvoice` adapter over REAL upstream CosyVoice (ace7c47f), on the CPU, with small random models.

No fake here. The test installs upstream from the snapshots in ../shared/upstream into an environment of its own with
infra/cosyvoice/install.sh (the path docs/operations/cosyvoice-gpu.md gives GPU workers, less onnxruntime-gpu), builds
CosyVoice3 and CosyVoice2 model directories from upstream's recipe yaml
(tests/support/cosyvoice_upstream/build_model.py), makes them read-only and drives the adapter through every mode at
two speeds with a seed (tests/support/cosyvoice_upstream/drive.py, run by that environment's python with this checkout
on PYTHONPATH).

The environment (~7 GB: torch 2.9.1 from the package index is a CUDA build) is kept under
$VOICEFARM_UPSTREAM_CACHE (default ~/.cache/voicefarm), keyed by a hash of everything that goes into it, and
rebuilt only when one of those changes. The snapshots' folder is $VOICEFARM_UPSTREAM_SNAPSHOTS (default
../shared/upstream beside the checkout); under CI=true a missing snapshot fails the test instead of skipping it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import needs
from voicefarm.ops.doctor import UPSTREAM_MODULES

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "support" / "cosyvoice_upstream"
INSTALL = ROOT / "infra" / "cosyvoice" / "install.sh"
SNAPSHOTS = Path(os.environ.get("VOICEFARM_UPSTREAM_SNAPSHOTS") or ROOT.parent / "shared" / "upstream")
COSYVOICE_TAR, MATCHA_TAR = "CosyVoice-ace7c47f.tar.gz", "Matcha-TTS-dd9105b3.tar.gz"
HOP = 480  # samples per mel frame at 24 kHz in both recipes
TOKENS_PER_S, MAX_TOKEN_TEXT_RATIO = 25, 20  # upstream's speech token rate and its LLM's length cap

pytestmark = pytest.mark.upstream


def _cache_root() -> Path:
    configured = os.environ.get("VOICEFARM_UPSTREAM_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voicefarm"


def _env_key() -> str:
    """Everything the environment is made of: the install script, both requirement files, the farm's pins, the
    snapshots and the interpreter."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}".encode())
    digest.update(INSTALL.read_bytes())
    for path in (INSTALL.parent / "requirements.txt", INSTALL.parent / "gpu.txt"):  # their requirements, not notes
        digest.update(repr([line.split("#")[0].strip() for line in path.read_text().splitlines()]).encode())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())  # only what install.sh reads from it
    digest.update(json.dumps([project["project"]["dependencies"], project["tool"]["voicefarm"]["no-deps"]]).encode())
    for name in (COSYVOICE_TAR, MATCHA_TAR):
        digest.update(hashlib.sha256((SNAPSHOTS / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # Matcha-TTS's `data` is a symlink to its author's training data (an absolute path): leave it out.
    if member.issym() and member.linkname.startswith("/"):
        return None
    return tarfile.data_filter(member, dest)


def _unpack(cache: Path) -> Path:
    """The snapshots laid out as a recursive clone: CosyVoice/ with third_party/Matcha-TTS/."""
    home = cache / "upstream" / "CosyVoice"
    with tarfile.open(SNAPSHOTS / COSYVOICE_TAR) as tar:
        tar.extractall(cache / "upstream", filter=_safe_member)
    (home / "third_party").mkdir(exist_ok=True)
    with tarfile.open(SNAPSHOTS / MATCHA_TAR) as tar:
        tar.extractall(home / "third_party", filter=_safe_member)
    return home


@pytest.fixture(scope="module")
def upstream_env() -> Iterator[dict[str, Path]]:
    missing = [name for name in (COSYVOICE_TAR, MATCHA_TAR) if not (SNAPSHOTS / name).is_file()]
    if missing:
        needs.missing(f"upstream snapshots {missing} not in {SNAPSHOTS} (set VOICEFARM_UPSTREAM_SNAPSHOTS)")
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    cache = root / f"cosyvoice-env-{_env_key()}"
    with open(root / ".cosyvoice-env.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse its result
        if not (cache / ".complete").is_file():
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            home = _unpack(cache)
            started = time.monotonic()
            subprocess.run(
                ["bash", str(INSTALL), "--no-farm", str(cache / "venv"), str(home)],
                check=True, timeout=2400, env=os.environ | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )  # fmt: skip
            (cache / ".complete").write_text(f"built in {time.monotonic() - started:.0f} s\n")
        in_use = open(cache / ".in-use", "w")  # held shared while this session runs: never pruned under it
        fcntl.flock(in_use, fcntl.LOCK_SH)
        for old in root.glob("cosyvoice-env-*"):
            if old != cache:  # environments of older requirements, 9 GB each, unless a test run still uses one
                _prune(old)
    try:
        yield {"python": cache / "venv" / "bin" / "python", "home": cache / "upstream" / "CosyVoice"}
    finally:
        in_use.close()


def _prune(old: Path) -> None:
    try:
        with open(old / ".in-use", "a") as marker:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass  # in use by another run, or already gone


def _run(
    env: dict[str, Path], *argv: str, extra: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """The environment's python with this checkout on PYTHONPATH, offline, no GPU, none of the caller's settings."""
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    base = {k: v for k, v in os.environ.items() if not k.startswith("VOICEFARM_")}
    proc = subprocess.run(
        [str(env["python"]), *argv], capture_output=True, text=True, timeout=timeout, env=base | offline | (extra or {})
    )
    assert proc.returncode == 0, f"{argv[:2]} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def _listing(root: Path) -> dict[str, tuple[int, int, int, str]]:
    return {
        str(p.relative_to(root)): (
            p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode,
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(root.rglob("*"))
    }  # fmt: skip


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


@pytest.fixture(scope="module", params=[3, 2], ids=["CosyVoice3", "CosyVoice2"])
def driven(request: pytest.FixtureRequest, upstream_env: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One random model of the generation, made read-only, driven through the adapter; the report and listings."""
    version: int = request.param
    work = tmp_path_factory.mktemp(f"cosyvoice{version}")
    model_dir = work / "models" / f"random-CosyVoice{version}"
    recipe = (
        upstream_env["home"] / "examples" / "libritts" / f"cosyvoice{version}" / "conf" / f"cosyvoice{version}.yaml"
    )
    _run(upstream_env, str(HERE / "build_model.py"), "--version", str(version), "--recipe", str(recipe), str(model_dir))
    _set_writable(model_dir, False)
    before = _listing(model_dir)
    started = time.monotonic()
    report_path = work / "report.json"
    prompt = upstream_env["home"] / "asset" / "zero_shot_prompt.wav"
    try:
        _run(upstream_env, str(HERE / "drive.py"), "--model-dir", str(model_dir), "--data-dir", str(work / "var"),
             "--prompt", str(prompt), "--out", str(report_path))  # fmt: skip
        after = _listing(model_dir)
    finally:
        _set_writable(model_dir, True)
    report: dict[str, Any] = json.loads(report_path.read_text())
    report["wall_s"] = time.monotonic() - started
    yield {"version": version, "report": report, "before": before, "after": after, "work": work,
           "model_dir": model_dir, "env": upstream_env}  # fmt: skip


def test_upstream_loads_the_generation_the_yaml_names(driven: dict[str, Any]) -> None:
    report = driven["report"]
    assert report["upstream_class"] == f"CosyVoice{driven['version']}"
    assert report["upstream_sample_rate"] == 24000


def test_every_mode_and_speed_gives_real_audio(driven: dict[str, Any]) -> None:
    cases = driven["report"]["cases"]
    assert [(c["mode"], c["speed"]) for c in cases] == [
        (mode, speed) for mode in ("clone", "cross_lingual", "instruct") for speed in (1.0, 1.5)
    ]
    for case in cases:
        label = f"{case['mode']} at {case['speed']}"
        # What upstream yielded: torch float32 tensors [1, T], one per text segment of its frontend.
        assert case["upstream"], label
        methods = {c["method"] for c in case["upstream"]}
        expected = {"clone": "inference_zero_shot", "cross_lingual": "inference_cross_lingual"}
        assert methods == {expected.get(case["mode"], "inference_instruct2")}, label
        for chunk in case["upstream"]:
            assert chunk["type"] == "torch.Tensor" and chunk["dtype"] == "torch.float32", label
            assert len(chunk["shape"]) == 2 and chunk["shape"][0] == 1 and chunk["shape"][1] % HOP == 0, label
        # What the adapter returns: float32 mono at 24 kHz, the chunks joined, finite, not silent, within range.
        samples = sum(chunk["shape"][1] for chunk in case["upstream"])
        assert case["sample_rate"] == 24000 and case["dtype"] == "float32" and case["shape"] == [samples], label
        assert case["finite"] and 0 < case["peak"] <= 1.0, label
        # A random LLM stops wherever it samples a stop token, but never past upstream's cap of 20 speech tokens
        # (25 per second) per text token, nor before its first token (two mel frames).
        cap_s = MAX_TOKEN_TEXT_RATIO * sum(case["text_tokens"]) / TOKENS_PER_S / case["speed"]
        assert 2 * HOP / 24000 / case["speed"] - 0.05 <= case["duration_s"] <= cap_s + 0.05, label
        assert case["warnings"] == [], label


def test_prompts_reach_upstream_in_the_generation_s_format(driven: dict[str, Any]) -> None:
    """CosyVoice3's LLM refuses input without <|endofprompt|>, so every v3 case running at all proves the prefix;
    these pin the exact strings and the speaker-cache use."""
    report, v3 = driven["report"], driven["version"] == 3
    system = "You are a helpful assistant."
    cases = {case["mode"]: case for case in report["cases"] if case["speed"] == 1.0}
    sent = {mode: case["sent"] for mode, case in cases.items()}
    text = {mode: case["text"] for mode, case in cases.items()}
    ((clone,),) = [sent["clone"]]
    transcript = "希望你以后能够做的比我还好呦。"
    assert clone["args"] == [text["clone"], f"{system}<|endofprompt|>{transcript}" if v3 else transcript]
    assert clone["kwargs"]["zero_shot_spk_id"] == report["spk_id"]
    ((cross,),) = [sent["cross_lingual"]]
    assert cross["args"] == [f"{system}<|endofprompt|>{text['cross_lingual']}" if v3 else text["cross_lingual"]]
    assert cross["kwargs"]["zero_shot_spk_id"] == report["spk_id"]
    ((instruct,),) = [sent["instruct"]]
    wrapped = f"{system} 请用四川话表达。<|endofprompt|>" if v3 else "请用四川话表达。<|endofprompt|>"
    assert instruct["args"] == [text["instruct"], wrapped]
    assert instruct["kwargs"].get("zero_shot_spk_id", "") == ""  # a cached speaker would replace the instruction
    assert all(c["kwargs"]["stream"] is False for case in report["cases"] for c in case["sent"])
    # After clone, cross-lingual and instruct ran, the cached speaker is whole (upstream copies it per use).
    assert {"prompt_text", "llm_prompt_speech_token", "flow_prompt_speech_token", "prompt_speech_feat",
            "llm_embedding", "flow_embedding"} <= set(report["cached_speaker_keys"])  # fmt: skip


def test_speed_stretches_the_same_tokens(driven: dict[str, Any]) -> None:
    """Same seed, same speech tokens: upstream resamples the mel to frames / speed before the vocoder."""
    by_mode: dict[str, dict[float, dict[str, Any]]] = {}
    for case in driven["report"]["cases"]:
        by_mode.setdefault(case["mode"], {})[case["speed"]] = case
    for mode, speeds in by_mode.items():
        normal = [chunk["shape"][1] // HOP for chunk in speeds[1.0]["upstream"]]
        fast = [chunk["shape"][1] // HOP for chunk in speeds[1.5]["upstream"]]
        assert fast == [int(frames / 1.5) for frames in normal], mode


def test_same_seed_same_audio(driven: dict[str, Any]) -> None:
    report = driven["report"]
    first = report["cases"][0]
    assert report["repeat"]["sha256"] == first["sha256"]
    assert report["other_seed"]["sha256"] != first["sha256"]


def test_model_dir_is_unchanged_and_upstream_wrote_to_the_private_view(driven: dict[str, Any]) -> None:
    assert driven["after"] == driven["before"]
    views = list((driven["work"] / "var" / "engine-cache" / "cosyvoice").glob("*/models/*"))
    assert len(views) == 1 and all((views[0] / name).is_symlink() for name in driven["before"] if "/" not in name)


def test_costs_are_reported(driven: dict[str, Any]) -> None:
    report = driven["report"]
    print(
        f"\nCosyVoice{driven['version']} random model: load {report['load_s']:.1f} s, clone {report['clone_s']:.2f} s, "
        f"synthesis {sum(c['elapsed_s'] for c in report['cases']):.1f} s for {len(report['cases'])} segments, "
        f"driver wall {report['wall_s']:.0f} s"
    )
    assert report["load_s"] > 0


def test_doctor_in_the_upstream_environment(driven: dict[str, Any]) -> None:
    """`voicefarm doctor --load` where upstream really is: every dependency imports, audio decodes, a load is timed."""
    settings = {
        "VOICEFARM_ENGINE": "cosyvoice", "VOICEFARM_COSYVOICE_MODEL_DIR": str(driven["model_dir"]),
        "VOICEFARM_DATA_DIR": str(driven["work"] / "doctor-var"),
    }  # fmt: skip
    code = "import sys; from voicefarm.cli import main; sys.exit(main(['doctor', '--load', '--json']))"
    proc = _run(driven["env"], "-c", code, extra=settings)
    found = {f["topic"]: f for f in json.loads(proc.stdout)}
    assert not [f for f in found.values() if f["status"] == "FAIL"], proc.stdout
    assert found["model dir"]["detail"].endswith(f"CosyVoice{driven['version']} (cosyvoice{driven['version']}.yaml)")
    assert all(found[f"import {module}"]["status"] == "ok" for module, _ in UPSTREAM_MODULES)
    assert found["upstream CosyVoice"]["status"] == "ok" and found["audio decoding"]["status"] == "ok"
    assert found["first load"]["detail"].endswith(" s")


def test_the_fake_splits_text_as_upstream_does(driven: dict[str, Any]) -> None:
    """tests/support/fakes/cosyvoice mirrors upstream's text splitting (no ttsfrd/wetext); here it is held to the
    real one."""
    fake = _load_fake()
    splits = driven["report"]["splits"]
    assert len(splits) >= 5
    for text, pieces in splits.items():
        assert fake.split_text(text) == pieces, text


def _load_fake() -> Any:
    import importlib.util

    path = ROOT / "tests" / "support" / "fakes" / "cosyvoice" / "cli" / "cosyvoice.py"
    spec = importlib.util.spec_from_file_location("fake_cosyvoice_for_comparison", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
