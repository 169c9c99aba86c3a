"""The open classes of ``benchmarks/results/placement_agreement.md`` (seeds 1137, 1547, 1687, 1848 of
the generator in ``test_placement_agreement.py``), each as a tiny model: ``check`` of the float model,
``check`` of the quantized model and ``compile`` put every node on the same side, the side compile's
lowering takes."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.check.report import CPU, NPU
from tests.unit.test_placement_agreement_regressions import _agree, _conv, _model

EPS = np.array(0.05, np.float32)
POOL = {"kernel_shape": [2, 2], "strides": [2, 2]}
SLICE = [np.array([0], np.int64), np.array([2], np.int64), np.array([1], np.int64)]


def test_a_relu_after_a_hard_swish_in_a_log_cone_is_on_the_cpu(tmp_path):
    """B4096 ``Conv -> HardSwish -> Relu -> Mul(x, x) -> Add -> Log`` (seed 1547): the Relu is in the
    Log's float cone, so the quantizer writes a quantize step after the HardSwish and leaves the Relu
    in float; check of the quantized model fused the Relu into the HardSwish across that step (DPU),
    compile ran it on the CPU.  Before: Relu CPU / ACC / CPU."""
    model = _model([_conv("conv", "x"), ("hs", "HardSwish", ["conv"], {}), ("relu", "Relu", ["hs"], {}),
                    ("sq", "Mul", ["relu", "relu"], {}), ("pos", "Add", ["sq", EPS], {}), ("log", "Log", ["pos"], {})],
                   ["log"])
    devices = _agree(model, "DPUCZDX8G_ISA1_B4096", tmp_path)
    assert devices["hs"] == NPU and devices["relu"] == CPU


def test_a_clip_after_a_per_channel_div_on_the_cpu_is_lowered_on_cpu_int8(tmp_path):
    """cpu-int8 ``Exp -> Div(per-channel) -> Clip`` (seeds 1137, 1848): the Div has no integer
    lowering and the quantizer does not quantize it, so the Clip gets its own quantize step and
    compile lowers it; both checks had fused it into the CPU Div.  Before: Clip CPU / CPU / ACC."""
    div = np.linspace(0.5, 2.0, 4, dtype=np.float32).reshape(4, 1, 1)
    model = _model([("exp", "Exp", ["x"], {}), ("div", "Div", ["exp", div], {}),
                    ("clip", "Clip", ["div", np.array(0.0, np.float32), np.array(6.0, np.float32)], {})], ["clip"])
    devices = _agree(model, "cpu-int8", tmp_path)
    assert devices["div"] == CPU and devices["clip"] == NPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_slice_before_a_div_before_quantized_work_is_not_float_tail(target, tmp_path):
    """``AveragePool -> Slice -> Div(2) -> Sub(c)`` (seed 1687): compile lowers ``DQ -> Slice ->
    Div -> Q`` as one op with its epilogue, before the quantized Sub; check of the float model left
    the Slice in the float tail (the Div, quantized only between quantized ops, counted as no
    quantized reader) and the Div after it on the CPU.  Before: Slice, Div CPU / ACC / ACC."""
    model = _model([("pool", "AveragePool", ["x"], POOL), ("sl", "Slice", ["pool", *SLICE], {}),
                    ("div", "Div", ["sl", np.array(2.0, np.float32)], {}),
                    ("sub", "Sub", ["div", np.array(0.5, np.float32)], {})], ["sub"])
    devices = _agree(model, target, tmp_path)
    assert devices["sl"] == NPU and devices["div"] == NPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_split_read_by_a_div_and_a_cpu_op_stays_float_tail(target, tmp_path):
    """``Add -> Split -> (output, Exp and Div(2))`` (seed 427): the Split's output is read by a CPU
    Exp beside the Div and the other half is a graph output, so no epilogue takes the Div; the tail
    rule must not look through it (after b4a6afb alone: Split and Div ACC / CPU / CPU)."""
    model = _model([("add", "Add", ["x", np.full((4, 1, 1), 0.5, np.float32)], {}),
                    ("split", "Split", ["add", np.array([2, 2], np.int64)], {"axis": 1}),
                    ("exp", "Exp", ["split_b"], {}), _conv("conv", "exp", 2),
                    ("div", "Div", ["split_b", np.array(2.0, np.float32)], {}), ("sum", "Add", ["div", "exp"], {})],
                   ["split", "conv", "sum"])
    next(n for n in model.graph.node if n.name == "split").output.append("split_b")
    devices = _agree(model, target, tmp_path)
    assert devices["split"] == CPU and devices["div"] == CPU


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_pool_of_input_data_before_a_div_before_a_conv_agrees(target, tmp_path):
    """``Concat(x, x) -> MaxPool -> Div(2) -> Conv`` (seed 1723): the plan left the Concat of the
    graph input and the pool after it in float, so the pool had no dequantize step and compile ran
    it on the CPU; the look-through of a Div applied only after a quantized op (after 0f9a558 alone:
    Concat, MaxPool and Div ACC / CPU / CPU).  Since round 19 the pool's one reader, a Div whose
    reader is quantized, counts as a quantized reader (``check/followers.py``: a ConvLSTM's
    ``Slice -> Tanh(g)``), so the float tail keeps none of them: all on the accelerator, in all three."""
    model = _model([("cat", "Concat", ["x", "x"], {"axis": 1}), ("pool", "MaxPool", ["cat"], POOL),
                    ("div", "Div", ["pool", np.array(2.0, np.float32)], {}), _conv("conv", "div", 8)], ["conv"])
    devices = _agree(model, target, tmp_path)
    assert devices["pool"] == NPU and devices["div"] == NPU and devices["conv"] == NPU


def test_a_flatten_after_a_transpose_bernoulli2_cannot_run_stays_float(tmp_path):
    """bernoulli2 ``Conv -> Transpose -> Flatten -> Gemm`` (seed 1278): bernoulli2 has no
    ``transpose``, so check of the float model puts the Transpose on the CPU and the Flatten with it;
    ``grid_step`` walked through the Transpose from the Conv's dequantize step, so check of the
    quantized model and compile's legalisation gave the Flatten a quantize step and lowered it.
    ``QuantFacts`` now knows what the target runs.  Before: Flatten CPU / ACC / ACC."""
    w = np.random.default_rng(3).normal(0, 0.1, (256, 10)).astype(np.float32)
    model = _model([_conv("conv", "x"), ("tr", "Transpose", ["conv"], {"perm": [0, 2, 3, 1]}),
                    ("fl", "Flatten", ["tr"], {}), ("fc", "Gemm", ["fl", w], {})], ["fc"])
    devices = _agree(model, "bernoulli2", tmp_path)
    assert devices["conv"] == NPU and devices["tr"] == CPU and devices["fl"] == CPU


def test_reshapes_around_a_transpose_bernoulli2_cannot_run_stay_float(tmp_path):
    """MobileViT's ``Conv -> Reshape -> Transpose -> Reshape -> Conv`` on bernoulli2 (seed 902): the
    reshapes on either side of the CPU Transpose stay float in all three, as check of the float
    model puts them; ``grid_step`` no longer walks through an op the target does not run.  Before:
    the reshapes CPU / ACC / ACC."""
    model = _model([_conv("conv", "x"), ("rs", "Reshape", ["conv", np.array([1, 4, 64], np.int64)], {}),
                    ("tr", "Transpose", ["rs"], {"perm": [0, 2, 1]}),
                    ("rs2", "Reshape", ["tr", np.array([1, 4, 8, 8], np.int64)], {}), _conv("conv2", "rs2")],
                   ["conv2"])
    devices = _agree(model, "bernoulli2", tmp_path)
    assert devices["tr"] == CPU and devices["rs"] == CPU and devices["rs2"] == CPU


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_reshapes_around_a_transpose_the_target_runs_are_lowered(target, tmp_path):
    """The same graph where the target has ``transpose``: nothing changes (all on the accelerator)."""
    model = _model([_conv("conv", "x"), ("rs", "Reshape", ["conv", np.array([1, 4, 64], np.int64)], {}),
                    ("tr", "Transpose", ["rs"], {"perm": [0, 2, 1]}),
                    ("rs2", "Reshape", ["tr", np.array([1, 4, 8, 8], np.int64)], {}), _conv("conv2", "rs2")],
                   ["conv2"])
    devices = _agree(model, target, tmp_path)
    assert devices["tr"] == NPU and devices["rs"] == NPU and devices["rs2"] == NPU
