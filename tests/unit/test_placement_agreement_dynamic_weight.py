"""A layer whose weights are computed at run time (onnx's light SqueezeNet: conv weights that stay
``ConstantOfShape`` outputs after constant folding, new-user round 12): ``check`` of the float model,
``check`` of the quantized model and ``compile`` place the activation after it alike."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.check.report import CPU, NPU
from tests.unit.test_placement_agreement import TARGETS
from tests.unit.test_placement_agreement_regressions import _agree, _conv, _model

#: ``x[:, :, 0:3, 0:3]``: the 3x3 patch the weights are computed from.
PATCH = [np.array([0, 0], np.int64), np.array([3, 3], np.int64), np.array([2, 3], np.int64)]


def _dynamic_conv_relu():
    """``x -> Slice -> Mul(c) = W``; ``Conv(x, W) -> Relu -> Conv``: the first Conv's weights are an
    activation, so it runs on the CPU; the quantizer fuses its ReLU as any conv's (no quantize step
    between)."""
    return _model([("s", "Slice", ["x", *PATCH], {}), ("w", "Mul", ["s", np.full((4, 1, 1, 1), 0.5, np.float32)], {}),
                   ("conv", "Conv", ["x", "w"], {"pads": [1, 1, 1, 1]}), ("relu", "Relu", ["conv"], {}),
                   _conv("conv2", "relu")], ["conv2"])


@pytest.mark.parametrize("target", TARGETS)
def test_the_relu_after_a_conv_with_run_time_weights_runs_with_it(target, tmp_path):
    """Before, check of the float model judged the ReLU alone (no rule for the conv's kind, so no
    fusion), and on cpu-int8 put it on the accelerator: ACC / CPU / CPU."""
    devices = _agree(_dynamic_conv_relu(), target, tmp_path)
    assert devices["conv"] == CPU and devices["relu"] == CPU and devices["conv2"] == NPU
    report = npuflow.check(_dynamic_conv_relu(), target)
    assert report.node("relu").fused_into == "conv"
    assert "weights computed at run time" in report.node("conv").reasons[0]


@pytest.mark.parametrize("target", TARGETS)
def test_the_relu_after_a_batchnorm_after_a_conv_with_run_time_weights_runs_with_the_batchnorm(target, tmp_path):
    """ShuffleNet's ``Conv(run-time weights) -> BatchNormalization -> Relu -> Conv``: the BN cannot fold
    into the CPU conv, so the float passes make a 1x1 depthwise Conv of it, into which the quantizer
    fuses the ReLU.  Before, check of the float model split the ReLU off the BN (the registry's
    ``BatchNormalization`` is not quantized on its own) and put it on the CPU as a follower of float
    data: CPU / ACC / ACC on cpu-int8 and bernoulli2 (light ShuffleNet: 13 and 3 nodes)."""
    c = 4
    bn = [np.full(c, v, np.float32) for v in (1.5, 0.1, 0.2, 0.9)]
    model = _model([("s", "Slice", ["x", *PATCH], {}), ("w", "Mul", ["s", np.full((4, 1, 1, 1), 0.5, np.float32)], {}),
                    ("conv", "Conv", ["x", "w"], {"pads": [1, 1, 1, 1]}), ("bn", "BatchNormalization", ["conv", *bn], {}),
                    ("relu", "Relu", ["bn"], {}), _conv("conv2", "relu")], ["conv2"])
    devices = _agree(model, target, tmp_path)
    assert devices["conv"] == CPU and devices["bn"] == devices["relu"] == devices["conv2"]
    assert npuflow.check(model, target).node("relu").fused_into == "bn"


def _dynamic_gemm_relu():
    """``x -> Reshape [16, 16] = a``; ``W = Slice(a)[0:8] * 0.5``; ``Gemm(a, W^T) -> Relu -> Gemm(c)``:
    the first Gemm's weights are an activation, so it runs on the CPU; the quantizer takes it for an
    fc (``passes/activations.op_kind``) and fuses its ReLU (no quantize step between)."""
    rows = [np.array([0], np.int64), np.array([8], np.int64), np.array([0], np.int64)]
    return _model([("a", "Reshape", ["x", np.array([16, 16], np.int64)], {}), ("s", "Slice", ["a", *rows], {}),
                   ("w", "Mul", ["s", np.array(0.5, np.float32)], {}),
                   ("gemm", "Gemm", ["a", "w"], {"transB": 1}), ("relu", "Relu", ["gemm"], {}),
                   ("gemm2", "Gemm", ["relu", (np.arange(64, dtype=np.float32).reshape(8, 8) % 7 - 3) / 8], {})],
                  ["gemm2"])


@pytest.mark.parametrize("target", TARGETS)
def test_the_relu_after_a_gemm_with_run_time_weights_runs_with_it(target, tmp_path):
    """Before, check took the Gemm for a ``matmul`` (into which no activation fuses) and judged the
    ReLU alone: on cpu-int8 ACC / CPU / CPU (onnx's light VGG-19, AlexNet, ZFNet-512: 2 ReLUs each)."""
    devices = _agree(_dynamic_gemm_relu(), target, tmp_path)
    assert devices["gemm"] == CPU and devices["relu"] == CPU and devices["gemm2"] == NPU
    report = npuflow.check(_dynamic_gemm_relu(), target)
    assert report.node("relu").fused_into == "gemm"
    assert "weights computed at run time" in report.node("gemm").reasons[0]
