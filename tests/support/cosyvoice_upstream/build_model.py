"""Build a small, randomly initialised CosyVoice3 or CosyVoice2 model directory from upstream's own recipe yaml.

Run with the python of the upstream environment (infra/cosyvoice/install.sh), never the farm's test venv:

    python tests/support/cosyvoice_upstream/build_model.py --version 3 \
        --recipe COSYVOICE_HOME/examples/libritts/cosyvoice3/conf/cosyvoice3.yaml OUT_DIR

No weights exist on these machines, so the directory holds what a released one holds (the generation's yaml,
llm.pt, flow.pt, hift.pt, campplus.onnx, speech_tokenizer_v{2,3}.onnx, CosyVoice-BlankEN/ with a Qwen2 config,
weights and tokenizer), built here: upstream's recipe with its widths and depths shrunk (every other key kept as the
recipe has it), a Qwen2 of two layers, a byte-level tokenizer laid out like Qwen2's (so `<|endofprompt|>` gets the
id 151646 that CosyVoice3's LLM checks for), and two ONNX front-end models made with onnx.helper that take and give
the shapes upstream's frontend uses. It speaks noise, not speech; it exercises every line of upstream's inference.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

QWEN_BASE_VOCAB = 151643  # Qwen2's regular tokens; <|endoftext|>, <|im_start|>, <|im_end|> follow
QWEN_HIDDEN = 32
SPEECH_TOKENS = 6561  # the recipe's speech_token_size and the flow's vocab_size (kept)

# (path in the recipe, value): widths and depths only. Paths missing from the recipe fail the build.
SHRINK: dict[int, list[tuple[tuple[str, ...], Any]]] = {
    3: [
        (("llm_input_size",), QWEN_HIDDEN),
        (("llm_output_size",), QWEN_HIDDEN),
        (("flow", "pre_lookahead_layer", "channels"), 64),
        (("flow", "decoder", "estimator", "dim"), 64),
        (("flow", "decoder", "estimator", "depth"), 2),
        (("flow", "decoder", "estimator", "heads"), 2),
        (("flow", "decoder", "estimator", "dim_head"), 32),
        (("hift", "base_channels"), 32),
        (("hift", "f0_predictor", "cond_channels"), 32),
    ],
    2: [
        (("llm_input_size",), QWEN_HIDDEN),
        (("llm_output_size",), QWEN_HIDDEN),
        # the encoder stays 512 wide: upstream's UpsampleConformerEncoder hard-codes 512 in two of its layers
        (("flow", "encoder", "attention_heads"), 2),
        (("flow", "encoder", "linear_units"), 64),
        (("flow", "encoder", "num_blocks"), 1),
        (("flow", "decoder", "estimator", "channels"), [32]),
        (("flow", "decoder", "estimator", "attention_head_dim"), 16),
        (("flow", "decoder", "estimator", "n_blocks"), 1),
        (("flow", "decoder", "estimator", "num_mid_blocks"), 1),
        (("flow", "decoder", "estimator", "num_heads"), 2),
        (("hift", "base_channels"), 32),
        (("hift", "f0_predictor", "cond_channels"), 32),
    ],
}


def shrunk_yaml(recipe: Path, version: int) -> str:
    """The recipe, round-tripped with its tags and references, with the widths and depths of SHRINK."""
    from ruamel.yaml import YAML  # hyperpyyaml's own yaml library

    yaml = YAML()
    doc = yaml.load(recipe.read_text())
    for path, value in SHRINK[version]:
        node = doc
        for key in path[:-1]:
            node = node[key]
        if path[-1] not in node:
            raise KeyError(f"{recipe} has no {'.'.join(path)}: upstream's recipe changed, update SHRINK")
        node[path[-1]] = value
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _byte_level_alphabet() -> list[str]:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return list(bytes_to_unicode().values())


def build_qwen(blank: Path) -> None:
    """CosyVoice-BlankEN: a two-layer Qwen2 and a byte-level tokenizer with Qwen2's id layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    blank.mkdir(parents=True)
    alphabet = _byte_level_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({f"vfunused{i}": i for i in range(len(alphabet), QWEN_BASE_VOCAB)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = Qwen2TokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(blank)
    # CosyVoice3's tokenizer adds ~300 tokens after these; the embedding covers them, rounded as Qwen2.5 does.
    config = Qwen2Config(
        vocab_size=152064, hidden_size=QWEN_HIDDEN, intermediate_size=2 * QWEN_HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768, tie_word_embeddings=True,
        rope_theta=1000000.0, use_sliding_window=False, torch_dtype="float32",
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(blank)


def build_onnx_frontend(model_dir: Path, version: int, seed: int) -> None:
    """campplus.onnx ([1, T, 80] fbank -> [1, 192] embedding) and the speech tokenizer ([1, 128, T] log-mel and
    its length -> [1, ceil(T/4)] tokens below 6561, 25 per second as upstream's), the shapes the frontend uses."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array((rng.standard_normal((80, 192)) * 0.1).astype(np.float32), "weight")
    campplus = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weight"], ["embedding"]),
        ],
        "campplus_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 192])],
        [weight],
    )
    consts = [
        numpy_helper.from_array(np.array(v, dtype=dt), name)
        for name, v, dt in (
            ("starts", [0], np.int64), ("ends", [2**62], np.int64), ("axes", [1], np.int64),
            ("steps", [4], np.int64), ("scale", 997.0, np.float32), ("vocab", SPEECH_TOKENS, np.int64),
        )
    ]  # fmt: skip
    tokenizer = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["feats"], ["level"], axes=[1], keepdims=0),
            helper.make_node("Slice", ["level", "starts", "ends", "axes", "steps"], ["frames"]),
            helper.make_node("Mul", ["frames", "scale"], ["scaled"]),
            helper.make_node("Abs", ["scaled"], ["positive"]),
            helper.make_node("Cast", ["positive"], ["whole"], to=TensorProto.INT64),
            helper.make_node("Mod", ["whole", "vocab"], ["wrapped"]),
            helper.make_node("Cast", ["wrapped"], ["indices"], to=TensorProto.INT32),
        ],
        "speech_tokenizer_random",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT32, [1, "N"])],
        consts,
    )
    for graph, name in ((campplus, "campplus.onnx"), (tokenizer, f"speech_tokenizer_v{version}.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="voicefarm-tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, model_dir / name)


def build(out: Path, version: int, recipe: Path, seed: int = 1986) -> dict[str, Any]:
    import torch
    from hyperpyyaml import load_hyperpyyaml

    if out.exists():
        raise SystemExit(f"{out} exists; build into a new directory")
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    build_qwen(out / "CosyVoice-BlankEN")
    (out / f"cosyvoice{version}.yaml").write_text(shrunk_yaml(recipe, version))
    # Load it exactly as upstream's CosyVoice2/CosyVoice3 constructors do, then save the random modules.
    with open(out / f"cosyvoice{version}.yaml") as f:
        configs = load_hyperpyyaml(f, overrides={"qwen_pretrain_path": str(out / "CosyVoice-BlankEN")})
    sizes = {}
    for part in ("llm", "flow", "hift"):
        module = configs[part]
        torch.save(module.state_dict(), out / f"{part}.pt")
        sizes[part] = sum(p.numel() for p in module.parameters())
    build_onnx_frontend(out, version, seed)
    tokenizer = configs["get_tokenizer"]()
    endofprompt = tokenizer.encode("<|endofprompt|>")
    if endofprompt != [151646]:
        raise SystemExit(f"<|endofprompt|> encodes as {endofprompt}, not [151646] as upstream's LLM expects")
    info = {"version": version, "recipe": recipe.name, "parameters": sizes, "seed": seed}
    (out / "voicefarm-random-model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--version", type=int, choices=(2, 3), required=True)
    parser.add_argument(
        "--recipe", type=Path, required=True, help="upstream's examples/libritts/cosyvoice{2,3}/conf yaml"
    )
    parser.add_argument("--seed", type=int, default=1986)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out, args.version, args.recipe, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
