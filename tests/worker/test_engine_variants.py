"""The kokoro engine's graphs: the float32 rewrite computes what the int8 graph approximates, speaks the same lines,
is built once per model hash, and the per-machine choice is stored and honoured (worker/engines/kokoro/variants.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.config import KokoroSettings, Settings
from tests.support.asr import error_rate, transcribe
from worker.engines.kokoro import KokoroEngine, variants
from worker.engines.kokoro.dequantise import float32_graph
from worker.engines.kokoro.model import SAMPLE_RATE, KokoroModel, model_digest
from worker.evaluators.similarity import shared_encoder

QUANTISED = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DequantizeLinear"}


def _small_float_model() -> bytes:
    """A float network with each kind of layer the Kokoro graph has quantised: an embedding table, a 1-D
    convolution with a bias, a bidirectional LSTM and a matrix product; seeded weights on the int8 grid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    hidden, channels, vocab = 8, 16, 20

    def const(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        # On the int8 grid, the extremes included: quantising these weights loses nothing, so the float32
        # rewrite must give the float network's output to float precision.
        steps = rng.integers(-127, 128, size=shape)
        steps.reshape(-1)[:2] = (127, -127)
        return numpy_helper.from_array((steps * (scale / 127)).astype(np.float32), name)

    # The embedding table is quantised asymmetrically to uint8: its grid is 1/128 from -1 to 127/128.
    steps = rng.integers(0, 256, size=(vocab, channels))
    steps.reshape(-1)[:2] = (0, 255)
    table = numpy_helper.from_array(((steps - 128) / 128).astype(np.float32), "table")

    nodes = [
        helper.make_node("Gather", ["table", "tokens"], ["embedded"]),  # [1, T, C]
        helper.make_node("Transpose", ["embedded"], ["nct"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["nct", "conv_w", "conv_b"], ["conv"], kernel_shape=[5], pads=[2, 2], dilations=[1]),
        helper.make_node("Transpose", ["conv"], ["tnc"], perm=[2, 0, 1]),  # [T, 1, C]
        helper.make_node(
            "LSTM",
            ["tnc", "lstm_w", "lstm_r", "lstm_b"],
            ["lstm", "", ""],
            hidden_size=hidden,
            direction="bidirectional",
        ),  # fmt: skip
        helper.make_node("Reshape", ["lstm", "flat_shape"], ["flat"]),  # [T, 2 * hidden]
        helper.make_node("MatMul", ["flat", "proj_w"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4])],
        initializer=[
            table,
            const("conv_w", (channels, channels, 5)),
            const("conv_b", (channels,)),
            const("lstm_w", (2, 4 * hidden, channels)),
            const("lstm_r", (2, 4 * hidden, hidden)),
            const("lstm_b", (2, 8 * hidden)),
            numpy_helper.from_array(np.array([-1, 2 * hidden], dtype=np.int64), "flat_shape"),
            const("proj_w", (2 * hidden, 4)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def _quantise(model: bytes, directory: Path) -> bytes:
    """The float model dynamically quantised by onnxruntime's own tool, as the shipped Kokoro graph was."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = directory / "float.onnx", directory / "int8.onnx"
    source.write_bytes(model)
    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=["Conv", "MatMul", "LSTM", "Gather"],
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    return target.read_bytes()


def _run(model: bytes, tokens: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["out"], {"tokens": tokens})[0])


def _op_types(model: bytes) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load_from_string(model).graph.node}


def test_the_float32_rewrite_undoes_onnxruntimes_dynamic_quantisation(tmp_path: Path) -> None:
    original = _small_float_model()
    int8 = _quantise(original, tmp_path)
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM", "DequantizeLinear"} <= _op_types(int8)
    rewritten = float32_graph(int8)
    assert not _op_types(rewritten) & QUANTISED
    assert {"Conv", "LSTM", "MatMul", "Gather"} <= _op_types(rewritten)

    tokens = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]], dtype=np.int64)
    reference, quantised, dequantised = (_run(m, tokens) for m in (original, int8, rewritten))
    scale = float(np.abs(reference).max())
    # The weights lose nothing to int8, so what is left of the int8 graph's error is its activations' rounding,
    # which the float32 graph does not do: it gives the float network's output (a wrong LSTM gate order or weight
    # layout would be far off).
    assert np.abs(dequantised - reference).max() < 1e-4 * scale
    assert np.abs(quantised - reference).max() > 10 * np.abs(dequantised - reference).max()


def test_the_float32_graph_is_built_once_per_model_hash(tmp_path: Path) -> None:
    int8 = _quantise(_small_float_model(), tmp_path)
    cache = tmp_path / "cache"
    stored = variants.float32_model(int8, "a" * 64, cache)
    assert stored == str(cache / f"float32-{'a' * 64}-v1.onnx")
    built = Path(stored).read_bytes()
    assert not _op_types(built) & QUANTISED
    # A later load takes the file under the hash instead of building: a changed file is what it gets.
    Path(stored).write_bytes(built + b"\0")
    assert Path(variants.float32_model(int8, "a" * 64, cache)).read_bytes() == built + b"\0"
    # Another model hash builds (and stores) its own; without a cache dir the bytes come back, nothing stored.
    assert Path(variants.float32_model(int8, "b" * 64, cache)).read_bytes() == built
    assert variants.float32_model(int8, "c" * 64, None) == built
    assert len(list(cache.glob("float32-*.onnx"))) == 2 and not list(cache.glob(".*"))  # no temporary left


def test_decide_keeps_int8_unless_float32_is_clearly_faster() -> None:
    assert variants.decide({"int8": 1.0, "float32": 0.80}) == "float32"
    assert variants.decide({"int8": 1.0, "float32": 0.97}) == "int8"  # within the margin: the smaller graph
    assert variants.decide({"int8": 1.0, "float32": 1.30}) == "int8"


def test_the_graph_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KokoroSettings().graph == "auto"
    monkeypatch.setenv("VOICEFARM_KOKORO_GRAPH", "float32")
    settings = Settings()
    assert settings.kokoro.graph == "float32"
    engine = KokoroEngine(settings)  # not loaded
    assert engine._graph == "float32" and engine._cache == variants.cache_dir(
        settings.kokoro.cache_dir, settings.data_dir
    )
    assert KokoroEngine(settings, graph="int8")._graph == "int8"
    assert KokoroEngine()._graph == "int8" and KokoroEngine()._cache is None
    monkeypatch.setenv("VOICEFARM_KOKORO_GRAPH", "fp16")
    with pytest.raises(ValueError, match="graph"):
        Settings()
    with pytest.raises(ValueError, match="unknown kokoro graph"):
        KokoroModel(1, "fp16")


@pytest.fixture(scope="module")
def kokoro_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the real model's float32 graph, built once for this module."""
    return tmp_path_factory.mktemp("kokoro-cache")


@pytest.mark.slow
def test_auto_times_once_per_machine_and_stores_the_choice(kokoro_cache: Path) -> None:
    first = KokoroModel(2, "auto", kokoro_cache)
    assert first.choice is not None and first.graph == first.choice.graph in variants.GRAPHS
    assert set(first.choice.seconds) == set(variants.GRAPHS) and all(s > 0 for s in first.choice.seconds.values())
    key = variants.machine_key(model_digest(), 2)
    stored = kokoro_cache / f"graph-{key}.json"
    assert json.loads(stored.read_text())["graph"] == first.graph
    assert list(kokoro_cache.glob(f"float32-{model_digest()}-v*.onnx"))  # built for the timing, kept

    # The stored choice is honoured without timing again: store the other graph and load.
    other = "int8" if first.graph == "float32" else "float32"
    variants.store_choice(kokoro_cache, variants.Choice(other, {"int8": 1.0, "float32": 1.0}, key, 0.0))
    second = KokoroModel(2, "auto", kokoro_cache)
    assert second.graph == other and second.choice is not None and second.choice.measured_at == 0.0
    # Another thread count is another key: not this choice.
    assert variants.machine_key(model_digest(), 1) != key
    # A named graph is used whatever the machine's choice.
    assert KokoroModel(2, "int8", kokoro_cache).graph == "int8"
    assert KokoroModel(2, "float32", kokoro_cache).graph == "float32"


@pytest.mark.slow
def test_the_float32_engine_speaks_like_the_int8_engine(kokoro_cache: Path) -> None:
    """Not the same samples (the activations are no longer rounded to 8 bits), but the same words, voice and
    length, and the word timings still come from the model's durations."""
    settings = Settings(data_dir=kokoro_cache.parent)
    engines = {g: KokoroEngine(settings, threads=2, graph=g, warm_languages=("en", "zh")) for g in variants.GRAPHS}
    encoder = shared_encoder()
    for language, text in (
        ("en", "Please remember to back up your files before installing the update."),
        ("zh", "今天天气很好，我们一起去公园散步吧。"),
    ):
        voice = "jf_alpha" if language == "en" else "jm_kumo"
        out = {g: e.synthesize(text, voice=voice, language=language) for g, e in engines.items()}
        int8, float32 = out["int8"].audio, out["float32"].audio
        assert engines["float32"].model.graph == "float32" and not np.array_equal(int8, float32)
        assert abs(len(float32) - len(int8)) < 0.05 * len(int8)
        errors = {g: error_rate(text, transcribe(o.audio, SAMPLE_RATE, language), language) for g, o in out.items()}
        assert errors["float32"] <= errors["int8"] + 0.1, errors
        similarity = encoder.similarity(encoder.embed(float32, SAMPLE_RATE), encoder.embed(int8, SAMPLE_RATE))
        assert similarity > 0.9, similarity
        assert out["float32"].words is not None and len(out["float32"].words) == len(out["int8"].words or [])
