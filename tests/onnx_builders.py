"""Small synthetic ONNX models for checker tests and benchmarks (one node or a few)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def model(nodes, inputs, outputs, inits=(), name="g") -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def weight(name, shape, seed=0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def conv_node(name, x, y, ic, oc, k=3, stride=1, pad=None, group=1, dilation=1, kh=None):
    """A Conv node plus its weight initializer."""
    kh = kh or k
    pad = k // 2 if pad is None else pad
    w = weight(f"{name}.w", (oc, ic // group, kh, k))
    node = helper.make_node("Conv", [x, w.name], [y], name=name, kernel_shape=[kh, k], strides=[stride, stride],
                            pads=[kh // 2 if pad is None else pad, pad, kh // 2 if pad is None else pad, pad],
                            group=group, dilations=[dilation, dilation])
    return node, w


def seed004() -> onnx.ModelProto:
    """Seed 004's checker example: 1x1 conv -> 9x9 conv -> 3x3 conv."""
    n1, w1 = conv_node("Convolution1", "data", "c1", 3, 16, k=1, pad=0)
    n2, w2 = conv_node("Convolution2", "c1", "c2", 16, 16, k=9, pad=4)
    n3, w3 = conv_node("Convolution3", "c2", "c3", 16, 16, k=3, pad=1)
    return model([n1, n2, n3], [vi("data", [1, 3, 32, 32])], [vi("c3", None)], [w1, w2, w3], name="seed004")


def conv_bn_relu_blocks(blocks: int, channels: int = 16, size: int = 16) -> onnx.ModelProto:
    """``blocks`` x (Conv -> BN -> Relu -> Conv -> BN -> Add(residual) -> Relu): 7 nodes a block."""
    nodes, inits = [], []
    x = "input"
    c = channels
    for b in range(blocks):
        def bn(name, src, dst):
            for p, v in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
                inits.append(const(f"{name}.{p}", np.full(c, v, np.float32)))
            nodes.append(helper.make_node("BatchNormalization", [src, f"{name}.scale", f"{name}.bias", f"{name}.mean",
                                                                  f"{name}.var"], [dst], name=name))
        n, w = conv_node(f"b{b}.conv1", x, f"b{b}.c1", c, c)
        nodes.append(n), inits.append(w)
        bn(f"b{b}.bn1", f"b{b}.c1", f"b{b}.n1")
        nodes.append(helper.make_node("Relu", [f"b{b}.n1"], [f"b{b}.r1"], name=f"b{b}.relu1"))
        n, w = conv_node(f"b{b}.conv2", f"b{b}.r1", f"b{b}.c2", c, c)
        nodes.append(n), inits.append(w)
        bn(f"b{b}.bn2", f"b{b}.c2", f"b{b}.n2")
        nodes.append(helper.make_node("Add", [f"b{b}.n2", x], [f"b{b}.s"], name=f"b{b}.add"))
        nodes.append(helper.make_node("Relu", [f"b{b}.s"], [f"b{b}.out"], name=f"b{b}.relu2"))
        x = f"b{b}.out"
    return model(nodes, [vi("input", [1, c, size, size])], [vi(x, None)], inits, name="blocks")


def nhwc_sandwich_net(channels: int = 8, size: int = 8, act: str = "Elu") -> onnx.ModelProto:
    """A channels-last export's layers: input ``x`` (N, C, H, W), output ``y``.  Each Conv sits between
    ``Transpose`` nodes to and from NHWC, with the activations and a per-channel scale and bias applied
    channels-last in between (tf2onnx, TFLite, madmom's TCN): ``Conv -> Transpose(0,2,3,1) -> Squeeze(0)
    -> act -> Mul(c) -> Add(c) -> Unsqueeze(0) -> Transpose(0,3,1,2) -> Conv -> Transpose -> Relu ->
    Transpose -> MaxPool -> Conv``."""
    rng = np.random.default_rng(32)
    c1, w1 = conv_node("conv1", "x", "c1", 3, channels)
    c2, w2 = conv_node("conv2", "u1", "c2", channels, channels)
    c3, w3 = conv_node("conv3", "p2", "y", channels, channels, k=1)
    inits = [w1, w2, w3, const("ax0", np.array([0], np.int64)),
             const("scale", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
             const("shift", rng.normal(0, 0.2, (1, channels)).astype(np.float32))]
    nodes = [c1,
             helper.make_node("Transpose", ["c1"], ["t1"], name="to_nhwc1", perm=[0, 2, 3, 1]),
             helper.make_node("Squeeze", ["t1", "ax0"], ["s1"], name="remove_batch1"),
             helper.make_node(act, ["s1"], ["e1"], name="act1"),
             helper.make_node("Mul", ["e1", "scale"], ["m1"], name="scale1"),
             helper.make_node("Add", ["shift", "m1"], ["a1"], name="shift1"),
             helper.make_node("Unsqueeze", ["a1", "ax0"], ["b1"], name="add_batch1"),
             helper.make_node("Transpose", ["b1"], ["u1"], name="to_nchw1", perm=[0, 3, 1, 2]),
             c2,
             helper.make_node("Transpose", ["c2"], ["t2"], name="to_nhwc2", perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["t2"], ["r2"], name="relu2"),
             helper.make_node("Transpose", ["r2"], ["u2"], name="to_nchw2", perm=[0, 3, 1, 2]),
             helper.make_node("MaxPool", ["u2"], ["p2"], name="pool", kernel_shape=[2, 2], strides=[2, 2]), c3]
    return model(nodes, [vi("x", [1, 3, size, size])], [vi("y", None)], inits, name="nhwc_sandwich")
