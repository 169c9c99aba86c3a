"""npuflow.quantize on small synthetic nets: the quantized model format, end to end."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import npuflow
from npuflow import qdq
from npuflow.quant.export import to_plain_qdq

from .quant_nets import conv_net, run, samples

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def dpu_q():
    return npuflow.quantize(conv_net(), samples([1, 3, 8, 8]), target=DPU)


@pytest.fixture(scope="module")
def cpu_q():
    return npuflow.quantize(conv_net(), samples([1, 3, 8, 8]), target="cpu-int8")


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _nodes(m):
    return {n.name: n for n in m.graph.node}


def test_quantized_model_runs_in_ort_and_is_close(dpu_q, cpu_q):
    x = samples([1, 3, 8, 8], n=1, seed=7)[0]
    ref = run(conv_net(), {"x": x})[0]
    for q in (dpu_q, cpu_q):
        out = run(q.model, {"x": x}, optimize=True)[0]
        cos = float(np.dot(ref.ravel(), out.ravel()) / np.linalg.norm(ref) / np.linalg.norm(out))
        assert cos > 0.98
        assert q.report.outputs["y"] > 0.98


def test_compute_nodes_keep_names_and_qdq_names_are_derived(dpu_q):
    nodes = _nodes(dpu_q.model)
    for name in ("conv1", "act1", "pool1", "conv2", "conv3", "concat", "add", "gap", "flatten", "fc"):
        assert name in nodes
    assert nodes["x_q"].op_type == qdq.function_name("half_up", "int8") and nodes["x_q"].domain == qdq.DOMAIN
    assert nodes["x_dq"].op_type == "DequantizeLinear"
    assert nodes["conv1"].input[:3] == ["x_dq", "w1_dq", "b1_dq"]
    # fused activation: no quantize step between conv1 and its relu
    assert nodes["act1"].input[0] == "c1" and "c1_q" not in nodes
    # graph output name kept: the producer writes y_float and the final DequantizeLinear writes y
    assert nodes["fc"].output[0] == "y_float" and nodes["y_dq"].output[0] == "y"
    assert [o.name for o in dpu_q.model.graph.output] == ["y"]


def test_weights_int8_and_bias_int32_with_product_scale(dpu_q, cpu_q):
    for q, per_channel in ((dpu_q, False), (cpu_q, True)):
        inits = _inits(q.model)
        assert inits["w1_quantized"].dtype == np.int8 and "w1" not in inits
        assert inits["b1_quantized"].dtype == np.int32
        s_in, s_w, s_b = inits["x_scale"], inits["w1_scale"], inits["b1_scale"]
        assert s_w.ndim == (1 if per_channel else 0)
        np.testing.assert_array_equal(s_b, (s_in * s_w).astype(np.float32))
        dq = _nodes(q.model)["w1_dq"]
        axes = [a.i for a in dq.attribute if a.name == "axis"]
        assert axes == ([0] if per_channel else [])


def test_power_of_two_scales_and_shared_scales(dpu_q):
    inits = _inits(dpu_q.model)
    for name, arr in inits.items():
        if name.endswith("_scale"):
            assert npuflow.numerics.fix_pos_of(arr) is not None, name
    # concat inputs and output share one scale; add inputs share one on power-of-two targets
    assert inits["c2_scale"] == inits["c3_scale"] == inits["cat_scale"]
    assert inits["cat_scale"] == inits["p1cat_scale"]
    # pass-through: maxpool output takes its input's scale
    assert inits["p1_scale"] == inits["r1_scale"]
    info = dpu_q.info
    assert info["tensors"]["r1"]["fix_pos"] == -int(np.log2(inits["r1_scale"]))
    assert info["output"]["r1"] == [[8, info["tensors"]["r1"]["fix_pos"]]]
    assert info["param"]["w1"][0][0] == 8


def test_cpu_target_uses_standard_quantize_linear_and_asymmetric_activations(cpu_q):
    ops = {n.op_type for n in cpu_q.model.graph.node}
    assert "QuantizeLinear" in ops and not cpu_q.model.functions
    zps = [v for k, v in _inits(cpu_q.model).items() if k.endswith("_zero_point") and v.dtype == np.uint8 and v.ndim == 0]
    assert any(int(z) != 0 for z in zps)


def test_metadata_kept_and_format_marked(dpu_q):
    meta = {p.key: p.value for p in dpu_q.model.metadata_props}
    assert meta["character"] == "abc\ndef"
    assert meta["npuflow.format_version"] == "1" and meta["npuflow.target"] == DPU


def test_save_writes_all_artifacts(dpu_q, tmp_path):
    paths = dpu_q.save(tmp_path)
    for name in ("original_float_model.onnx", "optimized_float_model.onnx", "quantized_model.onnx",
                 "quant_info.json", "quant_report.json"):
        assert (tmp_path / name).is_file()
    m = onnx.load(str(paths["quantized_model"]))
    assert m.ir_version <= 10
    report = json.loads((tmp_path / "quant_report.json").read_text())
    assert {r["node"] for r in report["nodes"]} >= {"conv1", "fc"}
    assert json.loads((tmp_path / "quant_info.json").read_text())["scale_type"] == "power_of_two"


def test_plain_qdq_replaces_functions_and_differs_only_slightly(dpu_q):
    plain = to_plain_qdq(dpu_q.model)
    assert not plain.functions and all(n.domain != qdq.DOMAIN for n in plain.graph.node)
    x = samples([1, 3, 8, 8], n=1, seed=3)[0]
    a, b = run(dpu_q.model, {"x": x})[0], run(plain, {"x": x})[0]
    assert np.abs(a - b).max() < 0.25 * np.abs(a).max()


def test_report_table_has_horizon_columns(dpu_q):
    assert dpu_q.report.columns() == ["Node", "ON", "Subgraph", "Type", "Cosine Similarity", "Threshold"]
    text = dpu_q.report.table_text()
    assert "conv1" in text and "Cosine Similarity" in text
    row = next(r for r in dpu_q.report.rows if r.node == "act1")
    assert row.cosine > 0.99 and row.threshold > 0 and row.on == "DPU" and row.subgraph == 0


def test_leaky_relu_legalized_to_dpu_slope():
    q = npuflow.quantize(conv_net(leaky=True), samples([1, 3, 8, 8], n=4), target=DPU)
    node = _nodes(q.model)["act1"]
    alpha = next(a.f for a in node.attribute if a.name == "alpha")
    assert alpha == pytest.approx(26 / 256)
    # LeakyRelu is fused into conv1 on the DPU
    assert node.input[0] == "c1"


def test_16bit_activations_and_4bit_weights_on_cpu_target():
    cfg = {"activation": {"bit_width": 16}, "input": {"bit_width": 16}, "weight": {"bit_width": 4}}
    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=4), target="cpu-int8", config=cfg)
    inits = _inits(q.model)
    assert inits["r1_zero_point"].dtype == np.uint16  # the target's unsigned activations, at 16 bits
    w = inits["w1_quantized"]
    assert w.dtype == np.int8 and w.min() >= -8 and w.max() <= 7
    assert q.info["tensors"]["w1"]["bits"] == 4
    x = samples([1, 3, 8, 8], n=1, seed=9)[0]
    out = run(q.model, {"x": x})[0]
    assert np.all(np.isfinite(out)) and q.report.outputs["y"] > 0.9
    plain = run(to_plain_qdq(q.model), {"x": x})[0]
    assert np.abs(plain - out).max() <= 1e-3 * max(1.0, np.abs(out).max())


def test_keep_float_leaves_node_unquantized():
    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=4), target=DPU, config={"keep_float": ["fc"]})
    nodes = _nodes(q.model)
    assert nodes["fc"].input[1] == "wf" and "y_q" not in nodes
    assert nodes["fc"].input[0] == "flat_dq"


def test_keep_float_keeps_the_activation_the_target_fuses_into_the_layer():
    """conv1 in float must not leave its fused LeakyReLU quantized: that put a quantize step on the
    raw conv output (EfficientNet-Lite0's stem + ReLU6 on B4096: 55.0 -> 37.7 % instead of 66.3 %)."""
    q = npuflow.quantize(conv_net(leaky=True), samples([1, 3, 8, 8], n=4), target=DPU, config={"keep_float": ["conv1"]})
    nodes = _nodes(q.model)
    assert nodes["conv1"].input[1] == "w1" and nodes["act1"].input[0] == "c1"  # float conv -> float activation
    quantized = {n.input[0] for n in q.model.graph.node if n.op_type.startswith("Quantize")}
    assert "c1" not in quantized and "r1" not in quantized
    assert "p1" in quantized  # int8 again after the max pool that follows the activation


def test_leaky_relu_slope_the_dpu_does_not_run_stays_in_float():
    """A slope the DPU's rule rejects (0.2, openWakeWord's embedding model) is not replaced by
    the hardware's 26/256 -- that would change the network, not quantize it: the node keeps its
    slope and runs in float on the CPU, as the checker places it."""
    model = conv_net(leaky=True)
    act = next(n for n in model.graph.node if n.op_type == "LeakyRelu")
    for a in act.attribute:
        if a.name == "alpha":
            a.f = 0.2
    q = npuflow.quantize(model, samples([1, 3, 8, 8], n=4), target=DPU)
    node = _nodes(q.model)["act1"]
    assert next(a.f for a in node.attribute if a.name == "alpha") == pytest.approx(0.2)
    assert npuflow.check(q.model, DPU).node("act1").device == "CPU"
    assert q.report.outputs["y"] > 0.98  # with 26/256 the output moves far from the float model's
