"""Pruning a GhostNet/ShuffleNet-v2 block (new-user round 15): ``chunk`` -> ``cat`` -> channel
shuffle (reshape, transpose) -> depthwise conv.  torch-pruning maps the depthwise conv's 40
channels onto the 20-channel ghost convs before the shuffle, and ``npuflow prune run`` ended in
``IndexError: index 30 is out of bounds for dimension 0 with size 20`` (a traceback).  The group
is now refused as ``NPF_PRUNE_UNSUPPORTED_MODEL`` naming the layer, and excluding it prunes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npuflow.errors import NpuflowError
from npuflow.prune import IterativePruningRunner
from npuflow.prune.groups import channel_rankings


class _Ghost(nn.Module):
    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        h = (o + 1) // 2
        self.o = o
        self.p = nn.Sequential(nn.Conv2d(i, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU())

    def forward(self, x):
        y = self.p(x)
        return torch.cat([y, self.c(y)], 1)[:, :self.o]


class _GhostShuffle(nn.Module):
    """Round 15's net: stem, ghost, chunk, ghost on one half, cat, shuffle, depthwise, ghost, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.g1, self.g2 = _Ghost(24, 40), _Ghost(20, 20)
        self.dw = nn.Sequential(nn.Conv2d(40, 40, 3, 2, 1, groups=40, bias=False), nn.BatchNorm2d(40))
        self.g3, self.fc = _Ghost(40, 62), nn.Linear(62, 10)

    def forward(self, x):
        a, b = self.g1(self.stem(x)).chunk(2, 1)
        y = torch.cat([a, self.g2(b)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.g3(self.dw(y)).mean((2, 3)))


def test_a_group_mapped_past_a_layer_is_coded_and_excluding_it_prunes(tmp_path):
    torch.manual_seed(0)
    model, x = _GhostShuffle().eval(), torch.rand(2, 3, 32, 32)
    with pytest.raises(NpuflowError) as e:  # before: IndexError from apply_masks during the analysis
        channel_rankings(model, x[:1])
    assert e.value.code == "NPF_PRUNE_UNSUPPORTED_MODEL" and "of dw.0:" in e.value.message
    assert "which has 20" in e.value.message and "excludes=['dw.0']" in e.value.hint

    with torch.no_grad():
        ref = model(x)

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x).flatten(), ref.flatten(), dim=0))

    runner = IterativePruningRunner(model, (x[:1],), excludes=["dw.0"], workdir=str(tmp_path))
    runner.ana(score, ratios=(0.5,))
    slim = runner.prune(0.2, mode="slim")
    with torch.no_grad():
        assert slim(x).shape == (2, 10)
    assert runner.rounds[-1].after["macs"] < runner.rounds[-1].before["macs"]
