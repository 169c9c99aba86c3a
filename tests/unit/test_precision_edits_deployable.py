"""Precision edits score what the quantizer would build: a layer in float is the plan with that
layer in ``keep_float``, exported from the same statistics, so it equals re-quantizing with it.

Edits of the exported QDQ model used to drop a float layer's output pair even where an integer
layer reads it, so the mixed-precision search scored models no accelerator can run (PP-OCRv4 rec
on B4096: the search reported 92.7 % lines for 126 float points; re-quantizing with them as
``keep_float`` gave 68.7 %).  Plan overrides make that mismatch impossible by construction.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow import qdq
from npuflow.analyze.sensitivity import float_groups
from npuflow.errors import NpuflowError
from npuflow.quant import requantize
from npuflow.quant.assign import assign
from npuflow.quant.export import export_qdq
from npuflow.quant.algorithms.qdq_weights import quantized_layers

from .quant_nets import _init, model_from, samples

DPU = "DPUCZDX8G_ISA1_B4096"


def hswish_net() -> onnx.ModelProto:
    """x -> conv1 -> HardSwish -> conv2 -> Relu -> Add(., hswish) -> Mul(., constant) -> MaxPool ->
    Sigmoid (CPU on the DPU) -> conv3 -> Reshape -> y."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["hs"], name="hswish"),
        helper.make_node("Conv", ["hs", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "hs"], ["sum"], name="add"),
        helper.make_node("Mul", ["sum", "k"], ["scaled"], name="scale"),
        helper.make_node("MaxPool", ["scaled"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["p"], ["s"], name="sig"),
        helper.make_node("Conv", ["s", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Reshape", ["c3", "shape"], ["y"], name="flat"),
    ]
    inits = [
        _init("w1", rng.normal(0, 0.5, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.2, 8)),
        _init("w2", rng.normal(0, 0.3, (8, 8, 3, 3))), _init("b2", rng.normal(0, 0.2, 8)),
        _init("w3", rng.normal(0, 0.5, (4, 8, 1, 1))), _init("b3", rng.normal(0, 0.2, 4)),
        _init("k", rng.uniform(0.2, 0.6, (1, 8, 1, 1))),
        onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
    ]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])


@pytest.fixture(scope="module")
def calib():
    return samples([1, 3, 8, 8], n=4)


@pytest.fixture(scope="module")
def base(calib):
    return npuflow.quantize(hswish_net(), calib, target=DPU, config={"include_bias_corr": False, "report_samples": 0})


@pytest.fixture(scope="module", params=[DPU, "cpu-int8"])
def target_base(request, calib):
    return request.param, npuflow.quantize(hswish_net(), calib, target=request.param,
                                           config={"include_bias_corr": False, "report_samples": 0})


def quantized_tensors(model: onnx.ModelProto) -> set[str]:
    """Activation tensors with a quantize -> dequantize pair (graph outputs by their own name)."""
    inits = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    dequantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    names = set()
    for n in model.graph.node:
        if n.op_type.startswith("Quantize") and n.input[0] not in inits and n.output[0] in dequantized:
            t = n.input[0]
            names.add(t[:-len("_float")] if t.endswith("_float") and t[:-len("_float")] in outputs else t)
    return names


def quantized_constants(model: onnx.ModelProto) -> set[str]:
    """Initializers read through a DequantizeLinear by some node (weights, biases, constants)."""
    inits = {t.name for t in model.graph.initializer}
    read = {i for n in model.graph.node for i in n.input}
    return {n.input[0] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.output[0] in read}


def float_subsets(names: list[str]) -> list[list[str]]:
    rnd = random.Random(0)
    return [[n] for n in names] + [rnd.sample(names, k) for k in (2, 3, 4) for _ in range(3)]


def test_layers_are_whole_fused_units(base):
    layers = base.requantizer.layers
    # conv1 owns the pair after its fused (legalised) hard-swish; relu2's pair is conv2's
    assert layers["conv1"].outputs == ["hs"] and layers["conv1"].weighted
    assert layers["conv2"].outputs == ["r2"] and "relu2" in layers["conv2"].nodes
    assert "hswish" not in layers and "relu2" not in layers
    assert "sig" not in layers  # placed on the CPU: it runs in float already


def test_float_edits_are_what_keep_float_builds(target_base, calib):
    """On the DPU (a CPU Sigmoid, a fused hard-swish) and on cpu-int8 (its float tail): the same
    quantize steps and constants; on the DPU (no percentile search, whose choice depends on the
    layers quantized) the same model, scales included."""
    target, base = target_base
    names = list(base.requantizer.layers)
    for floats in float_subsets(names):
        edited = base.requantizer.export({n: "float" for n in floats})
        again = npuflow.quantize(hswish_net(), calib, target=target,
                                 config={"include_bias_corr": False, "report_samples": 0, "keep_float": floats})
        assert quantized_tensors(edited) == quantized_tensors(again.model), floats
        assert quantized_constants(edited) == quantized_constants(again.model), floats
        if target == DPU:
            assert edited.SerializeToString() == again.model.SerializeToString(), floats


def test_the_plan_without_overrides_re_exports_the_model_as_quantized(target_base):
    """Re-planning, re-assigning (percentile search's choice included, on cpu-int8) and exporting
    with no override rebuilds the quantized model byte for byte: overrides start from it."""
    _, base = target_base
    rq = base.requantizer
    plan = rq.plan_for({})
    asg = requantize.carry(assign(rq.model, plan, rq.stats), plan, rq.base, rq.final)
    again = export_qdq(rq.model, plan, asg, target_name=rq.target.name, scale_type=rq.target.numerics.scale_type)
    assert again.SerializeToString() == base.dynamic_model.SerializeToString()


def test_overrides_name_layers_of_the_plan(base):
    for overrides, code in (({"nope": "float"}, "NPF_QUANT_UNKNOWN_LAYER"), ({"sig": "float"}, "NPF_QUANT_UNKNOWN_LAYER"),
                            ({"conv1": "int4"}, "NPF_QUANT_BAD_PRECISION")):
        with pytest.raises(NpuflowError) as err:
            base.requantizer.export(overrides)
        assert err.value.code == code
    same = base.requantizer.export({"conv1": "int8"})
    assert same.SerializeToString() == base.dynamic_model.SerializeToString()


def test_an_integer_layer_never_reads_a_float_tensor(base):
    names = list(base.requantizer.layers)
    for floats in float_subsets(names):
        edited = base.requantizer.export({n: "float" for n in floats})
        producer = {o: n for n in edited.graph.node for o in n.output}
        for layer in quantized_layers(edited):
            assert producer[layer.node.input[0]].op_type == "DequantizeLinear", (floats, layer.name)


def test_the_cpu_to_accelerator_boundary_is_marked(base):
    marked = {n.input[0] for n in base.model.graph.node if n.doc_string == qdq.FLOAT_PRODUCER_DOC}
    assert marked == {"x", "s"}  # the graph input and the CPU Sigmoid's output read by conv3


def test_keep_float_of_a_fused_activation_keeps_the_layer_it_is_fused_into(calib):
    """A float hard-swish after an int8 conv1 would need a quantize step on conv1's raw output."""
    q = npuflow.quantize(hswish_net(), calib, target=DPU,
                         config={"include_bias_corr": False, "report_samples": 0, "keep_float": ["hswish"]})
    nodes = {n.name: n for n in q.model.graph.node}
    assert nodes["conv1"].input[1] == "w1"  # float weights
    assert "c1" not in quantized_tensors(q.model)
    assert "hs" in quantized_tensors(q.model)  # conv2 and add still read integers


def test_a_hard_swish_is_one_unit_on_cpu_targets(calib):
    """``Mul(x, HardSigmoid(x))`` (how PP-OCRv4's hard-swish reaches a CPU target) is one unit: no
    quantize step between the two (a refactor that lost this moved PP-OCRv4 rec on cpu-int8 from
    87.7 to 84.3 % lines)."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c1"], ["hsig"], name="hsig", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["c1", "hsig"], ["hs"], name="hswish"),
        helper.make_node("Conv", ["hs", "w2", "b2"], ["y"], name="conv2"),
    ]
    inits = [_init("w1", rng.normal(0, 0.5, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.2, 8)),
             _init("w2", rng.normal(0, 0.5, (4, 8, 1, 1))), _init("b2", rng.normal(0, 0.2, 4))]
    net = model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], opset=13)  # no HardSwish
    q = npuflow.quantize(net, calib, target="cpu-int8", config={"include_bias_corr": False, "report_samples": 0})
    assert {"HardSigmoid", "Mul"} <= {n.op_type for n in q.model.graph.node}
    quantized = quantized_tensors(q.model)
    assert "hs" in quantized and "hsig" not in quantized


def test_a_weightless_layer_goes_to_float_with_its_readers(base):
    """Sensitivity and the mixed-precision search float a weightless op together with the layers
    reading it: alone its quantize step stays for them, so alone it would never rank."""
    groups = float_groups(base.requantizer)
    assert groups["add"] == ["add", "scale"]
    assert "pool" not in groups  # read by the CPU Sigmoid only: alone in float it drops its step

    def quantized_with(floats: list[str]) -> set[str]:
        return quantized_tensors(base.requantizer.export({n: "float" for n in floats}))

    assert "sum" in quantized_with(["add"]) and "sum" not in quantized_with(groups["add"])
    assert "s" not in quantized_with(["conv3"])  # the CPU -> DPU boundary goes when conv3 leaves the DPU


def test_weight_algorithm_results_are_carried_into_overrides(calib):
    """Bias correction ran once, on the int8 model: an override keeps its corrected biases where
    they still apply, re-rounds one whose input scale changed, and gives an int16 layer the float
    bias (its 16-bit weights no longer make the int8 error the correction cancels)."""
    q = npuflow.quantize(hswish_net(), calib, target=DPU, config={"include_bias_corr": True, "report_samples": 0})
    assert q.info["algorithms"]["bias_correction"]["layers"] > 0
    rq = q.requantizer

    def bias(model: onnx.ModelProto, name: str) -> tuple[np.ndarray, float]:
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        scale = float(inits[f"{name}_scale"])
        return inits[f"{name}_quantized"].astype(np.float64) * scale, scale

    float_b2 = onnx.numpy_helper.to_array({t.name: t for t in hswish_net().graph.initializer}["b2"])
    corrected, step = bias(q.model, "b2")
    assert np.abs(corrected - float_b2).max() > step  # the premise: bias correction moved conv2's bias
    np.testing.assert_array_equal(bias(rq.export({"conv3": "float"}), "b2")[0], corrected)  # unchanged: kept
    raised = rq.export({"conv1": "int16"})  # conv2 reads conv1's output, now on a 256x finer grid
    moved, fine = bias(raised, "b2")
    assert fine < step and np.abs(moved - corrected).max() <= fine / 2 + 1e-9
    own, fine = bias(rq.export({"conv2": "int16"}), "b2")
    assert np.abs(own - float_b2).max() <= fine / 2 + 1e-7
