"""``npuflow check`` on real third-party models: placements that follow from the target rules."""

from __future__ import annotations

from functools import lru_cache

import pytest

import npuflow
from tests import fixture_models as fm

pytestmark = pytest.mark.models

ZDX = "DPUCZDX8G_ISA1_B4096"
AHL = "DPUCAHX8L_ISA0"
BPU = "bernoulli2"
SHAPES = {"ppocr_det": {"x": [1, 3, 320, 320]}, "ppocr_rec": {"x": [1, 3, 48, 320]},
          "ppocr_cls": {"x": [1, 3, 48, 192]}, "yolov8n": {"images": [1, 3, 320, 320]}, "mnist_cnn": None}


@lru_cache(maxsize=None)
def checked(model: str, target: str):
    return npuflow.check(str(getattr(fm, model)()), target, SHAPES[model])


def _of(report, op_type):
    return [n for n in report.nodes if n.op_type == op_type]


def test_mnist_cnn():
    for target in (ZDX, BPU):
        r = checked("mnist_cnn", target)
        assert not r.cpu_nodes and r.summary["npu_subgraphs"] == 1
        assert all(n.fused_into for n in _of(r, "Relu"))  # every ReLU rides on its conv / FC
    r = checked("mnist_cnn", AHL)
    # Table 28 prints the AHX8L pooling pads as [1, kernel-1]: an unpadded 2x2 max-pool is not allowed
    pools = _of(r, "MaxPool")
    assert pools and all(n.device == "CPU" and n.reasons[0].startswith("pad_left 0 outside [1,1]") for n in pools)
    assert r.summary["npu_subgraphs"] == len(pools) + 1


def test_yolov8n_sigmoid_is_cpu_on_a_dpu_and_a_lut_on_the_bpu():
    r = checked("yolov8n", ZDX)
    sig = _of(r, "Sigmoid")
    assert len(sig) >= 50 and all(n.device == "CPU" for n in sig)
    assert sig[0].reasons == [f"Sigmoid (sigmoid) has no DPU implementation on {ZDX}"]
    assert all(n.device == "NPU" for n in _of(r, "Conv"))
    # each SiLU splits the graph (58 subgraphs while the C2f blocks' Splits ran on the CPU too: the DPU has no
    # split; 50 since new-user round 20 writes them as Slices on the DPU, passes/split_slices.py)
    assert r.summary["npu_subgraphs"] >= 50 and not _of(r, "Split")
    b = checked("yolov8n", BPU)
    swish = [n for n in _of(b, "Sigmoid") if n.name != "/model.22/Sigmoid"]
    assert swish and all(n.device == "NPU" and n.kernel_type == "HzLut" for n in swish)
    head = b.node("/model.22/Sigmoid")  # class scores read only by the output Concat: the float tail
    assert head.device == "CPU" and "float tail" in head.reasons[-1]
    assert all(n.device == "NPU" for n in _of(b, "Conv")) and b.summary["npu_subgraphs"] < 10
    assert all(n.device == "CPU" for n in _of(b, "Softmax"))  # no softmax on the X3 BPU
    a = checked("yolov8n", AHL)
    muls = [n for n in _of(a, "Mul") if n.op_kind == "eltwise_mul"]
    assert muls and all(n.device == "CPU" and "not supported" in n.reasons[0] for n in muls)  # eltwise: sum only


def test_ppocr_det_hard_sigmoid_per_target():
    r = checked("ppocr_det", ZDX)
    hs = _of(r, "HardSigmoid")
    # the DPU hard-sigmoid is relu6(x + 3) / 6: alpha 1/6 runs there; alpha 0.2 after a Conv read by it alone
    # runs there as the quantizer's target rewrite leaves it (HardSigmoid(1/6, 1/2), the Conv scaled by 1.2):
    # check judges and reports the rewritten node, its messages say what the rewrite did
    slope_02 = [n for n in hs if "HardSigmoid(alpha=0.2, beta=0.5) -> HardSigmoid(1/6, 1/2)" in " ".join(n.messages)]
    assert len(slope_02) == 8 and len(hs) == 10
    assert all(n.device == "NPU" and not n.reasons and abs(n.attributes["alpha"] - 1 / 6) < 1e-4 for n in hs)
    # x * relu6(x + 3) / 6 is recognised as hard-swish and fused into the convolution
    swish = [n for n in r.nodes if n.op_kind == "hard_swish"]
    assert swish and all(n.fused_into and r.node(n.fused_into).op_type == "Conv" for n in swish)
    assert all(n.device == "NPU" for n in _of(r, "Conv"))
    assert all(n.device == "NPU" for n in _of(r, "ConvTranspose"))
    a = checked("ppocr_det", AHL)  # neither hard-sigmoid nor hard-swish on DPUCAHX8L
    assert all(n.device == "CPU" for n in _of(a, "HardSigmoid"))
    b = checked("ppocr_det", BPU)
    assert all(n.device == "NPU" and n.kernel_type == "HzLut" for n in _of(b, "HardSigmoid"))


def test_ppocr_det_large_global_pools_are_judged_split_on_the_dpu():
    """At 640 x 640 the neck's GAPs average 160 x 160 maps: ceil(160/8)*160 = 3200 > bank_depth 2048.  The
    quantizer's target rewrite splits each into an AveragePool over blocks and a small GAP; check judges the
    split (both parts on the DPU, the GAP under its own name with the rewrite in its messages): the whole
    model but the output Sigmoid is one DPU subgraph (5 while check judged the GAPs and HardSigmoids whole)."""
    r = npuflow.check(str(fm.ppocr_det()), ZDX, {"x": [1, 3, 640, 640]})
    split = [n for n in _of(r, "GlobalAveragePool") if n.messages]
    assert len(split) == 2 and all("global_avg_pool_split" in n.messages[0] for n in split)
    for gap in split:
        block = r.node(f"{gap.name}/block")
        assert (gap.device, block.device, block.op_type) == ("NPU", "NPU", "AveragePool")
        assert block.subgraph == gap.subgraph and block.output_nodes == [gap.name]
    assert r.summary["npu_subgraphs"] == 1 and r.summary["cpu_op_types"] == {"Sigmoid": 1}


def test_ppocr_rec_and_cls():
    for target in (ZDX, AHL, BPU):
        r = checked("ppocr_rec", target)
        assert all(n.device == "CPU" for n in _of(r, "Softmax"))
        # DPUCAHX8L runs only 3x3 convolutions: its 1x1 ones and the reshapes they feed (float,
        # as the quantizer leaves data movement after a float op) run on the CPU: 92 of 409 nodes
        assert r.summary["npu_subgraphs"] >= 2 and r.summary["npu_nodes"] > r.summary["nodes"] // 5
    c = checked("ppocr_cls", ZDX)
    bns = _of(c, "BatchNormalization")
    assert bns and all(n.fused_into and n.device == "NPU" for n in bns)  # Conv -> BN folds
    # its SE gates, Conv -> bias Add -> HardSigmoid(0.2, 0.5): the Add folds into the Conv and the gate's
    # parameters into it (the target rewrite), as the compiled model has them (test_check_bias_add_hard_sigmoid)
    assert all(n.device == "NPU" for n in _of(c, "HardSigmoid")) and c.summary["npu_subgraphs"] == 1
    b = checked("ppocr_cls", BPU)
    assert all(n.device == "NPU" for n in _of(b, "HardSigmoid")) and b.summary["npu_subgraphs"] == 1
    a = checked("ppocr_cls", AHL)
    gap = _of(a, "GlobalAveragePool")
    assert gap and all(n.device == "CPU" and n.reasons[0].startswith("kernel") for n in gap)  # kernel = input size


def test_cli_on_a_real_model(cli, tmp_path):
    r = cli("check", fm.yolov8n(), "--target", BPU, "--input-shape", "images", "1x3x320x320", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "/model.22/dfl/Softmax" in r.stdout and (tmp_path / "inspect_bernoulli2.txt").is_file()
