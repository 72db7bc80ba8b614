"""Rewrites of the int8 Kokoro ONNX into a float32 graph, with the onnx package (worker/engines/kokoro/variants.py
decides when the engine runs it).

The shipped graph is dynamically quantised: each convolution and matrix product quantises its activations at run
time (`DynamicQuantizeLinear`), multiplies them in integers (`ConvInteger`, `MatMulInteger`) against int8 weights,
and scales the int32 sums back to float; the LSTMs are `DynamicQuantizeLSTM` and the embedding tables int8 behind
`DequantizeLinear`. `ConvInteger` alone took 58 % of the time on the development VM
(docs/benchmarks/kokoro-profile.md); whether float kernels beat it depends on the CPU
(docs/benchmarks/engine-variants.md). `dequantize` computes each of these in float32 on the weights
`(w_q - w_zero) * w_scale`: `Conv` with its float bias, `MatMul`, the standard `LSTM` (weights transposed to its
layout) and a `Gather` on the float table; a weight several nodes share (the ALBERT encoder's layers) stays one
tensor. `blocked_convolutions` then states every 1-D `Conv` as a 2-D one of height 1, the form onnxruntime's
NCHWc layout (blocked, vectorised float convolutions) applies to.

The activations are no longer rounded to 8 bits, so the audio is close to the int8 graph's but not the same
samples: benchmarks/engine_variants.py measures the speed and the difference (ASR error, speaker similarity).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

# Bump when what these rewrites write changes (cached float32 graphs of an older version are then rebuilt).
VERSION = 1


def float32_graph(model_bytes: bytes, blocked: bool = True) -> bytes:
    """The int8 model as a float32 graph: `dequantize`, then (`blocked`) `blocked_convolutions`."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    dequantize(model.graph)
    if blocked:
        blocked_convolutions(model.graph)
    return bytes(model.SerializeToString())


def dequantize(graph: Any) -> None:
    """Every quantised operator over constant weights in `graph` (an onnx GraphProto) computed in float32."""
    _Rewrite(graph).run()


def blocked_convolutions(graph: Any) -> None:
    """Each 1-D `Conv` over constant weights as `Unsqueeze` -> 2-D `Conv` (height 1) -> `Squeeze` (the axes as an
    input: opset 13 or later, as Kokoro's 20)."""
    from onnx import helper, numpy_helper

    constants = {tensor.name: tensor for tensor in graph.initializer}
    axis = "blocked_convolutions_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), axis))
    nodes: list[Any] = []
    made: dict[str, str] = {}
    for node in graph.node:
        weights = constants.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weights is None or len(weights.dims) != 3:
            nodes.append(node)
            continue
        if node.input[1] not in made:
            made[node.input[1]] = f"{node.input[1]}_2d"
            array = numpy_helper.to_array(weights)
            graph.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(array[:, :, None, :]), made[node.input[1]])
            )
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name in ("kernel_shape", "strides", "dilations"):
            if name in attributes:
                attributes[name] = [1, *attributes[name]]
        if "pads" in attributes:  # [begin, end] -> [top, begin, bottom, end]
            attributes["pads"] = [0, attributes["pads"][0], 0, attributes["pads"][1]]
        name = node.name or node.output[0]
        nodes += [
            helper.make_node("Unsqueeze", [node.input[0], axis], [f"{name}_2d_in"]),
            helper.make_node(
                "Conv",
                [f"{name}_2d_in", made[node.input[1]], *node.input[2:]],
                [f"{name}_2d_out"],
                name=name,
                **attributes,
            ),
            helper.make_node("Squeeze", [f"{name}_2d_out", axis], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    _prune(graph)


class _Rewrite:
    """One pass over a graph: each quantised pattern whose weights are constants becomes its float operator."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.constants = {tensor.name: tensor for tensor in graph.initializer}
        self.producer = {name: node for node in graph.node for name in node.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.to_array = numpy_helper.to_array
        self.replaced: dict[int, list[Any]] = {}  # id(first node of a pattern) -> its float nodes
        self.new_constants: list[Any] = []
        self.made: dict[tuple[str, ...], str] = {}

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.to_array(self.constants[name]))

    def only_consumer(self, name: str, op_type: str) -> Any | None:
        nodes = self.consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None

    def constant(self, name: str, key: tuple[str, ...], make: Callable[[], np.ndarray]) -> str:
        """The float constant made from the quantised tensors named in `key`, made once: weights shared by several
        nodes (the ALBERT encoder's layers) stay one tensor."""
        from onnx import numpy_helper

        if key not in self.made:
            value = np.ascontiguousarray(make(), dtype=np.float32)
            self.new_constants.append(numpy_helper.from_array(value, name))
            self.made[key] = name
        return self.made[key]

    def float_input(self, quantised: str) -> str | None:
        """The float tensor a `DynamicQuantizeLinear` output was quantised from."""
        node = self.producer.get(quantised)
        return node.input[0] if node is not None and node.op_type == "DynamicQuantizeLinear" else None

    def run(self) -> None:
        for node in list(self.graph.node):
            if node.op_type in ("ConvInteger", "MatMulInteger"):
                self.integer_product(node)
            elif node.op_type == "DynamicQuantizeLSTM":
                self.lstm(node)
            elif node.op_type == "DequantizeLinear":
                self.embedding(node)
        nodes = []
        for node in self.graph.node:
            nodes.extend(self.replaced.get(id(node), [node]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.graph.initializer.extend(self.new_constants)
        _prune(self.graph)

    def integer_product(self, node: Any) -> None:
        """`ConvInteger`/`MatMulInteger` [-> Add(int32 bias)] -> Cast -> Mul(x_scale * w_scale): one float op."""
        from onnx import helper

        x = self.float_input(node.input[0])
        w_name = node.input[1]
        zero_name = node.input[3] if len(node.input) > 3 else ""
        if x is None or w_name not in self.constants or (zero_name and zero_name not in self.constants):
            return
        bias_name = None
        after = self.only_consumer(node.output[0], "Add")
        if after is not None:  # the int32 bias: Reshape(Cast(Floor(Div(bias, x_scale * w_scale))))
            bias_name = self.quantised_bias(next(i for i in after.input if i != node.output[0]))
            if bias_name is None:
                return
            cast = self.only_consumer(after.output[0], "Cast")
        else:
            cast = self.only_consumer(node.output[0], "Cast")
        scale_mul = self.only_consumer(cast.output[0], "Mul") if cast is not None else None
        if cast is None or scale_mul is None:
            return
        scales = self.producer.get(next(i for i in scale_mul.input if i != cast.output[0]))
        scale_name = next((i for i in scales.input if i in self.constants), None) if scales is not None else None
        if scales is None or scales.op_type != "Mul" or scale_name is None:
            return
        name = node.name or node.output[0]
        matmul = node.op_type == "MatMulInteger"

        def weights() -> np.ndarray:
            w_q = self.array(w_name).astype(np.float32)
            zero = self.array(zero_name).astype(np.float32) if zero_name else np.zeros(1, np.float32)
            scale = self.array(scale_name).astype(np.float32)
            if matmul:  # [K, N], scale and zero point per column (or one)
                return (w_q - zero.reshape(1, -1)) * scale.reshape(1, -1)
            per_channel = (-1,) + (1,) * (w_q.ndim - 1)  # [out, in, k...], per output channel (or one)
            return (w_q - zero.reshape(per_channel)) * scale.reshape(per_channel)

        inputs = [x, self.constant(f"{name}_float_weight", (node.op_type, w_name, zero_name, scale_name), weights)]
        if bias_name is not None:
            inputs.append(self.constant(f"{name}_float_bias", ("bias", bias_name), lambda: self.array(bias_name)))
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = "MatMul" if matmul else "Conv"
        self.replaced[id(node)] = [helper.make_node(op, inputs, [scale_mul.output[0]], name=name, **attributes)]
        for gone in (after, cast, scale_mul):
            if gone is not None:
                self.replaced[id(gone)] = []

    def quantised_bias(self, name: str) -> str | None:
        """The float bias constant behind `Reshape(Cast(Floor(Div(bias, scale))))`, or None for another shape."""
        node = self.producer.get(name)
        for op in ("Reshape", "Cast", "Floor", "Div"):
            if node is None or node.op_type != op:
                return None
            if op == "Div":
                return str(node.input[0]) if node.input[0] in self.constants else None
            node = self.producer.get(node.input[0])
        return None

    def lstm(self, node: Any) -> None:
        """`DynamicQuantizeLSTM` (weights [dirs, in, 4h], int8) -> the standard `LSTM` (weights [dirs, 4h, in])."""
        from onnx import helper

        inputs = list(node.input) + [""] * (12 - len(node.input))
        x, w, r, b, lengths, h0, c0, peep, w_scale, w_zero, r_scale, r_zero = inputs
        if peep or not all(n in self.constants for n in (w, w_scale, w_zero, r, r_scale, r_zero)):
            return
        name = node.name or node.output[0]

        def weights(q: str, scale: str, zero: str) -> Callable[[], np.ndarray]:
            def make() -> np.ndarray:
                values = self.array(q).astype(np.float32)
                per_dir = (-1,) + (1,) * (values.ndim - 1)
                values = (values - self.array(zero).astype(np.float32).reshape(per_dir)) * self.array(scale).reshape(
                    per_dir
                )
                return values.transpose(0, 2, 1)

            return make

        lstm_inputs = [
            x,
            self.constant(f"{name}_float_w", ("LSTM", w, w_scale, w_zero), weights(w, w_scale, w_zero)),
            self.constant(f"{name}_float_r", ("LSTM", r, r_scale, r_zero), weights(r, r_scale, r_zero)),
            b,
            lengths,
            h0,
            c0,
        ]
        while lstm_inputs and not lstm_inputs[-1]:
            lstm_inputs.pop()
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.replaced[id(node)] = [helper.make_node("LSTM", lstm_inputs, list(node.output), name=name, **attributes)]

    def embedding(self, node: Any) -> None:
        """`Gather(int8 table)` -> `DequantizeLinear` becomes a `Gather` on the float32 table."""
        from onnx import helper

        gather = self.producer.get(node.input[0])
        if gather is None or gather.op_type != "Gather" or len(self.consumers[node.input[0]]) != 1:
            return
        table, scale, zero = gather.input[0], node.input[1], node.input[2] if len(node.input) > 2 else ""
        if not all(n in self.constants for n in (table, scale, zero) if n) or self.array(scale).size != 1:
            return

        def values() -> np.ndarray:
            offset = self.array(zero).astype(np.float32).reshape(()) if zero else np.float32(0)
            return (self.array(table).astype(np.float32) - offset) * self.array(scale).astype(np.float32).reshape(())

        name = gather.name or gather.output[0]
        float_table = self.constant(f"{name}_float_table", ("Gather", table, scale, zero), values)
        attributes = {a.name: helper.get_attribute_value(a) for a in gather.attribute}
        replacement = helper.make_node(
            "Gather", [float_table, gather.input[1]], list(node.output), name=name, **attributes
        )
        self.replaced[id(gather)] = [replacement]
        self.replaced[id(node)] = []


def _prune(graph: Any) -> None:
    """Drop the nodes and constants nothing reads any more (the quantisers, the int8 weights)."""
    wanted = {output.name for output in graph.output}
    kept: list[Any] = []
    for node in reversed(list(graph.node)):
        if any(name in wanted for name in node.output):
            kept.append(node)
            wanted.update(name for name in node.input if name)
            for attribute in node.attribute:  # subgraphs (If, Loop) read outer names too
                for sub in [attribute.g, *attribute.graphs]:
                    wanted.update(name for n in sub.node for name in n.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    constants = [tensor for tensor in graph.initializer if tensor.name in wanted]
    del graph.initializer[:]
    graph.initializer.extend(constants)
    produced = {name for node in kept for name in node.output}
    shapes = [info for info in graph.value_info if info.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(shapes)
