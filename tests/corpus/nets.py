"""Small architectures of the corpus, written in plain torch (no torchvision), seeded weights.

Each net is the smallest version of a real family that still has the family's distinctive
structure (inverted residuals, squeeze-excite, bottlenecks, attention, recurrent cells, ...), so
that every stage sees the graph patterns exporters write for it while the CI subset stays fast.
BatchNorm statistics are settled by a few forward passes in train mode over seeded inputs, so
the folded scales and shifts are non-trivial (not the identity of a fresh layer).

``export(name, opset, path)`` writes the ONNX file with ``torch.onnx.export(..., dynamo=False)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def _bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1,
            act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Conv -> BN -> activation, padded to keep the size (the backbone unit of every CNN here)."""
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_bn_act(cin, mid, 1, act=nn.ReLU6), _bn_act(mid, mid, 3, stride, mid, act=nn.ReLU6),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _bn_act(3, 8, 3, 2, act=nn.ReLU6), InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 4),
            InvertedResidual(12, 12, 1, 4), InvertedResidual(12, 16, 2, 4), _bn_act(16, 64, 1, act=nn.ReLU6))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: global pool, reduce, ReLU, expand, hard-sigmoid gate."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, max(4, c // 4), 1), nn.Conv2d(max(4, c // 4), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class V3Block(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        layers = [_bn_act(cin, mid, 1, act=nn.Hardswish), _bn_act(mid, mid, 3, stride, mid, act=nn.Hardswish)]
        if se:
            layers.append(SqueezeExcite(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _bn_act(3, 8, 3, 2, act=nn.Hardswish), V3Block(8, 16, 8, 1, True), V3Block(8, 24, 12, 2, False),
            V3Block(12, 32, 12, 1, True), V3Block(12, 48, 16, 2, True), _bn_act(16, 48, 1, act=nn.Hardswish))
        self.head = nn.Sequential(nn.Linear(48, 32), nn.Hardswish(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = _bn_act(cin, cout, 3, stride)
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(self.a(x)) + self.skip(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.body = nn.Sequential(_bn_act(cin, mid, 1), _bn_act(mid, mid, 3, stride),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """ResNet stem (7x7/2 conv, 3x3/2 max pool) and four stages of ``blocks``."""

    def __init__(self, blocks: list[nn.Module], width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(_bn_act(3, 8, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1))


def resnet18() -> ResNet:
    """ResNet-18's layout (2-2-2-2 basic blocks), channels 8-16-24-32."""
    widths, blocks, cin = (8, 16, 24, 32), [], 8
    for i, w in enumerate(widths):
        blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
        cin = w
    return ResNet(blocks, cin)


def resnet_bottleneck() -> ResNet:
    """ResNet-50's bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4), one per stage."""
    blocks, cin = [], 8
    for i, mid in enumerate((4, 8, 8)):
        blocks.append(Bottleneck(cin, mid, 1 if i == 0 else 2))
        cin = mid * 4
    return ResNet(blocks, cin)


class DepthwiseNet(nn.Module):
    """Depthwise-separable convs with dilation 2 and 3, grouped convs (groups 2 and 4), a 5x5 depthwise."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _bn_act(3, 16, 3, 2), _bn_act(16, 16, 3, 1, 16, 2), _bn_act(16, 24, 1),
            _bn_act(24, 24, 3, 1, 2, 3), _bn_act(24, 24, 5, 2, 24), _bn_act(24, 32, 3, 1, 4),
            _bn_act(32, 32, 3, 1, 32, 2), _bn_act(32, 32, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class UNet(nn.Module):
    """Two-level UNet: max-pool down, ConvTranspose up, nearest and bilinear Resize, skip concats."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = _bn_act(3, 8), _bn_act(8, 16), _bn_act(16, 32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec2 = _bn_act(32, 16)
        self.dec1 = _bn_act(24, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d2 = F.interpolate(d2, scale_factor=2.0, mode="nearest")
        d1 = self.dec1(torch.cat([d2, e1], 1))
        y = self.out(d1)
        return F.interpolate(F.avg_pool2d(y, 2), scale_factor=2.0, mode="bilinear", align_corners=False)


class ViTBlock(nn.Module):
    """DeiT-tiny in miniature: 8x8 patch embedding, class token, one pre-norm encoder block."""

    def __init__(self, dim: int = 32, heads: int = 4, patch: int = 8, size: int = 32) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        t = t + self.attention(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.head(self.norm(t)[:, 0])


class AudioConv1d(nn.Module):
    """Keyword-spotting style Conv1d net on a raw 1 s waveform at 4 kHz (strided front end)."""

    def __init__(self) -> None:
        super().__init__()
        layers, cin = [], 1
        for cout, k, s in ((8, 16, 4), (16, 5, 2), (16, 3, 2), (24, 3, 2)):
            layers += [nn.Conv1d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU(),
                       nn.MaxPool1d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(-1))


class Recurrent(nn.Module):
    """A one-layer LSTM or GRU over 20 frames of 16 features, then a classifier on the last step."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(16, 24, batch_first=True)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class TwoInThreeOut(nn.Module):
    """Two images through a shared trunk; outputs: logits, the fused feature map, a similarity."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_bn_act(3, 8, 3, 2), _bn_act(8, 16, 3, 2))
        self.fuse = _bn_act(32, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fa, fb = self.trunk(a), self.trunk(b)
        fused = self.fuse(torch.cat([fa, fb], 1))
        pooled = torch.flatten(F.adaptive_avg_pool2d(fused, 1), 1)
        sim = (F.adaptive_avg_pool2d(fa, 1) * F.adaptive_avg_pool2d(fb, 1)).sum(1).flatten(1)
        return self.fc(pooled), fused, sim


class DynamicNet(nn.Module):
    """A fully convolutional net with global pooling: any batch and any width give logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_bn_act(3, 8, 3, 2), _bn_act(8, 16, 3, 2), _bn_act(16, 16, 3, 1, 16))
        self.fc = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.fc(self.features(x)), 1), 1)


@dataclass(frozen=True)
class NetSpec:
    """How to build and export one net: its factory, example input shapes and names."""

    build: Callable[[], nn.Module]
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    data: str = "photo"
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


NETS: dict[str, NetSpec] = {
    "mobilenet_v2": NetSpec(MobileNetV2, {"input": (1, 3, 64, 64)}, ["logits"]),
    "mobilenet_v3": NetSpec(MobileNetV3, {"input": (1, 3, 64, 64)}, ["logits"]),
    "resnet18": NetSpec(resnet18, {"input": (1, 3, 64, 64)}, ["logits"]),
    "resnet_bottleneck": NetSpec(resnet_bottleneck, {"input": (1, 3, 64, 64)}, ["logits"]),
    "depthwise_dilated": NetSpec(DepthwiseNet, {"input": (1, 3, 64, 64)}, ["logits"]),
    "unet": NetSpec(UNet, {"input": (1, 3, 64, 64)}, ["mask"]),
    "vit_block": NetSpec(ViTBlock, {"input": (1, 3, 32, 32)}, ["logits"]),
    "audio_conv1d": NetSpec(AudioConv1d, {"input": (1, 1, 4000)}, ["logits"], data="audio"),
    "lstm": NetSpec(lambda: Recurrent(nn.LSTM), {"input": (1, 20, 16)}, ["logits"], data="audio"),
    "gru": NetSpec(lambda: Recurrent(nn.GRU), {"input": (1, 20, 16)}, ["logits"], data="audio"),
    "two_in_three_out": NetSpec(TwoInThreeOut, {"left": (1, 3, 48, 48), "right": (1, 3, 48, 48)},
                                ["logits", "features", "similarity"]),
    "dynamic_batch_width": NetSpec(DynamicNet, {"input": (1, 3, 32, 64)}, ["logits"],
                                   dynamic_axes={"input": {0: "batch", 3: "width"}, "logits": {0: "batch"}}),
}


def _settle_batchnorm(net: nn.Module, examples: list[torch.Tensor], seed: int) -> None:
    """Give every BatchNorm real running statistics and a non-trivial affine transform.

    Train-mode passes over seeded inputs (cumulative average) set the statistics the way training
    would; the affine weights are then drawn so that folding BN into the conv changes its scales.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None
        bn.reset_running_stats()
        with torch.no_grad():
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    if not bns:
        return
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(*[torch.randn((4, *e.shape[1:]), generator=gen) for e in examples])
    net.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """The eval-mode net ``name`` with weights seeded by ``seed`` (same seed, same weights)."""
    spec = NETS[name]
    torch.manual_seed(seed)
    net = spec.build()
    _settle_batchnorm(net, [torch.zeros(s) for s in spec.inputs.values()], seed)
    return net.eval()


def export(name: str, opset: int, out: Path, seed: int = 0) -> Path:
    """Export net ``name`` to ``out`` at ``opset`` with the TorchScript exporter (atomic write)."""
    spec = NETS[name]
    net = build(name, seed)
    examples = tuple(torch.randn(s, generator=torch.Generator().manual_seed(seed)) for s in spec.inputs.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(net, examples, str(tmp), input_names=list(spec.inputs), output_names=spec.outputs,
                          opset_version=opset, dynamo=False, dynamic_axes=spec.dynamic_axes or None)
    os.replace(tmp, out)
    return out
