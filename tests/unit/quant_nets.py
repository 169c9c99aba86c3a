"""Small synthetic ONNX models for quantizer and pass tests (built with onnx.helper, random weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def model_from(nodes, inits, inputs, outputs, opset: int = 17, metadata: dict | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "net", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    for k, v in (metadata or {}).items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    return m


def conv_net(seed: int = 0, leaky: bool = False) -> onnx.ModelProto:
    """x[1,3,8,8] -> conv1+relu -> maxpool -> two 1x1 convs -> concat -> add -> GAP -> flatten -> gemm."""
    rng = np.random.default_rng(seed)
    act = ("LeakyRelu", {"alpha": 0.1}) if leaky else ("Relu", {})
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(act[0], ["c1"], ["r1"], name="act1", **act[1]),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["p1", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Concat", ["c2", "c3"], ["cat"], name="concat", axis=1),
        helper.make_node("Add", ["cat", "p1cat"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    nodes.insert(6, helper.make_node("Concat", ["p1", "p1"], ["p1cat"], name="concat_skip", axis=1))
    inits = [
        _init("w1", rng.normal(0, 0.4, (4, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 4)),
        _init("w2", rng.normal(0, 0.4, (4, 4, 1, 1))), _init("b2", rng.normal(0, 0.1, 4)),
        _init("w3", rng.normal(0, 0.4, (4, 4, 1, 1))), _init("b3", rng.normal(0, 0.1, 4)),
        _init("wf", rng.normal(0, 0.4, (5, 8))), _init("bf", rng.normal(0, 0.1, 5)),
    ]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                      metadata={"character": "abc\ndef"})


def two_conv_net(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,6,6] -> conv(3x3, pad 1)+relu -> conv(1x1) -> y: small enough for a numpy integer reference."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2"),
    ]
    inits = [_init("w1", rng.normal(0, 0.5, (4, 3, 3, 3))), _init("b1", rng.normal(0, 0.2, 4)),
             _init("w2", rng.normal(0, 0.5, (2, 4, 1, 1))), _init("b2", rng.normal(0, 0.2, 2))]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])])


def samples(shape, n: int = 8, seed: int = 1, low: float = -1.0, high: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, high, shape).astype(np.float32) for _ in range(n)]


def run(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> list[np.ndarray]:
    return session(model, optimize).run(None, feeds)


def session(model: onnx.ModelProto, optimize: bool = False):
    """An ONNX Runtime CPU session (graph optimisations off unless ``optimize``)."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, 10)
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
