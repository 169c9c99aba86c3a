"""PReLU on the accelerator (bernoulli2 lists ``prelu``: ``HzSQuantizedPRelu``; MTCNN is all PReLU).

The quantizer keeps the slope a float constant (ONNX Runtime's QDQ form: dequantize, PReLU in
float, quantize), and the compiler lowers ``DQ -> PRelu -> Q`` as one code table per slope element
(``lut_channel``; a single ``lut`` when the slopes agree), computed by ONNX Runtime itself, so each
op equals ONNX Runtime on the quantized model exactly, and the network stays one accelerator
subgraph.  A target whose file does not list ``prelu`` (cpu-int8) keeps it on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.runtime.kernels import prepare_lut_channel
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 8, 8]


def _model(case: str) -> onnx.ModelProto:
    """``conv``: Conv -> PRelu (slope [6,1,1]) -> Conv; ``add``: Conv + Conv -> PRelu (one slope)
    -> Conv; ``fc``: Conv -> Flatten -> Gemm -> PRelu (slope [5]) -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (4, 6, 3, 3)).astype(np.float32), "w2")]
    conv1 = helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])
    if case == "conv":
        inits.append(numpy_helper.from_array(rng.uniform(-0.5, 0.8, (6, 1, 1)).astype(np.float32), "slope"))
        nodes = [conv1, helper.make_node("PRelu", ["c1", "slope"], ["p"], name="prelu"),
                 helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
        out = [1, 4, 8, 8]
    elif case == "add":
        inits += [numpy_helper.from_array(rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32), "w3"),
                  numpy_helper.from_array(np.array([0.25], np.float32), "slope")]
        nodes = [conv1, helper.make_node("Conv", ["x", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
                 helper.make_node("Add", ["c1", "c3"], ["s"], name="add"),
                 helper.make_node("PRelu", ["s", "slope"], ["p"], name="prelu"),
                 helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
        out = [1, 4, 8, 8]
    else:
        inits += [numpy_helper.from_array(rng.normal(0, 0.2, (5, 384)).astype(np.float32), "g1"),
                  numpy_helper.from_array(rng.normal(0, 0.3, (3, 5)).astype(np.float32), "g2"),
                  numpy_helper.from_array(rng.uniform(0.0, 0.5, (5,)).astype(np.float32), "slope")]
        nodes = [conv1, helper.make_node("Flatten", ["c1"], ["f"], name="flatten"),
                 helper.make_node("Gemm", ["f", "g1"], ["d"], name="fc1", transB=1),
                 helper.make_node("PRelu", ["d", "slope"], ["p"], name="prelu"),
                 helper.make_node("Gemm", ["p", "g2"], ["y"], name="fc2", transB=1)]
        out = [1, 3]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("case, op", [("conv", "lut_channel"), ("add", "lut"), ("fc", "lut_channel")])
def test_prelu_runs_on_the_bpu_as_ort_computes_it(case, op):
    model = _model(case)
    assert npuflow.check(model, "bernoulli2").node("prelu").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target="bernoulli2")
    assert "prelu" in {n.name for n in q.model.graph.node}
    assert not any("slope" in i.name and i.data_type == onnx.TensorProto.INT8 for i in q.model.graph.initializer)
    assert q.report.outputs["y"] > 0.99
    compiled = npuflow.compile(q.model, "bernoulli2")
    accel = [sg for sg in compiled.manifest["subgraphs"] if sg["device"] != "CPU"]
    assert len(accel) == 1 and len(compiled.manifest["subgraphs"]) == 1
    [lowered] = [o for o in accel[0]["ops"] if o["name"] == "prelu"]
    assert (lowered["op"], lowered["kind"]) == (op, "prelu")
    x = samples(SHAPE, n=1, seed=5)[0]
    diffs = compare_layerwise_with_ort(q.model, {"x": x}, "bernoulli2")
    prelu_out = lowered["outputs"][0]
    assert diffs[prelu_out] == 0, diffs  # the tables are ORT's own codes
    assert max(diffs.values()) <= 1, diffs  # float-scale requantisation of the layers: 1 LSB
    got = npuflow.Session(compiled).run({"x": x})["y"]
    ref = run(q.model, {"x": x})[0]
    assert np.abs(got - ref).max() <= 2 * np.abs(ref).max() / 127


def test_prelu_stays_on_the_cpu_where_the_target_does_not_list_it():
    model = _model("conv")
    dpu = "DPUCZDX8G_ISA1_B4096"
    assert npuflow.check(model, dpu).node("prelu").device == "CPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target=dpu)
    compiled = npuflow.compile(q.model, dpu)
    devices = {o["name"]: sg["device"] for sg in compiled.manifest["subgraphs"] for o in sg.get("ops", [])}
    assert devices["conv1"] == "DPU" and "prelu" not in devices  # the float PRelu is ONNX in a CPU subgraph


def test_prelu_on_cpu_int8_is_in_its_integer_program_as_ort_computes_it():
    """A ``kind: cpu`` target runs every lowered op in its integer program (compile/partition.py),
    and ``check`` says so (CPU-INT8, not float on the CPU) though cpu-int8's file does not list ``prelu``."""
    model = _model("conv")
    assert npuflow.check(model, "cpu-int8").node("prelu").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target="cpu-int8")
    x = samples(SHAPE, n=1, seed=5)[0]
    [lowered] = [o for sg in npuflow.compile(q.model, "cpu-int8").manifest["subgraphs"] for o in sg["ops"]
                 if o["name"] == "prelu"]
    assert lowered["op"] == "lut_channel"
    diffs = compare_layerwise_with_ort(q.model, {"x": x}, "cpu-int8")
    assert diffs[lowered["outputs"][0]] == 0, diffs


def test_lut_channel_kernel_indexes_the_row_of_each_channel():
    table = np.stack([np.arange(256) - 128, 127 - np.arange(256)]).astype(np.int8)  # identity, negation-ish
    kernel = prepare_lut_channel({"qmin": -128, "shape": [1, 2, 1, 1]}, {"table": table})
    x = np.array([[[[-128, 5]], [[-128, 5]]]], np.int8)
    y = kernel([x])[0]
    assert y.dtype == np.int8
    assert y[0, 0].tolist() == [[-128, 5]] and y[0, 1].tolist() == [[127, -6]]
