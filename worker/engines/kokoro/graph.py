"""Graph rewrites of the int8 Kokoro ONNX that make it faster on CPU without changing a sample it speaks.

The shipped model is dynamically quantized: every convolution is `DynamicQuantizeLinear` on the activations, then
`ConvInteger` (uint8 activations x int8 weights, int32 sums), then a cast and a scale. onnxruntime's CPU
`ConvInteger` has no optimised kernel, and it took 58 % of the engine's time (docs/benchmarks/kokoro-profile.md, "Where
the kokoro engine's time goes"). `float_convolutions` replaces each one by the float `Conv` (MLAS, multithreaded) over
the same integers: `(x_q - x_zp)` and `(w_q - w_zp)` cast to float32, the sum cast back to int32. The integers are
small enough that float32 sums them exactly here; benchmarks/kokoro_rtf.py checks the audio stays bit-identical.

Not used by the engine: on the 2-core development VM the float weights (4x the bytes) made it 20-30 % slower, not
faster (`benchmarks/kokoro_rtf.py --variants`, docs/benchmarks/onnxruntime-tuning.md). Kept for machines with more
cores and cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def float_convolutions(model_bytes: bytes) -> bytes:
    """The model with every `ConvInteger` over constant weights computed by a float `Conv` (see the docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    nodes: list[Any] = []
    for node in graph.node:
        if node.op_type != "ConvInteger" or len(node.input) != 4 or not node.input[2] or node.input[1] not in constants:
            nodes.append(node)
            continue
        x_q, w_q, x_zero, w_zero = node.input
        weights = numpy_helper.to_array(constants[w_q]).astype(np.float32)
        if w_zero:
            weights -= numpy_helper.to_array(constants[w_zero]).astype(np.float32)
        weight_name = f"{w_q}_as_float"
        graph.initializer.append(numpy_helper.from_array(weights, weight_name))
        name = node.name or node.output[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes += [
            helper.make_node("Cast", [x_q], [f"{name}_x"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [x_zero], [f"{name}_x_zero"], to=TensorProto.FLOAT),
            helper.make_node("Sub", [f"{name}_x", f"{name}_x_zero"], [f"{name}_x_centred"]),
            helper.make_node("Conv", [f"{name}_x_centred", weight_name], [f"{name}_sum"], name=name, **attributes),
            helper.make_node("Cast", [f"{name}_sum"], [node.output[0]], to=TensorProto.INT32),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    # The int8 weights are now unused; drop them so the session does not hold both copies.
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return bytes(model.SerializeToString())
