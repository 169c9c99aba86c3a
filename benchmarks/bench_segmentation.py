"""A segmentation user's nets through check / quantize / compile / run on three targets.

Three small segmentation nets (random weights, batch-norm statistics set from one photo batch), exported
with ``torch.onnx.export`` as a user would: a DeepLabV3-style ASPP head (image-pool branch upsampled from
1 x 1 to the feature size, logits upsampled x8 to the input size, bilinear, ``align_corners=False``), an
LR-ASPP (MobileNetV3-style: Hardswish, a HardSigmoid-gated branch, bilinear x2 to the 1/8 features and x8
to the input) and a BiSeNet-style two-path net (attention refinement with Sigmoid gates, bilinear x2 x2,
feature fusion, x8 to the input; the ``align_corners=True`` variant of each resize as ``--align-corners``).
Calibration: 16 photo crops (``benchmarks.datasets.random_crops``), held out: 8 other crops.  For each
net and target: compiled subgraphs and devices, the Resizes ``check`` leaves on the CPU with its reason,
the largest difference from ONNX Runtime on ``quantized_model.onnx`` layer by layer (LSB,
``tests.compile_check.compare_layerwise_with_ort``), and against the float model on the held-out crops:
the smallest output cosine and the pixel argmax agreement::

    PYTHONPATH=$PWD nice -n 5 python benchmarks/bench_segmentation.py [--align-corners] [--nets lraspp]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import npuflow
from benchmarks.datasets import IMAGENET_MEAN, IMAGENET_STD, random_crops
from tests.compile_check import compare_layerwise_with_ort

TARGETS = ("DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8")
SIZE, CLASSES = 128, 6


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1, d: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, d * (k // 2), dilation=d, bias=False), nn.BatchNorm2d(cout), act())


class DeepLabLite(nn.Module):
    """Output stride 8 backbone, ASPP (1x1, 3x3 dilation 2 and 4, image pool), 1x1 classifier, x8 up."""

    def __init__(self, align: bool) -> None:
        super().__init__()
        self.align = align
        self.backbone = nn.Sequential(_cbr(3, 16, s=2), _cbr(16, 24, s=2), _cbr(24, 32, s=2), _cbr(32, 32))
        self.aspp = nn.ModuleList([_cbr(32, 24, 1), _cbr(32, 24, d=2), _cbr(32, 24, d=4)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _cbr(32, 24, 1))
        self.project = _cbr(96, 32, 1)
        self.head = nn.Conv2d(32, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        branches = [m(f) for m in self.aspp]
        branches.append(F.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear", align_corners=self.align))
        y = self.head(self.project(torch.cat(branches, 1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=self.align)


class LRASPP(nn.Module):
    """MobileNetV3-style: 1/8 low features, 1/16 high features; gate = HardSigmoid(1x1(pool(high)))."""

    def __init__(self, align: bool) -> None:
        super().__init__()
        self.align = align
        hs = nn.Hardswish
        self.low = nn.Sequential(_cbr(3, 16, s=2, act=hs), _cbr(16, 16, s=2, act=hs), _cbr(16, 24, s=2, act=hs))
        self.high = nn.Sequential(_cbr(24, 40, s=2, act=hs), _cbr(40, 40, act=hs))
        self.cbr = _cbr(40, 32, 1)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(40, 32, 1, bias=False), nn.Hardsigmoid())
        self.low_classifier = nn.Conv2d(24, CLASSES, 1)
        self.high_classifier = nn.Conv2d(32, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low(x)
        high = self.high(low)
        y = self.cbr(high) * self.scale(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=self.align)
        y = self.low_classifier(low) + self.high_classifier(y)
        return F.interpolate(y, scale_factor=8, mode="bilinear", align_corners=self.align)


class BiSeNetLite(nn.Module):
    """Spatial path (1/8) + context path (1/16, 1/32 with attention refinement), fusion, x8 up."""

    def __init__(self, align: bool) -> None:
        super().__init__()
        self.align = align
        self.spatial = nn.Sequential(_cbr(3, 16, s=2), _cbr(16, 16, s=2), _cbr(16, 32, s=2))
        self.c8 = nn.Sequential(_cbr(3, 16, s=2), _cbr(16, 24, s=2), _cbr(24, 32, s=2))
        self.c16, self.c32 = _cbr(32, 48, s=2), _cbr(48, 64, s=2)
        self.arm16 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(48, 48, 1), nn.Sigmoid())
        self.arm32 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 64, 1), nn.Sigmoid())
        self.r32, self.r16 = _cbr(64, 48), _cbr(48, 32)
        self.fuse = _cbr(64, 32, 1)
        self.fuse_gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1),
                                       nn.Sigmoid())
        self.head = nn.Conv2d(32, CLASSES, 1)

    def up(self, t: torch.Tensor, factor: int) -> torch.Tensor:
        return F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=self.align)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sp = self.spatial(x)
        f16 = self.c16(self.c8(x))
        f32 = self.c32(f16)
        f32 = self.r32(f32 * self.arm32(f32))
        f16 = self.r16(f16 * self.arm16(f16) + self.up(f32, 2))
        fused = self.fuse(torch.cat([sp, self.up(f16, 2)], 1))
        fused = fused + fused * self.fuse_gate(fused)
        return self.up(self.head(fused), 8)


NETS = {"deeplab": DeepLabLite, "lraspp": LRASPP, "bisenet": BiSeNetLite}


def _images(n: int, seed: int) -> np.ndarray:
    crops = np.stack(list(random_crops(n, SIZE, seed))).astype(np.float32)
    return ((crops - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).copy()


def _export(name: str, align: bool, path: Path, calib: np.ndarray) -> Path:
    torch.manual_seed(0)
    net = NETS[name](align)
    net.train()
    with torch.no_grad():  # batch-norm running statistics from photos: activations of a plausible size
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        net(torch.from_numpy(calib))
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    return path


def _row(name: str, model: Path, target: str, calib: np.ndarray, held: np.ndarray) -> str:
    report = npuflow.check(str(model), target)
    cpu = [f"{n.name}: {n.reasons[0] if n.reasons else '?'}" for n in report.nodes
           if n.op_type == "Resize" and str(n.device) == "CPU"]
    q = npuflow.quantize(str(model), [{"x": c[None]} for c in calib], target=target)
    written = sum(r["applied"] for r in q.info["algorithms"].get("target_rewrites", [])
                  if r["rewrite"].startswith("linear_resize"))
    compiled = npuflow.compile(q.model, target)
    devices = [sg["device"] for sg in compiled.manifest["subgraphs"]]
    lsb = max(compare_layerwise_with_ort(q.model, {"x": held[:1]}, target).values())
    float_run = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    session = npuflow.Session(compiled)
    cos, agree = [], []
    for h in held:
        want = float_run.run(None, {"x": h[None]})[0]
        got = session.run({"x": h[None]})["y"]
        cos.append(float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want))))
        agree.append(float(np.mean(got.argmax(1) == want.argmax(1))))
    return (f"| {name} | {target} | {len(devices)} ({', '.join(devices)}) | {written} "
            f"| {'; '.join(cpu) or '-'} | {lsb} | {min(cos):.5f} | {100 * np.mean(agree):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--align-corners", action="store_true")
    parser.add_argument("--nets", nargs="*", default=list(NETS))
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    args = parser.parse_args()
    calib, held = _images(16, 30), _images(8, 31)
    print("| net | target | compiled subgraphs (devices) | linear Resizes rewritten (ConvTranspose, nearest) | Resizes on the CPU: check's reason "
          "| max LSB vs ORT (layer by layer) | cos min vs float | argmax agreement % |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets:
            label = f"{name}{' (align_corners)' if args.align_corners else ''}"
            model = _export(name, args.align_corners, Path(tmp) / f"{name}.onnx", calib)
            for target in args.targets:
                print(_row(label, model, target, calib, held), flush=True)


if __name__ == "__main__":
    main()
