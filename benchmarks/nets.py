"""Reference network architectures built with ``onnx.helper`` (random weights).

Performance depends on shapes, not weight values, so these graphs are enough to calibrate the
static estimator against published figures: ResNet50 (the Vitis AI Model Zoo reference) and a
MobileNet-v1-like depthwise net.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    """Accumulates nodes and random initializers; names are unique and readable."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def init(self, prefix: str, shape: tuple[int, ...], scale: float = 0.05) -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             relu: bool = True, name: str | None = None) -> str:
        name = name or self._name("conv")
        w = self.init(name + "_w", (cout, cin // group, k, k))
        b = self.init(name + "_b", (cout,))
        y = name + "_out"
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=group))
        if relu:
            r = name + "_relu"
            self.nodes.append(helper.make_node("Relu", [y], [r], name=r))
            return r
        return y

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def fc(self, x: str, cin: int, cout: int) -> str:
        w = self.init("fc_w", (cout, cin))
        b = self.init("fc_b", (cout,))
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, x: str, shape: list[int], y: str, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def resnet50(size: int = 224, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-50 v1 as in Caffe (bottleneck blocks 3-4-6-3, stride on the first 1x1 conv): 7.7 GOPs."""
    b = _Builder()
    x = b.conv("input", 3, 64, 7, 2, name="conv1")
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            out = width * 4
            y = b.conv(x, cin, width, 1, stride)
            y = b.conv(y, width, width, 3)
            y = b.conv(y, width, out, 1, relu=False)
            sc = b.conv(x, cin, out, 1, stride, relu=False) if i == 0 else x
            x = b.op("Relu", [b.op("Add", [y, sc])])
            cin = out
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    y = b.fc(x, cin, classes)
    return b.model("input", [1, 3, size, size], y, "resnet50")


def mobilenet_v1(size: int = 224, classes: int = 1000) -> onnx.ModelProto:
    """MobileNet-v1 (alpha 1): a 3x3 conv, then 13 depthwise-3x3 + pointwise-1x1 pairs."""
    b = _Builder(1)
    x = b.conv("input", 3, 32, 3, 2)
    cin = 32
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for cout, stride in plan:
        x = b.conv(x, cin, cin, 3, stride, group=cin)
        x = b.conv(x, cin, cout, 1)
        cin = cout
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    y = b.fc(x, cin, classes)
    return b.model("input", [1, 3, size, size], y, "mobilenet_v1")
