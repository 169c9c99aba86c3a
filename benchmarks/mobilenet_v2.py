"""MobileNetV2 in plain torch, trained here on MNIST, for issue 18's benchmark "for the record".

MobileNetV2 is the network on which naive power-of-two per-tensor quantization is known to
collapse (depthwise weights whose per-channel ranges differ by orders of magnitude after BN
folding), so it belongs beside the networks npuflow was tuned on.  No weights can be downloaded
and torchvision is not a dependency, so the benchmark trains one: the paper's layer table (width
1.0: 17 inverted-residual blocks, ReLU6, BN, 1280-channel head) on 64x64 single-channel inputs
(MNIST digits padded to 32 and repeated 2x2, so the network's total stride of 32 leaves a 2x2
map), 10 classes, with small random shifts.  The blocks are the corpus's (``tests/corpus/nets.py``),
which keep a 1x1 expansion convolution in the first block where the paper has expansion 1.

Data (``datasets.mnist``): the evaluation digits are at most the first ``MNIST_TRAIN_AFTER`` of
the "eval" split; training uses the rest of it (``datasets.mnist("train")``), so the two never meet;
calibration is the "calib" split, as for the MNIST CNN.

The trained model is exported once (TorchScript exporter, opset 13) into the model cache and
reused; a different seed or schedule is a different file name.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

import datasets as D
from tests.fixture_models import CACHE

log = logging.getLogger(__name__)

#: (expansion, output channels, blocks, first stride) of MobileNetV2's table
_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
SIZE = 64
EPOCHS = 4
SEED = 0


def to_input(digits: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) normalised digits -> (N, 1, 64, 64): padded with the background value, each
    pixel repeated 2x2."""
    background = np.float32(-D.MNIST_MEAN / D.MNIST_STD)
    padded = np.pad(digits, ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=background)
    return padded.repeat(2, axis=2).repeat(2, axis=3)


def _network():
    import torch
    from torch import nn

    from tests.corpus.nets import InvertedResidual, _bn_act

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, cin = [_bn_act(1, 32, 3, 2, act=nn.ReLU6)], 32
            for expand, cout, blocks, stride in _TABLE:
                for i in range(blocks):
                    layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                    cin = cout
            layers.append(_bn_act(cin, 1280, 1, act=nn.ReLU6))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    return MobileNetV2()


def model_path() -> Path:
    """The trained model's ONNX file, trained and exported on first use (a few CPU minutes)."""
    path = CACHE / "benchmarks" / f"mobilenet_v2_mnist_e{EPOCHS}_s{SEED}.onnx"
    if not path.exists():
        _train_and_export(path)
    return path


def _train_and_export(path: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    samples, labels = D.mnist("train")
    x = to_input(np.concatenate([s["input"] for s in samples]))
    y = torch.from_numpy(labels)
    net = _network()
    steps_per_epoch = len(x) // 64
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=EPOCHS * steps_per_epoch)
    t0 = time.perf_counter()
    net.train()
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        for step in range(steps_per_epoch):
            idx = order[step * 64:(step + 1) * 64]
            shift = rng.integers(-4, 5, size=2)  # small translations, one per batch
            batch = torch.from_numpy(np.roll(x[idx], tuple(shift), axis=(2, 3)))
            loss = torch.nn.functional.cross_entropy(net(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log.info("MobileNetV2 epoch %d: loss %.4f (%.0f s)", epoch + 1, loss.item(), time.perf_counter() - t0)
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(net, torch.zeros(1, 1, SIZE, SIZE), str(tmp), input_names=["input"], output_names=["logits"],
                      opset_version=13, dynamo=False)
    tmp.replace(path)  # complete or absent: an interrupted run trains again
