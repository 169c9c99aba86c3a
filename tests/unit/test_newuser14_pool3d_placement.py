"""LPRNet's ``nn.MaxPool3d((1, 3, 3))`` on ``x.unsqueeze(1)``: a 3-D MaxPool on a 5-D tensor,
which only the CPU runs ("only 2-D pooling is lowered").  Check of the float model put the
``Squeeze`` after it (B4096) and the ``Unsqueeze`` before it (bernoulli2) on the CPU in float;
compile gave them a quantize step of their neighbour's grid (``compiler/foreign.py``'s grid ops,
as if the MaxPool were lowered too) and lowered them.  Check's placement must be compile's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import npuflow
from tests.unit.test_placement_agreement import _sides, compiled_devices, sides_differing


class _LPRStem(nn.Module):
    """Conv -> MaxPool3d over (C, H, W) of ``x.unsqueeze(1)`` -> squeeze -> Conv, twice, as LPRNet."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU())
        self.mp = nn.MaxPool3d((1, 3, 3), (1, 1, 1))
        self.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU())
        self.mp2 = nn.MaxPool3d((1, 3, 3), (2, 1, 2))
        self.c3 = nn.Conv2d(16, 8, 3, 1, 1)

    def forward(self, x):
        y = self.mp(self.c1(x).unsqueeze(1)).squeeze(1)
        y = self.mp2(self.c2(y).unsqueeze(1)).squeeze(1)
        return self.c3(y)


@pytest.fixture(scope="module")
def lpr_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpr") / "lpr.onnx"
    torch.onnx.export(_LPRStem().eval(), (torch.rand(1, 3, 24, 48),), str(path), input_names=["x"],
                      opset_version=17, dynamo=False)
    return str(path)


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8"])
def test_check_places_the_reshapes_around_a_cpu_3d_maxpool_as_compile_does(lpr_model, target):
    rng = np.random.default_rng(0)
    calib = [rng.random((1, 3, 24, 48), dtype=np.float32) for _ in range(4)]
    float_sides = _sides(npuflow.check(lpr_model, target))
    q = npuflow.quantize(lpr_model, calib, target).model
    compiled = compiled_devices(npuflow.compile(q, target))
    assert sides_differing(float_sides, q, compiled, target) == {}
    assert sum(n in compiled for n in float_sides) >= 8
    assert float_sides["/mp/MaxPool"] == "CPU" or target == "cpu-int8"
