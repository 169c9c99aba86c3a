"""The disagreements the placement-agreement generator (``test_placement_agreement.py``) found,
each as a tiny model: ``check`` of the float model, ``check`` of the quantized model and
``compile`` now put every node on the same side (``benchmarks/results/placement_agreement.md``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU, NPU
from tests.unit.test_placement_agreement import disagreements

rng = np.random.default_rng(0)


def _model(nodes: list[tuple], outputs: list[str]):
    """``nodes``: ``(name, op, inputs, attrs)``; an input given as an array becomes an initializer.
    The graph input is ``x [1, 4, 8, 8]``; each node writes ``<name>``."""
    inits, made = [], []
    for name, op, ins, attrs in nodes:
        names = []
        for x in ins:
            if isinstance(x, np.ndarray):
                names.append(f"c{len(inits)}")
                inits.append(numpy_helper.from_array(x, names[-1]))
            else:
                names.append(x)
        made.append(helper.make_node(op, names, [name], name=name, **attrs))
    graph = helper.make_graph(made, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _conv(name: str, x: str, cin: int = 4) -> tuple:
    return (name, "Conv", [x, (rng.standard_normal((4, cin, 3, 3)) * 0.3).astype(np.float32)], {"pads": [1, 1, 1, 1]})


def _agree(model, target: str, tmp_path) -> dict[str, str]:
    assert disagreements(model, target, str(tmp_path)) == []
    return {n.name: n.device for n in npuflow.check(model, target).nodes}


SLICE = [np.array([0], np.int64), np.array([2], np.int64), np.array([1], np.int64)]


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_a_div_after_a_slice_of_the_graph_input_is_on_the_cpu(target, tmp_path):
    """``x -> Slice -> Div(2) -> Concat -> Conv``: the Slice of a graph input stays float (data
    movement follows a quantized op only), which the data-movement rule decided *after* the
    float-chain rule had kept the Div on the accelerator; before: Div ACC in check of the float
    model, CPU in check of the quantized one and in compile."""
    model = _model([("sl", "Slice", ["x", *SLICE], {}), ("div", "Div", ["sl", np.array(2.0, np.float32)], {}),
                    ("cat", "Concat", ["div", "x"], {"axis": 1}), _conv("conv", "cat", 6)], ["conv"])
    devices = _agree(model, target, tmp_path)
    assert devices["sl"] == CPU and devices["div"] == CPU


def test_a_concat_of_the_input_and_its_cpu_slice_before_an_output_is_on_the_cpu(tmp_path):
    """B4096: ``Concat(x, Slice(x))`` as a graph output only moves data once its Slice is on the
    CPU; the tail-mover rule ran before the Slice moved (before: Concat ACC / CPU / CPU)."""
    model = _model([("sl", "Slice", ["x", *SLICE], {}), ("cat", "Concat", ["x", "sl"], {"axis": 1}),
                    _conv("conv", "sl", 2)], ["cat", "conv"])
    assert _agree(model, "DPUCZDX8G_ISA1_B4096", tmp_path)["cat"] == CPU


def test_a_tanh_after_a_maxpool_after_quantized_work_is_where_check_says(tmp_path):
    """bernoulli2 (newuser_flows3): ``Conv -> MaxPool -> Tanh -> output``.  The quantizer counted no
    Tanh as a quantized reader, so the pool was float data movement (the float tail) and the Tanh
    after it ran in float, while check counted the Tanh (before: MaxPool and Tanh ACC in check of
    the float model, CPU in the quantized one and in compile).  Since newops2 the Tanh is a quantized
    table op: all three on the BPU, in check and compile alike."""
    model = _model([_conv("conv", "x"), ("pool", "MaxPool", ["conv"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
                    ("tanh", "Tanh", ["pool"], {})], ["tanh"])
    devices = _agree(model, "bernoulli2", tmp_path)
    assert devices["conv"] == NPU and devices["pool"] == NPU and devices["tanh"] == NPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_resize_after_a_tanh_is_where_check_says(target, tmp_path):
    """``Conv -> Tanh -> Resize -> Sigmoid``: a follower after an op the quantizer quantized only
    between quantized ops was not after a quantized op (before on bernoulli2: Tanh and Resize ACC
    in check of the float model, CPU in the quantized one and in compile).  Since newops2 the Tanh
    is quantized on its own, so the Resize follows it onto the accelerator."""
    model = _model([_conv("conv", "x"), ("tanh", "Tanh", ["conv"], {}),
                    ("up", "Resize", ["tanh", "", np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest"}),
                    ("sig", "Sigmoid", ["up"], {})], ["sig"])
    assert _agree(model, target, tmp_path)["up"] == NPU


@pytest.mark.parametrize("op", ["Sub", "Mul", "Add"])
def test_cpu_int8_places_what_its_compile_lowers(op, tmp_path):
    """cpu-int8 (``kind: cpu``) compiles every op the compiler lowers into its integer program
    (``compiler/partition.py``), its file's kinds or not; check placed a ``Sub``, a full-shape
    ``Mul``/``Add`` constant (``mul_const``/``add_const``) on the CPU and a Transpose after it with
    it, while the quantized model's check and compile ran the Transpose in integers (ConvNeXt's
    layer-scale ``Mul`` before ``Transpose_1``; before: op CPU / CPU / ACC, Transpose CPU / ACC / ACC)."""
    const = rng.uniform(0.5, 2, (1, 4, 8, 8)).astype(np.float32)
    model = _model([_conv("conv", "x"), ("k", op, ["conv", const], {}), ("tr", "Transpose", ["k"], {"perm": [0, 1, 3, 2]}),
                    _conv("conv2", "tr")], ["conv2"])
    devices = _agree(model, "cpu-int8", tmp_path)
    assert devices["k"] == NPU and devices["tr"] == NPU
    assert npuflow.check(model, "cpu-int8").node("k").kernel_type == op  # no kind in the file: its op type


def test_cpu_int8_still_runs_what_nothing_lowers_in_float(tmp_path):
    """The fallback is the compiler's lowering, not every op: an ``Erf`` stays on the CPU."""
    model = _model([_conv("conv", "x"), ("erf", "Erf", ["conv"], {}), _conv("conv2", "erf")], ["conv2"])
    devices = _agree(model, "cpu-int8", tmp_path)
    assert devices["erf"] == CPU
    assert "has no CPU-INT8 implementation" in npuflow.check(model, "cpu-int8").node("erf").reasons[0]


def _log_of_square(x: str) -> list[tuple]:
    """``Log(x * x + 0.01)``: a power spectrum's log; its input cone stays float."""
    return [("sq", "Mul", [x, x], {}), ("eps", "Add", ["sq", np.array(0.01, np.float32)], {}), ("log", "Log", ["eps"], {})]


def test_a_hard_swish_before_a_log_cone_is_quantized_as_check_places_it(tmp_path):
    """B4096 legalises ``HardSwish`` into ``Add -> Clip -> Mul -> Mul``, range-carrying ops the
    quantizer's cone of the ``Log`` (walked on the legalised graph) went on through; check's cone
    of the float model stops at the HardSwish and places it on the DPU.  On accelerator targets
    the plan now takes the cone from the checker's placement (before: HardSwish ACC in check of
    the float model, CPU in the quantized one and in compile)."""
    model = _model([_conv("conv", "x"), ("hs", "HardSwish", ["conv"], {}), ("tr", "Transpose", ["hs"], {"perm": [0, 1, 3, 2]}),
                    *_log_of_square("tr")], ["log"])
    devices = _agree(model, "DPUCZDX8G_ISA1_B4096", tmp_path)
    assert devices["hs"] == NPU and devices["conv"] == NPU and devices["sq"] == CPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_tanh_also_read_by_a_cpu_op_is_where_check_says(target, tmp_path):
    """``Conv -> Tanh -> {Add(conv), Erf}``: a Tanh quantized only between quantized ops had its
    table end at one quantize step, which a float reader (the Erf) did not read; one accelerator
    reader was enough for check (before: Tanh ACC / CPU / CPU).  Since newops2 the Tanh has its own
    quantize step, which the Erf reads through a dequantize step: on the accelerator everywhere."""
    model = _model([_conv("conv", "x"), ("tanh", "Tanh", ["conv"], {}), ("add", "Add", ["tanh", "conv"], {}),
                    ("erf", "Erf", ["tanh"], {}), _conv("conv2", "add")], ["conv2", "erf"])
    devices = _agree(model, target, tmp_path)
    assert devices["tanh"] == NPU and devices["erf"] == CPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_no_grid_step_before_a_float_layer(target, tmp_path):
    """``Conv -> MaxPool -> Conv -> Log(...)``: the second Conv is in the Log's cone, in float; the
    quantizer leaves the MaxPool float (the float tail) and compile added a quantize step after it
    (``lowerable.grid_step``, meant for NNCF's pools before a quantized layer) and lowered it
    (before: MaxPool CPU / ACC / ACC)."""
    model = _model([_conv("conv", "x"), ("pool", "MaxPool", ["conv"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
                    _conv("conv2", "pool"), *_log_of_square("conv2")], ["log"])
    devices = _agree(model, target, tmp_path)
    assert devices["conv"] == NPU and devices["pool"] == CPU and devices["conv2"] == CPU


def test_a_transpose_after_a_div_folded_into_its_conv_follows_the_conv(tmp_path):
    """B4096 (seed 720): ``Conv -> Div(per-channel) -> {Sigmoid, Transpose -> Concat}``: the Div
    folds into the Conv (fused), so the Transpose follows a quantized op; counting the Div as an op
    quantized only between quantized ops put the Transpose and the Concat on the CPU in check of
    the float model, while quantize and compile ran them on the DPU (CPU / ACC / ACC)."""
    model = _model([_conv("conv", "x"), ("div", "Div", ["conv", rng.uniform(1, 2, (4, 1, 1)).astype(np.float32)], {}),
                    ("sig", "Sigmoid", ["div"], {}), ("tr", "Transpose", ["div"], {"perm": [0, 1, 3, 2]}),
                    ("exp", "Exp", ["tr"], {}), ("cat", "Concat", ["tr", "x"], {"axis": 1})], ["sig", "exp", "cat"])
    devices = _agree(model, "DPUCZDX8G_ISA1_B4096", tmp_path)
    assert devices["tr"] == NPU and devices["cat"] == NPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_tanh_read_by_a_sigmoid_and_another_tanh_is_where_check_says(target, tmp_path):
    """Seed 571: ``Relu -> Tanh -> {Sigmoid, Tanh -> Conv}``: the Sigmoid's quantize step and the
    second Tanh's float read left the first Tanh no single quantize step (before: both Tanhs
    ACC / CPU / CPU).  Since newops2 each Tanh has its own quantize step: both on the accelerator."""
    model = _model([_conv("conv", "x"), ("relu", "Relu", ["conv"], {}), ("t1", "Tanh", ["relu"], {}),
                    ("sig", "Sigmoid", ["t1"], {}), ("t2", "Tanh", ["t1"], {}), _conv("conv2", "t2")], ["sig", "conv2"])
    devices = _agree(model, target, tmp_path)
    assert devices["t1"] == NPU and devices["t2"] == NPU


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_the_log_cone_walks_through_a_div_folded_into_its_conv(target, tmp_path):
    """Seed 1569: ``Conv -> Conv -> Div(per-channel) -> Mul(x, x) -> Add -> Log``: the float passes
    fold the Div into the second Conv, so the quantizer's check of the optimised model finds both
    Convs in the Log's cone; check of the float model stopped at the Div (before: both Convs
    ACC / CPU / CPU)."""
    model = _model([_conv("conv0", "x"), _conv("conv1", "conv0"),
                    ("div", "Div", ["conv1", rng.uniform(1, 2, (4, 1, 1)).astype(np.float32)], {}),
                    *_log_of_square("div")], ["log"])
    devices = _agree(model, target, tmp_path)
    assert devices["conv0"] == CPU and devices["conv1"] == CPU


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_a_maxpool_after_a_hard_swish_written_out_stays_on_the_accelerator(target, tmp_path):
    """PP-OCR cls: ``Conv -> x * relu6(x + 3) / 6 -> MaxPool -> Conv``.  The hard-swish's ``Div``
    is the layer the ``Add``/``Clip``/``Mul`` fuse into, not a lone Div by a constant, so the pool
    after it follows a quantized op (before the fix of the Div rule: MaxPool on the CPU, the BPU
    part split in two)."""
    three, six = np.array(3.0, np.float32), np.array(6.0, np.float32)
    model = _model([_conv("conv", "x"), ("add", "Add", ["conv", three], {}),
                    ("clip", "Clip", ["add", np.array(0.0, np.float32), six], {}), ("mul", "Mul", ["conv", "clip"], {}),
                    ("div", "Div", ["mul", six], {}),
                    ("pool", "MaxPool", ["div"], {"kernel_shape": [2, 2], "strides": [2, 2]}), _conv("conv2", "pool")],
                   ["conv2"])
    devices = _agree(model, target, tmp_path)
    assert devices["div"] == NPU and devices["pool"] == NPU


@pytest.mark.parametrize("relu_is_output", [False, True])
def test_a_relu_after_a_tanh_goes_where_the_tanh_table_goes(relu_is_output, tmp_path):
    """cpu-int8 (seed 1453): ``Mul(c) -> Tanh -> Relu -> Mul(c)``.  The compiler lowers ``Tanh ->
    Relu`` as one table between the two quantize steps; check's data-movement rule put the Relu
    (fed by a Tanh, which the quantizer quantizes only between quantized ops) on the CPU and the
    Tanh after it (before: both CPU in check of the float model, in the integer program in
    compile).  With the Relu a graph output the table ended at no quantize step: both float; since
    newops2 the Tanh has its own quantize step and the Relu follows it, output or not."""
    nodes = [("mul", "Mul", ["x", np.array(0.5, np.float32)], {}), ("tanh", "Tanh", ["mul"], {}),
             ("relu", "Relu", ["tanh"], {}), ("mul2", "Mul", ["relu", np.array(2.0, np.float32)], {})]
    devices = _agree(_model(nodes, ["mul2", "relu"] if relu_is_output else ["mul2"]), "cpu-int8", tmp_path)
    assert devices["tanh"] == NPU and devices["relu"] == NPU


@pytest.mark.parametrize("target", ["DPUCAHX8H_ISA2_DWC", "DPUCZDX8G_ISA1_B4096"])
def test_a_legalised_hard_swish_runs_where_the_target_has_a_hard_swish(target, tmp_path):
    """``Conv -> HardSwish -> Conv``: on a DPU the quantizer writes the hard-swish as ``Add(x, 3) ->
    Clip -> Mul(2731/16384) -> Mul(x, .)``, whose members each pass DPUCAHX8H_ISA2_DWC's rules (a
    depthwise ``Add``, a ``relu6``, chain ``Mul``s) though that family has no hard-swish
    (targets_sweep_s27, PP-OCR cls: before, HardSwish CPU in check of the float model, ACC in check
    of the quantized one and in compile); B4096 has one and keeps it on the DPU."""
    model = _model([_conv("conv", "x"), ("hs", "HardSwish", ["conv"], {}), _conv("conv2", "hs")], ["conv2"])
    devices = _agree(model, target, tmp_path)
    assert devices["hs"] == (CPU if target == "DPUCAHX8H_ISA2_DWC" else NPU)
    assert devices["conv"] == NPU and devices["conv2"] == NPU
