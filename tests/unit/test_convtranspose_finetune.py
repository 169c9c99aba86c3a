"""ConvTranspose layers in fast finetune (AdaRound, AdaQuant, GPTQ; issue 18).

PP-OCRv4 det's head ends in two ``ConvTranspose`` layers, which every fast-finetune method skipped
(62 of 64 weight layers solved): ``weight_layers`` / ``quantized_layers`` knew Conv, Gemm and
MatMul only, and the patch sampler knew Conv's geometry only.  A transposed convolution is a
stride-1 convolution of the zero-interleaved input with the kernel flipped and the channel axes
swapped per group; checked here against ONNX Runtime's ConvTranspose itself (strides, pads,
output padding, dilations and groups), then end to end through ``npuflow.quantize``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.graph import get_array, set_array
from npuflow.quant.algorithms.layers import layer_weight, transposed_conv_rows, transposed_conv_stored, weight_layers
from npuflow.quant.algorithms.patches import PatchSampler, grouped_weight
from npuflow.quant.algorithms.qdq_weights import quantized_layers, read_codes, write_codes

TARGET = "DPUCZDX8G_ISA1_B4096"


def _deconv(cin: int, cout: int, k: int, group: int, **attrs) -> tuple:
    rng = np.random.default_rng(k * 10 + group)
    w = rng.normal(0, 0.5, (cin, cout // group, k, k)).astype(np.float32)
    b = rng.normal(0, 0.1, cout).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", group=group, kernel_shape=[k, k],
                            **attrs)
    g = helper.make_graph([node], "deconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), w, b


GEOMETRIES = [dict(cin=4, cout=6, k=2, group=1, strides=[2, 2]),                       # PP-OCRv4 det's head
              dict(cin=4, cout=6, k=3, group=2, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
              dict(cin=6, cout=3, k=3, group=3, strides=[2, 1], pads=[0, 1, 2, 1], dilations=[1, 2]),
              dict(cin=4, cout=4, k=3, group=1)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["det_head", "grouped_outpad", "dilated", "stride1"])
def test_patches_and_rows_layout_reproduce_onnx_runtimes_convtranspose(geometry):
    geometry = dict(geometry)
    model, w, b = _deconv(geometry.pop("cin"), geometry.pop("cout"), geometry.pop("k"), geometry.pop("group"),
                          **geometry)
    x = np.random.default_rng(1).normal(size=(2, w.shape[0], 5, 6)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    layer = next(l for l in weight_layers(model) if l.name == "up")
    rows = layer_weight(model, layer)
    np.testing.assert_array_equal(transposed_conv_stored(rows, layer.groups), w)
    sampler = PatchSampler(layer.node, rows.shape, per_batch=10**6)
    assert sampler.supported
    patches = sampler.sample(x, 0)                                   # every output position, in order
    out = np.matmul(grouped_weight(rows, layer.groups), patches).reshape(rows.shape[0], *y.shape[:1], *y.shape[2:])
    np.testing.assert_allclose(out.transpose(1, 0, 2, 3) + b.reshape(1, -1, 1, 1), y, rtol=1e-4, atol=1e-4)
    mean = np.matmul(grouped_weight(rows, layer.groups), sampler.mean_patch(x)[..., None]).reshape(-1)
    np.testing.assert_allclose(mean + b, y.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)


def test_quantized_convtranspose_codes_round_trip_in_the_rows_layout():
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(size=(2, 4, 5, 6)).astype(np.float32)} for _ in range(4)]
    model, w, _ = _deconv(4, 6, 3, 2, strides=[2, 2], pads=[1, 1, 1, 1])
    q = npuflow.quantize(model, feeds, target=TARGET, config={"include_bias_corr": False}).model
    ql = next(l for l in quantized_layers(q) if l.name == "up")
    codes = read_codes(q, ql)
    assert codes.shape == transposed_conv_rows(w, 2).shape
    scale = float(ql.scale.reshape(-1)[0])
    np.testing.assert_array_equal(codes, np.clip(np.round(transposed_conv_rows(w, 2) / scale), -128, 127))
    write_codes(q, ql, codes[::-1].copy())
    np.testing.assert_array_equal(read_codes(q, ql), codes[::-1])


def _decoder(seed: int = 0):
    """3x3 conv + ReLU, then a 2x2 stride-2 ConvTranspose + ReLU, then a 2x2 stride-2 ConvTranspose
    (PP-OCRv4 det's head, small)."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w1 = rng.normal(0, 0.3, (8, 6, 2, 2)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (6, 1, 2, 2)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "w0"), (w1, "w1"), (w2, "w2"))]
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), f"b{i}") for i, c in enumerate((8, 6, 1))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["cr"], name="relu0"),
             helper.make_node("ConvTranspose", ["cr", "w1", "b1"], ["u"], name="up1", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["u"], ["ur"], name="relu1"),
             helper.make_node("ConvTranspose", ["ur", "w2", "b2"], ["y"], name="up2", kernel_shape=[2, 2], strides=[2, 2])]
    g = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 24, 24])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _output_error(qmodel, float_model, feeds) -> float:
    q, f = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (qmodel, float_model))
    return float(np.mean([np.mean((q.run(None, x)[0] - f.run(None, x)[0]) ** 2) for x in feeds]))


@pytest.mark.parametrize("method", ["adaround", "gptq"])
def test_fast_finetune_solves_convtranspose_layers_and_compiles_bit_exact(method, tmp_path, monkeypatch):
    from tests.compile_check import compare_with_ort

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)} for _ in range(24)]
    calib, held_out = feeds[:16], feeds[16:]
    model = _decoder()
    plain = npuflow.quantize(model, calib, target=TARGET, config={"include_bias_corr": False})
    q = npuflow.quantize(model, calib, target=TARGET, config={
        "include_bias_corr": False, "finetune_samples": 16, "fast_finetune": {"method": method, "iters": 200}})
    ff = q.info["algorithms"]["fast_finetune"]
    assert ff["layers"] == 3, ff     # the two ConvTranspose layers too (before: 1 of 3)
    # the learned ConvTranspose weights (and GPTQ's biases) against nearest rounding, the Conv's kept
    reverted = onnx.ModelProto()
    reverted.CopyFrom(q.model)
    for ql, pl in zip(quantized_layers(reverted), quantized_layers(plain.model)):
        if ql.node.op_type == "ConvTranspose":
            assert not np.array_equal(read_codes(reverted, ql), read_codes(plain.model, pl)), ql.name
            write_codes(reverted, ql, read_codes(plain.model, pl))
            set_array(reverted, ql.bias_name, get_array(plain.model, pl.bias_name))
    assert _output_error(q.model, model, held_out) < _output_error(reverted, model, held_out)
    diffs = compare_with_ort(q.model, held_out[0], TARGET)
    assert max(diffs.values()) == 0, diffs
