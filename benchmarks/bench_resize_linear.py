"""Where bilinear upsampling runs: compiled subgraphs and Resize/ConvTranspose placement per target.

Two nets with linear ``Resize``: the corpus UNet (``tests/corpus/nets.py``: a bilinear x2 at its end)
and a Wave-U-Net-like 1-D net (four ``F.interpolate(mode="linear", scale_factor=2)`` between Conv1d
decoder steps, as round 19's).  For each target: how many subgraphs ``compile`` writes (and on which
devices), and where ``check`` places each upsampling node.  Run it with ``PYTHONPATH`` at two commits
to compare (``passes/resize_linear.py`` before / after)::

    PYTHONPATH=$PWD python benchmarks/bench_resize_linear.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import npuflow
from tests.corpus import nets

TARGETS = ("DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8")


class WaveUNet(nn.Module):
    """Conv1d k 15 down with ``[:, :, ::2]`` decimation x4, then linear x2 + skip concat + Conv1d k 5 x4."""

    def __init__(self, ch: int = 8, levels: int = 4) -> None:
        super().__init__()
        self.down = nn.ModuleList(nn.Conv1d(1 if i == 0 else ch, ch, 15, padding=7) for i in range(levels))
        self.up = nn.ModuleList(nn.Conv1d(2 * ch, ch, 5, padding=2) for _ in range(levels))
        self.out = nn.Conv1d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.1)
            skips.append(x)
            x = x[:, :, ::2]
        for conv, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="linear", align_corners=False)
            x = F.leaky_relu(conv(torch.cat([x, skip], 1)), 0.1)
        return torch.tanh(self.out(x))


def _export_wave_unet(path: Path) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(WaveUNet().eval(), (torch.zeros(1, 1, 1024),), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    return path


def _row(name: str, model: Path, feed: str, shape: list[int], target: str) -> str:
    rng = np.random.default_rng(0)
    samples = [{feed: rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(4)]
    report = npuflow.check(str(model), target)
    ups = [n for n in report.nodes if n.op_type in ("Resize", "ConvTranspose")]
    placed = ", ".join(f"{op} {dev} x{sum(1 for n in ups if (n.op_type, str(n.device)) == (op, dev))}"
                       for op, dev in sorted({(n.op_type, str(n.device)) for n in ups}))
    q = npuflow.quantize(str(model), samples, target=target)
    compiled = npuflow.compile(q.model, target)
    devices = [sg["device"] for sg in compiled.manifest["subgraphs"]]
    got = next(iter(npuflow.Session(compiled).run(samples[0]).values())).ravel()
    want = ort.InferenceSession(str(model)).run(None, samples[0])[0].ravel()
    cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
    return f"| {name} | {target} | {len(devices)} ({', '.join(devices)}) | {placed} | {cos:.5f} |"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        unet = nets.export("unet", 17, Path(tmp) / "unet.onnx")
        wave = _export_wave_unet(Path(tmp) / "wave_unet.onnx")
        print("| net | target | compiled subgraphs (devices) | Resize / ConvTranspose: check places | cos vs float |")
        print("|---|---|---|---|---|")
        for target in TARGETS:
            print(_row("corpus UNet (1x3x64x64)", unet, "input", [1, 3, 64, 64], target))
            print(_row("Wave-U-Net-like (1x1x1024)", wave, "x", [1, 1, 1024], target))


if __name__ == "__main__":
    main()
