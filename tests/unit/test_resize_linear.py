"""Bilinear upsampling on the accelerator: a linear ``Resize`` by 2 or 4 (asymmetric: 8) as edge
extension and a depthwise ConvTranspose (``passes/resize_linear.py``, the Vitis AI way).

U-Nets, segmentation decoders and Wave-U-Net (round 19: four ``F.interpolate(mode="linear")``)
upsample with a linear ``Resize``, which no target lowered: each one was a CPU round trip.  The
rewrite must equal ONNX Runtime's ``Resize`` in float, compile to one accelerator subgraph equal to
ONNX Runtime on the quantized model, and leave any other linear ``Resize`` with a reason naming the
attribute that blocks it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow import numerics
from npuflow.passes.resize_linear import linear_resizes_as_conv_transpose
from npuflow.quant.config import QuantConfig
from npuflow.quant.params import weight_params
from npuflow.targets import load_target
from tests.compile_check import assert_one_subgraph_equal_to_ort, compare_layerwise_with_ort
from tests.unit.quant_nets import run

DPU = "DPUCZDX8G_ISA1_B4096"


def _resize(shape: list[int], ratios: list[float], coords: str, by_size: bool = False, **attrs) -> onnx.ModelProto:
    """One ``Resize(mode=linear)`` of ``x`` by ``ratios`` (as ``scales``, or as ``sizes`` when ``by_size``)."""
    if by_size:
        init = numpy_helper.from_array(np.array([round(d * r) for d, r in zip(shape, ratios)], np.int64), "sizes")
        inputs = ["x", "", "", "sizes"]
    else:
        init = numpy_helper.from_array(np.array(ratios, np.float32), "scales")
        inputs = ["x", "", "scales"]
    node = helper.make_node("Resize", inputs, ["y"], name="up", mode="linear", coordinate_transformation_mode=coords,
                            **attrs)
    graph = helper.make_graph([node], "up", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


_CASES = [(coords, ratios) for coords in ("half_pixel", "pytorch_half_pixel") for s in (2, 4, 8)
          for ratios in ([1, 1, s, s], [1, 1, 1, s], [1, 1, s, 2], [1, 1, s])] + \
         [("asymmetric", ratios) for s in (2, 4, 8) for ratios in ([1, 1, s, s], [1, 1, s, 1], [1, 1, s])]


@pytest.mark.parametrize("by_size", [False, True])
@pytest.mark.parametrize("coords, ratios", _CASES)
def test_the_conv_transpose_form_equals_ort_resize(coords, ratios, by_size):
    shape = [2, 3, 5, 7][:len(ratios)]
    model = _resize(shape, ratios, coords, by_size)
    rewritten = linear_resizes_as_conv_transpose(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Resize" not in ops and ops[-1] == "ConvTranspose" and set(ops) <= {"Slice", "Concat", "ConvTranspose"}
    x = np.random.default_rng(len(ops)).normal(0, 1, shape).astype(np.float32)
    expected, got = run(model, {"x": x})[0], run(rewritten, {"x": x})[0]
    assert got.shape == expected.shape == tuple(round(d * r) for d, r in zip(shape, ratios))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("coords, ratios, attrs, blocker", [
    ("align_corners", [1, 1, 2, 2], {}, "coordinate_transformation_mode 'align_corners'"),
    ("half_pixel", [1, 1, 16, 16], {}, "scales [1, 1, 16, 16] with coordinate_transformation_mode 'half_pixel'"),
    ("asymmetric", [1, 1, 3, 3], {}, "scales [1, 1, 3, 3]"),
    ("half_pixel", [1, 1, 0.5, 0.5], {}, "scales [1, 1, 0.5, 0.5]"),
    ("half_pixel", [1, 2, 2, 2], {}, "resize the batch or channel axis"),
    ("half_pixel", [1, 1, 2, 2], {"antialias": 1}, "antialias 1"),
])
def test_another_linear_resize_stays_with_the_attribute_that_blocks_it(coords, ratios, attrs, blocker):
    model = _resize([1, 4, 8, 8], ratios, coords, **attrs)
    assert [n.op_type for n in linear_resizes_as_conv_transpose(model).graph.node] == ["Resize"]
    # since session 33 DPUCZDX8G and cpu-int8 run align_corners as MatMuls (passes/resize_matmul.py): bernoulli2 keeps it
    for target in (DPU, "cpu-int8") if coords != "align_corners" else ("bernoulli2",):
        up = npuflow.check(model, target).node("up")
        assert up.device == "CPU" and any(blocker in r for r in up.reasons), up.reasons


def _unet(coords: str = "pytorch_half_pixel") -> onnx.ModelProto:
    """A small U-Net step: Conv (stride 2) -> ReLU -> Conv -> ReLU -> bilinear x2 -> Concat(skip) -> Conv."""
    rng = np.random.default_rng(30)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.2, (4, 12, 3, 3)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="down", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="mid", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Resize", ["r2", "", "scales"], ["u"], name="up", mode="linear",
                              coordinate_transformation_mode=coords),
             helper.make_node("Concat", ["u", "x"], ["cat"], name="skip", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["y"], name="out", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "unet", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target, device", [(DPU, "DPU"), ("bernoulli2", "BPU"), ("cpu-int8", "CPU-INT8")])
def test_a_unet_with_bilinear_upsampling_is_one_accelerator_subgraph_equal_to_ort(target, device):
    model = _unet()
    assert npuflow.check(model, target).node("up").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, [1, 4, 16, 16], target, device)


def test_a_map_of_dynamic_size_is_rewritten_when_scales_are_given():
    model = _resize([1, 3, 5, 7], [1, 1, 2, 2], "half_pixel")
    for k, dim in ((2, "h"), (3, "w")):
        model.graph.input[0].type.tensor_type.shape.dim[k].dim_param = dim
    rewritten = linear_resizes_as_conv_transpose(model)
    assert "Resize" not in [n.op_type for n in rewritten.graph.node]
    x = np.random.default_rng(9).normal(0, 1, (1, 3, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=0, atol=2e-6)


def test_quantize_reports_what_it_rewrote_and_what_it_left():
    calib = [{"x": np.random.default_rng(k).normal(0, 1, (1, 4, 16, 16)).astype(np.float32)} for k in range(2)]
    done = npuflow.quantize(_unet(), calib, target=DPU).info["algorithms"]["target_rewrites"]
    assert [(r["node"], r["rewrite"], r["applied"]) for r in done] == [("up", "linear_resize_as_conv_transpose", True)]
    left = npuflow.quantize(_unet("align_corners"), calib, target="bernoulli2").info["algorithms"]["target_rewrites"]
    assert not left[0]["applied"] and "coordinate_transformation_mode 'align_corners'" in left[0]["detail"]
    matmul = npuflow.quantize(_unet("align_corners"), calib, target=DPU).info["algorithms"]["target_rewrites"]
    assert [(r["node"], r["rewrite"], r["applied"]) for r in matmul] == [("up", "linear_resize_as_matmul", True)]


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_the_taps_are_exact_codes_on_float_scale_targets(target):
    """Float-scale targets put the fixed taps on a power-of-two grid (x2: {1, 3, 9}/16 = {8, 24, 72} x 2^-7),
    not max/127 (14/127, 42/127, 127/127 x 9/16: DC gain 0.9965), and the compiled net still equals ORT."""
    model = _unet()
    q = npuflow.quantize(model, [{"x": x} for x in _calib()], target=target)
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    producers = {o: n for n in q.model.graph.node for o in n.output}
    conv_t = next(n for n in q.model.graph.node if n.op_type == "ConvTranspose")
    dq = producers[conv_t.input[1]]
    codes, scale = inits[dq.input[0]], inits[dq.input[1]]
    np.testing.assert_array_equal(scale, np.full(scale.shape, 2.0 ** -7, np.float32))
    assert sorted(set(codes.reshape(-1).tolist())) == [8, 24, 72]
    taps = codes.astype(np.float64) * 2.0 ** -7
    np.testing.assert_array_equal(taps.reshape(taps.shape[0], -1).sum(axis=1), 4.0)  # x2: DC gain 1 (4 taps a pixel)
    x = _calib(seed=7)[0]
    assert max(compare_layerwise_with_ort(q.model, {"x": x}, target).values()) == 0
    np.testing.assert_array_equal(npuflow.Session(npuflow.compile(q.model, target)).run({"x": x})["y"],
                                  run(q.model, {"x": x})[0])


def _calib(seed: int = 0, n: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(seed + k).normal(0, 1, (1, 4, 16, 16)).astype(np.float32) for k in range(n)]


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_weights_on_a_power_of_two_grid_keep_it_on_float_scale_targets(target):
    """Per channel: an averaging channel (1/4 each) and a rounded-tap channel get 2^-k; a trained-looking
    channel keeps max/127, and a channel of zeros its float rule (no 2^-106 grid)."""
    settings = QuantConfig().resolve(load_target(target), "weight", "Conv", "conv")
    w = np.zeros((4, 1, 2, 2), np.float32)
    w[0], w[1] = 0.25, np.array([[0.0625, -1.5], [0.5, 0.125]])
    w[2] = np.random.default_rng(3).normal(0, 0.3, (1, 2, 2))
    q = weight_params("w", w, settings, 0)
    assert q.scale[0] == 2.0 ** -8 and q.scale[1] == 2.0 ** -6
    assert q.scale[2] == pytest.approx(np.abs(w[2]).max() / 127, rel=0.5) and numerics.fix_pos_of(q.scale[2]) is None
    assert numerics.fix_pos_of(q.scale[3]) is None
    np.testing.assert_array_equal(q.dequantize(q.quantize(w))[:2], w[:2])
    np.testing.assert_array_equal(q.quantize(w)[0], 64)


def _image_pool(coords: str) -> onnx.ModelProto:
    """DeepLab's image-pool branch: Conv -> ReLU -> GlobalAveragePool -> Conv 1x1 -> linear Resize to 8x8 (sizes)
    -> Concat with the features -> Conv."""
    rng = np.random.default_rng(31)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.2, (4, 16, 1, 1)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.array([1, 8, 8, 8], np.int64), "sizes")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="feat", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["f"], name="relu"),
             helper.make_node("GlobalAveragePool", ["f"], ["p"], name="pool"),
             helper.make_node("Conv", ["p", "w2"], ["pc"], name="pool_conv"),
             helper.make_node("Resize", ["pc", "", "", "sizes"], ["u"], name="up", mode="linear",
                              coordinate_transformation_mode=coords),
             helper.make_node("Concat", ["f", "u"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("coords", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
def test_a_resize_of_one_value_is_a_nearest_resize_equal_to_ort(coords):
    model = _resize([2, 3, 1, 1], [1, 1, 16, 16], coords)
    rewritten = linear_resizes_as_conv_transpose(model)
    [node] = rewritten.graph.node
    assert node.op_type == "Resize" and {a.name: a.s for a in node.attribute}["mode"] == b"nearest"
    x = np.random.default_rng(5).normal(0, 1, (2, 3, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


@pytest.mark.parametrize("coords", ["pytorch_half_pixel", "align_corners"])
@pytest.mark.parametrize("target, device", [(DPU, "DPU"), ("bernoulli2", "BPU"), ("cpu-int8", "CPU-INT8")])
def test_deeplab_image_pool_branch_is_one_accelerator_subgraph_equal_to_ort(coords, target, device):
    """The 1x1 -> 8x8 linear Resize (any coordinate mode) was a CPU island between two accelerator subgraphs."""
    model = _image_pool(coords)
    assert npuflow.check(model, target).node("up").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, [1, 4, 16, 16], target, device)


def _x8_head() -> onnx.ModelProto:
    """A segmentation head's end: Conv (stride 2) -> ReLU -> Conv 1x1 (logits) -> bilinear x8 to 64 x 64 (sizes)."""
    rng = np.random.default_rng(32)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (6, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 6, 64, 64], np.int64), "sizes")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="feat", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["f"], name="relu"),
             helper.make_node("Conv", ["f", "w2"], ["logits"], name="cls"),
             helper.make_node("Resize", ["logits", "", "", "sizes"], ["y"], name="up", mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel")]
    graph = helper.make_graph(nodes, "x8", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_half_pixel_x8_is_two_one_axis_conv_transposes_with_exact_taps():
    rewritten = linear_resizes_as_conv_transpose(_resize([1, 3, 5, 7], [1, 1, 8, 8], "half_pixel"))
    kernels = [numpy_helper.to_array(next(t for t in rewritten.graph.initializer if t.name == n.input[1]))
               for n in rewritten.graph.node if n.op_type == "ConvTranspose"]
    assert [k.shape[2:] for k in kernels] == [(16, 1), (1, 16)]
    for k in kernels:  # (2j+1)/16: codes 8, 24, ..., 120 at 2^-7, where the 2-D kernel needs 225/256
        assert sorted(set((k * 128).ravel().tolist())) == [8.0 * (2 * j + 1) for j in range(8)]


@pytest.mark.parametrize("target, device", [(DPU, "DPU"), ("cpu-int8", "CPU-INT8")])
def test_a_segmentation_heads_x8_upsampling_runs_on_the_accelerator_equal_to_ort(target, device):
    model = _x8_head()
    assert npuflow.check(model, target).node("up").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, [1, 4, 16, 16], target, device)


def test_bernoulli2_keeps_x8_on_the_cpu_with_its_kernel_limit():
    up = npuflow.check(_x8_head(), "bernoulli2").node("up")
    assert up.device == "CPU"
    calib = [{"x": x} for x in _calib()]
    [left] = npuflow.quantize(_x8_head(), calib, target="bernoulli2").info["algorithms"]["target_rewrites"]
    assert not left["applied"] and "kernel 16x1 outside [2,14]x[2,14]" in left["detail"], left


@pytest.mark.parametrize("shape, sizes", [([2, 3, 5, 7], [2, 3, 9, 13]), ([2, 3, 5, 7], [2, 3, 17, 7]),
                                          ([1, 2, 5, 4], [1, 2, 33, 25]), ([2, 3, 6], [2, 3, 11])])
def test_align_corners_to_odd_sizes_is_the_asymmetric_kernel_without_edges(shape, sizes):
    """TF's align_corners n -> (n - 1) s + 1 (DeepLab's 65 -> 513) samples o / s: one ConvTranspose, no Slice."""
    model = _resize(shape, [b / a for a, b in zip(shape, sizes)], "align_corners", by_size=True)
    rewritten = linear_resizes_as_conv_transpose(model)
    assert [n.op_type for n in rewritten.graph.node] == ["ConvTranspose"]
    x = np.random.default_rng(6).normal(0, 1, shape).astype(np.float32)
    np.testing.assert_allclose(run(rewritten, {"x": x})[0], run(model, {"x": x})[0], rtol=0, atol=1e-6)


def test_torch_align_corners_scale_factor_2_stays_with_why():
    model = _resize([1, 4, 8, 8], [1, 1, 2, 2], "align_corners")
    [left] = [n.op_type for n in linear_resizes_as_conv_transpose(model).graph.node]
    up = npuflow.check(model, "bernoulli2").node("up")  # no transpose for its MatMul form (DPU, cpu-int8 run that)
    assert left == "Resize" and up.device == "CPU"
    assert any("only n -> (n - 1) s + 1 (s = 2, 4, 8)" in r for r in up.reasons), up.reasons


def _odd_unet() -> onnx.ModelProto:
    """17 x 17 -> Conv stride 2 (9 x 9) -> ReLU -> bilinear align_corners to 17 x 17 -> Concat(skip) -> Conv."""
    rng = np.random.default_rng(33)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (4, 12, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 8, 17, 17], np.int64), "sizes")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="down", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Resize", ["r1", "", "", "sizes"], ["u"], name="up", mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Concat", ["u", "x"], ["cat"], name="skip", axis=1),
             helper.make_node("Conv", ["cat", "w2"], ["y"], name="out", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 17, 17])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target, device", [(DPU, "DPU"), ("cpu-int8", "CPU-INT8")])
def test_an_align_corners_odd_size_unet_is_one_accelerator_subgraph_equal_to_ort(target, device):
    """(bernoulli2 places it too, but its int8 activations meet exact ties here -- the corners copy the input, so
    input and output share a scale -- where ONNX Runtime's float32 path reads 12.5 as 12.500001: 1 LSB.)"""
    model = _odd_unet()
    assert npuflow.check(model, target).node("up").device == npuflow.check(model, "bernoulli2").node("up").device \
        == "NPU"
    assert_one_subgraph_equal_to_ort(model, [1, 4, 17, 17], target, device)
