"""Channel pruning of models nobody tuned npuflow for (docs/pruning.md)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from npuflow.errors import NpuflowError
from npuflow.prune import IterativePruningRunner
from npuflow.prune.groups import channel_rankings


class ConvGru(nn.Module):
    """A conv whose channels reach a GRU through a transpose: torch-pruning 1.6's index mapping
    raises IndexError building that group."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gru = nn.GRU(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        s = self.conv(x).mean(dim=2).transpose(1, 2)
        s, _ = self.gru(s)
        return self.fc(s.mean(1))


def test_unfollowable_group_is_coded_and_names_the_layer():
    # before: IndexError: list index out of range (a torch-pruning traceback from `npuflow prune ana`)
    with pytest.raises(NpuflowError) as e:
        channel_rankings(ConvGru().eval(), torch.randn(1, 3, 8, 8))
    assert e.value.code == "NPF_PRUNE_UNSUPPORTED_MODEL" and "of conv:" in e.value.message
    assert "excludes=['conv']" in e.value.hint
    assert channel_rankings(ConvGru().eval(), torch.randn(1, 3, 8, 8), excludes=["conv"]) == {}


#: a user's script holding the model above (the class's own source, so the two cannot drift apart)
SCRIPT = "import torch\nfrom torch import nn\n" + inspect.getsource(ConvGru) + """
def get_model():
    return ConvGru().eval()
def get_example_inputs():
    return torch.randn(1, 3, 8, 8)
"""


def test_cli_exclude(cli, tmp_path):
    script = tmp_path / "user.py"
    script.write_text(SCRIPT)
    r = cli("prune", "ana", script, "--ratios", "0.5", "--workdir", tmp_path / "w")
    assert r.returncode == 2 and "NPF_PRUNE_UNSUPPORTED_MODEL" in r.stderr and "Traceback" not in r.stderr
    r = cli("prune", "ana", script, "--ratios", "0.5", "--workdir", tmp_path / "w", "--exclude", "conv")
    assert r.returncode == 0, r.stderr


def test_unreached_goal_is_said(tmp_path, caplog):
    # 16-channel convs on a 16-wide conv engine: no channel count can drop, so no goal is reachable.
    # before: the round was the unpruned model and nothing said so ('MACs 1.47e+06 -> 1.47e+06')
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 5)).eval()
    runner = IterativePruningRunner(model, torch.randn(1, 3, 8, 8), target="DPUCZDX8G_ISA1_B4096", workdir=tmp_path)
    runner.ana(ratios=(0.5,))
    with caplog.at_level("WARNING", logger="npuflow.prune.runners"):
        runner.prune(removal_ratio=0.3)
    rec = runner.rounds[-1]
    assert (rec.goal, rec.goal_met) == ("removal_ratio 0.3", False)
    assert "removal_ratio 0.3 not reached" in caplog.text and "multiples of 16" in caplog.text
    runner = IterativePruningRunner(model, torch.randn(1, 3, 8, 8), workdir=tmp_path / "any")
    runner.ana(ratios=(0.5,))
    runner.prune(removal_ratio=0.3)
    assert runner.rounds[-1].goal_met
