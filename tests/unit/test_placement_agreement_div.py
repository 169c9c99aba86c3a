"""The generator's disagreements on seeds 2000-2999 (``benchmarks/results/placement_agreement.md``),
all around a ``Div`` by a scalar constant: the seeds themselves, and each class as a tiny model
whose sides are asserted, not only agreed on."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.check.report import CPU, NPU
from tests.unit.test_placement_agreement import TARGETS, disagreements, random_model
from tests.unit.test_placement_agreement_regressions import SLICE, _agree, _conv, _model

B4096 = "DPUCZDX8G_ISA1_B4096"
TWO = np.array(1.6, np.float32)

PINNED = [(seed, target) for seed in (2800, 2864, 2891) for target in TARGETS] + \
    [(2818, B4096), (2834, B4096), (2482, B4096)]


@pytest.mark.parametrize("seed,target", PINNED)
def test_pinned_generator_seeds_agree(seed, target, tmp_path):
    """The six seeds of the 2000-2999 run (20 nodes disagreed before)."""
    assert disagreements(random_model(seed), target, str(tmp_path)) == []


@pytest.mark.parametrize("target", TARGETS)
def test_a_relu_fused_into_a_div_of_a_cpu_slice_is_on_the_cpu(target, tmp_path):
    """``x -> Slice -> Div(c) -> Relu -> Tanh`` (seed 2864): the Relu fused into the Div made the Div
    a layer of its own, so the float-chain rule never looked at it; check put Div and Relu on the
    accelerator (float model, and the quantized one, which the quantizer wrote in float), compile
    refused a model with nothing quantized (``NPF_COMPILE_NOT_QUANTIZED``)."""
    model = _model([("sl", "Slice", ["x", *SLICE], {}), ("div", "Div", ["sl", TWO], {}), ("relu", "Relu", ["div"], {}),
                    ("tanh", "Tanh", ["relu"], {})], ["tanh"])
    devices = _agree(model, target, tmp_path)
    assert devices["div"] == CPU and devices["relu"] == CPU
    assert "only between quantized ops" in npuflow.check(model, target).node("div").reasons[0]


@pytest.mark.parametrize("target", TARGETS)
def test_a_clip_after_a_div_of_the_input_is_an_op_of_its_own(target, tmp_path):
    """``x -> Div(c) -> Clip(0, 6)`` (seed 2800): the quantizer leaves the Div float and quantizes
    the Clip alone (a quantize step before it), which compile lowers; check fused the Clip into the
    Div and ran both on the accelerator (before: Div ACC / CPU / CPU)."""
    model = _model([("div", "Div", ["x", TWO], {}),
                    ("clip", "Clip", ["div", np.array(0, np.float32), np.array(6, np.float32)], {})], ["clip"])
    devices = _agree(model, target, tmp_path)
    assert devices["div"] == CPU and devices["clip"] == NPU


def test_a_hard_swish_after_a_div_of_a_cpu_log_is_an_op_of_its_own(tmp_path):
    """B4096 ``Log -> Div(c) -> HardSwish`` (seed 2818): the HardSwish is quantized on its own after
    the float Div (before: Div ACC / CPU / CPU)."""
    model = _model([("sq", "Mul", ["x", "x"], {}), ("eps", "Add", ["sq", np.array(0.05, np.float32)], {}),
                    ("log", "Log", ["eps"], {}), ("div", "Div", ["log", TWO], {}), ("hs", "HardSwish", ["div"], {})], ["hs"])
    devices = _agree(model, B4096, tmp_path)
    assert devices["div"] == CPU and devices["hs"] == NPU


@pytest.mark.parametrize("target", TARGETS)
def test_a_div_and_relu_between_quantized_ops_stay_on_the_accelerator(target, tmp_path):
    """The split does not over-reach: ``Add(conv, conv) -> Div(c) -> Relu -> Conv`` has quantized
    work on both sides, and compile lowers ``DQ -> Div -> Relu -> Q`` as one integer op."""
    model = _model([_conv("a", "x"), _conv("b", "x"), ("add", "Add", ["a", "b"], {}), ("div", "Div", ["add", TWO], {}),
                    ("relu", "Relu", ["div"], {}), _conv("c", "relu")], ["c"])
    devices = _agree(model, target, tmp_path)
    assert devices["div"] == NPU and devices["relu"] == NPU


def test_a_div_table_computing_a_sigmoid_the_dpu_lacks_runs_on_the_cpu(tmp_path):
    """B4096 ``Relu -> Div(c) -> Sigmoid -> Conv`` (seed 2482): the quantizer leaves the Div and the
    Sigmoid float (B4096 has no sigmoid); compile lowered ``DQ -> Div -> Sigmoid -> Q`` as one
    integer op judged by the Div's rule (a 1x1 depthwise convolution), which cannot compute a
    sigmoid.  Check of the quantized model now judges the table's Sigmoid by its own rule, as check
    of the float model does (before: Div, Sigmoid CPU / ACC / ACC; after CPU in all three)."""
    model = _model([_conv("conv", "x"), ("relu", "Relu", ["conv"], {}), ("add", "Add", ["relu", "x"], {}),
                    ("div", "Div", ["add", TWO], {}), ("sig", "Sigmoid", ["div"], {}), _conv("conv2", "sig")], ["conv2"])
    devices = _agree(model, B4096, tmp_path)
    assert devices["div"] == CPU and devices["sig"] == CPU and devices["conv2"] == NPU
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(model, calib, B4096, warn=False).model
    reason = npuflow.check(quantized, B4096).node("div").reasons[-1]
    assert "also computes Sigmoid 'sig'" in reason


def test_a_div_table_computing_a_leaky_relu_of_another_slope_runs_on_the_cpu(tmp_path):
    """B4096 ``Add -> Div(c) -> LeakyRelu(0.2) -> Conv``: the DPU's leaky slope is 26/256, so check of
    the float model runs the LeakyRelu (and the Div before it) on the CPU; compile lowered
    ``DQ -> Div -> LeakyRelu -> Q`` as one op under the Div's rule (before: CPU / ACC / ACC)."""
    model = _model([_conv("a", "x"), ("add", "Add", ["a", "x"], {}), ("div", "Div", ["add", TWO], {}),
                    ("lr", "LeakyRelu", ["div"], {"alpha": 0.2}), _conv("c", "lr")], ["c"])
    devices = _agree(model, B4096, tmp_path)
    assert devices["div"] == CPU and devices["lr"] == CPU and devices["c"] == NPU
