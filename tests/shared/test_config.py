"""The one settings object: nested groups under their old flat names, warnings on typos, handed down to engines,
and the only module that reads the process environment."""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

from shared.config import (
    CosyVoiceSettings,
    KokoroSettings,
    Settings,
    client_settings,
    environment,
    load_settings,
    setting_env_names,
)
from tests.worker.test_cosyvoice_engine import make_model_dir, upstream  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("producer", "worker", "shared", "voicefarm")
ENVIRONMENT_READERS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
# Each nested setting, its flat name (as it always was) and its nested name, with a value to set.
NESTED = [
    (("kokoro", "threads"), "VOICEFARM_ENGINE_THREADS", "VOICEFARM_KOKORO__THREADS", "3", 3),
    (("cosyvoice", "model_dir"), "VOICEFARM_COSYVOICE_MODEL_DIR", "VOICEFARM_COSYVOICE__MODEL_DIR", "/m", Path("/m")),
    (("cosyvoice", "load_trt"), "VOICEFARM_COSYVOICE_LOAD_TRT", "VOICEFARM_COSYVOICE__LOAD_TRT", "1", True),
    (("cosyvoice", "load_vllm"), "VOICEFARM_COSYVOICE_LOAD_VLLM", "VOICEFARM_COSYVOICE__LOAD_VLLM", "true", True),
    (("cosyvoice", "fp16"), "VOICEFARM_COSYVOICE_FP16", "VOICEFARM_COSYVOICE__FP16", "yes", True),
    (("testing", "crash_at"), "VOICEFARM_TEST_CRASH_AT", "VOICEFARM_TESTING__CRASH_AT", "after_claim", "after_claim"),
    (("testing", "take_defect"), "VOICEFARM_TEST_TAKE_DEFECT", "VOICEFARM_TESTING__TAKE_DEFECT", "truncate@1", "truncate@1"),  # noqa: E501
    (("testing", "finish_delay_s"), "VOICEFARM_TEST_FINISH_DELAY_S", "VOICEFARM_TESTING__FINISH_DELAY_S", "2.5", 2.5),
]  # fmt: skip


def environment_reads(path: Path) -> list[str]:
    """Where a module reads or changes the process environment: `os.environ`, `os.getenv`, `environ.get`, or
    `from os import environ`, each as `line: code`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            hit = any(alias.name in ENVIRONMENT_READERS for alias in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            hit = (node.value.id == "os" and node.attr in ENVIRONMENT_READERS) or (
                node.value.id == "environ" and node.attr in ("get", "items", "keys", "copy")
            )
        else:
            hit = False
        if hit:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_shared_config_reads_the_environment() -> None:
    readers = {
        str(path.relative_to(ROOT)): reads
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (reads := environment_reads(path))
    }
    assert set(readers) == {"shared/config.py"}, f"only shared/config.py may read the environment: {readers}"


def test_the_scan_sees_every_spelling(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom os import environ\nfrom os import getenv as g\n"
        "a = os.environ['X']\nb = os.getenv('X')\nc = environ.get('X')\nd = dict(os.environ)\n"
    )
    assert len(environment_reads(module)) == 6


@pytest.mark.parametrize(("path", "flat", "nested", "raw", "value"), NESTED)
def test_flat_and_nested_names_set_the_nested_field(
    monkeypatch: pytest.MonkeyPatch, path: tuple[str, str], flat: str, nested: str, raw: str, value: object
) -> None:
    group, name = path
    for variable in (flat, nested):
        monkeypatch.delenv(flat, raising=False)
        monkeypatch.delenv(nested, raising=False)
        assert getattr(getattr(Settings(), group), name) != value
        monkeypatch.setenv(variable, raw)
        assert getattr(getattr(Settings(), group), name) == value, variable
    assert {flat, nested} <= setting_env_names()
    # The flat keyword works as it did, over the environment; so does the group.
    monkeypatch.delenv(nested)
    keyword = flat.removeprefix("VOICEFARM_").lower()
    assert getattr(getattr(Settings(**{keyword: raw}), group), name) == value
    assert getattr(getattr(Settings(**{group: {name: raw}}), group), name) == value


def test_a_keyword_wins_over_the_environment_and_a_group_keeps_its_other_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOICEFARM_COSYVOICE_MODEL_DIR", "/from-env")
    monkeypatch.setenv("VOICEFARM_COSYVOICE__FP16", "1")
    settings = Settings(cosyvoice_model_dir="/from-keyword")
    assert settings.cosyvoice.model_dir == Path("/from-keyword") and settings.cosyvoice.fp16
    assert Settings(kokoro=KokoroSettings(threads=2)).kokoro.threads == 2
    with pytest.raises(ValueError, match="kokoro.threads"):
        Settings(engine_threads=-1)


def test_an_unknown_name_warns_an_alias_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFARM_COSYVOICE_MODLE_DIR", "/typo")
    for _path, flat, nested, raw, _value in NESTED:
        monkeypatch.setenv(flat, raw)
        monkeypatch.setenv(nested, raw)
    monkeypatch.setenv("VOICEFARM_DATABASE_URL", "")
    monkeypatch.setenv("VOICEFARM_API_URL", "http://farm.example:7860")  # read by the client commands
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_settings()
    named = {name for w in caught for name in str(w.message).split() if name.startswith("VOICEFARM_")}
    assert "VOICEFARM_COSYVOICE_MODLE_DIR" in named
    assert not named & {name for _path, flat, nested, _raw, _value in NESTED for name in (flat, nested)}
    assert not named & {"VOICEFARM_DATABASE_URL", "VOICEFARM_API_URL"}


def test_helpers_for_child_processes_and_clients(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEFARM_API_URL", "http://farm.example:7860")
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("VOICEFARM_API_KEY", raising=False)
    client = client_settings()
    assert client.api_url == "http://farm.example:7860" and client.api_key == "" and client.data_path == tmp_path
    monkeypatch.delenv("VOICEFARM_DATA_DIR")
    assert client_settings().data_path == Path("var")
    env = environment()
    env["VOICEFARM_PROBE"] = "child only"
    assert "VOICEFARM_PROBE" not in environment() and env["VOICEFARM_API_URL"] == "http://farm.example:7860"


def test_engines_take_their_settings_from_the_constructor(
    upstream: ModuleType,  # noqa: F811  (fixture)
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from worker.engines import create_engine, engine_options
    from worker.engines.cosyvoice import CosyVoiceEngine
    from worker.engines.kokoro import KokoroEngine

    torch_before = "torch" in sys.modules  # another test may have imported it
    model_dir = make_model_dir(tmp_path / "handed", 2)
    monkeypatch.setenv("VOICEFARM_COSYVOICE_MODEL_DIR", str(tmp_path / "never-read"))  # not the engine's to read
    settings = Settings(
        engine="cosyvoice", data_dir=tmp_path / "var", worker_name="cosyvoice-gpu0@test",
        cosyvoice=CosyVoiceSettings(model_dir=model_dir, load_trt=True),
    )  # fmt: skip
    engine = create_engine("cosyvoice", **engine_options("cosyvoice", settings))
    assert isinstance(engine, CosyVoiceEngine)
    assert engine.model_dir == model_dir and engine.load_trt and engine.version == 2
    engine.load()
    (model,) = upstream.INSTANCES
    view = Path(model.model_dir)
    assert view.is_relative_to(tmp_path / "var" / "engine-cache" / "cosyvoice" / "cosyvoice-gpu0_test")
    assert (view / "cosyvoice2.yaml").resolve() == (model_dir / "cosyvoice2.yaml").resolve()
    assert model.calls[0][2]["load_trt"] is True and model.calls[0][2]["fp16"] is False
    assert torch_before or "torch" not in sys.modules

    kokoro = KokoroEngine(Settings(kokoro=KokoroSettings(threads=3)))  # not loaded: no model needed
    assert kokoro._threads == 3 and KokoroEngine(Settings(), threads=1)._threads == 1
    assert KokoroEngine()._threads is None  # every core


def test_client_commands_find_the_farm_that_run_sh_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`VOICEFARM_PORT=7870 ./run.sh` serves on 7870, so `VOICEFARM_PORT=7870 ./run.sh batch` must talk to 7870."""
    for name in ("VOICEFARM_API_URL", "VOICEFARM_HOST", "VOICEFARM_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert client_settings().url == "http://127.0.0.1:7860"
    monkeypatch.setenv("VOICEFARM_PORT", "7870")
    assert client_settings().url == "http://127.0.0.1:7870"
    monkeypatch.setenv("VOICEFARM_HOST", "0.0.0.0")  # listening everywhere: reach it on loopback
    assert client_settings().url == "http://127.0.0.1:7870"
    monkeypatch.setenv("VOICEFARM_HOST", "198.18.0.1")
    assert client_settings().url == "http://198.18.0.1:7870"
    monkeypatch.setenv("VOICEFARM_API_URL", "https://farm.example/")
    assert client_settings().url == "https://farm.example"
