"""On a ``kind: cpu`` target (cpu-int8) there is no transfer and compile lowers every op it can
(``compiler/partition.py``), so compile is the limit and check follows it: check of the float model,
check of the quantized model and compile put the data movement around CPU layers on the same side
(onnx's light SqueezeNet, Inception-v2, ShuffleNet and ResNet50, whose conv weights are computed at
run time; ``tests/models/test_light_models_placement.py`` checks the models themselves)."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.check.report import CPU, NPU
from tests.unit.test_placement_agreement_regressions import _agree, _conv, _model

#: ``x[:, :, 0:1, 0:1]``: the patch run-time weights are computed from.
PIXEL = [np.array([0, 0], np.int64), np.array([1, 1], np.int64), np.array([2, 3], np.int64)]
#: ``x[:, :, 0:1, 0:4]``: a row, the run-time weights of a Gemm.
ROW = [np.array([0, 0], np.int64), np.array([1, 4], np.int64), np.array([2, 3], np.int64)]


def _concat_between_cpu_convs():
    """Light SqueezeNet's fire module: ``Concat(Relu(Conv(x)), Relu(Conv(x, W(x))))`` read by a conv whose
    weights are computed at run time (``W2 = Concat(p, p) * c``, 8 input channels)."""
    return _model([("p", "Slice", ["x", *PIXEL], {}),
                   ("w", "Mul", ["p", np.full((4, 1, 1, 1), 0.5, np.float32)], {}),
                   _conv("conv", "x"), ("relu", "Relu", ["conv"], {}),
                   ("dconv", "Conv", ["x", "w"], {}), ("drelu", "Relu", ["dconv"], {}),
                   ("cat", "Concat", ["relu", "drelu"], {"axis": 1}),
                   ("pp", "Concat", ["p", "p"], {"axis": 1}),
                   ("w2", "Mul", ["pp", np.full((4, 1, 1, 1), 0.25, np.float32)], {}),
                   ("dconv2", "Conv", ["cat", "w2"], {})], ["dconv2"])


def _reshape_before_a_cpu_gemm():
    """ShuffleNet's / ResNet50's / Inception-v2's head: ``Conv -> Relu -> GlobalAveragePool -> Reshape ->
    Gemm`` whose weights are computed at run time (a row of ``x``)."""
    return _model([_conv("conv", "x"), ("relu", "Relu", ["conv"], {}), ("gap", "GlobalAveragePool", ["relu"], {}),
                   ("flat", "Reshape", ["gap", np.array([1, 4], np.int64)], {}),
                   ("row", "Slice", ["x", *ROW], {}), ("b", "Reshape", ["row", np.array([4, 4], np.int64)], {}),
                   ("fc", "Gemm", ["flat", "b"], {})], ["fc"])


def test_a_concat_of_cpu_and_accelerator_results_before_a_cpu_conv_is_lowered(tmp_path):
    """Before: the tail-mover rule (a mover between CPU work costs two transfers) put the Concat on the
    CPU in both checks, and compile lowered it: CPU / CPU / ACC."""
    devices = _agree(_concat_between_cpu_convs(), "cpu-int8", tmp_path)
    assert devices["dconv"] == devices["dconv2"] == CPU
    assert devices["conv"] == devices["cat"] == NPU


def test_a_reshape_read_by_a_cpu_gemm_is_lowered(tmp_path):
    """The quantizer of a CPU target quantizes the Gemm with run-time weights too, so the Reshape before
    it is no float tail.  Before: check of the float model counted only accelerator readers and left it
    float: CPU / ACC / ACC."""
    devices = _agree(_reshape_before_a_cpu_gemm(), "cpu-int8", tmp_path)
    assert devices["fc"] == CPU and devices["flat"] == devices["gap"] == NPU


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_accelerator_targets_keep_their_transfer_rules(target, tmp_path):
    """On accelerator targets the Concat between CPU work stays on the CPU (a transfer there costs), and the
    Reshape read only by a CPU Gemm is float tail on bernoulli2 (float scales; the quantizer leaves CPU nodes
    float), output quantized by the DPU on B4096 (power-of-two scales: no float tail), in all three."""
    assert _agree(_concat_between_cpu_convs(), target, tmp_path)["cat"] == CPU
    flat = _agree(_reshape_before_a_cpu_gemm(), target, tmp_path)["flat"]
    assert flat == (CPU if target == "bernoulli2" else NPU)


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", "DPUCZDX8G_ISA1_B4096"])
def test_data_movement_read_by_a_standalone_batchnorm_is_no_float_tail(target, tmp_path):
    """Light DenseNet-121's ``Concat -> BatchNormalization -> Mul(per-channel) -> Relu -> Conv`` (Caffe's BN and
    Scale layers; the ReLU fuses into the Mul, not the BN): the BN no layer absorbs
    becomes a 1x1 depthwise Conv, which the quantizer quantizes, so the Concat before it is read by a
    quantized op.  Before, check of the float model counted the BN as not quantized on its own
    (``OpDef.quantized`` false) and left the Concat and the MaxPool before it in the float tail on
    float-scale targets: CPU / ACC / ACC (light DenseNet-121: 59 nodes on cpu-int8)."""
    bn = [np.full(8, v, np.float32) for v in (1.5, 0.1, 0.2, 0.9)]
    model = _model([_conv("conv", "x"), ("pool", "MaxPool", ["conv"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
                    ("cat", "Concat", ["pool", "pool"], {"axis": 1}), ("bn", "BatchNormalization", ["cat", *bn], {}),
                    ("scale", "Mul", ["bn", np.full((1, 8, 1, 1), 1.2, np.float32)], {}),
                    ("relu", "Relu", ["scale"], {}), _conv("conv2", "relu", 8)], ["conv2"])
    devices = _agree(model, target, tmp_path)
    assert devices["pool"] == devices["cat"] == devices["bn"] == NPU
