"""A temporal shift module (new-user round 15): a clip's frames shifted by slicing a 5-D view of
the features along channels and concatenating.  torch-pruning's index mapping loops forever on
that group, and ``npuflow prune run --ratio 0.3`` spun until killed (15 minutes, no output).
Building a group now stops after ``GROUP_BUILD_LIMIT_S`` with ``NPF_PRUNE_UNSUPPORTED_MODEL``
naming the layer, and excluding it prunes the rest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import npuflow.prune.groups as groups
from npuflow.errors import NpuflowError


class _TSM(nn.Module):
    def __init__(self, frames: int = 4) -> None:
        super().__init__()
        self.t = frames
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 5)

    def shift(self, x):
        nt, c, h, w = x.shape
        x = x.view(nt // self.t, self.t, c, h, w)
        f, z = c // 8, torch.zeros_like(x[:, :1, : c // 8])
        a, b = torch.cat([x[:, 1:, :f], z], 1), torch.cat([z, x[:, :-1, f:2 * f]], 1)
        return torch.cat([a, b, x[:, :, 2 * f:]], 2).view(nt, c, h, w)

    def forward(self, v):
        y = torch.relu(self.c2(torch.relu(self.c1(v.flatten(0, 1)))))
        y = y + self.c3(self.shift(y))
        return self.fc(y.mean((2, 3)).view(v.shape[0], self.t, -1).mean(1))


def test_a_group_torch_pruning_loops_on_is_coded_within_the_limit(monkeypatch):
    monkeypatch.setattr(groups, "GROUP_BUILD_LIMIT_S", 1.0)
    model, clip = _TSM().eval(), torch.rand(1, 4, 3, 16, 16)
    with pytest.raises(NpuflowError) as e:  # before: never returned
        groups.channel_rankings(model, clip)
    assert e.value.code == "NPF_PRUNE_UNSUPPORTED_MODEL" and "of c2:" in e.value.message
    assert "did not finish in 1 s" in e.value.message and "excludes=['c2']" in e.value.hint
    assert set(groups.channel_rankings(model, clip, excludes=["c2", "c3"])) == {"c1"}


def test_the_limit_holds_when_one_alarm_is_swallowed(monkeypatch):
    """An alarm whose exception a finalizer drops (the garbage collector runs ``__del__`` in the
    middle of torch-pruning's loop) must not leave the block unbounded: the timer repeats."""
    import time

    swallowed = []

    class _Finalized:
        def __del__(self):
            try:
                time.sleep(0.2)  # the alarm lands here, and the finalizer drops it
            except groups._Stuck:
                swallowed.append(True)

    start = time.monotonic()
    with pytest.raises(groups._Stuck):
        with groups._time_limit(0.1):
            _Finalized()  # dropped at once: its __del__ runs while the first alarm fires
            while time.monotonic() - start < 5:
                pass
    assert swallowed and time.monotonic() - start < 2


def test_no_alarm_outlives_the_block():
    import time

    with groups._time_limit(0.05):
        pass
    time.sleep(0.4)  # a repeat still armed would raise here
