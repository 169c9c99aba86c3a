"""Files that ``compile`` refuses or runs on the CPU, and what ``check`` says of them (new-user
round 7: benchmarks/results/newuser_flows7a.md R1-R3, newuser_flows7b.md item 1): check places a
node on the accelerator only where compile lowers it, and warns with compile's reason where compile
refuses the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.nonfinite import SENTINEL, sentinel_tensors
from npuflow.check.report import CPU, NPU
from npuflow.graph import GraphView
from npuflow.quant.observers import MinMaxObserver
from tests.unit.test_placement_agreement import compiled_devices
from tests.unit.test_foreign_legalize import _qlinear_conv
from tests.unit.test_placement_agreement_regressions import _agree, _conv, _model

rng = np.random.default_rng(0)


def _qdq_conv(act: str, weight_zp: int) -> onnx.ModelProto:
    """``Q/DQ -> Conv -> Relu -> Q/DQ`` with ``act`` activations (int16 or uint8) and an int8 weight of
    zero point ``weight_zp`` (the repros of newuser_flows7a R1 and R2)."""
    np_act = np.dtype(act).type
    inits = {"sx": np.float32(0.02), "zx": np_act(0), "wq": rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8),
             "sw": np.float32(0.01), "zw": np.int8(weight_zp), "sy": np.float32(0.05), "zy": np_act(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="x_dq"),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], name="w_dq"),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "sy", "zy"], ["rq"], name="y_q"),
             helper.make_node("DequantizeLinear", ["rq", "sy", "zy"], ["y"], name="y_dq")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _sides(model: onnx.ModelProto, target: str) -> tuple[dict[str, str], dict[str, str]]:
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in npuflow.check(model, target).nodes}
    return checked, compiled_devices(npuflow.compile(model, target))


def test_int16_activations_are_refused_for_an_8_bit_target_and_announced_by_check(cli, tmp_path):
    """bernoulli2 says ``bits: [8]``: compile wrote a .npuf of int16 activations (R1); now it refuses
    with NPF_COMPILE_SCALES_UNSUPPORTED naming the tensor and the bits, and check warns with that
    message.  cpu-int8 (``bits: [8, 16]``) still lowers it."""
    model = _qdq_conv("int16", 0)
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.compile(model, "bernoulli2")
    assert err.value.code == "NPF_COMPILE_SCALES_UNSUPPORTED"
    assert "'xq'" in err.value.message and "16-bit type (int16" in err.value.message and "8-bit" in err.value.message
    checked, compiled = _sides(model, "cpu-int8")
    assert checked["conv"] == compiled["conv"] == "ACC"
    src = tmp_path / "a16.onnx"
    onnx.save(model, src)
    r = cli("check", str(src), "-t", "bernoulli2", "-o", str(tmp_path / "inspect"))
    assert r.returncode == 0, r.stderr
    assert " ".join(err.value.message.split()) in " ".join(r.stderr.split())


def test_a_weight_with_a_non_zero_zero_point_runs_on_the_cpu_in_check_as_in_compile():
    """cpu-int8 takes any activation zero point but the lowering multiplies stored weights as they
    are (R2: ORT ``WeightSymmetric: False``, NNCF asymmetric weights): check placed 7 of 7 nodes on
    the accelerator, compile 0.  Both now say why, with one predicate."""
    model = _qdq_conv("uint8", 7)
    checked, compiled = _sides(model, "cpu-int8")
    assert {k: (v, compiled[k]) for k, v in checked.items() if k in compiled and compiled[k] != v} == {}
    assert checked["conv"] == "CPU"
    reason = npuflow.check(model, "cpu-int8").node("conv").reasons
    assert any("constant 'wd' has a non-zero zero point (7)" in r for r in reason), reason
    symmetric = _sides(_qdq_conv("uint8", 0), "cpu-int8")
    assert symmetric[0]["conv"] == symmetric[1]["conv"] == "ACC"


def _dynamic_model() -> onnx.ModelProto:
    """What ONNX Runtime's ``quantize_dynamic`` writes for ``MatMul -> Relu``."""
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (8, 4)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.01), "sw"), numpy_helper.from_array(np.int8(0), "zw")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "sx", "zx"], name="x_dql"),
             helper.make_node("MatMulInteger", ["xq", "wq", "zx", "zw"], ["acc"], name="mm"),
             helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["sx", "sw"], ["s"], name="scale"),
             helper.make_node("Mul", ["accf", "s"], ["y"], name="rescale"),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_dynamically_quantized_model_is_refused_and_check_keeps_it_on_the_cpu(target):
    """R3: compile said NPF_COMPILE_NOT_QUANTIZED ("no quantize/dequantize steps") and check placed
    8-18 nodes on the accelerator; both now name dynamic quantization and say to quantize statically."""
    model = _dynamic_model()
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.compile(model, target)
    assert err.value.code == "NPF_COMPILE_DYNAMIC_QUANTIZATION"
    assert "DynamicQuantizeLinear x1, MatMulInteger x1" in err.value.message and "statically" in err.value.message
    report = npuflow.check(model, target)
    assert all(n.device == CPU for n in report.nodes)
    assert "quantized dynamically" in " ".join(report.node("relu").reasons)


def test_the_add_of_an_infinite_mask_stays_float_in_check_of_the_float_model(tmp_path):
    """newuser_flows7b item 1: ``Conv -> Add(mask with -inf) -> Softmax -> Conv``: quantize keeps the
    Add float (its output holds -inf on the calibration data), compile runs it on the CPU; check of
    the float model put it on the accelerator.  The test is the observers' ``finite_values``."""
    mask = np.triu(np.full((1, 1, 8, 8), -np.inf, np.float32), 1)
    model = _model([_conv("conv", "x"), ("add", "Add", ["conv", mask], {}), ("sm", "Softmax", ["add"], {"axis": -1}),
                    _conv("conv2", "sm")], ["conv2"])
    devices = _agree(model, "cpu-int8", tmp_path)
    assert devices["add"] == CPU and devices["conv"] == NPU and devices["conv2"] == NPU
    assert "holding infinities" in " ".join(npuflow.check(model, "cpu-int8").node("add").reasons)


def test_sentinel_tensors_follow_a_mask_through_where_and_stop_at_softmax():
    """``Where(m, 0, finfo.min) -> Add -> Softmax``: the Where and Add outputs carry the constant,
    the Softmax output does not; a finite constant carries nothing.  The observers count the same
    values apart (one ``finite_values``)."""
    big = np.full((1, 4, 8, 8), -np.finfo(np.float32).max, np.float32)
    nodes = [helper.make_node("Greater", ["x", "zero"], ["m"], name="gt"),
             helper.make_node("Where", ["m", "zero", "big"], ["bias"], name="where"),
             helper.make_node("Add", ["x", "bias"], ["s"], name="add"),
             helper.make_node("Softmax", ["s"], ["p"], name="sm"),
             helper.make_node("Add", ["p", "one"], ["out"], name="add1")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(big, "big"),
                               numpy_helper.from_array(np.float32(1), "one")])
    carried = sentinel_tensors(GraphView(helper.make_model(graph)))
    assert carried == {"big": "big", "bias": "big", "s": "big"}
    obs = MinMaxObserver()
    obs.update(np.array([1.0, -SENTINEL, np.inf, 2.0], np.float32))
    assert (obs.min, obs.max, obs.nonfinite) == (1.0, 2.0, 2)


def test_check_judges_a_qoperator_model_as_compile_legalises_it():
    """R4: compile rewrites ONNX Runtime's QOperator ops into QDQ form (``check.qoperator``) and lowers
    them; check judged the QOperator ops themselves and kept them on the CPU (on ORT's QOperator
    attention block 3 of 29 nodes on the accelerator, 26 differing from compile).  Check now runs the
    same rewrite first: every node compile names is on the same side, under the same name."""
    model = _qlinear_conv()
    checked, compiled = _sides(model, "cpu-int8")
    assert {k: (v, compiled[k]) for k, v in checked.items() if k in compiled and compiled[k] != v} == {}
    assert checked["qconv"] == checked["pool"] == "ACC"
    assert {"qconv", "pool"} <= compiled.keys()


def test_an_input_dequantize_step_read_by_a_cpu_node_runs_on_the_cpu():
    """R5: ``x -> Q -> DQ -> (Exp on the CPU, Conv)``: the Conv reads the integers, compile runs the DQ
    in ONNX for the Exp; check put the DQ on the accelerator with the Conv (ONNX Runtime's QDQ
    attention models: the input DQ before the CPU LayerNorm and the residual Add)."""
    model = _qdq_conv("int8", 0)
    model.graph.node.append(helper.make_node("Exp", ["xd"], ["e"], name="exp"))
    model.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3, 8, 8]))
    checked, compiled = _sides(model, "cpu-int8")
    assert {k: (v, compiled[k]) for k, v in checked.items() if k in compiled and compiled[k] != v} == {}
    assert checked["x_dq"] == "CPU" and checked["exp"] == "CPU" and checked["conv"] == checked["x_q"] == "ACC"
