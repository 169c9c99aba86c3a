"""Precision edits score what the quantizer would build: a float layer's edit quantizes the same
tensors as re-quantizing with that layer in ``keep_float``.

The edit used to drop a float layer's output pair even where an integer layer reads it, so the
mixed-precision search scored models no accelerator can run (PP-OCRv4 rec on B4096: the search
reported 92.7 % lines for 126 float points; re-quantizing with them as ``keep_float`` gave 68.7 %).
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow import qdq
from npuflow.analyze.qdq_edit import apply_precisions, float_groups, layer_points
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
    lps = {lp.name: lp for lp in layer_points(base.model)}
    # conv1 owns the pair after its fused (legalised) hard-swish; relu2's pair is conv2's
    assert [p.q.input[0] for p in lps["conv1"].outputs] == ["hs"]
    assert [p.q.input[0] for p in lps["conv2"].outputs] == ["r2"]
    assert "hswish" not in lps


def test_float_edits_quantize_what_keep_float_quantizes(target_base, calib):
    """On the DPU (a CPU Sigmoid, a fused hard-swish) and on cpu-int8 (its float tail)."""
    target, base = target_base
    names = [lp.name for lp in layer_points(base.model)]
    for floats in float_subsets(names):
        edited = apply_precisions(base.model, {n: "float" for n in floats}, base.float_model)
        again = npuflow.quantize(hswish_net(), calib, target=target,
                                 config={"include_bias_corr": False, "report_samples": 0, "keep_float": floats})
        assert quantized_tensors(edited) == quantized_tensors(again.model), floats
        assert quantized_constants(edited) == quantized_constants(again.model), floats


def test_an_integer_layer_never_reads_a_float_tensor(base):
    names = [lp.name for lp in layer_points(base.model)]
    for floats in float_subsets(names):
        edited = apply_precisions(base.model, {n: "float" for n in floats}, base.float_model)
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
    groups = float_groups(base.model)
    assert groups["add"] == ["add", "scale"]
    assert groups["sig"] == ["sig", "conv3"]  # the CPU -> DPU boundary goes when conv3 leaves the DPU
    assert "pool" not in groups  # read by the CPU Sigmoid only: alone in float it drops its step

    def sum_quantized(floats: list[str]) -> bool:
        return "sum" in quantized_tensors(apply_precisions(base.model, {n: "float" for n in floats}, base.float_model))

    assert sum_quantized(["add"]) and not sum_quantized(groups["add"])
